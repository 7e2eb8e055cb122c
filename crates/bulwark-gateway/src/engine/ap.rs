//! AP writes: last-write-wins puts to the key's replicas, answered at W acknowledgements.

use bulwark_obs::events::{ApStaleRisk, Emit};
use bulwark_replica::PutReply;
use bytes::Bytes;
use futures::StreamExt as _;

use super::{Engine, WriteOutcome};
use crate::replicas::CallError;

impl Engine {
    /// AP: last-write-wins put to every replica of the key; success when `required` (W,
    /// 1 unless the request asked for more) acknowledge, 504 unknown when fewer but some
    /// did. The answer waits at most `AP_ACK_WAIT_MS` after the W-th acknowledgement for
    /// the other replicas (so that a stopped replica is reported `behind` at once, while a slow or
    /// hung one does not hold the answer back); calls still in flight then are reported
    /// `pending` and finished in the background.
    pub(super) async fn write_ap(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        required: usize,
        request_id: &str,
    ) -> WriteOutcome {
        let version = self.hlc.now();
        let owners = self.routing.replicas(key);
        let key = Bytes::copy_from_slice(key);
        let mut calls = self.call_on(&owners, "put", |c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(&key, version, value.as_deref()).await }
        });
        let mut results: Vec<Option<Result<PutReply, CallError>>> =
            (0..self.set.len()).map(|_| None).collect();
        let mut answer_by: Option<tokio::time::Instant> = None;
        let mut oks = 0;
        loop {
            let next = match answer_by {
                None => calls.next().await,
                Some(at) => match tokio::time::timeout_at(at, calls.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((i, result)) = next else { break };
            oks += usize::from(result.is_ok());
            if oks >= required && answer_by.is_none() {
                answer_by = Some(tokio::time::Instant::now() + self.config.ap_ack_wait);
            }
            results[i] = Some(result);
        }
        let mut acked = Vec::new();
        let mut behind = Vec::new();
        let mut pending = Vec::new();
        let mut maybe_applied = false;
        let mut errors = Vec::new();
        for &i in &owners {
            match results[i].take() {
                Some(Ok(reply)) => {
                    self.hlc.observe(reply.committed);
                    acked.push(i);
                }
                Some(Err(e)) => {
                    maybe_applied |= !e.certainly_not_applied();
                    errors.push(format!("{}: {e}", self.set.replicas[i].name()));
                    self.hints.add(i, &key, version, value.clone());
                    behind.push(i);
                }
                None => pending.push(i),
            }
        }
        if acked.is_empty() {
            let reason = format!("no replica acknowledged ({})", errors.join("; "));
            return if maybe_applied {
                WriteOutcome::Unknown { version, reason }
            } else {
                WriteOutcome::Unavailable { reason }
            };
        }
        if acked.len() < required {
            // Applied where it was acknowledged (and handed off to the rest), but not by
            // the W the request asked for: the client must not count it as W-durable.
            return WriteOutcome::Unknown {
                version,
                reason: format!(
                    "{} of the {required} replicas the request asked for acknowledged ({}); the write is on {} and is handed off to the others",
                    acked.len(),
                    errors.join("; "),
                    self.names(acked).join(", ")
                ),
            };
        }
        if !calls.is_empty() {
            match self.stragglers.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (set, hints) = (self.set.clone(), self.hints.clone());
                    let request_id = request_id.to_owned();
                    tokio::spawn(async move {
                        while let Some((i, result)) = calls.next().await {
                            if result.is_err() {
                                hints.add(i, &key, version, value.clone());
                                ApStaleRisk {
                                    request_id: &request_id,
                                    key: &String::from_utf8_lossy(&key),
                                    version: &version.to_string(),
                                    behind: &[set.replicas[i].name().to_owned()],
                                }
                                .emit();
                            }
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    // Too many writes already straggling: finish this one inline.
                    pending.clear();
                    while let Some((i, result)) = calls.next().await {
                        match result {
                            Ok(_) => acked.push(i),
                            Err(_) => {
                                self.hints.add(i, &key, version, value.clone());
                                behind.push(i);
                            }
                        }
                    }
                    acked.sort_unstable();
                    behind.sort_unstable();
                }
            }
        }
        WriteOutcome::Committed {
            version,
            acked: self.names(acked),
            behind: self.names(behind),
            pending: self.names(pending),
            coordinator: None,
        }
    }
}

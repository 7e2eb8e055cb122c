//! A thread-safe log of operations that tests fill while their clients run.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::history::{History, Op, OpKind, Outcome};

/// Names an invoked operation so its completion can be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// What a client is about to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Write this value.
    Write(String),
    /// Read.
    Read,
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The write was applied, or the read returned this value (`None`: absent).
    Ok(Option<String>),
    /// Definitely not applied (or the read was refused).
    Fail,
    /// Unknown outcome.
    Info,
}

/// Logs invocations and completions with monotonic timestamps.
///
/// Times come from [`std::time::Instant`] (not `tokio::time`): a history relates real
/// events on real servers, and paused tokio time would make every operation look
/// simultaneous. The lock is held only to push or update one entry, never across an
/// `.await`.
#[derive(Debug)]
pub struct Recorder {
    /// Time zero of the history.
    start: Instant,
    /// Operations in invocation order; the index is the [`OpId`].
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty log whose time zero is now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A panic in another test thread must not hide the history of this one.
    fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        self.ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `client` is about to send `call` on `key`. Call it before sending the
    /// request, so the recorded interval contains the real one.
    pub fn invoke(&self, client: u64, key: &str, call: Call) -> OpId {
        let kind = match call {
            Call::Write(value) => OpKind::Write { value },
            Call::Read => OpKind::Read { value: None },
        };
        let mut ops = self.lock();
        let id = ops.len();
        let invoke_ns = self.now_ns();
        ops.push(Op {
            id: id as u64,
            client,
            key: key.to_string(),
            kind,
            // Until completed, an operation's outcome is unknown.
            outcome: Outcome::Info,
            invoke_ns,
            complete_ns: None,
        });
        OpId(id)
    }

    /// Records the answer to `id`. Call it after the response arrived.
    pub fn complete(&self, id: OpId, completion: Completion) {
        let now = self.now_ns();
        let mut ops = self.lock();
        let Some(op) = ops.get_mut(id.0) else {
            return;
        };
        op.complete_ns = Some(now.max(op.invoke_ns));
        match completion {
            Completion::Ok(value) => {
                op.outcome = Outcome::Ok;
                if let OpKind::Read { value: seen } = &mut op.kind {
                    *seen = value;
                }
            }
            Completion::Fail => op.outcome = Outcome::Fail,
            Completion::Info => op.outcome = Outcome::Info,
        }
    }

    /// The history so far. Operations invoked but not completed are [`Outcome::Info`].
    pub fn history(&self) -> History {
        History {
            ops: self.lock().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_intervals_and_outcomes() {
        let r = Recorder::new();
        let w = r.invoke(1, "k", Call::Write("a".into()));
        let rd = r.invoke(2, "k", Call::Read);
        let lost = r.invoke(3, "k", Call::Write("b".into()));
        r.complete(w, Completion::Ok(None));
        r.complete(rd, Completion::Ok(Some("a".into())));
        let h = r.history();
        assert_eq!(h.ops.len(), 3);
        assert_eq!(h.ops[0].outcome, Outcome::Ok);
        assert!(h.ops[0].complete_ns >= Some(h.ops[0].invoke_ns));
        assert_eq!(
            h.ops[1].kind,
            OpKind::Read {
                value: Some("a".into())
            }
        );
        assert_eq!(h.ops[2].outcome, Outcome::Info, "never completed");
        assert_eq!(h.ops[2].id, lost.0 as u64);
        assert!(
            crate::check(&h, &crate::Limits::default())
                .expect("checks")
                .is_linearizable()
        );
    }

    #[test]
    fn is_shared_between_threads() {
        let r = std::sync::Arc::new(Recorder::new());
        let threads: Vec<_> = (0..4)
            .map(|c| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let id = r.invoke(c, "k", Call::Write(format!("{c}-{i}")));
                        r.complete(id, Completion::Fail);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(r.history().outcome_counts(), (0, 400, 0));
    }
}

//! Reads: the key's replicas asked, the answer chosen per mode, staleness, RYW.

use bulwark_core::{ReplicaState, Version};
use bulwark_obs::events::{Emit, RywViolation};
use bulwark_obs::metrics::metrics;
use futures::future::join_all;

use super::{Answers, Engine, ReadError, ReadResult, ReplicaView};
use crate::mode::Mode;
use crate::replicas::CallError;
use crate::staleness::{self, Observation};

impl Engine {
    /// The answer for `key` of each of `owners`, in their order; errors for the ones that
    /// did not answer.
    async fn read_all(
        &self,
        key: &[u8],
        owners: &[usize],
    ) -> Vec<(usize, Result<ReplicaState, CallError>)> {
        let calls = owners.iter().map(|&i| {
            let r = &self.set.replicas[i];
            async move { (i, self.set.call(r, "get", r.client.get(key)).await) }
        });
        join_all(calls).await
    }

    pub(super) async fn read_answers(&self, key: &[u8]) -> Option<Answers> {
        let answers: Answers = self
            .read_all(key, &self.routing.replicas(key))
            .await
            .into_iter()
            .filter_map(|(i, r)| r.ok().map(|s| (i, s)))
            .collect();
        (!answers.is_empty()).then_some(answers)
    }

    /// Reads `key` under `mode`. `required` is the session's own latest write of the key
    /// (read-your-writes), if any.
    ///
    /// `r` is the request's `?r=` (answers needed, already checked to be within
    /// `1..=N`; `None`: the mode's). With more than one answer needed, AP returns the
    /// newest of them rather than the preferred replica's.
    pub async fn read(
        &self,
        key: &[u8],
        mode: Mode,
        r: Option<usize>,
        required: Option<Version>,
        request_id: &str,
    ) -> Result<ReadResult, ReadError> {
        let owners = self.routing.replicas(key);
        let results = self.read_all(key, &owners).await;
        let now_ms = self.hlc.now_ms();
        let mut answers: Answers = Vec::new();
        let mut errors: Vec<Option<String>> = Vec::new();
        for (i, r) in results {
            match r {
                Ok(state) => {
                    if let Some(c) = &state.committed {
                        self.hlc.observe(c.version);
                    }
                    answers.push((i, state));
                    errors.push(None);
                }
                Err(e) => errors.push(Some(e.to_string())),
            }
        }
        let needed = r
            .unwrap_or_else(|| mode.read_quorum(owners.len()))
            .clamp(1, owners.len());
        if answers.len() < needed {
            let failed: Vec<String> = owners
                .iter()
                .zip(&errors)
                .filter_map(|(&i, e)| {
                    e.as_ref()
                        .map(|e| format!("{}: {e}", self.set.replicas[i].name()))
                })
                .collect();
            return Err(ReadError::Unavailable(format!(
                "{} of {} replicas answered; {mode} reads need {needed} ({})",
                answers.len(),
                owners.len(),
                failed.join("; ")
            )));
        }

        // Choose what to return.
        let best = answers
            .iter()
            .filter_map(|(i, s)| s.committed.as_ref().map(|c| (*i, c)))
            .max_by_key(|(i, c)| (c.version, std::cmp::Reverse(*i)));
        let (source, record) = match mode {
            Mode::Ap if needed > 1 => {
                best.map_or((answers[0].0, None), |(i, c)| (i, Some(c.clone())))
            }
            Mode::Ap => {
                // The preferred (first) answering replica, unless it misses the session's
                // own write and another one has it (SPEC CAP-7).
                let satisfies =
                    |s: &ReplicaState| required.is_none_or(|v| s.committed_version() >= v);
                let pick = answers
                    .iter()
                    .find(|(_, s)| satisfies(s))
                    .map(|(i, s)| (*i, s.committed.clone()));
                match pick {
                    Some(p) => p,
                    None => best.map_or((answers[0].0, None), |(i, c)| (i, Some(c.clone()))),
                }
            }
            Mode::Cp | Mode::Quorum => {
                let max = best.map(|(_, c)| c.version).unwrap_or(Version::ZERO);
                self.check_undecided(&answers, max)?;
                best.map_or((answers[0].0, None), |(i, c)| (i, Some(c.clone())))
            }
        };

        // Staleness of every replica.
        let observations: Vec<Observation> = owners
            .iter()
            .map(|&i| Observation {
                held: answers
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, s)| s.committed_version()),
                missed: self
                    .hints
                    .get(i, key)
                    .map(|h| vec![h.oldest, h.latest])
                    .unwrap_or_default(),
            })
            .collect();
        let stale = staleness::compute(&observations, now_ms);
        let status = staleness::status(&stale, self.config.max_staleness_ms);
        let m = metrics();
        let replicas = owners
            .iter()
            .map(|&i| &self.set.replicas[i])
            .zip(&stale)
            .zip(observations.iter().map(|o| o.held))
            .zip(errors)
            .map(|(((r, s), held), error)| {
                if let Some(ms) = s.ms {
                    m.data_staleness_ms
                        .with_label_values(&[r.name()])
                        .set(ms as i64);
                }
                ReplicaView {
                    index: r.index,
                    name: r.name().to_string(),
                    reachable: s.reachable,
                    version: held.filter(|v| *v != Version::ZERO),
                    staleness_ms: s.ms,
                    error,
                }
            })
            .collect();

        let returned = record.as_ref().map_or(Version::ZERO, |r| r.version);
        let ryw_consistent = required.is_none_or(|v| returned >= v);
        if !ryw_consistent {
            RywViolation {
                request_id,
                mode: mode.as_str(),
                key: &String::from_utf8_lossy(key),
                required: &required.unwrap_or_default().to_string(),
                seen: &returned.to_string(),
            }
            .emit();
        }
        self.repair(key, answers);
        Ok(ReadResult {
            record,
            source: Some(self.set.replicas[source].name().to_string()),
            replicas,
            status,
            ryw_consistent,
        })
    }

    /// For a CP/quorum read returning version `max`: every undecided write above `max`
    /// must be known not to be committed, which only its coordinator can tell.
    fn check_undecided(&self, answers: &Answers, max: Version) -> Result<(), ReadError> {
        for (_, state) in answers {
            for p in state.pending.iter().filter(|p| p.version > max) {
                let coordinator = self
                    .set
                    .replicas
                    .iter()
                    .position(|r| r.name() == p.coordinator);
                let coordinator_answered =
                    coordinator.is_some_and(|c| answers.iter().any(|(i, _)| *i == c));
                // If the coordinator answered, its committed version is ≤ max < p (max is
                // over all answers), so p was not committed when it answered.
                if !coordinator_answered {
                    return Err(ReadError::Unavailable(format!(
                        "an undecided write (version {}) cannot be resolved: its coordinator {} did not answer",
                        p.version, p.coordinator
                    )));
                }
            }
        }
        Ok(())
    }
}

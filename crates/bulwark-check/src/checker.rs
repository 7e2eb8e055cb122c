//! Linearizability of single-key registers: the Wing–Gong search with Lowe's memoization,
//! in the form Porcupine uses (a linked list of call/return entries, lifted out as
//! operations are linearized and put back when the search backtracks).
//!
//! The search, for one key: walk the entries in time order. At a call entry, try to
//! linearize that operation now (apply it to the register); if the model accepts it and
//! the resulting (set of linearized operations, register value) was never seen before,
//! remove its call and return entries and restart from the first remaining entry. At a
//! return entry, the operation it belongs to had to be linearized already: undo the last
//! choice and try the next candidate. The history is linearizable when every entry is
//! removed, and is not when there is nothing left to undo.
//!
//! Outcomes are folded in before the search:
//!
//! * a `Fail` operation never happened: dropped;
//! * an `Info` read constrains nothing (its result is unknown): dropped;
//! * an `Info` write may take effect at any time after its invoke, or never: its return
//!   entry is put at +∞. "Never" needs no special case, since a write can always be
//!   linearized after everything else. An `Info` write whose value no read observed is
//!   dropped: it can be removed from any linearization (no read sits between it and the
//!   next write, as such a read would observe its value), so it cannot change the verdict
//!   and would only multiply the states to search.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::history::{History, Op, OpKind, Outcome, show};

/// Bounds on the search, so a pathological history ends in an error instead of a hang.
///
/// The search is exponential in the worst case (many operations concurrent with each
/// other). The state budget bounds time and the operation cap bounds the size of each
/// memoized state (one bit per operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Operations of one key that take part in the search (after dropping failed
    /// operations, unknown reads and unobserved unknown writes).
    pub max_ops_per_key: usize,
    /// Distinct (linearized set, value) states memoized for one key.
    pub max_states_per_key: usize,
}

impl Default for Limits {
    /// 4096 operations and 500 000 states: at most about 256 MiB of memo for one key,
    /// seconds of search. Histories of a few clients on a few keys stay far below.
    fn default() -> Self {
        Limits {
            max_ops_per_key: 4096,
            max_states_per_key: 500_000,
        }
    }
}

/// Why a history could not be checked (as opposed to: checked and found wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// An operation is malformed.
    #[error("operation #{id} is invalid: {reason}")]
    InvalidOp {
        /// Its id.
        id: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Too many operations on one key for the search.
    #[error("key {key:?} has {ops} operations to check; the limit is {limit}")]
    TooManyOps {
        /// The key.
        key: String,
        /// Its operations after filtering.
        ops: usize,
        /// [`Limits::max_ops_per_key`].
        limit: usize,
    },
    /// The search for one key visited more states than allowed.
    #[error("key {key:?}: search exceeded {limit} states ({ops} operations)")]
    SearchBudgetExceeded {
        /// The key.
        key: String,
        /// Its operations after filtering.
        ops: usize,
        /// [`Limits::max_states_per_key`].
        limit: usize,
    },
}

/// Why one key's history has no linearization, around the point where the search got
/// stuck furthest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterExample {
    /// The key.
    pub key: String,
    /// One-sentence explanation.
    pub summary: String,
    /// How many operations the longest linearizable prefix found has.
    pub linearized: usize,
    /// The end of that prefix (at most [`PREFIX_SHOWN`] operations), in linearization
    /// order.
    pub prefix_tail: Vec<Op>,
    /// The register value after that prefix (`None`: absent).
    pub state: Option<String>,
    /// The operation that completed before anything else could be linearized.
    pub blocking: Option<Op>,
    /// The operations that could have gone next in real-time order. Each was refused by
    /// the register (a read of another value), or led to a dead end further on.
    pub candidates: Vec<Op>,
}

/// Operations of the prefix shown in a counter-example.
pub const PREFIX_SHOWN: usize = 8;

impl fmt::Display for CounterExample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?} is not linearizable: {}",
            self.key, self.summary
        )?;
        writeln!(
            f,
            "  longest linearizable prefix: {} operations; it ends with:",
            self.linearized
        )?;
        for op in &self.prefix_tail {
            writeln!(f, "    {op}")?;
        }
        writeln!(f, "  register after it: {}", show(self.state.as_deref()))?;
        if let Some(b) = &self.blocking {
            writeln!(
                f,
                "  this operation completed before any candidate could take effect:"
            )?;
            writeln!(f, "    {b}")?;
        }
        writeln!(
            f,
            "  candidates to go next (none leads to a linearization):"
        )?;
        for op in &self.candidates {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation(Box<CounterExample>),
}

/// One key's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations on the key in the history.
    pub ops: usize,
    /// Operations that took part in the search (the rest were failed, unknown reads, or
    /// unobserved unknown writes).
    pub searched: usize,
    /// States memoized.
    pub states: usize,
    /// The verdict.
    pub outcome: KeyOutcome,
}

/// The result of checking a whole history, key by key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// One entry per key, in key order.
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// Whether every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.violations().next().is_none()
    }

    /// The counter-examples, one per non-linearizable key.
    pub fn violations(&self) -> impl Iterator<Item = &CounterExample> {
        self.keys.iter().filter_map(|k| match &k.outcome {
            KeyOutcome::Violation(c) => Some(c.as_ref()),
            KeyOutcome::Linearizable => None,
        })
    }
}

/// Checks that each key of `history` behaves as a linearizable register that starts
/// absent.
pub fn check(history: &History, limits: &Limits) -> Result<Report, CheckError> {
    for op in &history.ops {
        validate(op)?;
    }
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, limits))
        .collect::<Result<_, _>>()?;
    Ok(Report { keys })
}

fn validate(op: &Op) -> Result<(), CheckError> {
    let invalid = |reason: &str| CheckError::InvalidOp {
        id: op.id,
        reason: reason.to_string(),
    };
    match (op.outcome, op.complete_ns) {
        (Outcome::Ok | Outcome::Fail, None) => {
            Err(invalid("a definite outcome needs a completion time"))
        }
        (Outcome::Ok | Outcome::Fail, Some(c)) if c < op.invoke_ns => {
            Err(invalid("completes before its invoke"))
        }
        _ => Ok(()),
    }
}

/// The register, with values interned: 0 is absent, `i + 1` is `values[i]`.
type State = u32;
const ABSENT: State = 0;

/// An operation as the search sees it.
#[derive(Debug, Clone, Copy)]
struct SOp {
    /// Index into the key's operations.
    op: usize,
    /// `true`: write `value`; `false`: read that observed `value`.
    write: bool,
    value: State,
}

fn check_key(key: &str, ops: &[&Op], limits: &Limits) -> Result<KeyReport, CheckError> {
    let observed: HashSet<Option<&str>> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| match &o.kind {
            OpKind::Read { value } => Some(value.as_deref()),
            OpKind::Write { .. } => None,
        })
        .collect();
    let mut values: HashMap<&str, State> = HashMap::new();
    let mut names: Vec<Option<&str>> = vec![None];
    // Writes that may have happened intern their values first, so an unknown value read
    // is detected below.
    let mut searched: Vec<SOp> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let OpKind::Write { value } = &op.kind {
            let keep = match op.outcome {
                Outcome::Ok => true,
                Outcome::Info => observed.contains(&Some(value.as_str())),
                Outcome::Fail => false,
            };
            if keep {
                let next = names.len() as State;
                let s = *values.entry(value.as_str()).or_insert_with(|| {
                    names.push(Some(value.as_str()));
                    next
                });
                searched.push(SOp {
                    op: i,
                    write: true,
                    value: s,
                });
            }
        }
    }
    for (i, op) in ops.iter().enumerate() {
        let OpKind::Read { value } = &op.kind else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let s = match value {
            None => ABSENT,
            Some(v) => match values.get(v.as_str()) {
                Some(s) => *s,
                None => return Ok(never_written(key, ops, op, v)),
            },
        };
        searched.push(SOp {
            op: i,
            write: false,
            value: s,
        });
    }
    if searched.len() > limits.max_ops_per_key {
        return Err(CheckError::TooManyOps {
            key: key.to_string(),
            ops: searched.len(),
            limit: limits.max_ops_per_key,
        });
    }
    let mut search = Search::new(ops, &searched);
    let outcome =
        search
            .run(limits.max_states_per_key)
            .map_err(|()| CheckError::SearchBudgetExceeded {
                key: key.to_string(),
                ops: searched.len(),
                limit: limits.max_states_per_key,
            })?;
    let outcome = match outcome {
        true => KeyOutcome::Linearizable,
        false => KeyOutcome::Violation(Box::new(
            search.counter_example(key, ops, &searched, &names),
        )),
    };
    Ok(KeyReport {
        key: key.to_string(),
        ops: ops.len(),
        searched: searched.len(),
        states: search.memo.len(),
        outcome,
    })
}

/// The counter-example for a read of a value no write that may have happened wrote.
fn never_written(key: &str, ops: &[&Op], read: &Op, value: &str) -> KeyReport {
    let failed: Vec<Op> = ops
        .iter()
        .filter(|o| matches!(&o.kind, OpKind::Write { value: w } if w == value))
        .map(|o| (*o).clone())
        .collect();
    let summary = if failed.is_empty() {
        format!("read #{} observed {value:?}, which no write wrote", read.id)
    } else {
        format!(
            "read #{} observed {value:?}, which only failed writes (definitely not applied) wrote",
            read.id
        )
    };
    KeyReport {
        key: key.to_string(),
        ops: ops.len(),
        searched: 0,
        states: 0,
        outcome: KeyOutcome::Violation(Box::new(CounterExample {
            key: key.to_string(),
            summary,
            linearized: 0,
            prefix_tail: Vec::new(),
            state: None,
            blocking: Some(read.clone()),
            candidates: failed,
        })),
    }
}

/// No entry (end of the list).
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

/// The deepest point the search reached before getting stuck.
#[derive(Debug, Default)]
struct Stuck {
    /// Operations linearized (indices into `searched`), in order.
    prefix: Vec<usize>,
    state: State,
    /// The operation whose return entry stopped the search.
    blocking: usize,
    /// Operations whose call entries preceded that return entry.
    candidates: Vec<usize>,
}

/// The WGL search over one key's operations.
struct Search<'a> {
    searched: &'a [SOp],
    /// Entry `e` (1-based; 0 is the head) belongs to operation `entry_op[e]`.
    entry_op: Vec<usize>,
    /// Whether entry `e` is a call.
    is_call: Vec<bool>,
    /// For a call entry, its return entry.
    matching: Vec<usize>,
    prev: Vec<usize>,
    next: Vec<usize>,
    memo: HashSet<(Box<[u64]>, State)>,
    stuck: Option<Stuck>,
}

impl<'a> Search<'a> {
    fn new(ops: &[&Op], searched: &'a [SOp]) -> Self {
        // (time, 0 for call / 1 for return, operation): at equal times calls come first,
        // which treats touching intervals as concurrent (the permissive reading).
        let mut entries: Vec<(u64, u8, usize)> = Vec::with_capacity(searched.len() * 2);
        for (i, s) in searched.iter().enumerate() {
            let op = ops[s.op];
            let ret = match op.outcome {
                Outcome::Info => u64::MAX,
                _ => op.complete_ns.unwrap_or(u64::MAX),
            };
            entries.push((op.invoke_ns, 0, i));
            entries.push((ret, 1, i));
        }
        entries.sort_unstable();
        let m = entries.len();
        let mut entry_op = vec![NIL; m + 1];
        let mut is_call = vec![false; m + 1];
        let mut matching = vec![NIL; m + 1];
        let mut call_of = vec![NIL; searched.len()];
        for (k, (_, kind, i)) in entries.iter().enumerate() {
            let e = k + 1;
            entry_op[e] = *i;
            if *kind == 0 {
                is_call[e] = true;
                call_of[*i] = e;
            } else {
                matching[call_of[*i]] = e;
            }
        }
        let prev = (0..=m).map(|e| if e == 0 { NIL } else { e - 1 }).collect();
        let next = (0..=m).map(|e| if e == m { NIL } else { e + 1 }).collect();
        Search {
            searched,
            entry_op,
            is_call,
            matching,
            prev,
            next,
            memo: HashSet::new(),
            stuck: None,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.matching[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.matching[call]);
        self.relink(call);
    }

    /// `Ok(true)`: linearizable; `Ok(false)`: not; `Err(())`: more than `budget` states.
    fn run(&mut self, budget: usize) -> Result<bool, ()> {
        let words = self.searched.len().div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut state: State = ABSENT;
        // (call entry, state before it) for each linearized operation, in order.
        let mut calls: Vec<(usize, State)> = Vec::new();
        let mut entry = self.next[HEAD];
        while self.next[HEAD] != NIL {
            if entry == NIL {
                // Cannot happen: a call's return entry follows it. Treat as stuck.
                return Ok(false);
            }
            let i = self.entry_op[entry];
            if self.is_call[entry] {
                let s = self.searched[i];
                let accepted = if s.write {
                    Some(s.value)
                } else {
                    (s.value == state).then_some(state)
                };
                if let Some(after) = accepted {
                    linearized[i / 64] |= 1 << (i % 64);
                    if self
                        .memo
                        .insert((linearized.clone().into_boxed_slice(), after))
                    {
                        if self.memo.len() > budget {
                            return Err(());
                        }
                        calls.push((entry, state));
                        state = after;
                        self.lift(entry);
                        entry = self.next[HEAD];
                        continue;
                    }
                    linearized[i / 64] &= !(1 << (i % 64));
                }
                entry = self.next[entry];
            } else {
                self.note_stuck(&calls, state, entry);
                let Some((call, before)) = calls.pop() else {
                    return Ok(false);
                };
                let j = self.entry_op[call];
                linearized[j / 64] &= !(1 << (j % 64));
                state = before;
                self.unlift(call);
                entry = self.next[call];
            }
        }
        Ok(true)
    }

    /// Remembers the deepest point where the search had to backtrack.
    fn note_stuck(&mut self, calls: &[(usize, State)], state: State, ret: usize) {
        if self
            .stuck
            .as_ref()
            .is_some_and(|s| s.prefix.len() >= calls.len())
        {
            return;
        }
        let mut candidates = Vec::new();
        let mut e = self.next[HEAD];
        while e != NIL && e != ret {
            if self.is_call[e] {
                candidates.push(self.entry_op[e]);
            }
            e = self.next[e];
        }
        self.stuck = Some(Stuck {
            prefix: calls.iter().map(|(c, _)| self.entry_op[*c]).collect(),
            state,
            blocking: self.entry_op[ret],
            candidates,
        });
    }

    fn counter_example(
        &self,
        key: &str,
        ops: &[&Op],
        searched: &[SOp],
        names: &[Option<&str>],
    ) -> CounterExample {
        let op = |i: usize| ops[searched[i].op].clone();
        let Some(stuck) = &self.stuck else {
            return CounterExample {
                key: key.to_string(),
                summary: "no operation can be linearized first".into(),
                linearized: 0,
                prefix_tail: Vec::new(),
                state: None,
                blocking: None,
                candidates: Vec::new(),
            };
        };
        let state = names
            .get(stuck.state as usize)
            .copied()
            .flatten()
            .map(str::to_string);
        let blocking = op(stuck.blocking);
        let summary = match &blocking.kind {
            OpKind::Read { value } => format!(
                "read #{} returned {}, but no order of the operations invoked before it completed, \
                 consistent with real time, leaves the register holding that (the furthest \
                 one reached leaves {})",
                blocking.id,
                show(value.as_deref()),
                show(state.as_deref()),
            ),
            OpKind::Write { value } => format!(
                "write #{} of {value:?} completed, but no order of the operations invoked before \
                 it completed lets it take effect while every read sees what it saw",
                blocking.id
            ),
        };
        let from = stuck.prefix.len().saturating_sub(PREFIX_SHOWN);
        CounterExample {
            key: key.to_string(),
            summary,
            linearized: stuck.prefix.len(),
            prefix_tail: stuck.prefix[from..].iter().map(|i| op(*i)).collect(),
            state,
            blocking: Some(blocking),
            candidates: stuck.candidates.iter().map(|i| op(*i)).collect(),
        }
    }
}

//! The checker on hand-made histories whose verdict is known, and on generated valid
//! histories.

use bulwark_check::{CheckError, History, KeyOutcome, Limits, Op, OpKind, Outcome, check};

/// Builds histories with readable times (in ms; stored in ns).
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

impl H {
    fn push(
        &mut self,
        client: u64,
        key: &str,
        kind: OpKind,
        outcome: Outcome,
        from: u64,
        to: Option<u64>,
    ) -> &mut Self {
        let id = self.ops.len() as u64;
        self.ops.push(Op {
            id,
            client,
            key: key.into(),
            kind,
            outcome,
            invoke_ns: from * 1_000_000,
            complete_ns: to.map(|t| t * 1_000_000),
        });
        self
    }
    fn write(&mut self, client: u64, value: &str, from: u64, to: u64) -> &mut Self {
        self.push(
            client,
            "k",
            OpKind::Write {
                value: value.into(),
            },
            Outcome::Ok,
            from,
            Some(to),
        )
    }
    fn write_failed(&mut self, client: u64, value: &str, from: u64, to: u64) -> &mut Self {
        self.push(
            client,
            "k",
            OpKind::Write {
                value: value.into(),
            },
            Outcome::Fail,
            from,
            Some(to),
        )
    }
    fn write_unknown(&mut self, client: u64, value: &str, from: u64) -> &mut Self {
        self.push(
            client,
            "k",
            OpKind::Write {
                value: value.into(),
            },
            Outcome::Info,
            from,
            None,
        )
    }
    fn read(&mut self, client: u64, value: Option<&str>, from: u64, to: u64) -> &mut Self {
        let kind = OpKind::Read {
            value: value.map(str::to_string),
        };
        self.push(client, "k", kind, Outcome::Ok, from, Some(to))
    }
    fn history(&self) -> History {
        History {
            ops: self.ops.clone(),
        }
    }
    fn linearizable(&self) -> bool {
        let report = check(&self.history(), &Limits::default()).expect("history can be checked");
        for c in report.violations() {
            eprintln!("{c}");
        }
        report.is_linearizable()
    }
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert!(H::default().linearizable());
    let mut h = H::default();
    h.read(1, None, 0, 1)
        .write(1, "a", 2, 3)
        .read(2, Some("a"), 4, 5)
        .write(2, "b", 6, 7)
        .read(1, Some("b"), 8, 9);
    assert!(h.linearizable());
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [Some("a"), Some("b")] {
        let mut h = H::default();
        h.write(1, "a", 0, 1)
            .write(1, "b", 2, 10)
            .read(2, seen, 3, 5);
        assert!(h.linearizable(), "concurrent read saw {seen:?}");
    }
    // Two reads during the write: once one sees the new value, a later one cannot see
    // the old one.
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write(1, "b", 2, 20)
        .read(2, Some("b"), 3, 5)
        .read(3, Some("a"), 6, 8);
    assert!(
        !h.linearizable(),
        "new-then-old inside one write is not linearizable"
    );
}

#[test]
fn a_stale_read_after_a_completed_write_is_a_violation() {
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write(1, "b", 2, 3)
        .read(2, Some("a"), 4, 5);
    let report = check(&h.history(), &Limits::default()).expect("checks");
    let c = report.violations().next().expect("a violation");
    eprintln!("{c}");
    assert_eq!(c.key, "k");
    assert_eq!(c.blocking.as_ref().map(|o| o.id), Some(2), "the stale read");
    assert_eq!(c.state.as_deref(), Some("b"));
    assert!(
        c.to_string().contains("#2 client 2 read(k) -> \"a\" ok"),
        "{c}"
    );
}

#[test]
fn reading_the_value_of_a_failed_write_is_a_violation() {
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write_failed(1, "b", 2, 3)
        .read(2, Some("b"), 4, 5);
    let report = check(&h.history(), &Limits::default()).expect("checks");
    let c = report.violations().next().expect("a violation");
    assert!(c.summary.contains("only failed writes"), "{c}");
    assert_eq!(c.candidates.len(), 1, "names the failed write: {c}");
    // Failed writes that nobody observes change nothing.
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write_failed(1, "b", 2, 3)
        .read(2, Some("a"), 4, 5);
    assert!(h.linearizable());
}

#[test]
fn an_unknown_write_may_take_effect_late() {
    // Seen long after the client gave up on it.
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write_unknown(1, "b", 2)
        .read(2, Some("a"), 10, 11)
        .read(2, Some("b"), 50, 51)
        .read(3, Some("b"), 60, 61);
    assert!(h.linearizable());
    // But once seen it stays, until another write.
    h.read(2, Some("a"), 70, 71);
    assert!(!h.linearizable());
}

#[test]
fn an_unknown_write_may_never_take_effect() {
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write_unknown(1, "b", 2)
        .read(2, Some("a"), 10, 11)
        .write(3, "c", 20, 21)
        .read(2, Some("c"), 30, 31);
    assert!(h.linearizable());
    let report = check(&h.history(), &Limits::default()).expect("checks");
    assert_eq!(
        report.keys[0].searched, 4,
        "the unobserved unknown write is not searched"
    );
}

#[test]
fn an_unknown_write_cannot_take_effect_before_its_invoke() {
    let mut h = H::default();
    h.read(2, Some("b"), 0, 1).write_unknown(1, "b", 5);
    assert!(!h.linearizable());
}

#[test]
fn a_value_nobody_wrote_is_a_violation() {
    let mut h = H::default();
    h.write(1, "a", 0, 1).read(2, Some("z"), 2, 3);
    let report = check(&h.history(), &Limits::default()).expect("checks");
    let c = report.violations().next().expect("a violation");
    assert!(c.summary.contains("no write wrote"), "{c}");
}

#[test]
fn absent_after_a_write_is_a_violation() {
    let mut h = H::default();
    h.write(1, "a", 0, 1).read(2, None, 2, 3);
    assert!(!h.linearizable());
}

#[test]
fn keys_are_checked_independently() {
    let mut h = H::default();
    h.push(
        1,
        "x",
        OpKind::Write { value: "1".into() },
        Outcome::Ok,
        0,
        Some(1),
    )
    .push(
        1,
        "y",
        OpKind::Read { value: None },
        Outcome::Ok,
        2,
        Some(3),
    )
    .push(
        2,
        "y",
        OpKind::Write { value: "1".into() },
        Outcome::Ok,
        4,
        Some(5),
    )
    .push(
        2,
        "x",
        OpKind::Read { value: None },
        Outcome::Ok,
        6,
        Some(7),
    );
    let report = check(&h.history(), &Limits::default()).expect("checks");
    assert_eq!(report.keys.len(), 2);
    assert_eq!(
        report.keys[0].outcome,
        KeyOutcome::Violation(Box::new(report.violations().next().expect("x").clone()))
    );
    assert_eq!(report.keys[0].key, "x", "x was written, then read absent");
    assert_eq!(report.keys[1].outcome, KeyOutcome::Linearizable);
}

#[test]
fn malformed_and_oversized_histories_are_errors() {
    let mut h = H::default();
    h.push(
        1,
        "k",
        OpKind::Write { value: "a".into() },
        Outcome::Ok,
        5,
        None,
    );
    assert!(matches!(
        check(&h.history(), &Limits::default()),
        Err(CheckError::InvalidOp { id: 0, .. })
    ));
    let mut h = H::default();
    for i in 0..10 {
        h.write(1, &i.to_string(), 2 * i, 2 * i + 1);
    }
    let small = Limits {
        max_ops_per_key: 5,
        ..Limits::default()
    };
    assert!(matches!(
        check(&h.history(), &small),
        Err(CheckError::TooManyOps {
            ops: 10,
            limit: 5,
            ..
        })
    ));
}

#[test]
fn the_state_budget_stops_a_hopeless_search() {
    // 40 writes all concurrent with each other and with a final read of a value, followed by a
    // read that contradicts it: the search must try many orders before giving up.
    let mut h = H::default();
    for i in 0..40 {
        h.write(i, &format!("v{i}"), 0, 100);
    }
    for i in 0..40 {
        h.read(100 + i, Some(&format!("v{i}")), 0, 100);
    }
    h.read(200, None, 200, 201);
    let tight = Limits {
        max_states_per_key: 10_000,
        ..Limits::default()
    };
    assert!(matches!(
        check(&h.history(), &tight),
        Err(CheckError::SearchBudgetExceeded { limit: 10_000, .. })
    ));
}

#[test]
fn histories_round_trip_through_json() {
    let mut h = H::default();
    h.write(1, "a", 0, 1)
        .write_unknown(2, "b", 1)
        .read(3, None, 0, 1);
    let text = serde_json::to_string(&h.history()).expect("serializes");
    let back: History = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, h.history());
}

/// splitmix64: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A valid history: `clients` clients each issue `per_client` operations one after
/// another on `keys` keys, with random overlapping intervals; each operation takes
/// effect at a random instant inside its interval, applied in that order to a sequential
/// register to fill in what reads saw. Some writes fail (never applied) and some are
/// unknown (applied or not; the client stops waiting).
fn generate(seed: u64, clients: u64, per_client: u64, keys: u64) -> History {
    let mut rng = Rng(seed);
    // (effect time, op index, applied)
    let mut effects: Vec<(u64, usize, bool)> = Vec::new();
    let mut ops = Vec::new();
    for c in 0..clients {
        let mut t = rng.below(50);
        for n in 0..per_client {
            let key = format!("k{}", rng.below(keys));
            let invoke = t;
            let complete = invoke + 1 + rng.below(200);
            let effect = invoke + rng.below(complete - invoke + 1);
            let write = rng.below(2) == 0;
            let roll = rng.below(20);
            let outcome = if write && roll == 0 {
                Outcome::Fail
            } else if write && roll == 1 {
                Outcome::Info
            } else {
                Outcome::Ok
            };
            let kind = if write {
                OpKind::Write {
                    value: format!("c{c}-{n}"),
                }
            } else {
                OpKind::Read { value: None }
            };
            let applied = match outcome {
                Outcome::Ok => true,
                Outcome::Fail => false,
                Outcome::Info => rng.below(2) == 0,
            };
            // An unknown write may take effect long after the client gave up.
            let effect = if outcome == Outcome::Info {
                effect + rng.below(2000)
            } else {
                effect
            };
            effects.push((effect, ops.len(), applied));
            ops.push(Op {
                id: ops.len() as u64,
                client: c,
                key,
                kind,
                outcome,
                invoke_ns: invoke,
                complete_ns: (outcome != Outcome::Info).then_some(complete),
            });
            t = complete + rng.below(20);
        }
    }
    effects.sort_unstable();
    let mut registers: std::collections::HashMap<String, String> = Default::default();
    for (_, i, applied) in effects {
        let op = &mut ops[i];
        match &mut op.kind {
            OpKind::Write { value } if applied => {
                registers.insert(op.key.clone(), value.clone());
            }
            OpKind::Write { .. } => {}
            OpKind::Read { value } => *value = registers.get(&op.key).cloned(),
        }
    }
    History { ops }
}

#[test]
fn generated_valid_histories_pass_quickly() {
    for seed in 0..20 {
        let h = generate(seed, 8, 150, 3);
        let started = std::time::Instant::now();
        let report = check(&h, &Limits::default()).expect("checks");
        for c in report.violations() {
            eprintln!("seed {seed}: {c}");
        }
        assert!(report.is_linearizable(), "seed {seed}");
        let states: usize = report.keys.iter().map(|k| k.states).sum();
        eprintln!(
            "seed {seed}: {} ops, {states} states, {:?}",
            h.ops.len(),
            started.elapsed()
        );
    }
}

#[test]
fn a_single_stale_read_in_a_generated_history_is_found() {
    let mut injected = 0;
    for seed in 0..20 {
        let mut h = generate(seed, 8, 150, 3);
        // Make the last successful read that saw a value on some key see the value its
        // key held before instead: a read that went back in time.
        let Some(i) = h.ops.iter().rposition(|o| {
            o.outcome == Outcome::Ok && matches!(&o.kind, OpKind::Read { value: Some(_) })
        }) else {
            continue;
        };
        let key = h.ops[i].key.clone();
        let invoke = h.ops[i].invoke_ns;
        // The first write of the key that completed before anything else: i.e. a value
        // overwritten long ago by an acknowledged write that completed before this read.
        let old = h
            .ops
            .iter()
            .filter(|o| o.key == key && o.outcome == Outcome::Ok)
            .find_map(|o| match &o.kind {
                OpKind::Write { value } => Some((value.clone(), o.complete_ns.unwrap_or(0))),
                OpKind::Read { .. } => None,
            });
        let Some((old, done)) = old else { continue };
        let overwritten = h.ops.iter().any(|o| {
            o.key == key
                && o.outcome == Outcome::Ok
                && matches!(&o.kind, OpKind::Write { value } if *value != old)
                && o.invoke_ns > done
                && o.complete_ns.is_some_and(|c| c < invoke)
        });
        if !overwritten {
            continue;
        }
        h.ops[i].kind = OpKind::Read { value: Some(old) };
        injected += 1;
        let report = check(&h, &Limits::default()).expect("checks");
        assert!(
            !report.is_linearizable(),
            "seed {seed}: stale read #{i} not detected"
        );
    }
    assert!(
        injected >= 10,
        "only {injected} of 20 histories had a stale read to inject"
    );
}

//! One toxic's effect on one direction of one connection, as a state machine without I/O.
//!
//! A [`Stage`] holds the items (data, end of stream, close) that entered it, each with the
//! time it may leave (`at`). Items leave in the order they entered, so `at` never decreases
//! along a stage's queue. The connection task moves items from stage to stage when they are
//! due and sleeps until the earliest `at` (see [`crate::link`]). No stage owns a task, a
//! timer or a channel: adding, updating or removing a toxic on a live connection is a
//! plain data-structure operation on the connection's own task, so no byte is lost or
//! reordered by it (see [`Stage::drain`]).
//!
//! Times are `tokio::time::Instant`, so the tests run with paused time.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::toxic::{Toxic, ToxicKind};

/// What flows through a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// Bytes of the stream.
    Data(Bytes),
    /// The source closed its sending side (FIN): shut down the destination's sending side
    /// once everything before it is written.
    Eof,
    /// Close the whole connection (both sockets, gracefully) once everything before it is
    /// written: `limit_data` reached its limit, `timeout` expired or was removed.
    Close,
}

impl Item {
    /// Bytes of data it carries (0 for markers).
    pub(crate) fn len(&self) -> usize {
        match self {
            Item::Data(b) => b.len(),
            Item::Eof | Item::Close => 0,
        }
    }
}

/// An item with its times.
#[derive(Clone, Debug)]
pub(crate) struct Timed {
    /// The item.
    pub item: Item,
    /// When it may leave the stage that holds it (when it entered, for an item in transit).
    pub at: Instant,
    /// When it entered the stage that holds it; an updated toxic re-schedules its items
    /// from here.
    pub arrived: Instant,
}

impl Timed {
    /// An item available now.
    pub(crate) fn new(item: Item, now: Instant) -> Timed {
        Timed {
            item,
            at: now,
            arrived: now,
        }
    }
}

/// What a stage does, with its per-connection state.
#[derive(Debug)]
enum Effect {
    /// The toxic's toxicity roll said no: items pass untouched.
    Pass,
    Latency {
        latency: u64,
        jitter: u64,
    },
    Bandwidth {
        /// Bytes per second.
        rate: u64,
        /// Bytes sent per piece (100 ms worth, as Toxiproxy).
        piece: usize,
        /// When the previous piece finished "transmitting".
        next_free: Instant,
    },
    SlowClose {
        delay: Duration,
    },
    Timeout {
        /// When the connection is closed (`None`: never).
        close_at: Option<Instant>,
        /// Whether the close was emitted (it is emitted once).
        closed: bool,
    },
    ResetPeer {
        timeout: Duration,
        /// Set by the first item: when the connection is reset.
        reset_at: Option<Instant>,
    },
    Slicer {
        average_size: usize,
        size_variation: usize,
        delay: Duration,
        next_free: Instant,
    },
    LimitData {
        limit: u64,
        /// Bytes let through so far on this connection; kept when the toxic is updated.
        sent: u64,
        /// The close was emitted; later data is dropped.
        closed: bool,
    },
}

/// A toxic's stage on one link (one direction of one connection).
#[derive(Debug)]
pub(crate) struct Stage {
    /// The toxic's [`Toxic::id`].
    pub id: u64,
    /// The toxic's [`Toxic::version`] this stage was built from.
    pub version: u64,
    effect: Effect,
    queue: VecDeque<Timed>,
    /// Data bytes in `queue`, for the link's buffer bound.
    bytes: usize,
    /// `at` of the last item queued: later items never leave before it.
    last_at: Instant,
}

impl Stage {
    /// The stage of `toxic` on a link, taking effect at `now`, or `None` for toxics that act
    /// on whole connections (`down`) or on HTTP requests (`http_fault`) rather than on
    /// a byte stream. The toxicity is rolled here, once.
    pub(crate) fn new(toxic: &Toxic, now: Instant, rng: &mut StdRng) -> Option<Stage> {
        let active = rng.random::<f32>() < toxic.toxicity;
        let effect = match &toxic.kind {
            ToxicKind::Down | ToxicKind::HttpFault(_) => return None,
            _ if !active => Effect::Pass,
            ToxicKind::Latency { latency, jitter } => Effect::Latency {
                latency: *latency,
                jitter: *jitter,
            },
            ToxicKind::Bandwidth { rate } => Effect::Bandwidth {
                rate: rate.saturating_mul(1000),
                piece: usize::try_from(rate.saturating_mul(100)).unwrap_or(usize::MAX),
                next_free: now,
            },
            ToxicKind::SlowClose { delay } => Effect::SlowClose {
                delay: Duration::from_millis(*delay),
            },
            ToxicKind::Timeout { timeout } => Effect::Timeout {
                close_at: (*timeout > 0).then(|| now + Duration::from_millis(*timeout)),
                closed: false,
            },
            ToxicKind::ResetPeer { timeout } => Effect::ResetPeer {
                timeout: Duration::from_millis(*timeout),
                reset_at: None,
            },
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => Effect::Slicer {
                average_size: usize::try_from(*average_size).unwrap_or(usize::MAX),
                size_variation: usize::try_from(*size_variation).unwrap_or(0),
                delay: Duration::from_micros(*delay),
                next_free: now,
            },
            ToxicKind::LimitData { bytes } => Effect::LimitData {
                limit: *bytes,
                sent: 0,
                closed: false,
            },
        };
        Some(Stage {
            id: toxic.id,
            version: toxic.version,
            effect,
            queue: VecDeque::new(),
            bytes: 0,
            last_at: now,
        })
    }

    /// Keeps the per-connection state that survives an update of the toxic: the bytes a
    /// `limit_data` already let through (as Toxiproxy keeps a stateful toxic's state).
    pub(crate) fn inherit(&mut self, old: &Stage) {
        if let (
            Effect::LimitData { sent, closed, .. },
            Effect::LimitData {
                sent: old_sent,
                closed: old_closed,
                ..
            },
        ) = (&mut self.effect, &old.effect)
        {
            *sent = *old_sent;
            *closed = *old_closed;
        }
    }

    /// Data bytes held.
    pub(crate) fn buffered(&self) -> usize {
        self.bytes
    }

    /// Whether removing this toxic must close the connection: a `timeout` dropped bytes,
    /// so the stream cannot go on (Toxiproxy closes it too).
    pub(crate) fn closes_on_removal(&self) -> bool {
        matches!(self.effect, Effect::Timeout { .. })
    }

    /// Whether the connection must be reset now (`reset_peer` expired).
    pub(crate) fn reset_due(&self, now: Instant) -> bool {
        matches!(self.effect, Effect::ResetPeer { reset_at: Some(at), .. } if at <= now)
    }

    /// The earliest time something changes without new input: an item becomes due, a
    /// timeout closes, a reset fires.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.effect {
            Effect::ResetPeer { reset_at, .. } => *reset_at,
            Effect::Timeout {
                close_at: Some(at),
                closed: false,
            } => Some(self.queue.front().map_or(*at, |t| t.at.min(*at))),
            _ => self.queue.front().map(|t| t.at),
        }
    }

    fn enqueue(&mut self, item: Item, at: Instant, arrived: Instant) {
        let at = at.max(self.last_at);
        self.last_at = at;
        self.bytes += item.len();
        self.queue.push_back(Timed { item, at, arrived });
    }

    /// Takes in an item that became available at `t.at`.
    pub(crate) fn push(&mut self, t: Timed, rng: &mut StdRng) {
        let arrived = t.at;
        match &mut self.effect {
            Effect::Pass => self.enqueue(t.item, arrived, arrived),
            Effect::Latency { latency, jitter } => {
                let delay = match t.item {
                    Item::Data(_) => {
                        let mut ms = i128::from(*latency);
                        if *jitter > 0 {
                            let j = i128::from(*jitter);
                            ms += i128::from(rng.random_range(0..2 * *jitter)) - j;
                        }
                        Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0))
                    }
                    // The end of the stream follows the data; it is not delayed itself.
                    Item::Eof | Item::Close => Duration::ZERO,
                };
                self.enqueue(t.item, arrived + delay, arrived);
            }
            Effect::Bandwidth {
                rate,
                piece,
                next_free,
            } => match t.item {
                Item::Data(data) => {
                    let (rate, piece) = (*rate, (*piece).max(1));
                    let mut start = arrived.max(*next_free);
                    let mut pieces = Vec::new();
                    let mut rest = data;
                    while !rest.is_empty() {
                        let part = rest.split_to(piece.min(rest.len()));
                        let nanos = (part.len() as u128 * 1_000_000_000) / u128::from(rate);
                        start += Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                        pieces.push((part, start));
                    }
                    *next_free = start;
                    for (part, at) in pieces {
                        self.enqueue(Item::Data(part), at, arrived);
                    }
                }
                other => self.enqueue(other, arrived, arrived),
            },
            Effect::SlowClose { delay } => {
                let at = match t.item {
                    Item::Data(_) => arrived,
                    Item::Eof | Item::Close => arrived + *delay,
                };
                self.enqueue(t.item, at, arrived);
            }
            Effect::Timeout { .. } => match t.item {
                // Blackholed: the bytes are dropped, as Toxiproxy does.
                Item::Data(_) => {}
                other => self.enqueue(other, arrived, arrived),
            },
            Effect::ResetPeer { timeout, reset_at } => {
                // The first item (data or end of stream) starts the countdown; items are
                // held, not forwarded, until the reset (or the toxic's removal).
                reset_at.get_or_insert(arrived + *timeout);
                self.bytes += t.item.len();
                self.queue.push_back(Timed {
                    item: t.item,
                    at: arrived,
                    arrived,
                });
            }
            Effect::Slicer {
                average_size,
                size_variation,
                delay,
                next_free,
            } => match t.item {
                Item::Data(data) => {
                    let mut cuts = Vec::new();
                    slice_points(
                        0,
                        data.len(),
                        *average_size,
                        *size_variation,
                        rng,
                        &mut cuts,
                    );
                    let mut at = arrived.max(*next_free);
                    let mut pieces = Vec::with_capacity(cuts.len());
                    for (a, b) in cuts {
                        pieces.push((data.slice(a..b), at));
                        at += *delay;
                    }
                    *next_free = at;
                    for (part, at) in pieces {
                        self.enqueue(Item::Data(part), at, arrived);
                    }
                }
                other => self.enqueue(other, arrived, arrived),
            },
            Effect::LimitData {
                limit,
                sent,
                closed,
            } => match t.item {
                Item::Data(mut data) => {
                    if *closed {
                        return;
                    }
                    // An update may lower the limit below what already went through.
                    let remaining = limit.saturating_sub(*sent);
                    if (data.len() as u64) > remaining {
                        data.truncate(usize::try_from(remaining).unwrap_or(0));
                    }
                    *sent += data.len() as u64;
                    let reached = *sent >= *limit;
                    if reached {
                        *closed = true;
                    }
                    if !data.is_empty() {
                        self.enqueue(Item::Data(data), arrived, arrived);
                    }
                    if reached {
                        self.enqueue(Item::Close, arrived, arrived);
                    }
                }
                other => self.enqueue(other, arrived, arrived),
            },
        }
    }

    /// The next item due at `now`, if any.
    pub(crate) fn pop(&mut self, now: Instant) -> Option<Timed> {
        match &mut self.effect {
            Effect::ResetPeer { .. } => return None,
            Effect::Timeout {
                close_at: Some(at),
                closed,
            } if !*closed && *at <= now => {
                *closed = true;
                let at = *at;
                return Some(Timed {
                    item: Item::Close,
                    at,
                    arrived: at,
                });
            }
            _ => {}
        }
        if self.queue.front().is_some_and(|t| t.at <= now) {
            let t = self.queue.pop_front()?;
            self.bytes -= t.item.len();
            Some(t)
        } else {
            None
        }
    }

    /// Empties the stage for the toxic's removal: every held item leaves now, in order
    /// (as Toxiproxy flushes an interrupted toxic's data rather than dropping it).
    pub(crate) fn drain_now(self, now: Instant) -> impl Iterator<Item = Timed> {
        self.queue.into_iter().map(move |mut t| {
            t.at = t.at.min(now);
            t
        })
    }

    /// Empties the stage for the toxic's update: held items are re-scheduled by the new
    /// version from when they arrived here.
    pub(crate) fn drain_for_update(self) -> impl Iterator<Item = Timed> {
        self.queue.into_iter().map(|mut t| {
            t.at = t.arrived;
            t
        })
    }
}

/// Toxiproxy's slicing: split `[start, end)` in about two halves (± the variation) until
/// each piece is at most `average + variation` long, so pieces vary evenly.
fn slice_points(
    start: usize,
    end: usize,
    average: usize,
    variation: usize,
    rng: &mut StdRng,
    out: &mut Vec<(usize, usize)>,
) {
    if end - start <= average + variation {
        if end > start {
            out.push((start, end));
        }
        return;
    }
    let half = (end - start) / 2;
    let mid = if variation > 0 {
        start + half + rng.random_range(0..2 * variation) - variation
    } else {
        start + half
    };
    slice_points(start, mid, average, variation, rng, out);
    slice_points(mid, end, average, variation, rng, out);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;

    use super::*;
    use crate::toxic::{Direction, SharedState};

    fn toxic(kind: ToxicKind) -> Toxic {
        Toxic {
            id: 1,
            version: 0,
            name: "t".into(),
            kind,
            stream: Direction::Downstream,
            toxicity: 1.0,
            shared: Arc::new(SharedState::default()),
        }
    }

    fn data(s: &str) -> Item {
        Item::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Pops everything due by `now`.
    fn due(stage: &mut Stage, now: Instant) -> Vec<Item> {
        std::iter::from_fn(|| stage.pop(now))
            .map(|t| t.item)
            .collect()
    }

    #[test]
    fn latency_holds_each_chunk_for_its_delay_from_arrival_in_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let kind = ToxicKind::Latency {
            latency: 100,
            jitter: 0,
        };
        let mut s = Stage::new(&toxic(kind), t0, &mut rng).expect("a data toxic");
        s.push(Timed::new(data("a"), t0), &mut rng);
        s.push(
            Timed::new(data("b"), t0 + Duration::from_millis(30)),
            &mut rng,
        );
        assert_eq!(s.deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(due(&mut s, t0 + Duration::from_millis(99)).is_empty());
        assert_eq!(due(&mut s, t0 + Duration::from_millis(100)), [data("a")]);
        assert_eq!(due(&mut s, t0 + Duration::from_millis(130)), [data("b")]);
    }

    #[test]
    fn jitter_stays_within_bounds_and_keeps_order() {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let kind = ToxicKind::Latency {
            latency: 100,
            jitter: 50,
        };
        let mut s = Stage::new(&toxic(kind), t0, &mut rng).expect("a data toxic");
        for _ in 0..200 {
            s.push(Timed::new(data("x"), t0), &mut rng);
        }
        let mut last = t0;
        let mut min = Duration::MAX;
        while let Some(t) = s.pop(t0 + Duration::from_secs(1)) {
            assert!(t.at >= last, "order kept");
            last = t.at;
            min = min.min(t.at - t0);
        }
        assert!(min >= Duration::from_millis(50));
        assert!(last - t0 < Duration::from_millis(150));
    }

    #[test]
    fn bandwidth_spreads_bytes_at_the_rate() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        // 1 KB/s: 1000 bytes take one second, sent in 100-byte pieces every 100 ms.
        let mut s = Stage::new(&toxic(ToxicKind::Bandwidth { rate: 1 }), t0, &mut rng)
            .expect("a data toxic");
        s.push(
            Timed::new(Item::Data(Bytes::from(vec![0u8; 1000])), t0),
            &mut rng,
        );
        let by_half = due(&mut s, t0 + Duration::from_millis(500));
        assert_eq!(by_half.iter().map(Item::len).sum::<usize>(), 500);
        let rest = due(&mut s, t0 + Duration::from_millis(1000));
        assert_eq!(rest.iter().map(Item::len).sum::<usize>(), 500);
    }

    #[test]
    fn slow_close_delays_only_the_end_of_stream() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = Stage::new(&toxic(ToxicKind::SlowClose { delay: 200 }), t0, &mut rng)
            .expect("a data toxic");
        s.push(Timed::new(data("a"), t0), &mut rng);
        s.push(Timed::new(Item::Eof, t0), &mut rng);
        assert_eq!(due(&mut s, t0), [data("a")]);
        assert!(due(&mut s, t0 + Duration::from_millis(199)).is_empty());
        assert_eq!(due(&mut s, t0 + Duration::from_millis(200)), [Item::Eof]);
    }

    #[test]
    fn timeout_drops_data_and_closes_when_it_expires() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = Stage::new(&toxic(ToxicKind::Timeout { timeout: 50 }), t0, &mut rng)
            .expect("a data toxic");
        s.push(Timed::new(data("lost"), t0), &mut rng);
        assert_eq!(s.buffered(), 0);
        assert!(due(&mut s, t0 + Duration::from_millis(49)).is_empty());
        assert_eq!(due(&mut s, t0 + Duration::from_millis(50)), [Item::Close]);
        assert!(
            due(&mut s, t0 + Duration::from_secs(5)).is_empty(),
            "closes once"
        );
        assert!(s.closes_on_removal());
    }

    #[test]
    fn reset_peer_fires_its_timeout_after_the_first_item_and_holds_data() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = Stage::new(&toxic(ToxicKind::ResetPeer { timeout: 20 }), t0, &mut rng)
            .expect("a data toxic");
        assert_eq!(s.deadline(), None);
        let t1 = t0 + Duration::from_millis(5);
        s.push(Timed::new(data("a"), t1), &mut rng);
        assert!(!s.reset_due(t1 + Duration::from_millis(19)));
        assert!(s.reset_due(t1 + Duration::from_millis(20)));
        assert!(due(&mut s, t1 + Duration::from_secs(1)).is_empty());
        let drained: Vec<Item> = s.drain_now(t1).map(|t| t.item).collect();
        assert_eq!(drained, [data("a")], "removal releases held data");
    }

    #[test]
    fn slicer_cuts_into_pieces_within_bounds_delay_apart() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let kind = ToxicKind::Slicer {
            average_size: 10,
            size_variation: 4,
            delay: 1000,
        };
        let mut s = Stage::new(&toxic(kind), t0, &mut rng).expect("a data toxic");
        let payload: Vec<u8> = (0..=255).collect();
        s.push(
            Timed::new(Item::Data(Bytes::from(payload.clone())), t0),
            &mut rng,
        );
        let mut joined = Vec::new();
        let mut times = Vec::new();
        while let Some(t) = s.pop(t0 + Duration::from_secs(1)) {
            let Item::Data(b) = t.item else {
                panic!("only data")
            };
            assert!(!b.is_empty() && b.len() <= 14, "piece of {}", b.len());
            joined.extend_from_slice(&b);
            times.push(t.at);
        }
        assert_eq!(joined, payload);
        assert!(times.len() > 10);
        for w in times.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(1));
        }
    }

    #[test]
    fn limit_data_passes_the_limit_then_closes_and_keeps_count_across_updates() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = Stage::new(&toxic(ToxicKind::LimitData { bytes: 5 }), t0, &mut rng)
            .expect("a data toxic");
        s.push(Timed::new(data("abc"), t0), &mut rng);
        assert_eq!(due(&mut s, t0), [data("abc")]);
        let mut updated = Stage::new(&toxic(ToxicKind::LimitData { bytes: 5 }), t0, &mut rng)
            .expect("a data toxic");
        updated.inherit(&s);
        updated.push(Timed::new(data("defgh"), t0), &mut rng);
        updated.push(Timed::new(data("ij"), t0), &mut rng);
        assert_eq!(due(&mut updated, t0), [data("de"), Item::Close]);

        // Lowered below what already went through: the next data closes at once.
        let mut lowered = Stage::new(&toxic(ToxicKind::LimitData { bytes: 2 }), t0, &mut rng)
            .expect("a data toxic");
        lowered.inherit(&s);
        lowered.push(Timed::new(data("x"), t0), &mut rng);
        assert_eq!(due(&mut lowered, t0), [Item::Close]);
    }

    #[test]
    fn toxicity_zero_passes_everything_untouched() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut t = toxic(ToxicKind::Timeout { timeout: 0 });
        t.toxicity = 0.0;
        let mut s = Stage::new(&t, t0, &mut rng).expect("a data toxic");
        s.push(Timed::new(data("a"), t0), &mut rng);
        assert_eq!(due(&mut s, t0), [data("a")]);
        assert!(!s.closes_on_removal());
    }
}

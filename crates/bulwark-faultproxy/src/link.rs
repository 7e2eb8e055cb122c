//! One direction of one connection: bytes read from a source socket go through the HTTP
//! tracker (if any) and the toxics' [`Stage`]s, in chain order, to an output queue that the
//! connection writes to the destination socket.
//!
//! With no tracker and no stage the link is *direct*: the connection writes what it read
//! straight to the destination (the fast path, see [`crate::connection`]).
//!
//! Invariants:
//! * items leave the link in the order they were read; adding, updating or removing a toxic
//!   never drops, duplicates or reorders bytes (only toxics whose effect is to drop bytes
//!   — `timeout` — drop them);
//! * the bytes held (tracker + stages + output) stay under [`MAX_BUFFERED`]: the
//!   connection stops reading the source while the link is full, so a slow destination or
//!   a long latency pushes back on the sender through TCP instead of growing memory.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::http::{ActiveFault, RequestStage, ResponseStage};
use crate::stage::{Item, Stage, Timed};
use crate::toxic::Toxic;

/// Most bytes a link holds before the connection stops reading its source.
pub(crate) const MAX_BUFFERED: usize = 1 << 20;
/// Size of one read from a socket.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// The HTTP tracker at the head of a link.
#[derive(Debug)]
pub(crate) enum Head {
    /// Requests (upstream link).
    Requests(RequestStage),
    /// Responses (downstream link).
    Responses(ResponseStage),
}

/// One direction of a connection.
#[derive(Debug)]
pub(crate) struct Link {
    /// The HTTP tracker, on tracked connections.
    pub head: Option<Head>,
    /// The toxics' stages of this direction, in chain order.
    stages: Vec<Stage>,
    /// Items that passed every stage, waiting to be written (front first).
    out: VecDeque<Item>,
    /// Data bytes in `out`.
    out_bytes: usize,
    /// The read buffer.
    pub rbuf: BytesMut,
    /// The source sent its FIN (or failed): nothing more is read.
    pub src_done: bool,
    /// The end of stream was delivered: the destination's sending side is shut down.
    pub finished: bool,
}

/// What the front of a link's output asks the connection to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// Nothing to write.
    Idle,
    /// Write these bytes.
    Data,
    /// Shut down the destination's sending side.
    Eof,
    /// Close the whole connection.
    Close,
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            head: None,
            stages: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            rbuf: BytesMut::with_capacity(READ_SIZE),
            src_done: false,
            finished: false,
        }
    }

    /// No tracker, no toxic, nothing queued: bytes read can be written as they are.
    pub(crate) fn is_direct(&self) -> bool {
        self.head.is_none() && self.stages.is_empty() && self.out.is_empty()
    }

    /// Bytes held by the link.
    pub(crate) fn buffered(&self) -> usize {
        let head = match &self.head {
            Some(Head::Requests(r)) => r.buffered(),
            Some(Head::Responses(r)) => r.buffered(),
            None => 0,
        };
        head + self.stages.iter().map(Stage::buffered).sum::<usize>() + self.out_bytes
    }

    /// Whether the connection should read the source now.
    pub(crate) fn wants_read(&self) -> bool {
        !self.src_done && self.buffered() < MAX_BUFFERED
    }

    /// Takes in an item read from the source at `now`.
    pub(crate) fn input(&mut self, item: Item, now: Instant, rng: &mut StdRng) {
        let t = Timed::new(item, now);
        match &mut self.head {
            Some(Head::Requests(r)) => r.push(t),
            Some(Head::Responses(r)) => r.push(t),
            None => self.feed(0, t, rng),
        }
    }

    /// Pushes `t` into stage `i`, or the output after the last stage.
    fn feed(&mut self, i: usize, t: Timed, rng: &mut StdRng) {
        if let Some(stage) = self.stages.get_mut(i) {
            stage.push(t, rng);
        } else {
            self.out_bytes += t.item.len();
            self.out.push_back(t.item);
        }
    }

    /// Moves every item due at `now` as far along the chain as it can go.
    pub(crate) fn advance(&mut self, now: Instant, rng: &mut StdRng) {
        loop {
            let next = match &mut self.head {
                Some(Head::Requests(r)) => r.pop(now),
                Some(Head::Responses(r)) => r.pop(now),
                None => None,
            };
            match next {
                Some(t) => self.feed(0, t, rng),
                None => break,
            }
        }
        for i in 0..self.stages.len() {
            while let Some(t) = self.stages[i].pop(now) {
                self.feed(i + 1, t, rng);
            }
        }
    }

    /// When the link next has something to do without new input.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let head = match &self.head {
            Some(Head::Requests(r)) => r.deadline(),
            Some(Head::Responses(r)) => r.deadline(),
            None => None,
        };
        self.stages
            .iter()
            .filter_map(Stage::deadline)
            .chain(head)
            .min()
    }

    /// Whether the HTTP tracker stopped tracking and holds nothing (so it can be dropped
    /// and the link can go back to the fast path).
    pub(crate) fn head_spent(&self) -> bool {
        match &self.head {
            Some(Head::Requests(r)) => r.is_spent(),
            Some(Head::Responses(r)) => r.is_spent(),
            None => true,
        }
    }

    /// Whether a `reset_peer` toxic fired.
    pub(crate) fn reset_due(&self, now: Instant) -> bool {
        self.stages.iter().any(|s| s.reset_due(now))
    }

    /// What the output asks for.
    pub(crate) fn front(&self) -> Front {
        match self.out.front() {
            None => Front::Idle,
            Some(Item::Data(_)) => Front::Data,
            Some(Item::Eof) => Front::Eof,
            Some(Item::Close) => Front::Close,
        }
    }

    /// The bytes at the front of the output (empty unless [`Front::Data`]).
    pub(crate) fn front_bytes(&self) -> &[u8] {
        match self.out.front() {
            Some(Item::Data(b)) => b,
            _ => &[],
        }
    }

    /// Records that `n` bytes of the front were written.
    pub(crate) fn wrote(&mut self, n: usize) {
        if let Some(Item::Data(b)) = self.out.front_mut() {
            b.advance(n);
            self.out_bytes -= n;
            if b.is_empty() {
                self.out.pop_front();
            }
        }
    }

    /// Drops the front marker once acted upon.
    pub(crate) fn pop_front(&mut self) {
        if let Some(item) = self.out.pop_front() {
            self.out_bytes -= item.len();
        }
    }

    /// Queues bytes that are past every stage (the unwritten rest of a direct write).
    pub(crate) fn push_out(&mut self, bytes: Bytes) {
        self.out_bytes += bytes.len();
        self.out.push_back(Item::Data(bytes));
    }

    /// Brings the stages in line with `toxics` (this direction's data toxics, in chain
    /// order) at `now`:
    /// * a stage whose toxic is gone is removed and its items go on to the next stage now;
    ///   if the toxic was a `timeout` (which dropped bytes), a close follows them;
    /// * a stage whose toxic was updated is rebuilt (toxicity rolled again) and re-schedules
    ///   the items it held from when they arrived;
    /// * a new toxic's stage is appended at the end of the chain (as Toxiproxy does), so
    ///   it applies to bytes from now on, and to bytes still held by earlier stages.
    pub(crate) fn reconcile(&mut self, toxics: &[&Toxic], now: Instant, rng: &mut StdRng) {
        let old = std::mem::take(&mut self.stages);
        // Items leaving removed stages, to be pushed at the back of the next kept stage.
        let mut carry: Vec<Timed> = Vec::new();
        let mut kept: Vec<Stage> = Vec::with_capacity(toxics.len());
        for stage in old {
            match toxics.iter().find(|t| t.id == stage.id) {
                None => {
                    let close = stage.closes_on_removal();
                    carry.extend(stage.drain_now(now));
                    if close {
                        carry.push(Timed::new(Item::Close, now));
                    }
                }
                Some(toxic) if toxic.version != stage.version => {
                    let Some(mut fresh) = Stage::new(toxic, now, rng) else {
                        carry.extend(stage.drain_now(now));
                        continue;
                    };
                    fresh.inherit(&stage);
                    // What this stage held is earlier in the stream than what removed
                    // stages before it carry, so it goes first.
                    for t in stage.drain_for_update() {
                        fresh.push(t, rng);
                    }
                    for t in carry.drain(..) {
                        fresh.push(t, rng);
                    }
                    kept.push(fresh);
                }
                Some(_) => {
                    let mut stage = stage;
                    for t in carry.drain(..) {
                        stage.push(t, rng);
                    }
                    kept.push(stage);
                }
            }
        }
        for toxic in toxics {
            if kept.iter().any(|s| s.id == toxic.id) {
                continue;
            }
            if let Some(mut fresh) = Stage::new(toxic, now, rng) {
                for t in carry.drain(..) {
                    fresh.push(t, rng);
                }
                kept.push(fresh);
            }
        }
        self.stages = kept;
        for t in carry {
            self.out_bytes += t.item.len();
            self.out.push_back(t.item);
        }
    }

    /// Installs the HTTP trackers' fault list (upstream link only); returns whether a fault
    /// was removed or changed, so the response side releases the answers it holds.
    pub(crate) fn set_http_faults(&mut self, faults: Vec<ActiveFault>, now: Instant) -> bool {
        match &mut self.head {
            Some(Head::Requests(r)) => r.set_faults(faults, now),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rand::SeedableRng;

    use super::*;
    use crate::toxic::{Direction, SharedState, ToxicKind};

    fn toxic(id: u64, kind: ToxicKind) -> Toxic {
        Toxic {
            id,
            version: 0,
            name: format!("t{id}"),
            kind,
            stream: Direction::Downstream,
            toxicity: 1.0,
            shared: Arc::new(SharedState::default()),
        }
    }

    fn data(s: &'static str) -> Item {
        Item::Data(Bytes::from_static(s.as_bytes()))
    }

    fn written(link: &mut Link) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(item) = link.out.pop_front() {
            items.push(item);
        }
        link.out_bytes = 0;
        items
    }

    #[test]
    fn removing_a_toxic_releases_what_it_held_in_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut link = Link::new();
        let latency = toxic(
            1,
            ToxicKind::Latency {
                latency: 1000,
                jitter: 0,
            },
        );
        link.reconcile(&[&latency], t0, &mut rng);
        link.input(data("a"), t0, &mut rng);
        link.input(data("b"), t0, &mut rng);
        link.advance(t0, &mut rng);
        assert_eq!(link.front(), Front::Idle);
        assert_eq!(link.buffered(), 2);
        link.reconcile(&[], t0, &mut rng);
        link.advance(t0, &mut rng);
        assert_eq!(written(&mut link), [data("a"), data("b")]);
        assert!(link.is_direct());
    }

    #[test]
    fn a_toxic_added_later_applies_to_bytes_held_by_earlier_stages() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut link = Link::new();
        let first = toxic(
            1,
            ToxicKind::Latency {
                latency: 100,
                jitter: 0,
            },
        );
        link.reconcile(&[&first], t0, &mut rng);
        link.input(data("a"), t0, &mut rng);
        let second = toxic(
            2,
            ToxicKind::Latency {
                latency: 50,
                jitter: 0,
            },
        );
        link.reconcile(&[&first, &second], t0, &mut rng);
        link.advance(t0 + Duration::from_millis(100), &mut rng);
        assert_eq!(link.front(), Front::Idle, "now in the second stage");
        assert_eq!(link.deadline(), Some(t0 + Duration::from_millis(150)));
        link.advance(t0 + Duration::from_millis(150), &mut rng);
        assert_eq!(written(&mut link), [data("a")]);
    }

    #[test]
    fn removing_a_timeout_closes_the_connection_after_what_precedes_it() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut link = Link::new();
        let blackhole = toxic(1, ToxicKind::Timeout { timeout: 0 });
        link.reconcile(&[&blackhole], t0, &mut rng);
        link.input(data("dropped"), t0, &mut rng);
        link.advance(t0, &mut rng);
        assert_eq!(link.front(), Front::Idle);
        link.reconcile(&[], t0, &mut rng);
        assert_eq!(written(&mut link), [Item::Close]);
    }

    #[test]
    fn an_update_reschedules_held_items_from_their_arrival() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut link = Link::new();
        let mut lat = toxic(
            1,
            ToxicKind::Latency {
                latency: 1000,
                jitter: 0,
            },
        );
        link.reconcile(&[&lat], t0, &mut rng);
        link.input(data("a"), t0, &mut rng);
        lat.version = 1;
        lat.kind = ToxicKind::Latency {
            latency: 10,
            jitter: 0,
        };
        link.reconcile(&[&lat], t0 + Duration::from_millis(5), &mut rng);
        assert_eq!(link.deadline(), Some(t0 + Duration::from_millis(10)));
    }
}

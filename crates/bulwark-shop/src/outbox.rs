//! The transactional outbox relay (SHOP-3): publishes the events that committed
//! transactions wrote to `shop_outbox`, in row order, and deletes rows only after the bus
//! acknowledged every event in them. Delivery is therefore at least once; event ids are
//! deterministic, JetStream deduplicates them (`Nats-Msg-Id`), and consumers keep the
//! ids they processed ([`IdempotentConsumer`]).
//!
//! Sinks: the embedded bus (an in-process broadcast channel; the default, nothing to
//! run) or NATS JetStream (`SHOP_NATS_URL`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bulwark_obs::events::{Emit, OutboxPublishFailed};
use tokio::sync::{Notify, broadcast, watch};

use crate::db::{Db, DbError};
use crate::model::Event;
use crate::store;

/// Bound on connecting to NATS and on one batch of publish acknowledgements.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Outbox rows per relay round.
const ROWS_PER_ROUND: i64 = 64;
/// Pause after a round that relayed something (bounds the relay to one round per few
/// milliseconds under load; a backlog still drains at 64 rows per round).
const RELAY_LINGER: Duration = Duration::from_millis(5);

/// Where events go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// In-process broadcast (subscribers may lag and miss events; the outbox does not).
    Embedded(broadcast::Sender<Event>),
    /// NATS JetStream: subject `<stream>.<TYPE>`, message id = event id.
    Nats {
        /// The JetStream context (boxed: it is much larger than the embedded variant).
        js: Box<jetstream::Context>,
        /// The stream (and subject prefix).
        stream: String,
    },
}

impl Sink {
    /// The in-process bus.
    pub fn embedded() -> Sink {
        Sink::Embedded(broadcast::channel(4096).0)
    }

    /// Connects to NATS and makes sure the stream exists (subjects `<stream>.>`, a
    /// two-minute duplicate window).
    pub async fn nats(url: &str, stream: &str) -> anyhow::Result<Sink> {
        let client = tokio::time::timeout(NATS_TIMEOUT, async_nats::connect(url))
            .await
            .map_err(|_| anyhow::anyhow!("NATS at {url}: no answer within {NATS_TIMEOUT:?}"))?
            .map_err(|e| anyhow::anyhow!("NATS at {url}: {e}"))?;
        let js = jetstream::new(client);
        tokio::time::timeout(
            NATS_TIMEOUT,
            js.get_or_create_stream(jetstream::stream::Config {
                name: stream.to_string(),
                subjects: vec![format!("{stream}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("NATS stream {stream}: no answer"))?
        .map_err(|e| anyhow::anyhow!("NATS stream {stream}: {e}"))?;
        Ok(Sink::Nats {
            js: Box::new(js),
            stream: stream.to_string(),
        })
    }

    /// The sink's name in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Embedded(_) => "embedded",
            Sink::Nats { .. } => "nats",
        }
    }

    /// Subscribes to the embedded bus (`None` for NATS).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Event>> {
        match self {
            Sink::Embedded(tx) => Some(tx.subscribe()),
            Sink::Nats { .. } => None,
        }
    }

    /// Publishes `events` and waits until every one is acknowledged. Returns how many the
    /// bus reported as duplicates.
    pub async fn publish(&self, events: &[Event]) -> Result<usize, String> {
        match self {
            Sink::Embedded(tx) => {
                for e in events {
                    // No subscriber is not an error: the bus is fire-and-forget.
                    let _ = tx.send(e.clone());
                }
                Ok(0)
            }
            Sink::Nats { js, stream } => {
                let work = async {
                    let mut acks = Vec::with_capacity(events.len());
                    for e in events {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", e.id.as_str());
                        let payload = serde_json::to_vec(e).map_err(|e| e.to_string())?;
                        let ack = js
                            .publish_with_headers(
                                format!("{stream}.{}", e.kind),
                                headers,
                                payload.into(),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        acks.push(ack);
                    }
                    let mut duplicates = 0;
                    for ack in acks {
                        if ack.await.map_err(|e| e.to_string())?.duplicate {
                            duplicates += 1;
                        }
                    }
                    Ok(duplicates)
                };
                tokio::time::timeout(NATS_TIMEOUT, work)
                    .await
                    .map_err(|_| format!("no acknowledgement within {NATS_TIMEOUT:?}"))?
            }
        }
    }
}

/// The relay.
#[derive(Debug)]
pub struct Outbox {
    db: Arc<Db>,
    sink: Sink,
    /// Woken after commits that wrote events, so the relay does not wait a poll period.
    wake: Notify,
}

impl Outbox {
    /// A relay from `db` to `sink`.
    pub fn new(db: Arc<Db>, sink: Sink) -> Outbox {
        Outbox {
            db,
            sink,
            wake: Notify::new(),
        }
    }

    /// The sink.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Asks the relay to look now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Reads the oldest rows and publishes their events, without deleting the rows
    /// (see [`Outbox::relay_once`]). Returns the last row id and the events.
    pub async fn fetch(&self) -> Result<Option<(i64, Vec<Event>)>, DbError> {
        let d = self.db.dialect;
        let rows = self
            .db
            .primary(async |c| store::outbox_fetch(c, d, ROWS_PER_ROUND).await)
            .await?;
        let Some(last) = rows.last().map(|(id, _)| *id) else {
            return Ok(None);
        };
        Ok(Some((
            last,
            rows.into_iter().flat_map(|(_, e)| e).collect(),
        )))
    }

    /// Deletes rows up to `last` (their events were acknowledged).
    pub async fn ack(&self, last: i64) -> Result<(), DbError> {
        let d = self.db.dialect;
        self.db
            .primary(async |c| store::outbox_delete(c, d, last).await)
            .await
    }

    /// One round: fetch, publish, delete. Returns the number of events published.
    pub async fn relay_once(&self) -> Result<usize, String> {
        let Some((last, events)) = self.fetch().await.map_err(|e| e.to_string())? else {
            return Ok(0);
        };
        if let Err(e) = self.sink.publish(&events).await {
            OutboxPublishFailed {
                sink: self.sink.name(),
                events: events.len(),
                error: &e,
            }
            .emit();
            return Err(e);
        }
        self.ack(last).await.map_err(|e| e.to_string())?;
        bulwark_obs::metrics::metrics()
            .shop_events_published
            .with_label_values(&[self.sink.name()])
            .inc_by(events.len() as u64);
        Ok(events.len())
    }

    /// Relays until `stop` turns true; on errors backs off up to 5 s.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let policy = bulwark_resilience::retry::RetryPolicy::new(
            u32::MAX,
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        loop {
            let pause = match self.relay_once().await {
                Ok(0) => {
                    failures = 0;
                    self.publish_backlog().await;
                    Duration::from_millis(200)
                }
                Ok(_) => {
                    failures = 0;
                    // Under load every purchase wakes the relay: without a pause it would
                    // run a fetch and a delete per committed transaction. A short linger
                    // lets the rows of several transactions go in one round.
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(RELAY_LINGER) => {}
                    }
                    continue;
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    bulwark_resilience::retry::backoff_delay(&policy, failures, rand::random())
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn publish_backlog(&self) {
        let d = self.db.dialect;
        if let Ok(n) = self
            .db
            .primary(async |c| store::outbox_backlog(c, d).await)
            .await
        {
            bulwark_obs::metrics::metrics().shop_outbox_backlog.set(n);
        }
    }
}

/// A consumer that processes each event id once, whatever the bus redelivers: it
/// records processed ids in `shop_consumed_events` (check-and-set in the database).
#[derive(Debug, Clone)]
pub struct IdempotentConsumer {
    db: Arc<Db>,
    name: String,
}

impl IdempotentConsumer {
    /// A consumer named `name` (its processed ids are its own).
    pub fn new(db: Arc<Db>, name: &str) -> IdempotentConsumer {
        IdempotentConsumer {
            db,
            name: name.to_string(),
        }
    }

    /// `true` the first time `event_id` is seen (process it), `false` for a duplicate.
    pub async fn first_time(&self, event_id: &str) -> Result<bool, DbError> {
        let d = self.db.dialect;
        self.db
            .primary(async |c| store::mark_consumed(c, d, &self.name, event_id).await)
            .await
    }
}

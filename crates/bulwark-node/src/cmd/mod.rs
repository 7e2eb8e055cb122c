//! Commands: lookup, dispatch, and the reply helpers they share. One file per family.
//!
//! A command appends its reply to the connection's output buffer and returns a [`Flow`]:
//! the [`Ticket`] of what it wrote (acknowledged once per batch by the connection) and
//! whether to close. Commands never panic on input: bad arguments are RESP errors.

mod bw;
mod client;
mod keys;
mod server;

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use bulwark_obs::metrics::metrics;
use bulwark_resp::encode;
use bulwark_storage::{StorageError, Ticket};
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;

use crate::server::Shared;

pub use client::ClientState;

/// Every command the node knows, plus `Unknown`. The discriminant indexes counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Ping,
    Echo,
    Get,
    Set,
    Del,
    Exists,
    Dbsize,
    Info,
    Save,
    Bgsave,
    Lastsave,
    Select,
    Client,
    Command,
    Config,
    Quit,
    Flushall,
    BwGet,
    BwPut,
    BwPrepare,
    BwCommit,
    BwAbort,
    BwRepair,
    BwDigest,
    BwBuckets,
    BwDebug,
    BwFence,
    BwAt,
    Unknown,
}

/// Names as clients send them (matched case-insensitively) and as metric labels
/// (lower case), in [`Cmd`] order.
const TABLE: [(&str, Cmd); 29] = [
    ("ping", Cmd::Ping),
    ("echo", Cmd::Echo),
    ("get", Cmd::Get),
    ("set", Cmd::Set),
    ("del", Cmd::Del),
    ("exists", Cmd::Exists),
    ("dbsize", Cmd::Dbsize),
    ("info", Cmd::Info),
    ("save", Cmd::Save),
    ("bgsave", Cmd::Bgsave),
    ("lastsave", Cmd::Lastsave),
    ("select", Cmd::Select),
    ("client", Cmd::Client),
    ("command", Cmd::Command),
    ("config", Cmd::Config),
    ("quit", Cmd::Quit),
    ("flushall", Cmd::Flushall),
    ("bw.get", Cmd::BwGet),
    ("bw.put", Cmd::BwPut),
    ("bw.prepare", Cmd::BwPrepare),
    ("bw.commit", Cmd::BwCommit),
    ("bw.abort", Cmd::BwAbort),
    ("bw.repair", Cmd::BwRepair),
    ("bw.digest", Cmd::BwDigest),
    ("bw.buckets", Cmd::BwBuckets),
    ("bw.debug", Cmd::BwDebug),
    ("bw.fence", Cmd::BwFence),
    ("bw.at", Cmd::BwAt),
    ("unknown", Cmd::Unknown),
];

const N: usize = TABLE.len();

/// The command named `name` (case-insensitive), without allocating.
pub fn lookup(name: &[u8]) -> Cmd {
    TABLE[..N - 1]
        .iter()
        .find(|(n, _)| n.len() == name.len() && n.as_bytes().eq_ignore_ascii_case(name))
        .map_or(Cmd::Unknown, |&(_, c)| c)
}

/// Commands counted locally by a connection and published to `node_commands_total` once
/// per batch: a few array increments per command instead of a labelled-metric lookup.
#[derive(Debug, Default)]
pub struct CommandCounts {
    counts: [u64; N],
    total: u64,
}

impl CommandCounts {
    fn count(&mut self, cmd: Cmd) {
        self.counts[cmd as usize] += 1;
        self.total += 1;
    }

    /// Adds the local counts to the shared metrics and resets them.
    pub fn publish(&mut self, shared: &Shared) {
        if self.total == 0 {
            return;
        }
        static COUNTERS: OnceLock<Vec<IntCounter>> = OnceLock::new();
        let counters = COUNTERS.get_or_init(|| {
            TABLE
                .iter()
                .map(|(name, _)| metrics().node_commands.with_label_values(&[*name]))
                .collect()
        });
        for (c, n) in counters.iter().zip(self.counts.iter_mut()) {
            if *n > 0 {
                c.inc_by(*n);
                *n = 0;
            }
        }
        shared
            .total_commands
            .fetch_add(self.total, Ordering::Relaxed);
        self.total = 0;
    }
}

/// What a command asks of its connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flow {
    /// Writes to acknowledge before the reply is sent.
    pub ticket: Ticket,
    /// Close the connection after replying.
    pub quit: bool,
}

impl Flow {
    fn written(ticket: Ticket) -> Self {
        Flow {
            ticket,
            quit: false,
        }
    }
}

/// Runs one command (`args[0]` is its name; `args` is never empty).
pub async fn execute(
    shared: &Shared,
    client: &mut ClientState,
    args: &[Bytes],
    out: &mut BytesMut,
    counts: &mut CommandCounts,
) -> Flow {
    let cmd = lookup(&args[0]);
    counts.count(cmd);
    let result = match cmd {
        Cmd::BwAt => at(shared, client, args, out, counts).await,
        Cmd::BwFence => fence(shared, args, out).await,
        _ => dispatch(cmd, shared, client, args, out).await,
    };
    match result {
        Ok(flow) => flow,
        Err(StorageError::OutOfMemory { .. }) => {
            // Redis's wording, so clients that handle OOM recognise it.
            encode::error(
                out,
                "OOM command not allowed when used memory > 'maxmemory'.",
            );
            Flow::default()
        }
        Err(e) => {
            tracing::error!(service = shared.name.as_str(), error = %e, "storage error");
            encode::error(out, &format!("ERR storage: {e}"));
            Flow::default()
        }
    }
}

/// The commands a fenced call (`BW.AT`) may carry: the replica protocol's reads and writes.
fn fenceable(cmd: Cmd) -> bool {
    matches!(
        cmd,
        Cmd::BwGet | Cmd::BwPut | Cmd::BwPrepare | Cmd::BwCommit | Cmd::BwAbort | Cmd::BwRepair
    )
}

/// `BW.AT <layout> <command> <args…>`: runs the command if `layout` is not older than the
/// node's fence, holding the fence's read guard while it runs; else `-STALE_LAYOUT <min>`
/// and nothing changes (docs/design/sharding.md, section 3).
async fn at(
    shared: &Shared,
    client: &mut ClientState,
    args: &[Bytes],
    out: &mut BytesMut,
    counts: &mut CommandCounts,
) -> CmdResult {
    if args.len() < 3 {
        return wrong_arity(args, out);
    }
    let Some(layout) = std::str::from_utf8(&args[1])
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return err(out, "ERR invalid layout version: expected a decimal number");
    };
    let inner = &args[2..];
    let cmd = lookup(&inner[0]);
    if !fenceable(cmd) {
        return err(
            out,
            "ERR BW.AT carries BW.GET, BW.PUT, BW.PREPARE, BW.COMMIT, BW.ABORT or BW.REPAIR",
        );
    }
    counts.count(cmd);
    let guard = match shared.fence.admit(layout).await {
        Ok(guard) => guard,
        Err(min) => {
            return err(
                out,
                &format!("STALE_LAYOUT {min} (this call was routed with layout {layout})"),
            );
        }
    };
    let result = dispatch(cmd, shared, client, inner, out).await;
    drop(guard);
    result
}

/// `BW.FENCE <layout>`: raises the node's fence; replies with the fence now in force once
/// it is durable and no call admitted under an older one is still running.
async fn fence(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, layout] = args else {
        return wrong_arity(args, out);
    };
    let Some(layout) = std::str::from_utf8(layout)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return err(out, "ERR invalid layout version: expected a decimal number");
    };
    match shared.fence.raise(layout).await {
        Ok(min) => {
            encode::integer(out, i64::try_from(min).unwrap_or(i64::MAX));
            Ok(Flow::default())
        }
        Err(e) => {
            tracing::error!(service = shared.name.as_str(), error = %e, "cannot persist the layout fence");
            err(out, &format!("ERR cannot persist the fence: {e}"))
        }
    }
}

/// Runs one command other than `BW.AT` and `BW.FENCE`.
async fn dispatch(
    cmd: Cmd,
    shared: &Shared,
    client: &mut ClientState,
    args: &[Bytes],
    out: &mut BytesMut,
) -> CmdResult {
    match cmd {
        Cmd::Get => keys::get(shared, args, out),
        Cmd::Set => keys::set(shared, args, out),
        Cmd::Del => keys::del(shared, args, out),
        Cmd::Exists => keys::exists(shared, args, out),
        Cmd::Dbsize => keys::dbsize(shared, args, out),
        Cmd::Flushall => keys::flushall(shared, args, out).await,
        Cmd::Ping => server::ping(args, out),
        Cmd::Echo => server::echo(args, out),
        Cmd::Info => server::info(shared, args, out),
        Cmd::Save => server::save(shared, args, out).await,
        Cmd::Bgsave => server::bgsave(shared, args, out),
        Cmd::Lastsave => server::lastsave(shared, args, out),
        Cmd::Select => server::select(args, out),
        Cmd::Command => server::command(args, out),
        Cmd::Config => server::config(shared, args, out),
        Cmd::Quit => {
            encode::simple(out, "OK");
            Ok(Flow {
                ticket: Ticket::NONE,
                quit: true,
            })
        }
        Cmd::Client => client::client(client, args, out),
        Cmd::BwGet => bw::get(shared, args, out),
        Cmd::BwPut => bw::put(shared, args, out),
        Cmd::BwPrepare => bw::prepare(shared, args, out).await,
        Cmd::BwCommit => bw::commit(shared, args, out).await,
        Cmd::BwAbort => bw::abort(shared, args, out).await,
        Cmd::BwRepair => bw::repair(shared, args, out),
        Cmd::BwDigest => bw::digest(shared, args, out).await,
        Cmd::BwBuckets => bw::buckets(shared, args, out).await,
        Cmd::BwDebug => bw::debug(shared, args, out),
        Cmd::BwAt | Cmd::BwFence | Cmd::Unknown => {
            unknown(args, out);
            Ok(Flow::default())
        }
    }
}

/// A command's result: the flow, or a storage failure (reported as `-ERR storage: …`).
type CmdResult = Result<Flow, StorageError>;

fn unknown(args: &[Bytes], out: &mut BytesMut) {
    let name: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
    let mut msg = format!("ERR unknown command '{name}', with args beginning with: ");
    for a in args.iter().skip(1).take(8) {
        let a: String = String::from_utf8_lossy(a).chars().take(32).collect();
        msg.push('\'');
        msg.push_str(&a);
        msg.push_str("' ");
    }
    encode::error(out, &msg);
}

/// `-ERR wrong number of arguments for '<cmd>' command`, as redis words it.
fn wrong_arity(args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let name: String = name.chars().take(64).collect();
    encode::error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
    Ok(Flow::default())
}

/// Replies with an error and no write.
fn err(out: &mut BytesMut, msg: &str) -> CmdResult {
    encode::error(out, msg);
    Ok(Flow::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_total() {
        assert_eq!(lookup(b"GET"), Cmd::Get);
        assert_eq!(lookup(b"bW.PrePare"), Cmd::BwPrepare);
        assert_eq!(lookup(b"unknown"), Cmd::Unknown);
        assert_eq!(lookup(b"GETX"), Cmd::Unknown);
        assert_eq!(lookup(b""), Cmd::Unknown);
        for (i, (name, cmd)) in TABLE.iter().enumerate() {
            assert_eq!(*cmd as usize, i, "{name} is out of order");
        }
    }
}

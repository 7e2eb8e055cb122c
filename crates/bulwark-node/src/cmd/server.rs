//! Connection and server commands: PING, ECHO, INFO, SAVE, BGSAVE, LASTSAVE, SELECT,
//! COMMAND, CONFIG GET. Enough of Redis's admin surface for redis-cli, redis-benchmark
//! and monitoring scripts.

use std::fmt::Write as _;

use bulwark_resp::encode;
use bulwark_storage::StorageError;
use bytes::{Bytes, BytesMut};

use super::{CmdResult, Flow, err, wrong_arity};
use crate::server::Shared;

pub(super) fn ping(args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    match args {
        [_] => encode::simple(out, "PONG"),
        [_, msg] => encode::bulk(out, msg),
        _ => return wrong_arity(args, out),
    }
    Ok(Flow::default())
}

pub(super) fn echo(args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, msg] = args else {
        return wrong_arity(args, out);
    };
    encode::bulk(out, msg);
    Ok(Flow::default())
}

pub(super) fn select(args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, db] = args else {
        return wrong_arity(args, out);
    };
    if &db[..] == b"0" {
        encode::simple(out, "OK");
        Ok(Flow::default())
    } else {
        err(out, "ERR DB index is out of range")
    }
}

/// COMMAND, COMMAND DOCS, COMMAND INFO: an empty array (redis-cli 7 asks on start and
/// copes). COMMAND COUNT: 0.
pub(super) fn command(args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    match args.get(1) {
        Some(sub) if sub.eq_ignore_ascii_case(b"count") => encode::integer(out, 0),
        _ => encode::array_len(out, 0),
    }
    Ok(Flow::default())
}

/// CONFIG GET <pattern>…: the few parameters clients ask about (redis-benchmark asks for
/// `save` and `appendonly`), with `*` globs. Other subcommands are refused.
pub(super) fn config(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() < 2 {
        return wrong_arity(args, out);
    }
    if !args[1].eq_ignore_ascii_case(b"get") {
        return err(out, "ERR only CONFIG GET is supported by bulwark node");
    }
    if args.len() < 3 {
        return wrong_arity(args, out);
    }
    let stats = shared.store.stats();
    let params: [(&str, String); 8] = [
        ("save", String::new()),
        ("appendonly", "yes".to_owned()),
        ("appendfsync", stats.appendfsync.to_string()),
        ("maxclients", shared.max_clients.to_string()),
        ("port", shared.port.to_string()),
        ("dir", shared.store.dir().display().to_string()),
        ("databases", "1".to_owned()),
        ("maxmemory", stats.max_memory_bytes.unwrap_or(0).to_string()),
    ];
    let matched: Vec<&(&str, String)> = params
        .iter()
        .filter(|(name, _)| args[2..].iter().any(|p| glob(p, name.as_bytes())))
        .collect();
    encode::array_len(out, matched.len() * 2);
    for (name, value) in matched {
        encode::bulk(out, name.as_bytes());
        encode::bulk(out, value.as_bytes());
    }
    Ok(Flow::default())
}

/// Case-insensitive glob with `*` only (what CONFIG GET patterns use in practice).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, tail)| n.eq_ignore_ascii_case(c) && glob(rest, tail)),
    }
}

pub(super) async fn save(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() != 1 {
        return wrong_arity(args, out);
    }
    let store = shared.store.clone();
    let path = shared.snapshot_path.clone();
    let result = tokio::task::spawn_blocking(move || store.save(&path)).await;
    match result {
        Ok(Ok(_)) => encode::simple(out, "OK"),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(StorageError::Closed),
    }
    Ok(Flow::default())
}

pub(super) fn bgsave(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() > 2 {
        return wrong_arity(args, out);
    }
    match shared.store.bgsave(shared.snapshot_path.clone()) {
        Ok(()) => encode::simple(out, "Background saving started"),
        Err(StorageError::SaveInProgress) => {
            return err(out, "ERR Background save already in progress");
        }
        Err(e) => return Err(e),
    }
    Ok(Flow::default())
}

pub(super) fn lastsave(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() != 1 {
        return wrong_arity(args, out);
    }
    let t = shared.store.stats().last_save_unix;
    encode::integer(out, i64::try_from(t).unwrap_or(i64::MAX));
    Ok(Flow::default())
}

/// INFO [section…]: Redis-style `key:value` lines under `# Section` headers.
pub(super) fn info(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let wanted = |section: &str| {
        args.len() == 1
            || args[1..].iter().any(|a| {
                a.eq_ignore_ascii_case(section.as_bytes())
                    || a.eq_ignore_ascii_case(b"all")
                    || a.eq_ignore_ascii_case(b"default")
                    || a.eq_ignore_ascii_case(b"everything")
            })
    };
    let stats = shared.store.stats();
    let uptime = shared.started.elapsed().as_secs();
    let mut s = String::with_capacity(1024);
    // Writing to a String cannot fail.
    if wanted("server") {
        let _ = write!(
            s,
            "# Server\r\nredis_version:7.0.0\r\nbulwark_version:{}\r\nredis_mode:standalone\r\n\
             server_name:bulwark-node\r\nnode_name:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\n\
             uptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nlayout_fence:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            shared.name,
            std::process::id(),
            shared.port,
            uptime / 86_400,
            shared.fence.current(),
        );
    }
    if wanted("clients") {
        let _ = write!(
            s,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            shared.connected(),
            shared.max_clients,
        );
    }
    if wanted("memory") {
        // The in-memory index's estimated footprint (keys, values, pending writes and
        // bookkeeping), not the process's RSS: fjall's memtables and cache come on top.
        let _ = write!(
            s,
            "# Memory\r\nused_memory:{}\r\nmaxmemory:{}\r\nmaxmemory_policy:noeviction\r\n\r\n",
            stats.memory_bytes,
            stats.max_memory_bytes.unwrap_or(0),
        );
    }
    if wanted("persistence") {
        let _ = write!(
            s,
            "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:{}\r\n\
             rdb_bgsave_in_progress:{}\r\nrdb_last_save_time:{}\r\nrdb_last_bgsave_status:{}\r\n\
             aof_enabled:1\r\nappendfsync:{}\r\naof_fsyncs:{}\r\nstorage_engine:fjall\r\n\r\n",
            stats.changes_since_save,
            u8::from(stats.bgsave_in_progress),
            stats.last_save_unix,
            if stats.last_bgsave_ok { "ok" } else { "err" },
            stats.appendfsync,
            stats.fsyncs,
        );
    }
    if wanted("stats") {
        let _ = write!(
            s,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             rejected_connections:{}\r\ntls_handshake_failures:{}\r\n\r\n",
            shared
                .total_connections
                .load(std::sync::atomic::Ordering::Relaxed),
            shared
                .total_commands
                .load(std::sync::atomic::Ordering::Relaxed),
            shared
                .rejected_connections
                .load(std::sync::atomic::Ordering::Relaxed),
            shared
                .tls_handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    if wanted("keyspace") {
        s.push_str("# Keyspace\r\n");
        if stats.live_keys > 0 {
            let _ = write!(s, "db0:keys={},expires=0,avg_ttl=0\r\n", stats.live_keys);
        }
    }
    encode::bulk(out, s.as_bytes());
    Ok(Flow::default())
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn config_globs() {
        assert!(glob(b"save", b"save"));
        assert!(glob(b"SAVE", b"save"));
        assert!(glob(b"*", b"appendonly"));
        assert!(glob(b"append*", b"appendfsync"));
        assert!(!glob(b"append", b"appendonly"));
        assert!(glob(b"*only", b"appendonly"));
    }
}

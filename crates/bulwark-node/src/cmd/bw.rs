//! The versioned replica protocol (`docs/ARCHITECTURE.md`, "The replica protocol"):
//!
//! | command | arguments | reply |
//! |---|---|---|
//! | `BW.GET` | key | `[committed_version\|nil, value\|nil, tomb 0\|1, [[pending_version, coordinator], …]]` |
//! | `BW.PUT` | key version tomb value | `[applied 0\|1, committed_version\|nil]` |
//! | `BW.PREPARE` | key version coordinator tomb value | `["OK"\|"STALE"\|"BUSY", committed_version\|nil]` |
//! | `BW.COMMIT` | key version | `1` if it was pending, else `0` |
//! | `BW.ABORT` | key version | `1` if it was pending, else `0` |
//! | `BW.REPAIR` | key version tomb value | as `BW.PUT`; also replaces a same-version copy whose bytes differ |
//! | `BW.DIGEST` | — | the anti-entropy digest: 4096 buckets × 8 bytes, big-endian, one bulk string |
//! | `BW.BUCKETS` | bucket… (0–4095) | `[[key, version, tomb 0\|1, hash (16 hex digits)], …]` for committed records in those buckets |
//! | `BW.DEBUG` | `CORRUPT key value` \| `DROP key` | `[version, old_value]` or nil (data faults; needs `--enable-debug-command`) |
//!
//! Versions are 24 lowercase hex digits; `tomb` is `0` or `1` (with `1`, the value
//! argument may be omitted and is ignored). Error messages match the Redis function
//! library (`bulwark.lua`), so both dialects fail alike. PREPARE, COMMIT and ABORT reply
//! only once durable; PUT follows `appendfsync` through the batch's ticket. BW.GET (like
//! GET) replies only once the protocol changes it shows are durable, through the same
//! ticket. `BW.DIGEST` and `BW.BUCKETS` scan the whole index (anti-entropy, see
//! `docs/ARCHITECTURE.md`), on a blocking thread so the runtime keeps serving.

use bulwark_core::Version;
use bulwark_core::ae::AE_BUCKETS;
use bulwark_resp::encode;
use bytes::{Bytes, BytesMut};

use bulwark_storage::{PutReply, StorageError, Store, Ticket};

use super::{CmdResult, Flow, err, wrong_arity};
use crate::server::Shared;

const BAD_VERSION: &str = "ERR invalid version: expected 24 lowercase hex digits";
const BAD_TOMB: &str = "ERR invalid tombstone flag: expected 0 or 1";

fn version(arg: &[u8]) -> Option<Version> {
    Version::try_from(arg).ok()
}

/// `tomb` and the value argument (absent allowed only for a tombstone) → the value.
fn value<'a>(tomb: &[u8], value: Option<&'a Bytes>) -> Result<Option<&'a [u8]>, &'static str> {
    match (tomb, value) {
        (b"1", _) => Ok(None),
        (b"0", Some(v)) => Ok(Some(&v[..])),
        (b"0", None) => Err("ERR a value is required when tomb is 0"),
        _ => Err(BAD_TOMB),
    }
}

/// Appends a version as a 24-byte bulk string, or nil.
fn put_version(out: &mut BytesMut, v: Option<Version>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let Some(v) = v else {
        encode::null(out);
        return;
    };
    let mut wire = [0u8; 24];
    let mut put = |start: usize, digits: usize, n: u64| {
        for i in 0..digits {
            wire[start + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
    };
    put(0, 12, v.physical_ms);
    put(12, 4, u64::from(v.logical));
    put(16, 8, u64::from(v.writer));
    encode::bulk(out, &wire);
}

pub(super) fn get(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, key] = args else {
        return wrong_arity(args, out);
    };
    let (state, ticket) = shared.store.get_state_deferred(key);
    encode::array_len(out, 4);
    match &state.committed {
        None => {
            encode::null(out);
            encode::null(out);
            encode::integer(out, 0);
        }
        Some(rec) => {
            put_version(out, Some(rec.version));
            match &rec.value {
                Some(v) => {
                    encode::bulk(out, v);
                    encode::integer(out, 0);
                }
                None => {
                    encode::null(out);
                    encode::integer(out, 1);
                }
            }
        }
    }
    encode::array_len(out, state.pending.len());
    for p in &state.pending {
        encode::array_len(out, 2);
        put_version(out, Some(p.version));
        encode::bulk(out, p.coordinator.as_bytes());
    }
    // Replied only once every protocol change this state shows is fsynced.
    Ok(Flow::written(ticket))
}

pub(super) fn put(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    put_with(shared, args, out, Store::put)
}

pub(super) fn repair(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    put_with(shared, args, out, Store::repair)
}

/// A store write with `BW.PUT`'s arguments: [`Store::put`] or [`Store::repair`].
type PutOp = fn(&Store, &[u8], Version, Option<&[u8]>) -> Result<(PutReply, Ticket), StorageError>;

/// `BW.PUT` and `BW.REPAIR`: the same arguments and reply, a different overwrite rule.
fn put_with(shared: &Shared, args: &[Bytes], out: &mut BytesMut, op: PutOp) -> CmdResult {
    if !(4..=5).contains(&args.len()) {
        return wrong_arity(args, out);
    }
    let Some(ver) = version(&args[2]) else {
        return err(out, BAD_VERSION);
    };
    let v = match value(&args[3], args.get(4)) {
        Ok(v) => v,
        Err(msg) => return err(out, msg),
    };
    let (reply, ticket) = op(&shared.store, &args[1], ver, v)?;
    encode::array_len(out, 2);
    encode::integer(out, i64::from(reply.applied));
    put_version(out, reply.committed);
    Ok(Flow::written(ticket))
}

/// Most records one `BW.BUCKETS` reply lists; callers ask for a few buckets at a time, so
/// this only guards against a pathological key distribution.
const MAX_BUCKET_ENTRIES: usize = 1_000_000;

pub(super) async fn digest(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() != 1 {
        return wrong_arity(args, out);
    }
    let store = shared.store.clone();
    let digest = tokio::task::spawn_blocking(move || store.digest())
        .await
        .map_err(|_| StorageError::Closed)?;
    encode::bulk(out, &digest.to_wire());
    Ok(Flow::default())
}

pub(super) async fn buckets(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() < 2 {
        return wrong_arity(args, out);
    }
    let mut buckets = Vec::with_capacity(args.len() - 1);
    for a in &args[1..] {
        match std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
        {
            Some(b) if usize::from(b) < AE_BUCKETS => buckets.push(b),
            _ => return err(out, "ERR invalid bucket: expected an integer in 0..4095"),
        }
    }
    let store = shared.store.clone();
    let entries =
        tokio::task::spawn_blocking(move || store.bucket_entries(&buckets, MAX_BUCKET_ENTRIES))
            .await
            .map_err(|_| StorageError::Closed)?;
    encode::array_len(out, entries.len());
    for e in &entries {
        encode::array_len(out, 4);
        encode::bulk(out, &e.key);
        put_version(out, Some(e.version));
        encode::integer(out, i64::from(e.tombstone));
        encode::bulk(out, format!("{:016x}", e.hash).as_bytes());
    }
    Ok(Flow::default())
}

pub(super) async fn prepare(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if !(5..=6).contains(&args.len()) {
        return wrong_arity(args, out);
    }
    let Some(ver) = version(&args[2]) else {
        return err(out, BAD_VERSION);
    };
    let coordinator = match std::str::from_utf8(&args[3]) {
        Ok("") => return err(out, "ERR coordinator must not be empty"),
        Ok(c) if c.len() <= 255 => c,
        _ => return err(out, "ERR coordinator must be UTF-8 and at most 255 bytes"),
    };
    let v = match value(&args[4], args.get(5)) {
        Ok(v) => v,
        Err(msg) => return err(out, msg),
    };
    // The reply waits for the batch's group commit (the connection acknowledges every
    // ticket of a pipelined batch with one fsync), not for its own fsync here: one
    // pipelined connection would otherwise get one fsync per command.
    let (reply, ticket) = shared
        .store
        .prepare_deferred(&args[1], ver, coordinator, v)?;
    encode::array_len(out, 2);
    encode::bulk(out, reply.status.as_str().as_bytes());
    put_version(out, reply.committed);
    Ok(Flow::written(ticket))
}

pub(super) async fn commit(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, key, ver] = args else {
        return wrong_arity(args, out);
    };
    let Some(ver) = version(ver) else {
        return err(out, BAD_VERSION);
    };
    let (found, ticket) = shared.store.commit_deferred(key, ver)?;
    encode::integer(out, i64::from(found));
    Ok(Flow::written(ticket))
}

pub(super) async fn abort(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, key, ver] = args else {
        return wrong_arity(args, out);
    };
    let Some(ver) = version(ver) else {
        return err(out, BAD_VERSION);
    };
    let (found, ticket) = shared.store.abort_deferred(key, ver)?;
    encode::integer(out, i64::from(found));
    Ok(Flow::written(ticket))
}

/// `BW.DEBUG CORRUPT key value` | `BW.DEBUG DROP key`: data faults for chaos experiments
/// (SPEC CHAOS-1), refused unless the node runs with `--enable-debug-command`.
///
/// * `CORRUPT` replaces the committed value, keeping its version (silent corruption);
///   replies `[version, old_value]`, or nil if the key holds no value.
/// * `DROP` forgets the committed record, leaving no tombstone (lost data); replies
///   `[version, old_value|nil]`, or nil if there was none.
pub(super) fn debug(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if !shared.debug_commands {
        return err(
            out,
            "ERR BW.DEBUG is disabled; start the node with --enable-debug-command",
        );
    }
    let reply = |out: &mut BytesMut, r: Option<(Version, Option<Bytes>)>| match r {
        None => encode::null(out),
        Some((v, old)) => {
            encode::array_len(out, 2);
            encode::bulk(out, v.to_string().as_bytes());
            match old {
                Some(o) => encode::bulk(out, &o),
                None => encode::null(out),
            }
        }
    };
    match args {
        [_, sub, key, value] if sub.eq_ignore_ascii_case(b"corrupt") => {
            let r = shared.store.debug_overwrite(key, value)?;
            reply(out, r.map(|(v, old)| (v, Some(old))));
            Ok(Flow::default())
        }
        [_, sub, key] if sub.eq_ignore_ascii_case(b"drop") => {
            let r = shared.store.debug_drop(key)?;
            reply(out, r);
            Ok(Flow::default())
        }
        [_] => wrong_arity(args, out),
        _ => err(
            out,
            "ERR usage: BW.DEBUG CORRUPT key value | BW.DEBUG DROP key",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_written_in_wire_form() {
        let v = Version {
            physical_ms: 0x0123_4567_89ab,
            logical: 0xcdef,
            writer: 0x0102_0304,
        };
        let mut out = BytesMut::new();
        put_version(&mut out, Some(v));
        assert_eq!(&out[..], format!("$24\r\n{v}\r\n").as_bytes());
    }

    #[test]
    fn tomb_flag_and_value() {
        let b = Bytes::from("x");
        assert_eq!(value(b"0", Some(&b)), Ok(Some(&b"x"[..])));
        assert_eq!(value(b"1", Some(&b)), Ok(None));
        assert_eq!(value(b"1", None), Ok(None));
        assert!(value(b"0", None).is_err());
        assert_eq!(value(b"2", Some(&b)), Err(BAD_TOMB));
    }
}

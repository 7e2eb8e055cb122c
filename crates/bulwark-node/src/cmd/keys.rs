//! Plain Redis key commands over the committed records: GET, SET, DEL, EXISTS, DBSIZE,
//! FLUSHALL. SET and DEL stamp versions from the node's own clock, so what `redis-cli`
//! writes orders with what gateways write.

use bulwark_resp::encode;
use bytes::{Bytes, BytesMut};

use super::{CmdResult, Flow, err, wrong_arity};
use crate::server::Shared;

pub(super) fn get(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let [_, key] = args else {
        return wrong_arity(args, out);
    };
    // The ticket is non-empty only if the value comes from a commit not yet fsynced; the
    // connection then holds the batch's replies until it is (durable reads).
    let (value, ticket) = shared.store.get_deferred(key);
    match value {
        Some(v) => encode::bulk(out, &v),
        None => encode::null(out),
    }
    Ok(Flow::written(ticket))
}

pub(super) fn set(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    match args {
        [_, key, value] => {
            let ticket = shared.store.set(key, value)?;
            encode::simple(out, "OK");
            Ok(Flow::written(ticket))
        }
        [_] | [_, _] => wrong_arity(args, out),
        _ => err(
            out,
            "ERR SET options (EX, PX, NX, XX, GET, KEEPTTL, …) are not supported by bulwark node",
        ),
    }
}

pub(super) fn del(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() < 2 {
        return wrong_arity(args, out);
    }
    let (n, ticket) = shared.store.del(&args[1..])?;
    encode::integer(out, i64::try_from(n).unwrap_or(i64::MAX));
    Ok(Flow::written(ticket))
}

pub(super) fn exists(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() < 2 {
        return wrong_arity(args, out);
    }
    let (n, ticket) = shared.store.exists_deferred(&args[1..]);
    encode::integer(out, i64::try_from(n).unwrap_or(i64::MAX));
    Ok(Flow::written(ticket))
}

pub(super) fn dbsize(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    if args.len() != 1 {
        return wrong_arity(args, out);
    }
    let ticket = shared.store.fence();
    encode::integer(
        out,
        i64::try_from(shared.store.dbsize()).unwrap_or(i64::MAX),
    );
    Ok(Flow::written(ticket))
}

/// FLUSHALL [ASYNC|SYNC]: removes everything (for tests). Durable before it replies.
pub(super) async fn flushall(shared: &Shared, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    match args {
        [_] => {}
        [_, mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {}
        [_, _] => return err(out, "ERR syntax error"),
        _ => return wrong_arity(args, out),
    }
    shared.store.flushall().await?;
    encode::simple(out, "OK");
    Ok(Flow::default())
}

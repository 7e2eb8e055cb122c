//! CLIENT ID / SETNAME / GETNAME / SETINFO: the minimum client libraries call on connect.

use bulwark_resp::encode;
use bytes::{Bytes, BytesMut};

use super::{CmdResult, Flow, err, wrong_arity};

/// Per-connection state visible through CLIENT.
#[derive(Debug)]
pub struct ClientState {
    /// CLIENT ID: unique per connection since start.
    id: u64,
    /// CLIENT SETNAME's value.
    name: Option<Bytes>,
}

impl ClientState {
    /// State of a new connection with id `id`.
    pub fn new(id: u64) -> Self {
        ClientState { id, name: None }
    }
}

pub(super) fn client(state: &mut ClientState, args: &[Bytes], out: &mut BytesMut) -> CmdResult {
    let Some(sub) = args.get(1) else {
        return wrong_arity(args, out);
    };
    let is = |name: &str| sub.eq_ignore_ascii_case(name.as_bytes());
    if is("id") && args.len() == 2 {
        encode::integer(out, i64::try_from(state.id).unwrap_or(i64::MAX));
    } else if is("getname") && args.len() == 2 {
        match &state.name {
            Some(n) => encode::bulk(out, n),
            None => encode::null(out),
        }
    } else if is("setname") && args.len() == 3 {
        let name = &args[2];
        if name.iter().any(|&c| c <= b' ' || c > b'~') {
            return err(
                out,
                "ERR Client names cannot contain spaces, newlines or special characters.",
            );
        }
        state.name = (!name.is_empty()).then(|| name.clone());
        encode::simple(out, "OK");
    } else if is("setinfo") && args.len() == 4 {
        // Client libraries announce themselves; nothing to keep.
        encode::simple(out, "OK");
    } else {
        return err(
            out,
            "ERR unknown or unsupported CLIENT subcommand (bulwark node supports ID, GETNAME, SETNAME, SETINFO)",
        );
    }
    Ok(Flow::default())
}

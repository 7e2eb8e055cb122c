//! The one error type of a replica call.

/// Why a call to a replica failed. Hot-path error: a plain enum, cheap to match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The call (connect included) did not finish within the client's timeout. For a
    /// write, its outcome at the replica is unknown.
    #[error("replica call timed out")]
    Timeout,
    /// No connection could be opened (refused, invalid address, or the Redis function
    /// library could not be loaded on it): the request was **not sent**, so it cannot
    /// have been applied.
    #[error("replica unreachable: {0}")]
    Unreachable(String),
    /// The connection failed during the call (reset, closed): for a write, its outcome at
    /// the replica is unknown.
    #[error("replica connection failed: {0}")]
    Connect(String),
    /// The reply was not in the shape the protocol defines (or not RESP at all).
    #[error("replica protocol violation: {0}")]
    Protocol(String),
    /// The replica answered with an error reply (`-ERR …`).
    #[error("replica error reply: {0}")]
    Server(String),
}

/// Maps a `redis` crate error. `Parse` (bytes that are not RESP) becomes
/// [`ReplicaError::Protocol`]; the caller drops the connection after any error except an
/// error reply, since the stream may be closed, hung or out of sync.
pub(crate) fn from_redis(e: &redis::RedisError) -> ReplicaError {
    use redis::ErrorKind;
    if e.is_timeout() {
        return ReplicaError::Timeout;
    }
    match e.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension => {
            let msg = match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => format!("{code} {detail}"),
                _ => e.to_string(),
            };
            ReplicaError::Server(msg)
        }
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => ReplicaError::Protocol(e.to_string()),
        _ => ReplicaError::Connect(e.to_string()),
    }
}

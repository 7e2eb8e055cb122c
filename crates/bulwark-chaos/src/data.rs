//! Data faults on one replica (SPEC CHAOS-1: corruption and loss), over RESP, for either
//! kind of replica:
//!
//! * a `bulwark node` through its guarded `BW.DEBUG CORRUPT|DROP` (it must run with
//!   `--enable-debug-command`, as `bulwark up` starts it);
//! * a Redis replica directly on the function library's layout (`bw:K` hash, fields `v`
//!   version, `d` value, `t` tombstone; see `lua/bulwark.lua`).
//!
//! A corruption keeps the record's version and changes its bytes; a drop forgets the
//! record without a tombstone. Both only act if the record still has the version read when
//! the fault was planned, so the undo (journaled before) restores exactly what was there.

use std::time::Duration;

use bulwark_replica::ReplicaTls;
use redis::aio::MultiplexedConnection;

use crate::cluster::ReplicaBackend;

/// Bound on one replica call.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A committed record as read from a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its version (24 hex digits).
    pub version: String,
    /// Its value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Changes a value, keeping its version, only if the version is `version`.
const CORRUPT_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[2])
return 1";

/// Removes the committed fields (pending writes stay), only if the version is `version`.
const DROP_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'v', 'd', 't')
return 1";

/// A replica: its kind, its port on 127.0.0.1 and the TLS its link needs.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// What the replica is.
    pub backend: ReplicaBackend,
    /// Its RESP port on 127.0.0.1.
    pub port: u16,
    /// TLS (with the client certificate) when the replicas speak it.
    pub tls: Option<&'a ReplicaTls>,
}

async fn conn(at: At<'_>) -> Result<MultiplexedConnection, String> {
    let port = at.port;
    let client = bulwark_replica::redis_client("127.0.0.1", port, at.tls)?;
    tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| format!("replica on port {port}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("unreachable: replica on port {port}: {e}"))
}

async fn query<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<T, String> {
    tokio::time::timeout(TIMEOUT, cmd.query_async(c))
        .await
        .map_err(|_| "replica call timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// The committed record of `key` on the replica at `port`.
pub async fn read(at: At<'_>, key: &str) -> Result<Option<Record>, String> {
    let mut c = conn(at).await?;
    let cmd = match at.backend {
        ReplicaBackend::Bulwark => {
            let mut cmd = redis::cmd("BW.GET");
            cmd.arg(key);
            cmd
        }
        ReplicaBackend::Redis => {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("bw_get").arg(1).arg(key);
            cmd
        }
    };
    let reply: (Option<String>, Option<Vec<u8>>, i64, redis::Value) = query(&mut c, &cmd).await?;
    Ok(reply.0.map(|version| Record {
        version,
        value: if reply.2 == 1 {
            None
        } else {
            reply.1.or(Some(Vec::new()))
        },
    }))
}

/// Replaces the value of `key` (still at `version`) with `value`; false if the record
/// changed meanwhile.
pub async fn corrupt(at: At<'_>, key: &str, version: &str, value: &[u8]) -> Result<bool, String> {
    let mut c = conn(at).await?;
    match at.backend {
        ReplicaBackend::Bulwark => {
            // BW.DEBUG has no condition: check the version right before (the window is the
            // time between two commands on one connection).
            if read(at, key).await?.map(|r| r.version).as_deref() != Some(version) {
                return Ok(false);
            }
            let mut cmd = redis::cmd("BW.DEBUG");
            cmd.arg("CORRUPT").arg(key).arg(value);
            let r: redis::Value = query(&mut c, &cmd).await?;
            Ok(r != redis::Value::Nil)
        }
        ReplicaBackend::Redis => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(CORRUPT_LUA)
                .arg(1)
                .arg(format!("bw:{key}"))
                .arg(version)
                .arg(value);
            Ok(query::<i64>(&mut c, &cmd).await? == 1)
        }
    }
}

/// Forgets the committed record of `key` (still at `version`); false if it changed.
pub async fn drop_record(at: At<'_>, key: &str, version: &str) -> Result<bool, String> {
    let mut c = conn(at).await?;
    match at.backend {
        ReplicaBackend::Bulwark => {
            if read(at, key).await?.map(|r| r.version).as_deref() != Some(version) {
                return Ok(false);
            }
            let mut cmd = redis::cmd("BW.DEBUG");
            cmd.arg("DROP").arg(key);
            let r: redis::Value = query(&mut c, &cmd).await?;
            Ok(r != redis::Value::Nil)
        }
        ReplicaBackend::Redis => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(DROP_LUA)
                .arg(1)
                .arg(format!("bw:{key}"))
                .arg(version);
            Ok(query::<i64>(&mut c, &cmd).await? == 1)
        }
    }
}

/// Puts `record` back with last-write-wins (`BW.PUT` / `bw_put`): applies only if the
/// replica holds nothing newer, so a restore never hides a later write.
pub async fn restore_dropped(at: At<'_>, key: &str, record: &Record) -> Result<(), String> {
    let mut c = conn(at).await?;
    let tomb = if record.value.is_none() { "1" } else { "0" };
    let value = record.value.clone().unwrap_or_default();
    let mut cmd = match at.backend {
        ReplicaBackend::Bulwark => redis::cmd("BW.PUT"),
        ReplicaBackend::Redis => {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("bw_put").arg(1);
            cmd
        }
    };
    cmd.arg(key).arg(&record.version).arg(tomb).arg(value);
    query::<redis::Value>(&mut c, &cmd).await.map(drop)
}

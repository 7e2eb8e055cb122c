//! Which replica to talk to, and in which dialect.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// The protocol a replica speaks (same operations and reply shapes in both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// A `bulwark node`: native `BW.*` commands.
    Bulwark,
    /// A real Redis >= 7: `FCALL bw_*` into the `bulwark` function library.
    Redis,
}

impl Dialect {
    /// The name accepted by [`FromStr`] (`bulwark` or `redis`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Bulwark => "bulwark",
            Dialect::Redis => "redis",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dialect {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bulwark" => Ok(Dialect::Bulwark),
            "redis" => Ok(Dialect::Redis),
            _ => Err(SpecError::Dialect(s.to_owned())),
        }
    }
}

/// One replica: its name (used in pending records as coordinator, in logs and metrics)
/// and its `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Replica name, e.g. `db_g1`.
    pub name: String,
    /// `host:port` of its RESP endpoint.
    pub addr: String,
}

/// TLS on the links to replicas: the CA their certificates must chain to and, for mutual
/// TLS, the certificate and key the client presents. The files are read again at every
/// connect, so renewed certificates are used without a restart; a set that fails to
/// read keeps the last one that worked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaTls {
    /// The CA file (PEM) the replicas' certificates are checked against.
    pub ca: std::path::PathBuf,
    /// The client's certificate chain and key (PEM), when replicas require one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A replica list or dialect that cannot be used; the message names the bad part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not `name=host:port`.
    #[error("invalid replica {0:?}: expected name=host:port")]
    Syntax(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port in replica {0:?}")]
    Port(String),
    /// Two replicas share a name.
    #[error("replica name {0:?} is listed twice")]
    Duplicate(String),
    /// The list names no replica.
    #[error("the replica list is empty")]
    Empty,
    /// Neither `bulwark` nor `redis`.
    #[error("invalid replica dialect {0:?}: expected bulwark or redis")]
    Dialect(String),
}

impl ReplicaSpec {
    /// Parses `a=host:port,b=host:port` (spaces around items allowed); refuses empty
    /// lists and duplicate names.
    pub fn parse_list(s: &str) -> Result<Vec<ReplicaSpec>, SpecError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let spec: ReplicaSpec = item.parse()?;
            if !seen.insert(spec.name.clone()) {
                return Err(SpecError::Duplicate(spec.name));
            }
            out.push(spec);
        }
        if out.is_empty() {
            return Err(SpecError::Empty);
        }
        Ok(out)
    }

    /// The host and port parts of [`Self::addr`].
    pub fn host_port(&self) -> Result<(&str, u16), SpecError> {
        let (host, port) = self
            .addr
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| SpecError::Syntax(self.to_string()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| SpecError::Port(self.to_string()))?;
        // `[::1]:6401` names an IPv6 host; the brackets are URL syntax, not the host.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok((host, port))
    }
}

impl fmt::Display for ReplicaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.addr)
    }
}

impl FromStr for ReplicaSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (name, addr) = s
            .trim()
            .split_once('=')
            .ok_or_else(|| SpecError::Syntax(s.to_owned()))?;
        let (name, addr) = (name.trim(), addr.trim());
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !valid_name || addr.is_empty() {
            return Err(SpecError::Syntax(s.to_owned()));
        }
        let spec = ReplicaSpec {
            name: name.to_owned(),
            addr: addr.to_owned(),
        };
        spec.host_port()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_lists() {
        let s: ReplicaSpec = "db_g1=127.0.0.1:6401".parse().expect("valid");
        assert_eq!(
            (s.name.as_str(), s.host_port()),
            ("db_g1", Ok(("127.0.0.1", 6401)))
        );
        let l = ReplicaSpec::parse_list("a=h:1, b=[::1]:2").expect("valid list");
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].host_port(), Ok(("::1", 2)));
        assert_eq!("Redis".parse::<Dialect>(), Ok(Dialect::Redis));
        assert_eq!("bulwark".parse::<Dialect>(), Ok(Dialect::Bulwark));
    }

    #[test]
    fn rejects_bad_specs_and_lists() {
        for bad in [
            "",
            "a",
            "a=",
            "=h:1",
            "a=h",
            "a=:1",
            "a=h:0",
            "a=h:70000",
            "a b=h:1",
        ] {
            assert!(bad.parse::<ReplicaSpec>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ReplicaSpec::parse_list(" , "), Err(SpecError::Empty));
        assert_eq!(
            ReplicaSpec::parse_list("a=h:1,a=h:2"),
            Err(SpecError::Duplicate("a".into()))
        );
        assert!("memcached".parse::<Dialect>().is_err());
    }
}

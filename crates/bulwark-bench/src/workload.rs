//! What to send: keys, values and request URIs, all built before the clock starts.
//!
//! The hot loop only picks a key index and clones pre-built parts (`Uri` and `Bytes` clones
//! are reference-count bumps), so the generator's own cost stays small and flat.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Method, Request, Uri};

use crate::args::{Api, Op, Target};

/// Memory we allow for pre-built URIs and bodies; `--keys × --value-size` above it is refused
/// rather than exhausting memory.
const MAX_PREBUILT_BYTES: u64 = 256 * 1024 * 1024;

/// Number of distinct values written; key `i` always gets value `i % VALUE_POOL`.
const VALUE_POOL: u64 = 16;

/// Why a workload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The pre-built URIs would not fit in [`MAX_PREBUILT_BYTES`].
    #[error(
        "--keys {keys} × --value-size {value_size} needs too much memory for pre-built requests; reduce one of them"
    )]
    TooLarge {
        /// `--keys`.
        keys: u64,
        /// `--value-size`.
        value_size: usize,
    },
    /// The target URL plus a path did not form a valid URI.
    #[error("cannot build a request URI from {0:?}")]
    BadUri(String),
}

/// Small, fast, seedable PRNG (SplitMix64): enough to pick keys and ops uniformly, and
/// deterministic per worker so runs are reproducible.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The hex text written as value number `i`: URL-safe, `len` bytes long.
pub(crate) fn value_text(i: u64, len: usize) -> String {
    let mut rng = Rng::new(i ^ 0xB0_15_A2_4B);
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rng.next_u64()));
    }
    s.truncate(len);
    s
}

/// The name of key number `i`.
pub(crate) fn key_name(i: u64) -> String {
    format!("bench-{i}")
}

/// Pre-built requests for one (target, op) pair.
#[derive(Debug)]
pub(crate) struct Workload {
    /// Write URI per key: `/write/{key}/{value}` (seed) or `/v1/kv/{key}` (v1).
    write_uris: Vec<Uri>,
    /// Read URI per key: `/read/{key}` or `/v1/kv/{key}`.
    read_uris: Vec<Uri>,
    /// Value bodies for v1 PUTs (empty for the seed API, whose value is in the path).
    values: Vec<Bytes>,
    api: Api,
    op: Op,
    /// A request is a read when a 53-bit random number is below this (mixed op).
    read_threshold: u64,
    /// `Authorization: Bearer <key>` on every request (`--api-key-file`).
    authorization: Option<HeaderValue>,
}

/// A fully described request, ready to hand to the client.
pub(crate) type BenchRequest = Request<Full<Bytes>>;

impl Workload {
    /// Builds every URI for `keys` keys against `target`.
    pub(crate) fn build(
        target: &Target,
        api: Api,
        op: Op,
        keys: u64,
        value_size: usize,
        read_ratio: f64,
    ) -> Result<Self, WorkloadError> {
        let per_key = value_size as u64 + target.url.len() as u64 + 64;
        if keys.saturating_mul(per_key).saturating_mul(2) > MAX_PREBUILT_BYTES {
            return Err(WorkloadError::TooLarge { keys, value_size });
        }
        let uri = |path: String| -> Result<Uri, WorkloadError> {
            let full = format!("{}{}", target.url, path);
            full.parse().map_err(|_| WorkloadError::BadUri(full))
        };
        let values: Vec<String> = (0..VALUE_POOL.min(keys))
            .map(|i| value_text(i, value_size))
            .collect();
        let mut write_uris = Vec::with_capacity(keys as usize);
        let mut read_uris = Vec::with_capacity(keys as usize);
        for i in 0..keys {
            let key = key_name(i);
            match api {
                Api::Seed => {
                    let value = &values[(i % VALUE_POOL) as usize];
                    write_uris.push(uri(format!("/write/{key}/{value}"))?);
                    read_uris.push(uri(format!("/read/{key}"))?);
                }
                Api::V1 => {
                    let u = uri(format!("/v1/kv/{key}"))?;
                    write_uris.push(u.clone());
                    read_uris.push(u);
                }
            }
        }
        let values = match api {
            Api::Seed => Vec::new(),
            Api::V1 => values.into_iter().map(Bytes::from).collect(),
        };
        Ok(Workload {
            write_uris,
            read_uris,
            values,
            api,
            op,
            read_threshold: (read_ratio.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64,
            authorization: None,
        })
    }

    /// Sends `authorization` (a sensitive header value) with every request.
    pub(crate) fn with_authorization(mut self, authorization: Option<HeaderValue>) -> Workload {
        self.authorization = authorization;
        self
    }

    /// Number of keys.
    pub(crate) fn keys(&self) -> u64 {
        self.write_uris.len() as u64
    }

    /// The next request of this scenario: a random key, and for `mixed` a random op.
    pub(crate) fn next_request(&self, rng: &mut Rng) -> BenchRequest {
        let key = rng.below(self.keys()) as usize;
        let is_read = match self.op {
            Op::Read => true,
            Op::Write => false,
            Op::Mixed => (rng.next_u64() >> 11) < self.read_threshold,
        };
        if is_read {
            self.read_request(key)
        } else {
            self.write_request(key)
        }
    }

    /// A write of key number `key` (`key < keys()`).
    pub(crate) fn write_request(&self, key: usize) -> BenchRequest {
        let uri = self.write_uris[key].clone();
        match self.api {
            Api::Seed => self.request(Method::POST, uri, Bytes::new()),
            Api::V1 => {
                let body = self.values[key % self.values.len()].clone();
                self.request(Method::PUT, uri, body)
            }
        }
    }

    /// A read of key number `key` (`key < keys()`).
    pub(crate) fn read_request(&self, key: usize) -> BenchRequest {
        self.request(Method::GET, self.read_uris[key].clone(), Bytes::new())
    }

    fn request(&self, method: Method, uri: Uri, body: Bytes) -> BenchRequest {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        if let Some(auth) = &self.authorization {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::new("T", "http://127.0.0.1:9")
    }

    #[test]
    fn values_are_hex_and_exact_length() {
        for len in [1, 15, 16, 17, 64, 1000] {
            let v = value_text(3, len);
            assert_eq!(v.len(), len);
            assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(value_text(1, 32), value_text(2, 32));
    }

    #[test]
    fn seed_api_uris() {
        let w = Workload::build(&target(), Api::Seed, Op::Write, 3, 8, 0.5).expect("builds");
        let r = w.write_request(2);
        assert_eq!(r.method(), Method::POST);
        let path = r.uri().path().to_owned();
        assert!(path.starts_with("/write/bench-2/"), "{path}");
        assert_eq!(path.len(), "/write/bench-2/".len() + 8);
        let r = w.read_request(1);
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().to_string(), "http://127.0.0.1:9/read/bench-1");
    }

    #[test]
    fn v1_api_puts_raw_value() {
        let w = Workload::build(&target(), Api::V1, Op::Write, 2, 5, 0.5).expect("builds");
        let r = w.write_request(1);
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(r.uri().path(), "/v1/kv/bench-1");
        assert_eq!(w.read_request(0).method(), Method::GET);
    }

    #[test]
    fn mixed_ratio_is_respected_roughly() {
        let w = Workload::build(&target(), Api::Seed, Op::Mixed, 10, 4, 0.25).expect("builds");
        let mut rng = Rng::new(7);
        let reads = (0..10_000)
            .filter(|_| w.next_request(&mut rng).method() == Method::GET)
            .count();
        assert!((2000..3000).contains(&reads), "{reads}");
        let all_reads = Workload::build(&target(), Api::Seed, Op::Mixed, 10, 4, 1.0).expect("ok");
        assert!((0..100).all(|_| all_reads.next_request(&mut rng).method() == Method::GET));
    }

    #[test]
    fn keys_are_uniform_and_in_range() {
        let mut rng = Rng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn huge_keyspace_is_refused() {
        let err = Workload::build(&target(), Api::Seed, Op::Write, 10_000_000, 1_000_000, 0.5);
        assert!(matches!(err, Err(WorkloadError::TooLarge { .. })));
    }
}

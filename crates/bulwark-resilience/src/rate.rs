//! Rate limiting per key (client address, API key): GCRA with bounded state.
//!
//! The generic cell rate algorithm keeps one instant per key and quota, its *theoretical
//! arrival time* (TAT). A quota of `count` per `window` spaces requests by the emission
//! interval `T = window / count` and tolerates a burst of `count`: a request at `now` is
//! allowed when `max(TAT, now) + T − now ≤ window`, and then sets `TAT = max(TAT, now) + T`.
//! A policy is one or more quotas (seed 001: 100 a minute and 1,000 an hour); a request
//! must fit all of them and uses a cell of each only when it does.
//!
//! Why not `governor`: its keyed store grows with every key ever seen until the caller
//! prunes it (governor #171), and its clock is not tokio's, so limits cannot be tested
//! under paused time. The algorithm is a dozen lines; the bounded table is the part that
//! matters, and it is here:
//!
//! * A key whose every TAT is in the past is *idle*: its state equals a fresh key's, so
//!   dropping it changes no decision. Idle keys are purged from a shard every
//!   [`PURGE_EVERY`] new keys, and first when a shard is full.
//! * A shard full of keys that are not idle (a flood of distinct addresses that each
//!   used their quota) evicts the eighth of its keys closest to idle: the most any of them
//!   regains is its burst, and the table never exceeds its bound.
//!
//! Everything is in this process: the limiter cannot hang or fail open because a store
//! is down (envoyproxy/ratelimit #462, #978).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Most quotas in one policy.
pub const MAX_QUOTAS: usize = 4;
/// Shards of the key table (each its own lock).
const SHARDS: usize = 16;
/// A shard purges its idle keys after this many new keys.
pub const PURGE_EVERY: u32 = 4096;

/// `count` requests per `window`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per window.
    pub count: u32,
    /// The window.
    pub window: Duration,
}

impl Quota {
    fn emission(&self) -> Duration {
        self.window / self.count
    }

    /// The quota's name in `RateLimit-Policy` (`minute`, `hour`, `30s`).
    pub fn name(&self) -> String {
        match self.window.as_secs() {
            1 => "second".into(),
            60 => "minute".into(),
            3600 => "hour".into(),
            86_400 => "day".into(),
            s => format!("{s}s"),
        }
    }
}

/// One or more quotas a request must fit, e.g. `100/min,1000/h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    quotas: Vec<Quota>,
}

impl Policy {
    /// The quotas, in the order given.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// A policy of these quotas (1 to [`MAX_QUOTAS`], each with a positive count and
    /// window).
    pub fn new(quotas: Vec<Quota>) -> Result<Policy, String> {
        if quotas.is_empty() || quotas.len() > MAX_QUOTAS {
            return Err(format!("expected 1 to {MAX_QUOTAS} quotas"));
        }
        for q in &quotas {
            if q.count == 0 || q.window.is_zero() {
                return Err("a quota needs a positive count and window".into());
            }
        }
        Ok(Policy { quotas })
    }
}

impl FromStr for Policy {
    type Err = String;

    /// `COUNT/UNIT[,COUNT/UNIT…]` with UNIT one of `s`, `sec`, `m`, `min`, `h`, `hour`,
    /// `d`, `day`, or a number of seconds followed by `s` (`30s`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected =
            || format!("{s:?}: expected quotas like 100/min,1000/h (units s, min, h, d)");
        let quotas = s
            .split(',')
            .map(|part| {
                let (count, unit) = part.trim().split_once('/').ok_or_else(expected)?;
                let count: u32 = count.trim().parse().map_err(|_| expected())?;
                let unit = unit.trim().to_ascii_lowercase();
                let window = match unit.as_str() {
                    "s" | "sec" | "second" => Duration::from_secs(1),
                    "m" | "min" | "minute" => Duration::from_secs(60),
                    "h" | "hour" => Duration::from_secs(3600),
                    "d" | "day" => Duration::from_secs(86_400),
                    other => {
                        let secs: u64 = other
                            .strip_suffix('s')
                            .and_then(|n| n.parse().ok())
                            .ok_or_else(expected)?;
                        Duration::from_secs(secs)
                    }
                };
                Ok(Quota { count, window })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Policy::new(quotas).map_err(|e| format!("{s:?}: {e}"))
    }
}

/// Where a key stands against its policy after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Whether the request was allowed (and used a cell of every quota).
    pub allowed: bool,
    /// The quota with the fewest requests left (index into [`Policy::quotas`]).
    pub quota: usize,
    /// Requests still allowed now under that quota.
    pub remaining: u32,
    /// Until that quota is fully replenished.
    pub reset: Duration,
    /// When refused: how long until a request would be allowed.
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Shard<K> {
    keys: HashMap<K, [Instant; MAX_QUOTAS]>,
    inserted: u32,
}

/// A keyed GCRA limiter whose table holds at most `max_keys` keys.
#[derive(Debug)]
pub struct RateLimiter<K> {
    policy: Policy,
    shards: Box<[Mutex<Shard<K>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter for `policy` remembering at most `max_keys` keys (at least one per
    /// shard).
    pub fn new(policy: Policy, max_keys: usize) -> RateLimiter<K> {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    keys: HashMap::new(),
                    inserted: 0,
                })
            })
            .collect();
        RateLimiter {
            policy,
            shards,
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.keys.len()))
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a request of `key` now; when allowed, it uses one cell of every quota.
    pub fn check(&self, key: &K) -> Standing {
        let now = Instant::now();
        let quotas = self.policy.quotas();
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        let Ok(mut shard) = self.shards[index].lock() else {
            // A poisoned lock means a panic elsewhere; refusing everyone would turn it
            // into an outage, so let the request through.
            return Standing {
                allowed: true,
                quota: 0,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
            };
        };
        let tats = shard.keys.get(key).copied().unwrap_or([now; MAX_QUOTAS]);
        let mut next = tats;
        let mut allowed = true;
        let mut retry_after = Duration::ZERO;
        for (i, q) in quotas.iter().enumerate() {
            let candidate = tats[i].max(now) + q.emission();
            let ahead = candidate - now;
            if ahead > q.window {
                allowed = false;
                retry_after = retry_after.max(ahead - q.window);
            }
            next[i] = candidate;
        }
        let state = if allowed { next } else { tats };
        // The most restrictive quota, as it stands after this request.
        let (quota, remaining, reset) = quotas
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let ahead = state[i].saturating_duration_since(now);
                let room = q.window.saturating_sub(ahead);
                let left = (room.as_nanos() / q.emission().as_nanos().max(1)) as u32;
                (i, left.min(q.count), ahead)
            })
            .min_by_key(|(_, left, _)| *left)
            .unwrap_or((0, 0, Duration::ZERO));
        if allowed {
            if !shard.keys.contains_key(key) {
                self.make_room(&mut shard, now);
                shard.inserted = shard.inserted.wrapping_add(1);
            }
            shard.keys.insert(key.clone(), state);
        }
        Standing {
            allowed,
            quota,
            remaining,
            reset,
            retry_after,
        }
    }

    /// Before a new key goes in: purge idle keys now and then, and when the shard is
    /// full; if it is still full, evict the eighth closest to idle.
    fn make_room(&self, shard: &mut Shard<K>, now: Instant) {
        let n = self.policy.quotas().len();
        let idle = |tats: &[Instant; MAX_QUOTAS]| tats[..n].iter().all(|t| *t <= now);
        if shard.inserted % PURGE_EVERY == PURGE_EVERY - 1 || shard.keys.len() >= self.per_shard {
            shard.keys.retain(|_, tats| !idle(tats));
        }
        if shard.keys.len() >= self.per_shard {
            let mut by_latest: Vec<(Instant, K)> = shard
                .keys
                .iter()
                .map(|(k, tats)| (tats[..n].iter().copied().max().unwrap_or(now), k.clone()))
                .collect();
            let evict = (by_latest.len() / 8).max(1);
            by_latest.select_nth_unstable_by_key(evict - 1, |(t, _)| *t);
            for (_, k) in by_latest.into_iter().take(evict) {
                shard.keys.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> Policy {
        s.parse().expect("policy")
    }

    #[test]
    fn policies_parse_and_refuse_nonsense() {
        let p = policy("100/min, 1000/h");
        assert_eq!(
            p.quotas(),
            [
                Quota {
                    count: 100,
                    window: Duration::from_secs(60)
                },
                Quota {
                    count: 1000,
                    window: Duration::from_secs(3600)
                }
            ]
        );
        assert_eq!(policy("5/30s").quotas()[0].name(), "30s");
        for bad in [
            "",
            "100",
            "0/min",
            "10/fortnight",
            "1/s,1/s,1/s,1/s,1/s",
            "x/min",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_request_per_emission_interval() {
        let limiter = RateLimiter::new(policy("100/min"), 1000);
        for i in 0..100 {
            let s = limiter.check(&"k");
            assert!(s.allowed, "request {i}");
            assert_eq!(s.remaining, 99 - i);
        }
        let refused = limiter.check(&"k");
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Duration::from_millis(600));
        // Another key is unaffected.
        assert!(limiter.check(&"other").allowed);
        tokio::time::advance(Duration::from_millis(599)).await;
        assert!(!limiter.check(&"k").allowed);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.check(&"k").allowed);
        assert!(!limiter.check(&"k").allowed);
        // A full window later the whole burst is back.
        tokio::time::advance(Duration::from_secs(60)).await;
        let s = limiter.check(&"k");
        assert!(s.allowed);
        assert_eq!(s.remaining, 99);
    }

    #[tokio::test(start_paused = true)]
    async fn every_quota_must_fit_and_a_refusal_uses_none() {
        let limiter = RateLimiter::new(policy("10/s,15/min"), 1000);
        for _ in 0..10 {
            assert!(limiter.check(&1).allowed);
        }
        let s = limiter.check(&1);
        assert!(!s.allowed);
        assert_eq!(s.quota, 0, "the per-second quota is the one exhausted");
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            assert!(limiter.check(&1).allowed);
        }
        let s = limiter.check(&1);
        assert!(!s.allowed, "the minute's 15 are used");
        assert_eq!(s.quota, 1);
        // 15 cells of 4 s from t=0 end at t=60 s; at t=1 s the next fits after 3 s.
        assert_eq!(s.retry_after, Duration::from_secs(3));
        // Refusals did not use cells: after the retry-after, one is allowed.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(limiter.check(&1).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_keys_stays_within_the_bound() {
        let limiter = RateLimiter::new(policy("100/min"), 1600);
        // A busy key, then a flood of one-off keys that each used a cell.
        for _ in 0..50 {
            assert!(limiter.check(&u64::MAX).allowed);
        }
        for k in 0..100_000u64 {
            assert!(limiter.check(&k).allowed);
            assert!(limiter.len() <= 1600);
        }
        // The flood's keys are closer to idle than the busy key, which keeps its state.
        let s = limiter.check(&u64::MAX);
        assert_eq!(s.remaining, 49, "the busy key was not evicted");
        // Once everything is idle, new keys purge the table.
        tokio::time::advance(Duration::from_secs(61)).await;
        for k in 0..(PURGE_EVERY as u64 * SHARDS as u64) {
            limiter.check(&(k + 1_000_000));
        }
        assert!(limiter.len() <= 1600);
    }
}

//! Command-line surface of `bulwark bench`, and the small parsers behind it.
//!
//! The types here are plain data: everything that touches the network lives in
//! [`crate::measure`] and [`crate::replica_down`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// `bulwark bench …`: load generators for Bulwark's services.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which service to load.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The services `bulwark bench` knows how to load.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Load the CAP service's key-value HTTP API (seed endpoints or /v1/kv).
    Kv(KvArgs),
    /// Run a flash sale against the commerce service (`bulwark shop`): views and
    /// purchases of one hot product, then the invariant check.
    Shop(ShopBenchArgs),
}

/// Flags of `bulwark bench shop`.
///
/// Each strategy gets a fresh sale (the hot product seeded with `--stock`, `reset`), a
/// warm-up, a measured phase of `--connections` workers doing the `--read-ratio` mix, then
/// the audit once every order is terminal.
#[derive(Args, Debug, Clone)]
pub struct ShopBenchArgs {
    /// A running shop to load (its base URL). Without it, `--spawn` is implied.
    #[arg(long, value_name = "URL", conflicts_with = "spawn")]
    pub target: Option<Target>,

    /// Start `bulwark shop` child processes (this same binary) on free ports, one per
    /// strategy, and read their memory while they run.
    #[arg(long)]
    pub spawn: bool,

    /// Database of the spawned shops. Default: a fresh SQLite file per strategy in a
    /// temporary directory.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Redis of the spawned shops, for the `redis-lua` and `layered` strategies.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Strategies of the spawned shops: `all`, or a comma-separated list of batched,
    /// row-lock, optimistic, redis-lua, layered. Each runs as its own sale, side by side.
    #[arg(long, default_value = "batched", value_parser = parse_strategies)]
    pub strategies: StrategyList,

    /// Workers, and so connections kept open to the shop (the seed's 6,000).
    #[arg(long, default_value_t = 6000, value_parser = clap::value_parser!(u32).range(1..=MAX_SHOP_CONNECTIONS))]
    pub connections: u32,

    /// Share of requests that view the product (`GET /v1/products/{id}`); the rest buy
    /// one unit (`POST /v1/orders`, a unique Idempotency-Key each).
    #[arg(long, default_value_t = 0.8, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Open loop: send this many requests/s in total over the `--connections` workers,
    /// with latency measured from each request's scheduled time. Default: closed loop
    /// (every worker sends its next request when the previous one is answered).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Measured time per strategy, in seconds.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub duration: Duration,

    /// Unmeasured warm-up per strategy, in seconds: always closed loop, so that every
    /// worker opens its connection (they stay open through an open-loop measurement).
    /// Its purchases are part of the sale and of the audit.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    pub warmup: Duration,

    /// Units of the hot product at the start of each sale.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000_000_000))]
    pub stock: i64,

    /// Id of the hot product (seeded with `reset`, which wipes the sale's previous state).
    #[arg(long, default_value = "bench-hot")]
    pub product: String,

    /// Per-request timeout in seconds.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,

    /// How long to wait after the load for every order to be terminal, in seconds.
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    pub settle_timeout: Duration,

    /// Run the pgbench baseline (the single-row conditional UPDATE, 64 clients) on the
    /// same PostgreSQL before the sales: `on`, `off`, or `auto` (on when the database is
    /// PostgreSQL).
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub pgbench: Toggle,

    /// pgbench clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pgbench_clients: u32,

    /// Extra `KEY=VALUE` environment for the spawned shops (e.g. SHOP_DB_POOL_SIZE=32).
    /// Repeatable.
    #[arg(long = "shop-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub shop_env: Vec<(String, String)>,

    /// Print a JSON document instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also write the JSON document to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Upper bound on `bench shop --connections`.
pub const MAX_SHOP_CONNECTIONS: i64 = 10_000;

/// The shop's purchase strategies, by the names `bulwark shop --strategy` takes.
pub const SHOP_STRATEGIES: [&str; 5] =
    ["batched", "row-lock", "optimistic", "redis-lua", "layered"];

/// A non-empty list of strategy names, without duplicates, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyList(pub Vec<String>);

/// Parses `all` or `a,b,…` (each one of [`SHOP_STRATEGIES`]).
pub fn parse_strategies(s: &str) -> Result<StrategyList, String> {
    if s.trim() == "all" {
        return Ok(StrategyList(SHOP_STRATEGIES.map(str::to_owned).to_vec()));
    }
    let mut list: Vec<String> = Vec::new();
    for name in s.split(',').map(str::trim) {
        if !SHOP_STRATEGIES.contains(&name) {
            return Err(format!(
                "{name:?} is not a strategy (expected all, or a list of {})",
                SHOP_STRATEGIES.join(", ")
            ));
        }
        if !list.iter().any(|n| n == name) {
            list.push(name.to_owned());
        }
    }
    Ok(StrategyList(list))
}

/// Parses `KEY=VALUE` with a non-empty key.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// On, off, or decided from the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// Decided from the context (see the flag).
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Flags of `bulwark bench kv`.
///
/// Every (target × op) pair is one *scenario*, measured separately after its own warm-up.
#[derive(Args, Debug, Clone)]
pub struct KvArgs {
    /// Gateway to measure, as LABEL=URL or URL (the label is then host:port). Repeatable.
    /// Default: AP=http://127.0.0.1:5001 and CP=http://127.0.0.1:5002.
    #[arg(long = "target", value_name = "[LABEL=]URL")]
    pub targets: Vec<Target>,

    /// Operation to measure. Repeatable. Default: write, then read.
    #[arg(long = "op", value_enum)]
    pub ops: Vec<Op>,

    /// Fraction of reads in the `mixed` op (0.0–1.0).
    #[arg(long, default_value_t = 0.5, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Measured time per scenario, in seconds (fractions allowed).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub duration: Duration,

    /// Unmeasured warm-up per scenario, in seconds (fills the connection pool and caches).
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    pub warmup: Duration,

    /// Number of workers, and so of connections. Closed loop: each worker sends its next
    /// request when the previous one finished. Open loop (--rate): the most requests in
    /// flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY))]
    pub concurrency: u32,

    /// Open loop: send at this fixed total rate (requests/s) and measure latency from each
    /// request's *scheduled* send time, so that a slow server shows up as latency rather
    /// than as a politely reduced request rate (coordinated omission correction).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Size of the keyspace; keys are chosen uniformly from it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    pub keys: u64,

    /// Length of each written value in bytes (hex text, so it is URL-safe for the seed API).
    #[arg(long, default_value_t = 64, value_parser = parse_value_size)]
    pub value_size: usize,

    /// Which HTTP API to use: the seed endpoints (/write, /read) or /v1/kv.
    #[arg(long, value_enum, default_value_t = Api::Seed)]
    pub api: Api,

    /// Per-request timeout in seconds (connect, send, and reading the whole response).
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    pub timeout: Duration,

    /// Send the API key in this file as `Authorization: Bearer` (a gateway run with
    /// credentials, e.g. `<data>/secrets/writer.key` under `bulwark up --auth`). A file,
    /// not a flag: command lines are visible to every user of the machine.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Trust this CA (PEM) for `https://` targets (`<data>/tls/ca.pem` under
    /// `bulwark up --tls`). Connections are kept alive, so the handshake is paid once per
    /// worker.
    #[arg(long, value_name = "FILE", env = "BULWARK_CA_FILE")]
    pub cacert: Option<PathBuf>,

    /// Print a JSON document instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also write the JSON document to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Condition to measure under. `replica-down` stops a replica through the supervisor
    /// before measuring and starts it again afterwards.
    #[arg(long, value_enum, default_value_t = Scenario::Normal)]
    pub scenario: Scenario,

    /// Supervisor control API used by `--scenario replica-down`.
    #[arg(long, default_value = "http://127.0.0.1:7070", value_name = "URL")]
    pub control: String,

    /// Replica stopped by `--scenario replica-down`.
    #[arg(long, default_value = "db_g2", value_name = "NAME")]
    pub replica: String,

    /// How long `--scenario replica-down` waits for each gateway's breaker to open, in
    /// seconds.
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub breaker_wait: Duration,

    /// Do not write every key once before read and mixed scenarios (reads of missing keys
    /// then measure the not-found path).
    #[arg(long)]
    pub no_preload: bool,
}

/// Upper bound on `--concurrency`: it is also the connection count, which must be bounded.
pub const MAX_CONCURRENCY: i64 = 4096;
/// Upper bound on `--keys`: URIs for every key are built up front.
pub const MAX_KEYS: u64 = 10_000_000;

impl KvArgs {
    /// The targets to measure, with the documented defaults when none was given.
    pub fn effective_targets(&self) -> Vec<Target> {
        if self.targets.is_empty() {
            vec![
                Target::new("AP", "http://127.0.0.1:5001"),
                Target::new("CP", "http://127.0.0.1:5002"),
            ]
        } else {
            self.targets.clone()
        }
    }

    /// The ops to measure, with the documented default (write, then read).
    pub fn effective_ops(&self) -> Vec<Op> {
        if self.ops.is_empty() {
            vec![Op::Write, Op::Read]
        } else {
            self.ops.clone()
        }
    }
}

/// One gateway under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Short name used in result labels ("AP", "CP", …).
    pub label: String,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:5001`.
    pub url: String,
}

impl Target {
    /// A target from a label and a base URL (a trailing slash is dropped).
    pub fn new(label: &str, url: &str) -> Self {
        Target {
            label: label.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        }
    }
}

/// Why a `--target` could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetParseError {
    /// The URL part is not `http(s)://host[:port][/prefix]`.
    #[error("target URL {0:?} must start with http:// or https:// and name a host")]
    BadUrl(String),
    /// `=URL` with nothing before the `=`.
    #[error("target label before '=' is empty")]
    EmptyLabel,
}

impl FromStr for Target {
    type Err = TargetParseError;

    /// Parses `LABEL=URL` or `URL`. The `=` only separates a label when what precedes it
    /// contains no `://`, so a URL with `=` in its query is still read as a URL.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (label, url) = match s.split_once('=') {
            Some((label, url)) if !label.contains("://") => {
                if label.trim().is_empty() {
                    return Err(TargetParseError::EmptyLabel);
                }
                (Some(label.trim()), url.trim())
            }
            _ => (None, s.trim()),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| TargetParseError::BadUrl(url.to_owned()))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || url.parse::<hyper::Uri>().is_err() {
            return Err(TargetParseError::BadUrl(url.to_owned()));
        }
        Ok(Target::new(label.unwrap_or(authority), url))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.label, self.url)
    }
}

/// What each request of a scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Every request writes a key.
    Write,
    /// Every request reads a key.
    Read,
    /// Each request reads with probability `--read-ratio`, else writes.
    Mixed,
}

impl Op {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Read => "read",
            Op::Mixed => "mixed",
        }
    }
}

/// Which of the gateway's two HTTP APIs to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /write/{key}/{value}` and `GET /read/{key}`, as the seed's curl commands use.
    Seed,
    /// `PUT /v1/kv/{key}` (raw value body) and `GET /v1/kv/{key}`.
    V1,
}

/// Condition the scenarios are measured under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// All replicas up.
    Normal,
    /// One replica (`--replica`) stopped through the supervisor for the whole measurement.
    ReplicaDown,
}

/// Parses a non-negative number of seconds, fractions allowed ("0.5").
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

/// Parses a request rate: finite and positive.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate in (0, 10000000] requests/s")),
    }
}

/// Parses a fraction in `[0, 1]`.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// Parses a value size: at least one byte and within the gateway's value limit.
pub fn parse_value_size(s: &str) -> Result<usize, String> {
    let max = bulwark_core::Limits::default().max_value_bytes;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a value size between 1 and {max} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: BenchCommand,
    }

    fn kv(argv: &[&str]) -> Result<KvArgs, clap::Error> {
        let mut full = vec!["bench", "kv"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| match c.command {
            BenchCommand::Kv(a) => a,
            BenchCommand::Shop(_) => unreachable!("parsed `bench kv`"),
        })
    }

    fn shop(argv: &[&str]) -> Result<ShopBenchArgs, clap::Error> {
        let mut full = vec!["bench", "shop"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| match c.command {
            BenchCommand::Shop(a) => a,
            BenchCommand::Kv(_) => unreachable!("parsed `bench shop`"),
        })
    }

    #[test]
    fn shop_defaults_and_strategy_lists() {
        let a = shop(&[]).expect("parses");
        assert_eq!(a.connections, 6000);
        assert_eq!(a.read_ratio, 0.8);
        assert_eq!(a.strategies, StrategyList(vec!["batched".into()]));
        assert_eq!(a.pgbench, Toggle::Auto);
        assert_eq!(a.pgbench_clients, 64);
        let a = shop(&["--strategies", "all", "--spawn"]).expect("parses");
        assert_eq!(a.strategies.0.len(), 5);
        let a = shop(&["--strategies", "row-lock, batched,row-lock"]).expect("parses");
        assert_eq!(a.strategies.0, vec!["row-lock", "batched"]);
        let a = shop(&["--shop-env", "SHOP_DB_POOL_SIZE=32"]).expect("parses");
        assert_eq!(a.shop_env, vec![("SHOP_DB_POOL_SIZE".into(), "32".into())]);
        assert!(shop(&["--strategies", "fastest"]).is_err());
        assert!(shop(&["--connections", "0"]).is_err());
        assert!(shop(&["--connections", "10001"]).is_err());
        assert!(shop(&["--stock", "0"]).is_err());
        assert!(shop(&["--shop-env", "=x"]).is_err());
        assert!(shop(&["--target", "http://h:1", "--spawn"]).is_err());
    }

    #[test]
    fn target_with_label() {
        let t: Target = "AP=http://127.0.0.1:5001/".parse().expect("parses");
        assert_eq!(t, Target::new("AP", "http://127.0.0.1:5001"));
        assert_eq!(t.url, "http://127.0.0.1:5001");
    }

    #[test]
    fn target_without_label_uses_authority() {
        let t: Target = "http://localhost:5003/prefix".parse().expect("parses");
        assert_eq!(t.label, "localhost:5003");
        assert_eq!(t.url, "http://localhost:5003/prefix");
    }

    #[test]
    fn equals_inside_url_query_is_not_a_label() {
        let t: Target = "http://h:1/x?a=b".parse().expect("parses");
        assert_eq!(t.label, "h:1");
        let t: Target = "Q=http://h:1/x?a=b".parse().expect("parses");
        assert_eq!(t.label, "Q");
    }

    #[test]
    fn bad_targets_are_rejected() {
        assert_eq!(
            "=http://h:1".parse::<Target>(),
            Err(TargetParseError::EmptyLabel)
        );
        assert!(matches!(
            "AP=ftp://h:1".parse::<Target>(),
            Err(TargetParseError::BadUrl(_))
        ));
        assert!(matches!(
            "h:1".parse::<Target>(),
            Err(TargetParseError::BadUrl(_))
        ));
        assert!(matches!(
            "http:///x".parse::<Target>(),
            Err(TargetParseError::BadUrl(_))
        ));
    }

    #[test]
    fn defaults() {
        let a = kv(&[]).expect("parses");
        assert_eq!(a.effective_ops(), vec![Op::Write, Op::Read]);
        let t = a.effective_targets();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], Target::new("AP", "http://127.0.0.1:5001"));
        assert_eq!(t[1], Target::new("CP", "http://127.0.0.1:5002"));
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert_eq!(a.concurrency, 16);
        assert_eq!(a.keys, 1000);
        assert_eq!(a.value_size, 64);
        assert_eq!(a.api, Api::Seed);
        assert_eq!(a.rate, None);
        assert_eq!(a.scenario, Scenario::Normal);
        assert_eq!(a.replica, "db_g2");
    }

    #[test]
    fn full_command_line() {
        let a = kv(&[
            "--target",
            "AP=http://127.0.0.1:5001",
            "--target",
            "http://127.0.0.1:5003",
            "--op",
            "mixed",
            "--read-ratio",
            "0.9",
            "--duration",
            "0.5",
            "--rate",
            "2000",
            "--api",
            "v1",
            "--scenario",
            "replica-down",
            "--json",
        ])
        .expect("parses");
        assert_eq!(a.targets.len(), 2);
        assert_eq!(a.targets[1].label, "127.0.0.1:5003");
        assert_eq!(a.ops, vec![Op::Mixed]);
        assert_eq!(a.read_ratio, 0.9);
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.rate, Some(2000.0));
        assert_eq!(a.api, Api::V1);
        assert_eq!(a.scenario, Scenario::ReplicaDown);
        assert!(a.json);
    }

    #[test]
    fn out_of_range_flags_are_rejected() {
        assert!(kv(&["--concurrency", "0"]).is_err());
        assert!(kv(&["--rate", "0"]).is_err());
        assert!(kv(&["--rate", "inf"]).is_err());
        assert!(kv(&["--read-ratio", "1.5"]).is_err());
        assert!(kv(&["--duration", "-1"]).is_err());
        assert!(kv(&["--value-size", "0"]).is_err());
        assert!(kv(&["--value-size", "2000000"]).is_err());
        assert!(kv(&["--keys", "0"]).is_err());
        assert!(kv(&["--target", "ftp://x"]).is_err());
    }
}

//! Command-line arguments of `bulwark up` and `bulwark ctl` (parsed by the binary crate).

use std::path::PathBuf;

use nix::sys::signal::Signal;

/// Most replicas `up` will start: ports 6401..=6409 keep the seed's numbering readable.
pub const MAX_REPLICAS: u8 = 9;

/// `bulwark up`: start a local cluster (replicas, then gateways) and supervise it, like
/// `docker-compose up` with `restart: on-failure` and `depends_on: service_healthy`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of storage replicas (`db_g1` … `db_gN` on ports 6401 …). With 3 or more, a
    /// quorum gateway (`app_quorum` on 5003) is started too.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64))]
    pub replicas: u8,

    /// Replicas per key (N): each key lives on N of the replicas, placed by a
    /// consistent-hash ring. Default 3, or every replica when there are fewer. The quorum
    /// gateway needs N ≥ 3.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64))]
    pub replication_factor: Option<u8>,

    /// What the replicas are: Bulwark storage nodes, or real `redis-server` (≥ 7) processes.
    #[arg(long, value_enum, default_value_t = Backend::Bulwark)]
    pub backend: Backend,

    /// Where replica data, logs and the lock file live.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Port of the control API that `bulwark ctl` talks to (on 127.0.0.1).
    #[arg(long, default_value_t = 7070)]
    pub control_port: u16,

    /// Do not start the quorum gateway even when there are 3 or more replicas.
    #[arg(long)]
    pub no_quorum: bool,

    /// Echo every service's log to the terminal as a readable merged stream (the default).
    #[arg(long, overrides_with = "quiet")]
    pub foreground_logs: bool,

    /// Do not echo service logs to the terminal (they still go to `<data-dir>/logs/`).
    #[arg(long, short = 'q', overrides_with = "foreground_logs")]
    pub quiet: bool,

    /// Durability policy of the replicas' plain and AP writes (`--appendfsync` of `bulwark
    /// node`, `appendfsync` of `redis-server`). Default: `everysec` for bulwark nodes (CP
    /// and quorum protocol steps are fsynced before they are acknowledged whatever the
    /// policy), `always` for redis-server (a Redis function cannot force an fsync, so CP
    /// durability needs it).
    #[arg(long, value_enum)]
    pub appendfsync: Option<Appendfsync>,

    /// How long a service may take to become healthy at start-up before `up` gives up.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub startup_timeout: u64,

    /// Add this to every port (gateways, replicas, links, fault proxy, control API), to run
    /// a second cluster beside one on the seed's ports (e.g. 10000: AP gateway on 15001).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=50000))]
    pub port_offset: u16,

    /// Let gateways reach replicas directly, without the fault proxy `chaos_proxy` (no
    /// network faults then).
    #[arg(long)]
    pub no_chaos_proxy: bool,

    /// Do not start the commerce service (`app_shop` on 8080, SQLite under the data
    /// directory).
    #[arg(long)]
    pub no_shop: bool,

    /// Authenticate every HTTP service with API keys: three are made at first start in
    /// `<data-dir>/secrets/` (`reader.key`, `writer.key`, `admin.key`, mode 0600) and kept;
    /// clients send `Authorization: Bearer <key>`. `bulwark ctl` and `bulwark chaos` use
    /// `admin.key` from there.
    #[arg(long)]
    pub auth: bool,

    /// Run the whole cluster on TLS: a local CA is made at first start in
    /// `<data-dir>/tls/` (`ca.pem` is what clients trust; kept) and every service gets a
    /// certificate from it at each start. HTTP services answer `https://`; replicas speak
    /// RESP over TLS and require client certificates (mutual TLS), which the gateways
    /// present.
    #[arg(long)]
    pub tls: bool,

    /// Allow fault injection from the start (otherwise `bulwark chaos enable` is needed).
    #[arg(long, env = "CHAOS_ENABLED", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub chaos: bool,
}

/// The storage engine behind each replica.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `bulwark node`: the embedded, durable storage node.
    Bulwark,
    /// A real `redis-server` ≥ 7 with the `bulwark` function library.
    Redis,
}

impl Backend {
    /// The flag value (`bulwark` or `redis`) passed on to gateways.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Bulwark => "bulwark",
            Backend::Redis => "redis",
        }
    }
}

/// When a replica fsyncs writes that the protocol does not force to disk (`BW.PUT`, `SET`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appendfsync {
    /// Every write, before replying.
    Always,
    /// Once per second.
    Everysec,
    /// Leave it to the operating system.
    No,
}

impl Appendfsync {
    /// The value as both `bulwark node` and `redis-server` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Appendfsync::Always => "always",
            Appendfsync::Everysec => "everysec",
            Appendfsync::No => "no",
        }
    }
}

impl UpArgs {
    /// The replicas' `appendfsync` policy: the flag, or the backend's safe default.
    pub fn appendfsync(&self) -> Appendfsync {
        self.appendfsync.unwrap_or(match self.backend {
            Backend::Bulwark => Appendfsync::Everysec,
            Backend::Redis => Appendfsync::Always,
        })
    }
}

/// One `bulwark ctl shard` subcommand.
#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum ShardCommand {
    /// The layout (version, N, virtual nodes) and every node with its tokens and its
    /// share of the key replicas.
    Status,
}

/// `bulwark ctl`: talk to a running `bulwark up` (the stand-in for `docker-compose ps`,
/// `docker stop/start/kill/logs`).
#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,

    /// Base URL of the control API of `bulwark up` [default: the one `up` recorded in
    /// the data directory, else http://127.0.0.1:7070].
    #[arg(long, global = true, env = "BULWARK_CONTROL")]
    pub control: Option<String>,

    /// The data directory of `bulwark up`: its control URL, `secrets/admin.key` (or
    /// `BULWARK_API_KEY`) and `tls/ca.pem` (or `BULWARK_CA_FILE`) are taken from it.
    #[arg(long, global = true, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// One `bulwark ctl` subcommand.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Show every service: state, pid, health, restarts (like `docker-compose ps`).
    Status,
    /// The cluster's sharding: layout, nodes and each node's share of the keys.
    Shard {
        /// What to do.
        #[command(subcommand)]
        command: ShardCommand,
    },
    /// Stop a service gracefully (SIGTERM, then SIGKILL after 10 s); it stays stopped until
    /// `ctl start`.
    Stop {
        /// Service name (`db_g2`, `app_cp`, …).
        service: String,
    },
    /// Start a stopped or exited service.
    Start {
        /// Service name.
        service: String,
    },
    /// Send a signal to a service's process (like `docker kill --signal=…`). What happens
    /// next follows the restart policy: a clean exit (status 0) is not restarted, a crash is.
    Kill {
        /// Service name.
        service: String,
        /// Signal name: TERM, INT, KILL, STOP, CONT, HUP, QUIT, USR1, USR2 (with or without
        /// the SIG prefix).
        #[arg(long, short = 's', default_value = "KILL", value_parser = parse_signal_arg)]
        signal: String,
    },
    /// Stop a service gracefully, then start it again.
    Restart {
        /// Service name.
        service: String,
    },
    /// Print a service's log lines (raw JSON as emitted), like `docker logs`.
    Logs {
        /// Service name.
        service: String,
        /// Only lines containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// Only the last N (matching) lines.
        #[arg(long)]
        tail: Option<usize>,
    },
}

/// Signals `ctl kill` may send, by their short names.
const SIGNALS: &[(&str, Signal)] = &[
    ("TERM", Signal::SIGTERM),
    ("INT", Signal::SIGINT),
    ("KILL", Signal::SIGKILL),
    ("STOP", Signal::SIGSTOP),
    ("CONT", Signal::SIGCONT),
    ("HUP", Signal::SIGHUP),
    ("QUIT", Signal::SIGQUIT),
    ("USR1", Signal::SIGUSR1),
    ("USR2", Signal::SIGUSR2),
];

/// Parses a signal name as `docker kill --signal` accepts it: `TERM`, `SIGTERM`, `sigterm`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == short).map(|(_, s)| *s)
}

/// Clap value parser: validates the name and normalises it to its short form (`TERM`).
fn parse_signal_arg(name: &str) -> Result<String, String> {
    match parse_signal(name) {
        Some(sig) => Ok(signal_short_name(sig).to_owned()),
        None => Err(format!(
            "unknown signal '{name}'; expected one of {}",
            SIGNALS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `SIGTERM` → `TERM`.
pub fn signal_short_name(sig: Signal) -> &'static str {
    let full = sig.as_str();
    full.strip_prefix("SIG").unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The shape the binary gives these arguments: `bulwark up …`, `bulwark ctl …`.
    #[derive(clap::Parser, Debug)]
    enum Cli {
        Up(UpArgs),
        Ctl(CtlArgs),
    }

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bulwark").chain(line.split_whitespace()))
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn up_flags() {
        let Ok(Cli::Up(up)) = parse("up") else {
            panic!("up parses")
        };
        assert_eq!(
            (up.replicas, up.backend, up.control_port, up.quiet),
            (2, Backend::Bulwark, 7070, false)
        );
        assert_eq!(up.appendfsync(), Appendfsync::Everysec);
        let Ok(Cli::Up(up)) = parse("up --replicas 3 --backend redis -q --appendfsync everysec")
        else {
            panic!("up parses")
        };
        assert_eq!(
            (up.replicas, up.backend, up.quiet),
            (3, Backend::Redis, true)
        );
        assert_eq!(
            up.appendfsync(),
            Appendfsync::Everysec,
            "an explicit flag wins"
        );
        let Ok(Cli::Up(up)) = parse("up --backend redis") else {
            panic!("up parses")
        };
        assert_eq!(
            up.appendfsync(),
            Appendfsync::Always,
            "redis needs always for CP"
        );
        assert!(parse("up --replicas 10").is_err());
        assert!(parse("up --replicas 0").is_err());
    }

    #[test]
    fn ctl_commands_as_the_seed_uses_them() {
        let Ok(Cli::Ctl(ctl)) = parse("ctl kill app_cp --signal=SIGTERM") else {
            panic!("kill parses")
        };
        assert!(
            matches!(ctl.command, CtlCommand::Kill { ref service, ref signal } if service == "app_cp" && signal == "TERM")
        );
        let Ok(Cli::Ctl(ctl)) = parse("ctl kill app_cp") else {
            panic!("kill parses")
        };
        assert!(matches!(ctl.command, CtlCommand::Kill { ref signal, .. } if signal == "KILL"));
        let Ok(Cli::Ctl(ctl)) = parse("ctl logs app_ap --grep REQUEST_COMPLETED --tail 5 --json")
        else {
            panic!("logs parses")
        };
        assert!(ctl.json);
        assert!(
            matches!(ctl.command, CtlCommand::Logs { grep: Some(ref g), tail: Some(5), .. } if g == "REQUEST_COMPLETED")
        );
        let Ok(Cli::Ctl(ctl)) = parse("ctl --control http://127.0.0.1:9 status") else {
            panic!("status parses")
        };
        assert_eq!(ctl.control.as_deref(), Some("http://127.0.0.1:9"));
        assert!(parse("ctl kill app_cp --signal BOGUS").is_err());
    }

    #[test]
    fn signal_names_accept_docker_spellings() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("CONT"), Some(Signal::SIGCONT));
        assert_eq!(parse_signal("SIGBOGUS"), None);
        assert_eq!(parse_signal_arg("sigint").as_deref(), Ok("INT"));
        assert!(parse_signal_arg("9").is_err());
    }
}

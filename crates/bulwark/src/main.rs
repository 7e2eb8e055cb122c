//! The `bulwark` binary: parses flags and hands over to one crate's `run`. No logic lives
//! here (see docs/ARCHITECTURE.md).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc (without transparent huge pages) instead of glibc malloc: with 6,000 buyers
/// connected, glibc's heap held the shop at 306–317 MB RSS, over its 300 MB target, and
/// mimalloc at 240–253 MB in alternated runs (docs/BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bulwark: a production-hardened data platform on one machine.
#[derive(Parser, Debug)]
#[command(name = "bulwark", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster: replicas db_g1, db_g2 (…), gateways app_ap :5001, app_cp :5002
    /// (app_quorum :5003 with 3+ replicas), supervised, with a control API on :7070.
    Up(bulwark_cluster::UpArgs),
    /// Run one storage replica (RESP; redis-cli works against it).
    Node(bulwark_node::NodeArgs),
    /// Run one CAP gateway (HTTP) over a set of replicas.
    Gateway(bulwark_gateway::GatewayArgs),
    /// Control a cluster started by `bulwark up`: status, stop, start, kill, restart, logs.
    Ctl(bulwark_cluster::CtlArgs),
    /// Load generators with HDR histograms.
    Bench(bulwark_bench::BenchArgs),
    /// Run the flash-sale commerce service (HTTP, port 8080): catalog, purchase saga, audit.
    Shop(bulwark_shop::ShopArgs),
    /// Chaos engineering: the fault proxy, the safety switch, faults and experiments.
    Chaos(ChaosArgs),
    /// API keys: make one and add its hash to a keys file.
    Auth(bulwark_http::cli::AuthArgs),
    /// The tamper-evident audit log: verify its hash chain.
    Audit(bulwark_audit::cli::AuditArgs),
}

#[derive(clap::Args, Debug)]
struct ChaosArgs {
    #[command(subcommand)]
    command: ChaosCommand,
}

/// `bulwark chaos …`.
#[derive(Subcommand, Debug)]
enum ChaosCommand {
    /// Run a TCP fault proxy driven by a Toxiproxy-compatible HTTP API (default :8474).
    Proxy(bulwark_faultproxy::ProxyArgs),
    #[command(flatten)]
    Control(bulwark_chaos::cli::ChaosCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's own output, on stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bulwark: {}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulwark: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => bulwark_cluster::run_up(args, shutdown_signal())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Node(args) => bulwark_node::run(args, shutdown_signal())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Gateway(args) => bulwark_gateway::run(args, shutdown_signal())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Shop(args) => bulwark_shop::run(args, shutdown_signal())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Ctl(args) => bulwark_cluster::run_ctl(args).await,
            Command::Bench(args) => bulwark_bench::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Auth(args) => bulwark_http::cli::run(args).map(|()| ExitCode::SUCCESS),
            Command::Audit(args) => Ok(bulwark_audit::cli::run(args)),
            Command::Chaos(ChaosArgs { command }) => match command {
                ChaosCommand::Proxy(args) => bulwark_faultproxy::run(args, shutdown_signal())
                    .await
                    .map(|()| ExitCode::SUCCESS),
                ChaosCommand::Control(c) => bulwark_chaos::cli::run(c, shutdown_signal()).await,
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line that names what is wrong (for config errors, the setting).
            eprintln!("bulwark: {e:#}");
            if e.downcast_ref::<bulwark_config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Resolves with the name of the first SIGTERM or SIGINT received.
async fn shutdown_signal() -> String {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be stopped by SIGKILL.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".to_string(),
        _ = int.recv() => "SIGINT".to_string(),
    }
}

/// A clap error as one line: `invalid value 'x' for '--flag <FLAG>' [possible values: …]`,
/// without the usage and "try --help" trailer, so a bad setting is one line naming it.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

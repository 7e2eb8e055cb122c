//! A stand-alone `bulwark node` for benchmarks and manual testing, until the main binary
//! wires the subcommand: `cargo run --release -p bulwark-node --example node -- --port 0`.
//! Stops on SIGINT or SIGTERM.

use bulwark_node::NodeArgs;
use clap::Parser;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bulwark_obs::logging::init(&std::env::var("LOG_LEVEL").unwrap_or_else(|_| "INFO".into()));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT".to_owned(),
            _ = term.recv() => "SIGTERM".to_owned(),
        }
    };
    bulwark_node::run(cli.node, shutdown).await
}

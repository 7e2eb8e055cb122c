//! Measures the generator's own ceiling: starts an in-process stub of the gateway's HTTP API
//! (answers at once, no storage) on a free port and runs `bench kv` against it.
//!
//! `cargo run --release -p bulwark-bench --example selftest -- --duration 3 --op write`
//! (any `bench kv` flags; `--target` is filled in).

use std::process::ExitCode;

use axum::Router;
use axum::routing::{get, post};
use bulwark_bench::{BenchArgs, BenchCommand};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("selftest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let app = Router::new()
            .route("/write/{key}/{value}", post(|| async { "{\"ok\":true}" }))
            .route("/read/{key}", get(|| async { "{\"value\":\"00\"}" }))
            .route("/v1/kv/{key}", get(|| async { "00" }).put(|| async { "" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut argv: Vec<String> = vec!["selftest".into(), "kv".into()];
        argv.push("--target".into());
        argv.push(format!("STUB=http://{addr}"));
        argv.extend(std::env::args().skip(1));
        let cli = Cli::try_parse_from(argv)?;
        bulwark_bench::run(BenchArgs {
            command: cli.command,
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("selftest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

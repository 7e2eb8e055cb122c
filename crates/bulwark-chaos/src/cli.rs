//! `bulwark chaos run|enable|disable|status|inject|remove`: experiments, the safety switch
//! and one-off faults, through the control API of a running `bulwark up`.
//!
//! Exit codes: 0 done (for `run`: the experiment succeeded); 1 the control API cannot be
//! reached or refused the request, or the experiment failed or was aborted; 2 the
//! experiment file is invalid (nothing was injected). The reason is on stderr.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_http::client::ClientIdentity;

use crate::client::{ChaosClient, ClientError, Status};
use crate::cluster::ClusterMap;
use crate::controller::ActiveFault;
use crate::experiment;
use crate::fault::{Fault, FaultRequest};
use crate::report::RunStatus;
use crate::runner::{self, Progress};

/// Where the control API is, and the output format.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlOpts {
    /// Base URL of the control API of `bulwark up` [default: the one `up` recorded in
    /// the data directory, else http://127.0.0.1:7070].
    #[arg(long, env = "BULWARK_CONTROL")]
    pub control: Option<String>,
    /// The data directory of `bulwark up`: its control URL, `secrets/admin.key` (or
    /// `BULWARK_API_KEY`) and `tls/ca.pem` (or `BULWARK_CA_FILE`) are taken from it.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ControlOpts {
    /// A client of the control API these options name.
    pub fn client(&self) -> Result<ChaosClient, ClientError> {
        let identity = ClientIdentity::discover(&self.data_dir)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let url = self
            .control
            .clone()
            .or_else(|| ClientIdentity::recorded_control_url(&self.data_dir))
            .unwrap_or_else(|| DEFAULT_CONTROL.to_owned());
        Ok(ChaosClient::new(&url, &identity))
    }
}

/// The control API of `bulwark up` on its default port.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:7070";

/// The chaos subcommands that talk to the controller.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ChaosCommand {
    /// Run an experiment file (Chaos Toolkit format, JSON): steady state, method, rollbacks.
    /// Ctrl-C removes its faults and runs its rollbacks before exiting.
    Run(RunArgs),
    /// Allow fault injection on the running cluster.
    Enable(ControlOpts),
    /// Forbid fault injection and remove every active fault.
    Disable(ControlOpts),
    /// Show the safety switch and the active faults.
    Status(ControlOpts),
    /// Inject one fault, e.g. `bulwark chaos inject '{"type":"pause","service":"db_g2"}' --ttl 10`.
    Inject {
        /// The fault as JSON (`{"type": …}`); see docs/ARCHITECTURE.md for the kinds.
        fault: String,
        /// Time to live in seconds (it is removed then at the latest).
        #[arg(long, value_parser = parse_seconds)]
        ttl: Duration,
        /// Control API and output options.
        #[command(flatten)]
        opts: ControlOpts,
    },
    /// Internal: a resource burner started by the controller for a CPU, memory or disk
    /// fault; it stops at `--until-ms` by itself.
    #[command(hide = true)]
    Burn(crate::resource::BurnArgs),
    /// Remove an active fault by id.
    Remove {
        /// The fault's id (`f-…`).
        id: String,
        /// Control API and output options.
        #[command(flatten)]
        opts: ControlOpts,
    },
}

/// `bulwark chaos run FILE`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The experiment file.
    pub file: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, default_value = "chaos-report.json")]
    pub report_file: PathBuf,
    /// Set a `${name}` of the file (overrides its `configuration`), e.g.
    /// `--var ap=http://127.0.0.1:25001`.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Control API and output options.
    #[command(flatten)]
    pub opts: ControlOpts,
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{text}' is not NAME=VALUE")),
    }
}

/// `10`, `2.5`, `10s`, `500ms` → a duration.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = t.strip_suffix('s') {
        (s, 1.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "'{text}' is not a positive duration (seconds, or 500ms)"
        )),
    }
}

/// Runs one command; `interrupt` (Ctrl-C) ends a running experiment early, after its
/// faults are removed and its rollbacks ran.
pub async fn run(
    command: ChaosCommand,
    interrupt: impl Future<Output = String>,
) -> anyhow::Result<ExitCode> {
    let result = match &command {
        ChaosCommand::Run(args) => return Ok(run_file(args, interrupt).await),
        ChaosCommand::Burn(args) => return burn(args.clone(), interrupt).await,
        ChaosCommand::Enable(o) => switch(o, true).await,
        ChaosCommand::Disable(o) => switch(o, false).await,
        ChaosCommand::Status(o) => status(o).await,
        ChaosCommand::Inject { fault, ttl, opts } => inject(fault, *ttl, opts).await,
        ChaosCommand::Remove { id, opts } => match opts.client() {
            Ok(client) => client.remove(id).await.map(|f| {
                if opts.json {
                    print_json(&f);
                } else {
                    println!("removed {} ({} {})", f.id, f.kind, f.target);
                }
            }),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn switch(o: &ControlOpts, on: bool) -> Result<(), ClientError> {
    let client = o.client()?;
    let v = if on {
        client.enable().await?
    } else {
        client.disable().await?
    };
    if o.json {
        print_json(&v);
    } else if on {
        println!("chaos enabled: faults may be injected");
    } else {
        println!(
            "chaos disabled: faults refused; {} active fault(s) removed",
            v["removed"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

async fn status(o: &ControlOpts) -> Result<(), ClientError> {
    let s = o.client()?.status().await?;
    if o.json {
        print_json(&s);
    } else {
        print!("{}", status_text(&s, now_ms()));
    }
    Ok(())
}

async fn inject(fault: &str, ttl: Duration, o: &ControlOpts) -> Result<(), ClientError> {
    let fault: Fault = serde_json::from_str(fault)
        .map_err(|e| ClientError::BadResponse(format!("the fault is not valid: {e}")))?;
    let req = FaultRequest {
        fault,
        ttl_ms: ttl.as_millis().max(1) as u64,
        run: None,
    };
    let f = o.client()?.inject(&req).await?;
    if o.json {
        print_json(&f);
    } else {
        println!(
            "injected {} ({} {}), removed in {}",
            f.id,
            f.kind,
            f.target,
            seconds(f.expires_at_ms.saturating_sub(now_ms()))
        );
    }
    Ok(())
}

/// Runs a burner on its own thread; SIGTERM/SIGINT (`interrupt`) ends it early, cleaned up.
async fn burn(
    args: crate::resource::BurnArgs,
    interrupt: impl Future<Output = String>,
) -> anyhow::Result<ExitCode> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let worker = tokio::task::spawn_blocking(move || crate::resource::burn(&args, &flag));
    let mut worker = std::pin::pin!(worker);
    tokio::select! {
        r = &mut worker => r??,
        _ = interrupt => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            worker.await??;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An indicatif spinner on stderr (hidden when stderr is not a terminal).
struct Spinner(indicatif::ProgressBar);

impl Progress for Spinner {
    fn step(&self, text: &str) {
        self.0.set_message(text.to_owned());
    }
}

async fn run_file(args: &RunArgs, interrupt: impl Future<Output = String>) -> ExitCode {
    let file = args.file.display();
    let text = match std::fs::read(&args.file) {
        Ok(b) if b.len() > experiment::MAX_FILE_BYTES => {
            eprintln!(
                "bulwark: {file}: larger than {} bytes",
                experiment::MAX_FILE_BYTES
            );
            return ExitCode::from(2);
        }
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                eprintln!("bulwark: {file}: not UTF-8 text");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("bulwark: cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    // The shape is checked before the cluster is asked anything.
    if let Err(e) = experiment::parse(&text) {
        eprintln!("bulwark: {file}: {e}");
        return ExitCode::from(2);
    }
    let client = match args.opts.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let cluster: ClusterMap = match client
        .call(reqwest::Method::GET, "/api/v1/chaos/cluster", None)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let plan = match experiment::load(&text, &args.vars, &cluster) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bulwark: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let run_id = runner::new_run_id();
    bar.println(format!("running '{}' as {run_id}", plan.experiment.title));
    let report = runner::run(
        &plan,
        &client,
        &run_id,
        async {
            let why = interrupt.await;
            eprintln!("bulwark: {why}: removing this run's faults and running its rollbacks");
        },
        &Spinner(bar.clone()),
    )
    .await;
    bar.finish_and_clear();
    // Count it in the controller's metrics; the run is over either way.
    if let Ok(body) = serde_json::to_value(&report) {
        let _ = client
            .call::<serde_json::Value>(reqwest::Method::POST, "/api/v1/chaos/reports", Some(body))
            .await;
    }
    match serde_json::to_string_pretty(&report) {
        Ok(json) => {
            if let Err(e) = std::fs::write(&args.report_file, format!("{json}\n")) {
                eprintln!("bulwark: cannot write {}: {e}", args.report_file.display());
            }
            if args.opts.json {
                println!("{json}");
            }
        }
        Err(e) => eprintln!("bulwark: cannot encode the report: {e}"),
    }
    if !args.opts.json {
        print!("{}", report.table());
        println!("report: {}", args.report_file.display());
    }
    if report.status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// The text of `bulwark chaos status`.
pub fn status_text(s: &Status, now_ms: u64) -> String {
    let mut out = format!(
        "chaos: {}\n",
        if s.enabled { "enabled" } else { "disabled" }
    );
    if s.active.is_empty() {
        out.push_str("no active faults\n");
        return out;
    }
    out.push_str(&table(&s.active, now_ms));
    out
}

fn table(faults: &[ActiveFault], now_ms: u64) -> String {
    let rows: Vec<[String; 5]> = faults
        .iter()
        .map(|f| {
            [
                f.id.clone(),
                f.kind.clone(),
                f.target.clone(),
                seconds(f.expires_at_ms.saturating_sub(now_ms)),
                f.run.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["ID", "KIND", "TARGET", "EXPIRES IN", "RUN"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_seconds("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn status_table_lists_faults() {
        let s = Status {
            enabled: true,
            active: vec![ActiveFault {
                id: "f-1".into(),
                kind: "pause".into(),
                target: "db_g2".into(),
                fault: Fault::Pause {
                    service: "db_g2".into(),
                },
                services: vec!["db_g2".into()],
                run: None,
                applied_at_ms: 0,
                expires_at_ms: 12_000,
            }],
        };
        let text = status_text(&s, 2_000);
        assert_eq!(
            text,
            "chaos: enabled\nID   KIND   TARGET  EXPIRES IN  RUN\nf-1  pause  db_g2   10.0s       -\n"
        );
    }
}

//! `bulwark ctl`: the client side of the control API, printing tables for people and JSON
//! for scripts.
//!
//! Exit codes: 0 done; 1 the control API cannot be reached or refused the request; 2 the
//! service name is unknown. Every failure is explained on stderr before returning, so the
//! caller only has to exit with the code.

use std::io::Write as _;
use std::process::ExitCode;

use bulwark_http::client::ClientIdentity;

use crate::args::{CtlArgs, CtlCommand, ShardCommand};
use crate::client::{ClientError, ControlClient};
use crate::logs;
use crate::supervisor::{ServiceStatus, State};

/// Runs one `bulwark ctl` command against the control API named in `args`.
pub async fn run_ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let identity = ClientIdentity::discover(&args.data_dir)?;
    let url = args
        .control
        .clone()
        .or_else(|| ClientIdentity::recorded_control_url(&args.data_dir))
        .unwrap_or_else(|| bulwark_chaos::cli::DEFAULT_CONTROL.to_owned());
    let client = ControlClient::new(&url, &identity);
    match execute(&client, &args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(match e {
                ClientError::UnknownService { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            })
        }
    }
}

async fn execute(client: &ControlClient, args: &CtlArgs) -> Result<ExitCode, ClientError> {
    let status = match &args.command {
        CtlCommand::Status => {
            let services = client.services().await?;
            if args.json {
                print_json(&services);
            } else {
                print!("{}", status_table(&services));
            }
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Shard {
            command: ShardCommand::Status,
        } => {
            let layout = client.layout().await?;
            let ring = bulwark_placement::Ring::new(layout.target())
                .map_err(|e| ClientError::BadResponse(format!("the layout served: {e}")))?;
            if args.json {
                let shares: serde_json::Map<String, serde_json::Value> = ring
                    .shares()
                    .into_iter()
                    .enumerate()
                    .map(|(i, share)| {
                        let id = i as bulwark_placement::NodeId;
                        (ring.name(id).to_owned(), share.into())
                    })
                    .collect();
                print_json(&serde_json::json!({"layout": layout, "shares": shares}));
            } else {
                print!("{}", shard_table(&layout, &ring));
            }
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Logs {
            service,
            grep,
            tail,
        } => {
            let status = if service == crate::up::OWN_LOG {
                // `up`'s own log sits next to its services' logs.
                let services = client.services().await?;
                let Some(any) = services.into_iter().next() else {
                    eprintln!(
                        "error: the cluster runs no service, so its log directory is unknown"
                    );
                    return Ok(ExitCode::FAILURE);
                };
                ServiceStatus {
                    name: service.clone(),
                    log_file: any
                        .log_file
                        .with_file_name(format!("{}.log", crate::up::OWN_LOG)),
                    ..any
                }
            } else {
                client.service(service).await?
            };
            return Ok(print_logs(&status, grep.as_deref(), *tail).await);
        }
        CtlCommand::Stop { service } => client.act(service, "stop", None).await?,
        CtlCommand::Start { service } => client.act(service, "start", None).await?,
        CtlCommand::Restart { service } => client.act(service, "restart", None).await?,
        CtlCommand::Kill { service, signal } => client.act(service, "kill", Some(signal)).await?,
    };
    if args.json {
        print_json(&status);
    } else {
        println!("{}: {}", status.name, describe_state(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}

/// Prints the raw lines of the service's log file (the `docker logs` stand-in). The file is
/// read directly: `up` and `ctl` run on the same machine, and the API only says where it is.
async fn print_logs(status: &ServiceStatus, grep: Option<&str>, tail: Option<usize>) -> ExitCode {
    let stdout = std::io::stdout();
    let result = logs::read_log(&status.log_file, grep, tail, |line| {
        let mut out = stdout.lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "{} has not logged anything yet ({} does not exist)",
                status.name,
                status.log_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", status.log_file.display());
            ExitCode::from(1)
        }
    }
}

/// `running`, `exited (0)`, `restarting (exit 3)`, `stopped (SIGKILL)`, …
pub fn describe_state(s: &ServiceStatus) -> String {
    let how = match (&s.exit_code, &s.exit_signal) {
        (Some(code), _) => Some(code.to_string()),
        (None, Some(sig)) => Some(sig.clone()),
        (None, None) => None,
    };
    match (s.state, how) {
        (State::Running, _) => "running".to_owned(),
        (State::Crashed, _) => match &s.last_error {
            Some(e) => format!("crashed: {e}"),
            None => "crashed".to_owned(),
        },
        (State::Restarting, Some(how)) => format!("restarting (exit {how})"),
        (state, Some(how)) => format!("{} ({how})", state.as_str()),
        (state, None) => state.as_str().to_owned(),
    }
}

/// `3s`, `2m05s`, `1h02m`.
fn human_duration(secs: f64) -> String {
    // Truncation is intended: the table shows whole seconds.
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The `docker-compose ps`-style table of `ctl status`.
pub fn status_table(services: &[ServiceStatus]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.as_str().to_owned(),
                s.port.to_string(),
                s.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                describe_state(s),
                match (s.state, s.healthy) {
                    (State::Running, true) => "healthy".to_owned(),
                    (State::Running, false) => "unhealthy".to_owned(),
                    _ => "-".to_owned(),
                },
                s.restarts.to_string(),
                s.uptime_secs.map_or_else(|| "-".to_owned(), human_duration),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "KIND", "PORT", "PID", "STATE", "HEALTH", "RESTARTS", "UPTIME",
        ],
        &rows,
    )
}

/// `bulwark ctl shard status`: a line on the layout, then a row per node.
pub fn shard_table(layout: &bulwark_placement::Layout, ring: &bulwark_placement::Ring) -> String {
    let p = layout.target();
    let state = if layout.in_transition() {
        "transition"
    } else {
        "stable"
    };
    let shares = ring.shares();
    let rows: Vec<Vec<String>> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            vec![
                n.name.clone(),
                n.addr.clone(),
                format!("{}", n.weight),
                n.zone.clone().unwrap_or_else(|| "-".to_owned()),
                p.tokens_of(n).to_string(),
                format!("{:.1} %", shares[i] * 100.0),
            ]
        })
        .collect();
    format!(
        "layout version {} ({state}): {} nodes, N = {}, {} virtual nodes per unit of weight\n{}",
        layout.version,
        p.nodes.len(),
        p.replication_factor,
        p.vnodes,
        table(
            &["NODE", "ADDRESS", "WEIGHT", "ZONE", "TOKENS", "SHARE"],
            &rows
        )
    )
}

/// Left-aligned columns two spaces apart, a header line first.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ServiceKind;

    #[test]
    fn shard_status_shows_the_layout_and_every_node_share() {
        let layout = crate::topology::layout_of(
            &(1..=6)
                .map(|i| (format!("db_g{i}"), 6400 + i))
                .collect::<Vec<_>>(),
            3,
        );
        let ring = bulwark_placement::Ring::new(layout.target()).unwrap();
        let table = shard_table(&layout, &ring);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "layout version 1 (stable): 6 nodes, N = 3, 150 virtual nodes per unit of weight"
        );
        assert!(lines[1].starts_with("NODE   ADDRESS"), "{table}");
        assert_eq!(lines.len(), 8, "{table}");
        let total: f64 = lines[2..]
            .iter()
            .map(|l| {
                assert!(l.contains("127.0.0.1:64") && l.contains(" 150 "), "{l}");
                l.split_whitespace().nth(5).unwrap().parse::<f64>().unwrap()
            })
            .sum();
        assert!((total - 100.0).abs() < 0.5, "shares sum to 100 %: {table}");
    }

    fn status(name: &str, state: State, code: Option<i32>) -> ServiceStatus {
        ServiceStatus {
            name: name.to_owned(),
            kind: ServiceKind::Gateway,
            port: 5002,
            pid: (state == State::Running).then_some(42),
            state,
            exit_code: code,
            exit_signal: None,
            restarts: 1,
            uptime_secs: (state == State::Running).then_some(125.0),
            healthy: true,
            last_error: None,
            log_file: "/d/logs/x.log".into(),
        }
    }

    #[test]
    fn table_looks_like_compose_ps() {
        let table = status_table(&[
            status("app_cp", State::Running, None),
            status("app_ap", State::Exited, Some(0)),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NAME    KIND     PORT  PID  STATE       HEALTH   RESTARTS  UPTIME"
        );
        assert_eq!(
            lines[1],
            "app_cp  gateway  5002  42   running     healthy  1         2m05s"
        );
        assert_eq!(
            lines[2],
            "app_ap  gateway  5002  -    exited (0)  -        1         -"
        );
    }
}

//! `bulwark bench`: load generators for the CAP service's HTTP API (`bench kv`) and the
//! commerce service (`bench shop`, see [`shop_report`] and `shop`).
//!
//! Measured the way wrk2 and HdrHistogram users do:
//!
//! * every (target × op) pair is a *scenario*, warmed up, then measured for a fixed time;
//! * latencies go into HDR histograms (microseconds, 3 significant digits), reported as
//!   p50/p90/p99/p99.9/max;
//! * closed loop by default (`--concurrency` workers, each waiting for its response);
//!   `--rate` switches to an open loop on a fixed schedule, measuring latency from each
//!   request's *intended* send time so that a stalling server shows up as latency instead
//!   of silently reducing the offered load (coordinated omission);
//! * one keep-alive connection pool, a timeout on every request, and requests built from
//!   URIs prepared before the clock starts.
//!
//! Modules, in the order a run uses them: [`args`] (flags), `workload` (pre-built requests),
//! `schedule` (open-loop arithmetic), `measure` (client, workers, histograms; the phase
//! runner is generic over a `Driver` and a `Recorder`), `progress` (stderr bars),
//! `replica_down` (supervisor orchestration), [`report`] (results, table). `bench shop`
//! adds `shop` (the sale: driver, recorder, orchestration), `spawn` (child shops, memory,
//! connections), `pgbench` (the baseline) and [`shop_report`] (results, invariant checks,
//! tables).

#![forbid(unsafe_code)]

pub mod args;
mod conn;
mod cpu;
mod measure;
mod pgbench;
mod progress;
mod replica_down;
pub mod report;
mod schedule;
mod shop;
pub mod shop_report;
mod spawn;
mod workload;

use std::sync::Arc;

use anyhow::Context as _;

pub use args::{BenchArgs, BenchCommand, KvArgs, ShopBenchArgs};
pub use replica_down::ReplicaDownError;
pub use report::{BenchReport, ScenarioResult};
pub use shop::run_shop;
pub use shop_report::{ShopReport, StrategyRun};
pub use workload::WorkloadError;

use args::{Op, Scenario, Target};
use measure::{Ctx, http_client};
use progress::Progress;
use replica_down::ReplicaDown;
use report::{LoadModel, REPORT_FORMAT_VERSION, render_table};
use workload::Workload;

/// Runs `bulwark bench …`: measures, then prints the table (or JSON with `--json`) to
/// stdout and writes the JSON document to `--output` when given.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Kv(kv) => {
            let report = run_kv(&kv).await?;
            let json = serde_json::to_string_pretty(&report)?;
            if let Some(path) = &kv.output {
                std::fs::write(path, format!("{json}\n"))
                    .with_context(|| format!("writing results to {}", path.display()))?;
            }
            if kv.json {
                println!("{json}");
            } else {
                print!("{}", render_table(&report.results));
            }
            Ok(())
        }
        BenchCommand::Shop(shop) => {
            let report = run_shop(&shop).await?;
            let json = serde_json::to_string_pretty(&report)?;
            if let Some(path) = &shop.output {
                std::fs::write(path, format!("{json}\n"))
                    .with_context(|| format!("writing results to {}", path.display()))?;
            }
            if shop.json {
                println!("{json}");
            } else {
                print!("{}", shop_report::render_shop(&report));
            }
            let violated: Vec<String> = report
                .runs
                .iter()
                .flat_map(|r| {
                    r.invariants
                        .iter()
                        .filter(|c| !c.ok)
                        .map(move |c| format!("{} {}", r.strategy, c.name))
                })
                .collect();
            if !violated.is_empty() {
                anyhow::bail!("invariant violated: {}", violated.join(", "));
            }
            Ok(())
        }
    }
}

/// Runs every scenario of `bulwark bench kv` and returns the results without printing
/// them (progress bars still go to stderr when it is a terminal).
pub async fn run_kv(args: &KvArgs) -> anyhow::Result<BenchReport> {
    let tls = match &args.cacert {
        Some(ca) => Some(bulwark_tls::client_config(ca, None)?),
        None => {
            if let Some(t) = args
                .effective_targets()
                .iter()
                .find(|t| t.url.starts_with("https://"))
            {
                anyhow::bail!("target {t} is https://: give the CA to trust with --cacert FILE");
            }
            None
        }
    };
    let client = http_client(args.timeout, args.concurrency as usize, tls);
    let authorization = match &args.api_key_file {
        None => None,
        Some(path) => {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file {}", path.display()))?;
            let mut value = hyper::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                .with_context(|| {
                    format!("--api-key-file {}: not a header value", path.display())
                })?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let progress = Progress::new();
    let mut groups = Vec::new();
    for target in args.effective_targets() {
        let mut scenarios = Vec::new();
        for op in args.effective_ops() {
            let workload = Workload::build(
                &target,
                args.api,
                op,
                args.keys,
                args.value_size,
                args.read_ratio,
            )?
            .with_authorization(authorization.clone());
            let ctx = Arc::new(Ctx {
                client: client.clone(),
                workload: Arc::new(workload),
                concurrency: args.concurrency,
                rate: args.rate,
                timeout: args.timeout,
            });
            scenarios.push((op, ctx));
        }
        groups.push((target, scenarios));
    }

    // Preload before any replica is stopped: CP writes need every replica.
    if !args.no_preload {
        for (target, scenarios) in &groups {
            let reader = scenarios.iter().find(|(op, _)| *op != Op::Write);
            if let Some((_, ctx)) = reader {
                let stats = measure::preload(ctx).await;
                if stats.ok() < ctx.workload.keys() {
                    progress.note(&format!(
                        "warning: preloading {}: {} of {} writes succeeded; reads of the others will count as errors",
                        target.label,
                        stats.ok(),
                        ctx.workload.keys()
                    ));
                }
            }
        }
    }

    let mut runner = Runner {
        args,
        progress: &progress,
        seed: 0x5EED,
    };
    let results = match args.scenario {
        Scenario::Normal => {
            let mut results = Vec::new();
            for (target, scenarios) in &groups {
                for (op, ctx) in scenarios {
                    results.push(runner.scenario(target, *op, ctx, None).await);
                }
            }
            results
        }
        Scenario::ReplicaDown => {
            let down = ReplicaDown::new(
                client.clone(),
                &args.control,
                &args.replica,
                args.breaker_wait,
            );
            down.around(async {
                let mut results = Vec::new();
                for (target, scenarios) in &groups {
                    if let Some((_, ctx)) = scenarios.first() {
                        down.wait_open(target, &ctx.workload).await?;
                    }
                    for (op, ctx) in scenarios {
                        let r = runner.scenario(target, *op, ctx, Some(&args.replica));
                        results.push(r.await);
                    }
                }
                Ok::<_, ReplicaDownError>(results)
            })
            .await?
        }
    };
    Ok(BenchReport {
        tool: "bulwark bench kv".to_owned(),
        format_version: REPORT_FORMAT_VERSION,
        results,
    })
}

/// Measures scenarios one after the other.
#[derive(Debug)]
struct Runner<'a> {
    args: &'a KvArgs,
    progress: &'a Progress,
    /// Seed of the next phase's key choices; advanced per phase so runs are reproducible.
    seed: u64,
}

impl Runner<'_> {
    /// Warm-up, then the measured phase, of one (target × op) scenario.
    async fn scenario(
        &mut self,
        target: &Target,
        op: Op,
        ctx: &Arc<Ctx>,
        replica_down: Option<&str>,
    ) -> ScenarioResult {
        let args = self.args;
        let mut label = format!("{} {}", target.label, op.name());
        if let Some(replica) = replica_down {
            label.push_str(&format!(" ({replica} down)"));
        }
        let bar = self.progress.scenario(&label);
        let live = self.progress.visible();
        if !args.warmup.is_zero() {
            bar.phase("warm-up", args.warmup);
            self.seed += 1;
            measure::run_phase(ctx, ctx.load(), args.warmup, self.seed, live, |l| {
                bar.tick("warm-up", &l)
            })
            .await;
        }
        bar.phase("measuring", args.duration);
        self.seed += 1;
        let phase = measure::run_phase(ctx, ctx.load(), args.duration, self.seed, live, |l| {
            bar.tick("measuring", &l)
        })
        .await;
        let stats = &phase.stats;
        let elapsed = phase.elapsed.as_secs_f64();
        let result = ScenarioResult {
            scenario: label,
            target: target.label.clone(),
            url: target.url.clone(),
            op,
            api: args.api,
            condition: args.scenario,
            replica_down: replica_down.map(str::to_owned),
            load: match args.rate {
                None => LoadModel::Closed {
                    concurrency: args.concurrency,
                },
                Some(rate) => LoadModel::Open {
                    rate,
                    concurrency: args.concurrency,
                },
            },
            elapsed_s: elapsed,
            requests: stats.requests(),
            ok: stats.ok(),
            errors: stats.errors(),
            status_codes: stats.status_codes().collect(),
            missed: stats.missed(),
            throughput_rps: measure::per_second(stats.requests(), elapsed),
            latency_us: stats.latency(),
        };
        if result.requests == 0 {
            bar.abandon("no request completed");
        } else {
            bar.finish(&result);
        }
        result
    }
}

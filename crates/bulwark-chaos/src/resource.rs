//! Resource faults (SPEC CHAOS-1: CPU, memory, disk): a *burner* is a separate `bulwark
//! chaos burn` process that consumes the resource until its deadline and then cleans up
//! and exits by itself — so it ends on time even if the controller that started it was
//! killed (invariant 4 in `docs/ARCHITECTURE.md`). Each burner carries its fault's id on
//! its command line, which is how a controller finds it again (after a restart too)
//! without trusting a pid that may have been reused.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most CPU workers a burner runs.
pub const MAX_WORKERS: u32 = 64;
/// Most memory a burner holds, in MiB.
pub const MAX_MEMORY_MB: u64 = 8192;
/// Most disk a burner fills, in MiB.
pub const MAX_DISK_MB: u64 = 65536;

/// `bulwark chaos burn`: consume one resource until `--until-ms`, then clean up and exit.
#[derive(clap::Args, Debug, Clone)]
pub struct BurnArgs {
    /// Spin this many CPU threads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
    pub cpu: Option<u32>,
    /// Hold this many MiB of memory (every page written).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_MEMORY_MB))]
    pub memory_mb: Option<u64>,
    /// Fill this many MiB of disk in `--dir`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_DISK_MB))]
    pub disk_mb: Option<u64>,
    /// Directory of the fill file (with `--disk-mb`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// When to stop, in Unix milliseconds.
    #[arg(long)]
    pub until_ms: u64,
    /// The fault this burner belongs to (how the controller finds it).
    #[arg(long)]
    pub fault_id: String,
}

/// The fill file of a disk fault: in `dir`, named after the fault.
pub fn fill_path(dir: &Path, fault_id: &str) -> PathBuf {
    dir.join(format!("bulwark-chaos-{fault_id}.fill"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs a burner until its deadline (or SIGTERM/SIGINT, through `stop`), then removes its
/// fill file. Blocking: the caller gives it its own thread.
pub fn burn(args: &BurnArgs, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let done = || now_ms() >= args.until_ms || stop.load(Ordering::Relaxed);
    let mut fill: Option<PathBuf> = None;
    let mut memory: Vec<Vec<u8>> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        if let Some(mb) = args.disk_mb {
            let dir = args
                .dir
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--disk-mb needs --dir"))?;
            let path = fill_path(dir, &args.fault_id);
            fill = Some(path.clone());
            let mut f = std::fs::File::create(&path)?;
            let chunk = vec![0x5a_u8; 1 << 20];
            for _ in 0..mb {
                if done() {
                    break;
                }
                f.write_all(&chunk)?;
            }
            f.sync_all()?;
        }
        if let Some(mb) = args.memory_mb {
            for _ in 0..mb {
                if done() {
                    break;
                }
                // Written, so the pages are really resident.
                memory.push(vec![0xa5_u8; 1 << 20]);
            }
        }
        let workers: Vec<_> = (0..args.cpu.unwrap_or(0))
            .map(|_| {
                let until = args.until_ms;
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while now_ms() < until {
                        for _ in 0..100_000 {
                            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        while !done() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // CPU workers stop at the deadline by themselves; on an early stop the process
        // exit ends them.
        if now_ms() >= args.until_ms {
            for w in workers {
                let _ = w.join();
            }
        }
        Ok(())
    })();
    drop(memory);
    if let Some(p) = fill {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Pids of live burners of fault `fault_id` (found by their command line).
pub fn burners_of(fault_id: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.windows(2)
                    .any(|w| w == [b"chaos".as_slice(), b"burn".as_slice()])
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"--fault-id" && w[1] == fault_id.as_bytes())
            })
        })
        .collect()
}

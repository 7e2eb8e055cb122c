//! `bench shop --spawn`: `bulwark shop` child processes (this same executable) on free
//! ports, and their memory read from `/proc/<pid>/status` while they run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long a shop may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping shop may drain before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of the memory sampler.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One running `bulwark shop`.
#[derive(Debug)]
pub(crate) struct SpawnedShop {
    child: Child,
    pid: u32,
    /// `http://ADDR` from its `listening on ADDR` line.
    pub(crate) base: String,
    /// Its stderr (JSON log lines at WARNING and above).
    pub(crate) log: PathBuf,
    /// Highest VmRSS sampled, in bytes.
    peak: Arc<AtomicU64>,
    sampler: JoinHandle<()>,
}

impl SpawnedShop {
    /// Starts `exe shop --port 0 --database-url … --strategy …` (plus `--redis-url` for
    /// the Redis strategies), with `env` added, logging to `log_dir`, and waits for its
    /// address.
    pub(crate) async fn start(
        exe: &Path,
        database_url: &str,
        strategy: &str,
        redis_url: &str,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<SpawnedShop> {
        let log = log_dir.join(format!("shop-{strategy}.log"));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["shop", "--port", "0", "--database-url", database_url])
            .args(["--strategy", strategy]);
        if matches!(strategy, "redis-lua" | "layered") {
            cmd.args(["--redis-url", redis_url]);
        }
        cmd.env("LOG_LEVEL", "WARNING")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} shop", exe.display()))?;
        let pid = child.id().context("the shop exited at once")?;
        let stdout = child.stdout.take().context("shop stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => match line.strip_prefix("listening on ") {
                Some(addr) => addr.trim().to_owned(),
                None => bail!("unexpected first line from the shop: {line:?}"),
            },
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!(
                    "the {strategy} shop did not start; its log {}:\n{}",
                    log.display(),
                    tail(&log)
                );
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let peak = Arc::clone(&peak);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    match read_memory(pid) {
                        Some(m) => {
                            peak.fetch_max(m.rss_bytes, Ordering::Relaxed);
                        }
                        None => return,
                    }
                }
            })
        };
        Ok(SpawnedShop {
            child,
            pid,
            base: format!("http://{addr}"),
            log,
            peak,
            sampler,
        })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Peak resident memory so far: the kernel's high-water mark (VmHWM), or the highest
    /// VmRSS sampled when that is higher or unavailable.
    pub(crate) fn rss_peak(&self) -> Option<u64> {
        let sampled = self.peak.load(Ordering::Relaxed);
        let hwm = read_memory(self.pid).map_or(0, |m| m.hwm_bytes);
        let peak = sampled.max(hwm);
        (peak > 0).then_some(peak)
    }

    /// SIGTERM, then waits for the graceful drain (SIGKILL after [`STOP_TIMEOUT`]).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.sampler.abort();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the shop exited with {status}; its log {}:\n{}",
                        self.log.display(),
                        tail(&self.log)
                    );
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                bail!("the shop did not stop within {STOP_TIMEOUT:?}; killed")
            }
        }
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    pub(crate) rss_bytes: u64,
    pub(crate) hwm_bytes: u64,
}

fn read_memory(pid: u32) -> Option<Memory> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// VmRSS and VmHWM from the text of `/proc/<pid>/status`.
pub(crate) fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        rss_bytes: field("VmRSS:")?,
        hwm_bytes: field("VmHWM:")?,
    })
}

/// TCP connections in state ESTABLISHED whose local port is `port`, from `/proc/net/tcp`
/// and `/proc/net/tcp6`: the server side of the connections to a shop on this machine.
pub(crate) fn established_on(port: u16) -> Option<u64> {
    let mut n = 0;
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            n += count_established(&text, port);
        }
    }
    read_any.then_some(n)
}

/// Counts the rows of a `/proc/net/tcp` table with local port `port` and state `01`.
pub(crate) fn count_established(text: &str, port: u16) -> u64 {
    let port = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1).unwrap_or_default();
            let state = cols.nth(1).unwrap_or_default();
            local.ends_with(&port) && state == "01"
        })
        .count() as u64
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let text =
            "Name:\tbulwark\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_bytes: 40960 * 1024,
                hwm_bytes: 51200 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn established_server_sockets_are_counted_by_local_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000000\n\
            2: 0100007F:1F90 0100007F:D432 01 00000000:00000000\n\
            3: 0100007F:D431 0100007F:1F90 01 00000000:00000000\n\
            4: 0100007F:1F90 0100007F:D433 06 00000000:00000000\n";
        // Port 8080 = 0x1F90: two established server-side rows; the listener (0A), the
        // client side (remote 1F90) and TIME_WAIT (06) are not counted.
        assert_eq!(count_established(text, 8080), 2);
        assert_eq!(count_established(text, 80), 0);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let m = read_memory(std::process::id()).expect("own /proc status");
        assert!(m.rss_bytes > 0 && m.hwm_bytes >= m.rss_bytes, "{m:?}");
    }
}

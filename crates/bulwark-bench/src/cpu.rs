//! CPU time of the processes in a sale, read from `/proc` (Linux): the spawned shop, this
//! bench, and every PostgreSQL process on the machine. Read at the start and the end of
//! the measured phase, so each report says how the machine's cores were shared and what
//! one request cost each side, the figures a throughput ceiling is reasoned from.

use std::time::Instant;

use crate::shop_report::CpuFigures;

/// Cumulative CPU times at one instant, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSnapshot {
    at: Instant,
    shop: Option<u64>,
    bench: Option<u64>,
    postgres: Option<u64>,
}

impl CpuSnapshot {
    /// Reads the shop (`shop_pid`, when spawned), this process and every process named
    /// `postgres`.
    pub(crate) fn take(shop_pid: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            shop: shop_pid.and_then(|pid| read_stat(&format!("/proc/{pid}/stat")).map(|s| s.own)),
            bench: read_stat("/proc/self/stat").map(|s| s.own),
            postgres: postgres_ticks(),
        }
    }

    /// CPU seconds each side used from `before` to this snapshot. A side missing from
    /// either snapshot is `None` (no spawned shop, no local PostgreSQL, no `/proc`).
    pub(crate) fn since(&self, before: &CpuSnapshot) -> Option<CpuFigures> {
        let hz = ticks_per_second()?;
        let secs = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?) as f64 / hz as f64);
        Some(CpuFigures {
            elapsed_s: self.at.duration_since(before.at).as_secs_f64(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            shop_s: secs(self.shop, before.shop),
            postgres_s: secs(self.postgres, before.postgres),
            bench_s: secs(self.bench, before.bench),
        })
    }
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    /// utime + stime of the process (all its threads).
    own: u64,
    /// cutime + cstime: its children that have exited and been waited for.
    reaped: u64,
}

fn read_stat(path: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// Parses one `/proc/<pid>/stat` line. The command name is in parentheses and may itself
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    // After ") ": state (field 3) is index 0, utime (14) index 11, stime 12, cutime 13,
    // cstime 14.
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        own: num(11)? + num(12)?,
        reaped: num(13)? + num(14)?,
    })
}

/// Every `postgres` process's CPU, plus what its exited children used (the postmaster
/// reaps the backends, so a connection closed during the phase still counts). `None`
/// when no such process is visible: PostgreSQL is elsewhere, or this is not Linux.
fn postgres_ticks() -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("stat");
        if let Some(s) = path.to_str().and_then(read_stat)
            && s.comm == "postgres"
        {
            *total.get_or_insert(0) += s.own + s.reaped;
        }
    }
    total
}

fn ticks_per_second() -> Option<u64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    700 300 20 5 20 0 4 0 12345 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.comm, "tokio (rt) worker");
        assert_eq!(s.own, 1000);
        assert_eq!(s.reaped, 25);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None, "too few fields");
    }

    #[test]
    fn this_process_is_measured_and_its_cpu_grows() {
        let before = CpuSnapshot::take(Some(std::process::id()));
        // Burn a little CPU so at least one tick passes.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuSnapshot::take(Some(std::process::id()));
        let f = after.since(&before).expect("figures on Linux");
        assert!(f.elapsed_s >= 0.06, "{f:?}");
        let bench = f.bench_s.expect("own CPU");
        assert!(
            bench > 0.0 && bench <= f.elapsed_s * f64::from(f.cores) + 0.02,
            "{f:?}"
        );
        // The "shop" here is this process again, read through its pid.
        assert!(f.shop_s.expect("pid read") > 0.0, "{f:?}");
    }
}

//! What `/proc` says about a process (CPU time, RSS) and about the machine.

use std::io;

use crate::report::Machine;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `utime + stime` of a process (all its threads, live and exited), in ticks.
pub(crate) fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Field 3 (state) is index 0; utime is field 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// On-CPU nanoseconds of the live threads of a process: the first field
/// of each `/proc/<pid>/task/<tid>/schedstat`.
fn schedstat_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue; // the thread exited meanwhile
        };
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected schedstat of {pid}")))?;
        total += ns;
        any = true;
    }
    if any {
        Ok(total)
    } else {
        Err(io::Error::other(format!("no schedstat for {pid}")))
    }
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// A CPU-time meter for one process (or two, summed: a gateway and the
/// proxy in front of it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMeter {
    pid: u32,
    also: Option<u32>,
    ticks_per_sec: f64,
}

impl CpuMeter {
    pub(crate) fn new(pid: u32, ticks_per_sec: f64) -> Self {
        Self {
            pid,
            also: None,
            ticks_per_sec,
        }
    }

    /// This meter plus process `pid`'s CPU time.
    pub(crate) fn plus(self, pid: u32) -> Self {
        Self {
            also: Some(pid),
            ..self
        }
    }

    /// CPU seconds used so far (0 for a process that is gone).
    pub(crate) fn seconds(&self) -> f64 {
        let ticks = |pid| cpu_ticks(pid).map_or(0.0, |t| t as f64 / self.ticks_per_sec);
        ticks(self.pid) + self.also.map_or(0.0, ticks)
    }

    /// CPU seconds used so far by the threads alive now, at nanosecond
    /// resolution (`/proc/<pid>/task/*/schedstat`), for windows too short
    /// for clock ticks; [`seconds`](Self::seconds) where schedstat is not
    /// readable. Threads that exit inside the window lose their time.
    pub(crate) fn precise_seconds(&self) -> f64 {
        let one = |pid| {
            schedstat_ns(pid).map_or_else(
                |_| cpu_ticks(pid).map_or(0.0, |t| t as f64 / self.ticks_per_sec),
                |ns| ns as f64 / 1e9,
            )
        };
        one(self.pid) + self.also.map_or(0.0, one)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

/// The machine, as `nproc`, `/proc/cpuinfo` and `/proc/meminfo` describe it.
pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    Machine {
        cpus,
        cpu_model: model,
        memory_gib: (mem_kib as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        kernel,
        load_average_at_start: load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat =
            "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 5 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        assert!(rss_kib(pid).is_ok_and(|r| r > 0));
    }
}

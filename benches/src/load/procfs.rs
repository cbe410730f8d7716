//! CPU time and memory of a process (or of this one) from `/proc`.

use std::fs;

/// Clock ticks per second of `/proc/*/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds from a `stat` file (`/proc/PID/stat`,
/// `/proc/self/stat`, `/proc/thread-self/stat`); `None` if it cannot be read.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = fs::read_to_string(stat_path).ok()?;
    parse_cpu_ticks(&text).map(|t| t as f64 / ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a stat line; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// CPU seconds of one process (or thread) between two samples.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    path: String,
    start: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring the stat file at `path`.
    pub fn start(path: String) -> Self {
        let start = cpu_seconds(&path);
        CpuMeter { path, start }
    }

    /// Percent of one CPU used since [`CpuMeter::start`] over `wall_secs`.
    pub fn percent(&self, wall_secs: f64) -> Option<f64> {
        let used = cpu_seconds(&self.path)? - self.start?;
        Some(100.0 * used / wall_secs.max(1e-9))
    }
}

/// The CPU a process is pinned to, if `Cpus_allowed_list` in its status file
/// (`/proc/PID/status`, `/proc/self/status`) names exactly one.
pub fn pinned_cpu(status_path: &str) -> Option<usize> {
    let text = fs::read_to_string(status_path).ok()?;
    let list = text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    list.parse().ok()
}

/// Seconds CPU `cpu` was busy (all but idle and iowait) since boot, from `/proc/stat`.
pub fn cpu_busy_seconds(cpu: usize) -> Option<f64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle) as f64 / ticks_per_second())
}

/// What else ran on the one CPU a process is pinned to: that CPU's busy time minus
/// the process's own CPU time. The noise indicator for a shared machine (it also
/// holds interrupt work the kernel did not charge to the process).
#[derive(Debug, Clone)]
pub struct CpuNeighbours {
    cpu: usize,
    busy: f64,
    own: CpuMeter,
}

impl CpuNeighbours {
    /// Starts measuring; `None` unless the process is pinned to one CPU.
    pub fn start(status_path: &str, stat_path: String) -> Option<Self> {
        let cpu = pinned_cpu(status_path)?;
        Some(CpuNeighbours {
            cpu,
            busy: cpu_busy_seconds(cpu)?,
            own: CpuMeter::start(stat_path),
        })
    }

    /// Percent of the CPU used by others since [`CpuNeighbours::start`].
    pub fn percent(&self, wall_secs: f64) -> Option<f64> {
        let busy = 100.0 * (cpu_busy_seconds(self.cpu)? - self.busy) / wall_secs.max(1e-9);
        Some((busy - self.own.percent(wall_secs)?).max(0.0))
    }
}

/// Other load on the broker's CPU and on the generator's, for one window.
#[derive(Debug, Clone)]
pub struct Neighbours {
    broker: Option<CpuNeighbours>,
    generator: Option<CpuNeighbours>,
}

impl Neighbours {
    /// Starts measuring around a broker process and the generator (`gen_stat` is its
    /// stat file).
    pub fn start(broker_pid: Option<u32>, gen_stat: &str) -> Self {
        Neighbours {
            broker: broker_pid.and_then(|pid| {
                CpuNeighbours::start(&format!("/proc/{pid}/status"), format!("/proc/{pid}/stat"))
            }),
            generator: CpuNeighbours::start("/proc/self/status", gen_stat.to_string()),
        }
    }

    /// Adds `broker_cpu_others` and `gen_cpu_others` (percent) to `record`.
    pub fn record(&self, record: &mut super::report::Record, wall_secs: f64) {
        if let Some(p) = self.broker.as_ref().and_then(|n| n.percent(wall_secs)) {
            record.push("broker_cpu_others", format!("{p:.1}"));
        }
        if let Some(p) = self.generator.as_ref().and_then(|n| n.percent(wall_secs)) {
            record.push("gen_cpu_others", format!("{p:.1}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(line), Some(267));
        assert!(cpu_seconds("/proc/self/stat").is_some());
        assert!(status_kib(std::process::id(), "VmRSS").unwrap() > 0);
        assert!(cpu_busy_seconds(0).unwrap() > 0.0);
    }
}

//! Container metrics from cgroup v2 (`cpu.stat`, `memory.current`, `memory.max`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge, Unit};

/// What the process's cgroup v2 says.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cgroup {
    /// CPU time used by the cgroup.
    pub cpu_usage: Duration,
    /// Enforcement periods elapsed (0 without a CPU limit).
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Time throttled.
    pub throttled: Duration,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// The memory limit, bytes, when there is one.
    pub memory_limit: Option<u64>,
}

impl Cgroup {
    /// The directory of this process's cgroup v2, if it runs in one.
    pub fn dir() -> Option<PathBuf> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        dir.join("cpu.stat").is_file().then_some(dir)
    }

    /// Reads the values under `dir`.
    pub fn read(dir: &Path) -> Option<Self> {
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let read_u64 = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(Self {
            cpu_usage: Duration::from_micros(field("usage_usec")),
            periods: field("nr_periods"),
            throttled_periods: field("nr_throttled"),
            throttled: Duration::from_micros(field("throttled_usec")),
            memory_bytes: read_u64("memory.current").unwrap_or(0),
            // `max` (no limit) does not parse.
            memory_limit: read_u64("memory.max"),
        })
    }
}

pub(super) struct CgroupCollector {
    dir: PathBuf,
    /// Counters of seconds, set as gauges: see the module's notes.
    usage: Gauge,
    periods: Counter,
    throttled_periods: Counter,
    throttled: Gauge,
    throttled_ratio: Gauge,
    memory: Gauge,
    last: Option<Cgroup>,
}

impl CgroupCollector {
    /// `None` when the process is not in a cgroup v2.
    pub(super) fn new() -> Option<Self> {
        let dir = Cgroup::dir()?;
        describe_counter!(
            "container_cpu_usage_seconds_total",
            Unit::Seconds,
            "CPU time used by the container (cgroup)."
        );
        describe_counter!(
            "container_cpu_cfs_periods_total",
            "CPU enforcement periods elapsed."
        );
        describe_counter!(
            "container_cpu_cfs_throttled_periods_total",
            "CPU enforcement periods in which the container was throttled."
        );
        describe_counter!(
            "container_cpu_cfs_throttled_seconds_total",
            Unit::Seconds,
            "Time the container was throttled."
        );
        describe_gauge!(
            "container_cpu_throttled_ratio",
            "Throttled periods over periods in the last interval."
        );
        describe_gauge!(
            "container_memory_usage_bytes",
            Unit::Bytes,
            "Memory used by the container."
        );
        Some(Self {
            dir,
            usage: gauge!("container_cpu_usage_seconds_total"),
            periods: counter!("container_cpu_cfs_periods_total"),
            throttled_periods: counter!("container_cpu_cfs_throttled_periods_total"),
            throttled: gauge!("container_cpu_cfs_throttled_seconds_total"),
            throttled_ratio: gauge!("container_cpu_throttled_ratio"),
            memory: gauge!("container_memory_usage_bytes"),
            last: None,
        })
    }

    pub(super) fn collect(&mut self) {
        let Some(c) = Cgroup::read(&self.dir) else {
            return;
        };
        self.usage.set(c.cpu_usage.as_secs_f64());
        self.periods.absolute(c.periods);
        self.throttled_periods.absolute(c.throttled_periods);
        self.throttled.set(c.throttled.as_secs_f64());
        if let Some(prev) = self.last {
            let periods = c.periods.saturating_sub(prev.periods);
            if periods > 0 {
                let throttled = c.throttled_periods.saturating_sub(prev.throttled_periods);
                self.throttled_ratio.set(throttled as f64 / periods as f64);
            }
        }
        self.memory.set(c.memory_bytes as f64);
        // The limit series exist only when there is a limit.
        if let Some(limit) = c.memory_limit.filter(|l| *l > 0) {
            describe_gauge!(
                "container_spec_memory_limit_bytes",
                Unit::Bytes,
                "The container's memory limit."
            );
            describe_gauge!(
                "container_memory_utilization_ratio",
                "Memory used over the container's limit."
            );
            gauge!("container_spec_memory_limit_bytes").set(limit as f64);
            gauge!("container_memory_utilization_ratio").set(c.memory_bytes as f64 / limit as f64);
        }
        self.last = Some(c);
    }
}

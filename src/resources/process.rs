//! Process metrics from `/proc/self` (Linux), with the names Prometheus client libraries use.

use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, gauge, Gauge, Unit};

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on file descriptors.
    pub max_fds: u64,
}

impl ProcessStats {
    /// Reads the current values (`None` where `/proc` is not available).
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        // Field n of proc(5) is f[n - 3] here.
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu_ticks = num(14)? + num(15)?;
        // Sizes and threads from `status`, in kB: no page size needed. (Asking the C library or
        // the auxiliary vector for the page size and clock ticks is avoided on purpose: the
        // latter crashes under valgrind.)
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .trim_end_matches(" kB")
                    .parse::<u64>()
                    .ok()
            })
        };
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let started = num(22)? as f64 / USER_HZ as f64;
        let start_time = boot.map_or(0.0, |b| b as f64 + started);
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Some(Self {
            cpu: Duration::from_nanos(cpu_ticks.saturating_mul(1_000_000_000 / USER_HZ)),
            resident_bytes: field("VmRSS:")?.saturating_mul(1024),
            virtual_bytes: field("VmSize:")?.saturating_mul(1024),
            threads: field("Threads:")?,
            start_time,
            open_fds,
            max_fds,
        })
    }
}

/// The unit of the times in `/proc` (`USER_HZ`): fixed at 100 by the kernel's user-space ABI
/// on every architecture Rust targets.
const USER_HZ: u64 = 100;

pub(super) struct ProcessCollector {
    /// A counter of seconds, set as a gauge: see the module's notes.
    cpu_total: Gauge,
    cpu_ratio: Gauge,
    resident: Gauge,
    virt: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start: Gauge,
    last: Option<(Duration, Instant)>,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        describe_counter!(
            "process_cpu_seconds_total",
            Unit::Seconds,
            "Total user and system CPU time spent in seconds."
        );
        describe_gauge!(
            "process_cpu_utilization_ratio",
            "CPU time over wall time in the last interval (1 = one core busy)."
        );
        describe_gauge!(
            "process_resident_memory_bytes",
            Unit::Bytes,
            "Resident memory size."
        );
        describe_gauge!(
            "process_virtual_memory_bytes",
            Unit::Bytes,
            "Virtual memory size."
        );
        describe_gauge!("process_open_fds", "Open file descriptors.");
        describe_gauge!(
            "process_max_fds",
            "Maximum number of open file descriptors."
        );
        describe_gauge!("process_threads", "Threads of the process.");
        describe_gauge!(
            "process_start_time_seconds",
            Unit::Seconds,
            "Start time of the process since the Unix epoch."
        );
        Self {
            cpu_total: gauge!("process_cpu_seconds_total"),
            cpu_ratio: gauge!("process_cpu_utilization_ratio"),
            resident: gauge!("process_resident_memory_bytes"),
            virt: gauge!("process_virtual_memory_bytes"),
            open_fds: gauge!("process_open_fds"),
            max_fds: gauge!("process_max_fds"),
            threads: gauge!("process_threads"),
            start: gauge!("process_start_time_seconds"),
            last: None,
        }
    }

    pub(super) fn collect(&mut self) {
        let Some(s) = ProcessStats::read() else {
            return;
        };
        let now = Instant::now();
        self.cpu_total.set(s.cpu.as_secs_f64());
        if let Some((cpu, at)) = self.last {
            let wall = now.duration_since(at).as_secs_f64();
            if wall > 0.0 {
                self.cpu_ratio
                    .set(s.cpu.saturating_sub(cpu).as_secs_f64() / wall);
            }
        }
        self.last = Some((s.cpu, now));
        self.resident.set(s.resident_bytes as f64);
        self.virt.set(s.virtual_bytes as f64);
        self.open_fds.set(s.open_fds as f64);
        self.max_fds.set(s.max_fds as f64);
        self.threads.set(s.threads as f64);
        self.start.set(s.start_time);
    }
}

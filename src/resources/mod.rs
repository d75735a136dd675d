//! Resource metrics (USE: utilisation, saturation, errors of what the service runs on):
//! the process, its cgroup v2 container, disks, and the tokio runtime, collected on an interval
//! by a background thread, never on the request path.
//!
//! ```no_run
//! use std::time::Duration;
//! use towerscope::resources::Resources;
//! # fn demo(rt: tokio::runtime::Handle) {
//! let _collector = Resources::builder()
//!     .interval(Duration::from_secs(5))
//!     .disk("/var/lib/app")
//!     .runtime(rt)
//!     .start(); // stops when dropped
//! # }
//! ```
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `process_cpu_seconds_total` | counter (see below) | |
//! | `process_cpu_utilization_ratio` | gauge: CPU time over wall time in the last interval (1 = one core) | |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes` | gauge | |
//! | `process_open_fds`, `process_max_fds`, `process_threads` | gauge | |
//! | `process_start_time_seconds` | gauge (Unix time) | |
//! | `container_cpu_usage_seconds_total` | counter (see below; cgroup v2) | |
//! | `container_cpu_cfs_periods_total`, `container_cpu_cfs_throttled_periods_total` | counter | |
//! | `container_cpu_cfs_throttled_seconds_total` | counter (see below) | |
//! | `container_cpu_throttled_ratio` | gauge: throttled periods over periods in the last interval | |
//! | `container_memory_usage_bytes` | gauge | |
//! | `container_spec_memory_limit_bytes`, `container_memory_utilization_ratio` | gauge, only with a limit | |
//! | `disk_used_bytes`, `disk_total_bytes`, `disk_utilization_ratio` | gauge | `path` |
//! | `tokio_workers`, `tokio_alive_tasks`, `tokio_global_queue_depth` | gauge | |
//! | `tokio_worker_busy_ratio` | gauge: busy time over workers x interval | |
//!
//! Counters of seconds keep their fraction (`/proc`'s 10 ms ticks, cgroup's microseconds), as
//! Prometheus' client libraries publish them: in whole seconds, as the metrics-process crate
//! has them (the `metrics` facade's counters are integers), `rate()` over a minute of a
//! service using 1% of a core is a step between 0 and 1.7%. The facade carries them as gauges
//! set to the total, described as counters; towerscope's Prometheus recorder
//! (`towerscope::metrics::Prometheus`) renders a gauge described as a counter as a counter, so
//! they read `# TYPE ... counter`. Under another recorder they show as gauges with the same
//! values.
//!
//! Names never end in `_count` for gauges, which Prometheus' linter rejects (tokio-metrics'
//! `tokio_workers_count`).
//!
//! Written here rather than with metrics-process + tokio-metrics: the same `/proc` reads as
//! metrics-process without the procfs dependency tree, the cgroup v2 files it does not read,
//! and clean names for the runtime. Linux only; elsewhere the process and container
//! collectors report nothing.

mod cgroup;
mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{gauge, Gauge};

pub use cgroup::Cgroup;
pub use process::ProcessStats;

/// Settings of the resource collector.
#[derive(Debug, Clone)]
pub struct ResourcesBuilder {
    interval: Duration,
    process: bool,
    cgroup: bool,
    disks: Vec<PathBuf>,
    runtime: Option<tokio::runtime::Handle>,
}

/// The resource collector.
#[derive(Debug)]
pub struct Resources;

impl Resources {
    /// Configures a collector: process and cgroup on, no disk, no runtime, every 5 s.
    pub fn builder() -> ResourcesBuilder {
        ResourcesBuilder {
            interval: Duration::from_secs(5),
            process: true,
            cgroup: true,
            disks: Vec::new(),
            runtime: None,
        }
    }
}

impl ResourcesBuilder {
    /// How often to collect (default 5 s, at least 100 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Process metrics on or off.
    pub fn process(mut self, on: bool) -> Self {
        self.process = on;
        self
    }

    /// Container (cgroup v2) metrics on or off.
    pub fn cgroup(mut self, on: bool) -> Self {
        self.cgroup = on;
        self
    }

    /// A filesystem path whose disk usage is reported.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(path.into());
        self
    }

    /// The tokio runtime to report on.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// The collector, ready to [`Collector::collect`] by hand (tests, benchmarks). Handles are
    /// resolved now: install the recorder first.
    pub fn build(self) -> Collector {
        Collector::new(self)
    }

    /// Collects once now, then on the interval on a background thread, until the returned
    /// guard is dropped.
    pub fn start(self) -> CollectorGuard {
        let interval = self.interval;
        let mut collector = self.build();
        collector.collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("towerscope-resources".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(interval);
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    collector.collect();
                }
            })
            .ok();
        CollectorGuard { stop, thread }
    }
}

/// Stops the background collection when dropped.
#[derive(Debug)]
pub struct CollectorGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CollectorGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

struct DiskHandles {
    path: PathBuf,
    used: Gauge,
    total: Gauge,
    ratio: Gauge,
}

struct RuntimeHandles {
    handle: tokio::runtime::Handle,
    workers: Gauge,
    alive: Gauge,
    queue: Gauge,
    busy: Gauge,
    last_busy: Duration,
    last: Instant,
}

/// Collects the configured resources into the current recorder.
pub struct Collector {
    process: Option<process::ProcessCollector>,
    cgroup: Option<cgroup::CgroupCollector>,
    disks: Vec<DiskHandles>,
    runtime: Option<RuntimeHandles>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Collector {
    fn new(b: ResourcesBuilder) -> Self {
        let disks = b
            .disks
            .into_iter()
            .map(|path| {
                let label = path.to_string_lossy().into_owned();
                metrics::describe_gauge!(
                    "disk_used_bytes",
                    metrics::Unit::Bytes,
                    "Bytes used on the filesystem of the path."
                );
                metrics::describe_gauge!(
                    "disk_total_bytes",
                    metrics::Unit::Bytes,
                    "Size of the filesystem of the path."
                );
                metrics::describe_gauge!(
                    "disk_utilization_ratio",
                    "Used over total bytes of the filesystem of the path."
                );
                DiskHandles {
                    used: gauge!("disk_used_bytes", "path" => label.clone()),
                    total: gauge!("disk_total_bytes", "path" => label.clone()),
                    ratio: gauge!("disk_utilization_ratio", "path" => label),
                    path,
                }
            })
            .collect();
        let runtime = b.runtime.map(|handle| {
            metrics::describe_gauge!("tokio_workers", "Worker threads of the tokio runtime.");
            metrics::describe_gauge!("tokio_alive_tasks", "Tasks alive in the tokio runtime.");
            metrics::describe_gauge!(
                "tokio_global_queue_depth",
                "Tasks waiting in the runtime's global (injection) queue."
            );
            metrics::describe_gauge!(
                "tokio_worker_busy_ratio",
                "Time the workers were busy over workers x time, in the last interval."
            );
            let last_busy = total_busy(&handle);
            RuntimeHandles {
                handle,
                workers: gauge!("tokio_workers"),
                alive: gauge!("tokio_alive_tasks"),
                queue: gauge!("tokio_global_queue_depth"),
                busy: gauge!("tokio_worker_busy_ratio"),
                last_busy,
                last: Instant::now(),
            }
        });
        Self {
            process: b.process.then(process::ProcessCollector::new),
            cgroup: if b.cgroup {
                cgroup::CgroupCollector::new()
            } else {
                None
            },
            disks,
            runtime,
        }
    }

    /// Collects once.
    pub fn collect(&mut self) {
        if let Some(p) = &mut self.process {
            p.collect();
        }
        if let Some(c) = &mut self.cgroup {
            c.collect();
        }
        for d in &self.disks {
            if let Ok(space) = crate::fs_space::FsSpace::of(&d.path) {
                d.used.set(space.used() as f64);
                d.total.set(space.total as f64);
                if space.total > 0 {
                    d.ratio.set(space.used() as f64 / space.total as f64);
                }
            }
        }
        if let Some(r) = &mut self.runtime {
            let m = r.handle.metrics();
            let workers = m.num_workers();
            r.workers.set(workers as f64);
            r.alive.set(m.num_alive_tasks() as f64);
            r.queue.set(m.global_queue_depth() as f64);
            let busy = total_busy(&r.handle);
            let now = Instant::now();
            let wall = now.duration_since(r.last).as_secs_f64() * workers.max(1) as f64;
            if wall > 0.0 {
                let ratio = busy.saturating_sub(r.last_busy).as_secs_f64() / wall;
                r.busy.set(ratio.clamp(0.0, 1.0));
            }
            r.last_busy = busy;
            r.last = now;
        }
    }
}

fn total_busy(handle: &tokio::runtime::Handle) -> Duration {
    let m = handle.metrics();
    (0..m.num_workers())
        .map(|w| m.worker_total_busy_duration(w))
        .sum()
}

#[cfg(test)]
mod tests;

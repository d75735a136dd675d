use super::*;

/// Keeps this thread busy for `d`, so the process has CPU time to count.
fn burn_cpu(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = x.wrapping_mul(31).wrapping_add(7);
    }
    std::hint::black_box(x);
}

#[test]
fn the_process_reads_itself() {
    burn_cpu(Duration::from_millis(30));
    let s = ProcessStats::read().expect("/proc/self on Linux");
    assert!(s.cpu >= Duration::from_millis(10), "{s:?}");
    assert!(s.resident_bytes > 1 << 20, "{s:?}");
    assert!(s.virtual_bytes >= s.resident_bytes, "{s:?}");
    assert!(s.threads >= 1, "{s:?}");
    assert!(s.open_fds >= 3 && s.max_fds >= s.open_fds, "{s:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        s.start_time > now - 86_400.0 && s.start_time <= now + 1.0,
        "{s:?}"
    );
}

#[test]
fn cgroup_v2_files_parse() {
    let dir = std::env::temp_dir().join(format!("towerscope-cg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 100\n\
         nr_throttled 25\nthrottled_usec 1500000\n",
    )
    .unwrap();
    std::fs::write(dir.join("memory.current"), "104857600\n").unwrap();
    std::fs::write(dir.join("memory.max"), "max\n").unwrap();
    let c = Cgroup::read(&dir).unwrap();
    assert_eq!(c.cpu_usage, Duration::from_millis(2500));
    assert_eq!((c.periods, c.throttled_periods), (100, 25));
    assert_eq!(c.throttled, Duration::from_millis(1500));
    assert_eq!(c.memory_bytes, 100 << 20);
    assert_eq!(c.memory_limit, None, "`max` is no limit");
    std::fs::write(dir.join("memory.max"), "209715200\n").unwrap();
    assert_eq!(Cgroup::read(&dir).unwrap().memory_limit, Some(200 << 20));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "prometheus")]
#[test]
fn a_collection_fills_the_series() {
    let recorder = crate::metrics::Prometheus::builder().build();
    let (recorder, prometheus) = recorder;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // CPU time that is not a whole number of seconds (unless by a 1-in-100 chance).
    burn_cpu(Duration::from_millis(30));
    let mut cpu = (0.0, 0.0);
    metrics::with_local_recorder(&recorder, || {
        let mut c = Resources::builder()
            .disk(std::env::temp_dir())
            .runtime(rt.handle().clone())
            .build();
        c.collect();
        cpu.0 = ProcessStats::read().unwrap().cpu.as_secs_f64();
        c.collect();
        cpu.1 = ProcessStats::read().unwrap().cpu.as_secs_f64();
    });
    let text = prometheus.render();
    // CPU seconds keep their fraction (not truncated to whole seconds), and read as a counter.
    let total = crate::metrics::unlabeled_sample(&text, "process_cpu_seconds_total")
        .expect("process_cpu_seconds_total");
    assert!(cpu.0 <= total && total <= cpu.1, "{total} not in {cpu:?}");
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter\n"),
        "{text}"
    );
    for series in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_cpu_utilization_ratio ",
        "process_open_fds ",
        "process_max_fds ",
        "process_threads ",
        "process_start_time_seconds ",
        "disk_total_bytes{path=",
        "disk_utilization_ratio{path=",
        "tokio_workers 2",
        "tokio_alive_tasks ",
        "tokio_global_queue_depth ",
        "tokio_worker_busy_ratio ",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    assert!(
        !text.contains("_count "),
        "no gauge ends in _count:\n{text}"
    );
}

//! towerscope's own storage for counters and histograms, in front of metrics-exporter-prometheus.
//!
//! Written here rather than left to the exporter for performance measured on the request path:
//! the exporter wraps every handle in metrics-util's `Generational` (a second atomic
//! read-modify-write per update) and stores histogram samples in an epoch-pinned lock-free
//! queue drained at render time, with every thread writing the same cache lines. Here a counter
//! is one relaxed `fetch_add` and a histogram sample one bucket `fetch_add` plus a sum update,
//! each on the calling thread's own shard (cache-line aligned), summed only when rendering.
//! Gauges live here too; histograms without configured buckets (rendered as summaries) and
//! metrics whose names need sanitising stay with the exporter.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Label, Metadata,
    Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{formatting::sanitize_metric_name, PrometheusRecorder};

use crate::shard::{self, Padded};

/// A counter summed over per-thread shards.
pub(crate) struct FastCounter {
    shards: Box<[Padded<AtomicU64>]>,
}

impl FastCounter {
    fn new() -> Self {
        Self {
            shards: (0..shard::count())
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
        }
    }

    fn value(&self) -> u64 {
        self.shards.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

impl CounterFn for FastCounter {
    fn increment(&self, value: u64) {
        self.shards[shard::mine(self.shards.len())]
            .0
            .fetch_add(value, Relaxed);
    }

    fn absolute(&self, value: u64) {
        // "At least `value`": raise the total by the difference, if any.
        let total = self.value();
        if value > total {
            self.shards[0].0.fetch_add(value - total, Relaxed);
        }
    }
}

/// A gauge summed over per-thread shards: increments and decrements are deltas on the calling
/// thread's shard (an up/down gauge may go up on one thread and down on another); `set` puts
/// the value in the first shard and clears the others (gauges are either set or moved, in
/// practice; a `set` racing a move on another thread may lose that move).
///
/// Each shard keeps whole-number deltas (the active-requests gauge's ±1) in an integer, moved
/// with one `fetch_add`, and everything else in an `f64`, moved with a compare-exchange loop
/// whose load and add the integer path skips (perf: the loop was two thirds of a move).
pub(crate) struct FastGauge {
    shards: Box<[Padded<GaugeShard>]>,
}

struct GaugeShard {
    whole: AtomicI64,
    /// `f64` bits.
    rest: AtomicU64,
}

/// Deltas up to 2^53 are whole numbers an `f64` holds exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

impl FastGauge {
    fn new() -> Self {
        Self {
            shards: (0..shard::count())
                .map(|_| {
                    Padded(GaugeShard {
                        whole: AtomicI64::new(0),
                        rest: AtomicU64::new(0f64.to_bits()),
                    })
                })
                .collect(),
        }
    }

    fn value(&self) -> f64 {
        let whole: i64 = self.shards.iter().map(|s| s.0.whole.load(Relaxed)).sum();
        let rest: f64 = self
            .shards
            .iter()
            .map(|s| f64::from_bits(s.0.rest.load(Relaxed)))
            .sum();
        whole as f64 + rest
    }

    fn add(&self, delta: f64) {
        let shard = &self.shards[shard::mine(self.shards.len())].0;
        // A whole number when it converts to an integer and back unchanged (inline
        // conversions, no call): `fract()` called libm's `trunc` on every increment and
        // decrement (callgrind). NaN and the infinities fail either test.
        let whole = delta as i64;
        if whole as f64 == delta && delta.abs() < EXACT {
            shard.whole.fetch_add(whole, Relaxed);
        } else {
            add_f64(&shard.rest, delta);
        }
    }
}

impl GaugeFn for FastGauge {
    fn increment(&self, value: f64) {
        self.add(value);
    }

    fn decrement(&self, value: f64) {
        self.add(-value);
    }

    fn set(&self, value: f64) {
        // Zeroes stored only where a value is: a gauge that is only ever set (the load
        // shedder's utilization, set on every admission and release) then writes one line, not
        // every shard's (a load leaves a line shared; a store takes it from every other core).
        let zero = 0f64.to_bits();
        for (i, s) in self.shards.iter().enumerate() {
            let rest = if i == 0 { value.to_bits() } else { zero };
            if i == 0 || s.0.rest.load(Relaxed) != rest {
                s.0.rest.store(rest, Relaxed);
            }
            if s.0.whole.load(Relaxed) != 0 {
                s.0.whole.store(0, Relaxed);
            }
        }
    }
}

/// Adds to an `f64` stored as bits. On the calling thread's own shard the exchange practically
/// never fails.
fn add_f64(cell: &AtomicU64, delta: f64) {
    let mut cur = cell.load(Relaxed);
    while let Err(v) = cell.compare_exchange_weak(
        cur,
        (f64::from_bits(cur) + delta).to_bits(),
        Relaxed,
        Relaxed,
    ) {
        cur = v;
    }
}

/// A histogram with fixed buckets, summed over per-thread shards.
pub(crate) struct FastHistogram {
    bounds: Arc<[f64]>,
    /// Per shard: one count per bound, one for +Inf, then the sum's bits.
    slots: shard::Slots,
    /// One exemplar per bucket (+Inf last), made on the first one offered.
    exemplars: OnceLock<Box<[Mutex<Option<Exemplar>>]>>,
}

/// A sampled request's trace ids, its value and when it was recorded: shown on its bucket in
/// the OpenMetrics exposition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Exemplar {
    pub(crate) value: f64,
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// Seconds since the Unix epoch.
    pub(crate) at: f64,
}

impl FastHistogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        Self {
            slots: shard::Slots::new(bounds.len() + 2),
            bounds,
            exemplars: OnceLock::new(),
        }
    }

    /// The bucket of `value`: the first bound not below it (`le` is inclusive), else +Inf
    /// (NaN too).
    #[inline]
    fn bucket(&self, value: f64) -> usize {
        self.bounds
            .iter()
            .position(|b| *b >= value)
            .unwrap_or(self.bounds.len())
    }

    /// Makes `exemplar` its bucket's, unless another thread is writing that bucket's just now
    /// (one exemplar lost is nothing; waiting on the request path would be).
    #[cfg(feature = "otel")]
    pub(crate) fn offer(&self, exemplar: Exemplar) {
        let slots = self
            .exemplars
            .get_or_init(|| (0..=self.bounds.len()).map(|_| Mutex::new(None)).collect());
        if let Ok(mut slot) = slots[self.bucket(exemplar.value)].try_lock() {
            *slot = Some(exemplar);
        }
    }

    /// The exemplar of bucket `i`, if one was offered.
    fn exemplar(&self, i: usize) -> Option<Exemplar> {
        let slot = self.exemplars.get()?.get(i)?;
        *slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slot `i` of shard `shard`.
    #[inline]
    fn slot(&self, shard: usize, i: usize) -> &AtomicU64 {
        self.slots.get(shard, i)
    }

    /// Cumulative bucket counts (the last is +Inf, the total) and the sum.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let n = self.bounds.len() + 1;
        let mut counts = vec![0u64; n];
        let mut sum = 0.0;
        for s in 0..self.slots.shards() {
            for (i, c) in counts.iter_mut().enumerate() {
                *c += self.slot(s, i).load(Relaxed);
            }
            sum += f64::from_bits(self.slot(s, n).load(Relaxed));
        }
        for i in 1..n {
            counts[i] += counts[i - 1];
        }
        (counts, sum)
    }
}

impl HistogramFn for FastHistogram {
    fn record(&self, value: f64) {
        let shard = shard::mine(self.slots.shards());
        // `le` is inclusive: the first bound not below the value (+Inf, the last count, when
        // none is; NaN too, as Prometheus's Go client does). A scan from the smallest bound:
        // most requests fall in the first few buckets, where it stops after a compare or two
        // whose branch is predicted, while a binary search always walks its whole chain of
        // dependent loads and compares (about 60% of this function's samples, perf).
        let i = self.bucket(value);
        self.slot(shard, i).fetch_add(1, Relaxed);
        let sum = self.slot(shard, self.bounds.len() + 1);
        let mut cur = sum.load(Relaxed);
        // This thread's shard: the exchange practically never fails.
        while let Err(v) = sum.compare_exchange_weak(
            cur,
            (f64::from_bits(cur) + value).to_bits(),
            Relaxed,
            Relaxed,
        ) {
            cur = v;
        }
    }
}

struct Series<T> {
    by_key: HashMap<Key, Arc<T>>,
    /// Keys as registered that are written as another (see [`canonical`]), with that one's
    /// series (`None`: refused): found again without making the other key.
    aliases: HashMap<Key, Option<Arc<T>>>,
}

impl<T> Default for Series<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            aliases: HashMap::new(),
        }
    }
}

/// Counts series not recorded because their name holds another kind already (the first kind
/// registered under a name keeps it; `a.b` and `a_b` are one name, and the first spelling
/// keeps it), or because they would write a family or sample name another metric writes.
pub const SERIES_DROPPED: &str = "metrics_series_dropped_total";

thread_local! {
    /// Set while [`with_exemplars`] registers: the recorder then leaves the histogram it
    /// resolved to in `REGISTERED` (other registrations, `histogram!` in a loop, do not pay
    /// for that).
    static WANTED: Cell<bool> = const { Cell::new(false) };
    /// The histogram the registration resolved to, when its store keeps exemplars.
    static REGISTERED: Cell<Option<Arc<FastHistogram>>> = const { Cell::new(None) };
}

/// Runs `register` (a histogram's registration with the current recorder) and returns, with
/// its result, the towerscope histogram it resolved to when that recorder keeps exemplars
/// ([`PrometheusBuilder::exemplars`](super::PrometheusBuilder::exemplars)); `None` for other
/// recorders. Off the request path: once per series.
#[cfg(feature = "otel")]
pub(crate) fn with_exemplars<T>(register: impl FnOnce() -> T) -> (T, Option<Arc<FastHistogram>>) {
    /// Clears `WANTED` however `register` ends, a panic included.
    struct Wanted;
    impl Drop for Wanted {
        fn drop(&mut self) {
            WANTED.with(|w| w.set(false));
        }
    }
    REGISTERED.with(Cell::take);
    WANTED.with(|w| w.set(true));
    let wanted = Wanted;
    let registered = register();
    drop(wanted);
    (registered, REGISTERED.with(Cell::take))
}

/// The stores of the recorders built, for [`forget`].
static STORES: Mutex<Vec<Weak<Store>>> = Mutex::new(Vec::new());

/// Makes `store` one [`forget`] reaches.
pub(crate) fn track(store: &Arc<Store>) {
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.retain(|s| s.strong_count() > 0);
    stores.push(Arc::downgrade(store));
}

/// Removes the series `which` selects from every towerscope recorder, for series whose subject
/// is gone (a keyed breaker evicted), which would otherwise stay in the exposition with their
/// last values for good. The `metrics` facade has no way to unregister; another recorder
/// keeps them.
pub(crate) fn forget(which: impl Fn(&Key) -> bool) {
    let stores: Vec<_> = STORES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for store in stores {
        store.forget(&which);
    }
}

/// The kind of series a metric name holds: the text format gives a name one `TYPE`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Counter,
    Gauge,
    /// Bucketed here, or a summary in the exporter.
    Histogram,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
}

/// Series refused by [`Store::claim`], each counted once, and the names warned about.
#[derive(Default)]
struct Refused {
    /// By kind (see [`Kind::index`]).
    series: [HashSet<Key>; 3],
    names: HashSet<(String, Kind)>,
}

/// The names series were registered under, as given, with what each may hold; and which of
/// them writes each family and sample name (see [`written`]).
struct Names {
    claims: HashMap<String, Claim>,
    written: HashMap<String, String>,
}

/// What a name (as given) may hold.
#[derive(Clone, Copy)]
enum Claim {
    /// Series of this kind, the first registered.
    Held(Kind),
    /// Nothing yet; refused for these kinds (by [`Kind::index`]), each of which would write a
    /// name another writes: refused again without a look at what they would write.
    Refused([bool; 3]),
}

impl Claim {
    /// Whether `kind` is settled for the name: `Some(may hold it)`.
    fn settles(self, kind: Kind) -> Option<bool> {
        match self {
            Claim::Held(k) => Some(k == kind),
            Claim::Refused(r) => (r[kind.index()]).then_some(false),
        }
    }
}

/// The family and sample names the series `name` (as rendered) of `kind` writes in either
/// format: a counter's OpenMetrics family is named without `_total` and its samples with it
/// (the text format writes the name as given); a histogram's (or summary's) samples are
/// suffixed. A gauge takes a counter's names: described as a counter, it is written as one
/// (see `render`), and the description may come after the series.
fn written(name: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Counter | Kind::Gauge => {
            let family = name.strip_suffix("_total").unwrap_or(name);
            vec![family.to_owned(), format!("{family}_total")]
        }
        Kind::Histogram => ["", "_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{name}{suffix}"))
            .collect(),
    }
}

/// What towerscope's recorder keeps itself.
pub(crate) struct Store {
    duration_buckets: Arc<[f64]>,
    size_buckets: Arc<[f64]>,
    by_name: Vec<(String, Arc<[f64]>)>,
    global_labels: Vec<(String, String)>,
    counters: RwLock<Series<FastCounter>>,
    gauges: RwLock<Series<FastGauge>>,
    histograms: RwLock<Series<FastHistogram>>,
    help: RwLock<HashMap<String, String>>,
    /// Names described as counters: a gauge of one of these is rendered as a counter (see
    /// `render`).
    counter_names: RwLock<HashSet<String>>,
    /// Each name's kind, the first one registered, and the names each writes.
    names: RwLock<Names>,
    refused: Mutex<Refused>,
    /// The exporter's series' keys as registered that it records under another (see
    /// [`canonical`]), with that one.
    exporter_keys: RwLock<HashMap<Key, Key>>,
    /// `metrics_series_dropped_total`.
    dropped: Arc<FastCounter>,
    /// Histograms keep exemplars, rendered in the OpenMetrics exposition.
    pub(crate) exemplars: bool,
}

impl Store {
    pub(crate) fn new(
        duration: &[f64],
        size: &[f64],
        by_name: Vec<(String, Vec<f64>)>,
        global_labels: Vec<(String, String)>,
        exemplars: bool,
    ) -> Self {
        // The drop counter is there from the start, at zero, for `increase()` to see its
        // first drop.
        let dropped = Arc::new(FastCounter::new());
        let mut counters = Series::default();
        counters
            .by_key
            .insert(Key::from_static_name(SERIES_DROPPED), dropped.clone());
        let help = HashMap::from([(
            SERIES_DROPPED.to_owned(),
            "Metric series not recorded because their name holds another kind already (a \
             counter, a gauge or a histogram), or would write a family or sample name another \
             metric writes: the exposition gives a name one type."
                .to_owned(),
        )]);
        Self {
            duration_buckets: duration.into(),
            size_buckets: size.into(),
            by_name: by_name.into_iter().map(|(n, b)| (n, b.into())).collect(),
            global_labels,
            counters: RwLock::new(counters),
            gauges: RwLock::default(),
            histograms: RwLock::default(),
            help: RwLock::new(help),
            counter_names: RwLock::default(),
            names: RwLock::new(Names {
                claims: HashMap::from([(SERIES_DROPPED.to_owned(), Claim::Held(Kind::Counter))]),
                written: written(SERIES_DROPPED, Kind::Counter)
                    .into_iter()
                    .map(|w| (w, SERIES_DROPPED.to_owned()))
                    .collect(),
            }),
            refused: Mutex::default(),
            exporter_keys: RwLock::default(),
            dropped,
            exemplars,
        }
    }

    /// Whether `name` may hold series of `kind`: the first kind registered under a name keeps
    /// it, as Prometheus's Go client refuses a second registration. Two `TYPE` lines for one
    /// name make the exposition invalid (`promtool check metrics`, the Go client's parser),
    /// and a counter and a gauge with the same labels are one series twice.
    ///
    /// Nor may a name write a family or sample name another name writes. Names are compared
    /// as rendered, so `a.b` and `a_b` are one name and the first spelling keeps it (the
    /// exporter holds the one, this store the other: each would write the family). A counter's
    /// OpenMetrics family is its name without `_total` and its samples have it, so the counter
    /// `jobs_total`, the gauge `jobs`, the counter `jobs` and the gauge `jobs_total` would
    /// clash there (an OpenMetrics parser refuses the whole answer over a family named twice,
    /// and one sample name in two families is one series twice); a gauge `x_count` repeats
    /// the histogram `x`'s count in both formats. The first name keeps it in both formats, so a
    /// series never depends on the format the scraper negotiated. Looked up once per new
    /// series here, and on every registration of what goes to the exporter.
    fn claim(&self, name: &str, kind: Kind) -> bool {
        let settled = |names: &Names| names.claims.get(name).and_then(|c| c.settles(kind));
        if let Some(ok) = settled(&self.names.read().unwrap_or_else(|e| e.into_inner())) {
            return ok;
        }
        let shown = if plain_name(name) {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(sanitize_metric_name(name))
        };
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if let Some(ok) = settled(&names) {
            return ok;
        }
        let writes = written(&shown, kind);
        if writes.iter().any(|w| names.written.contains_key(w)) {
            // For this kind only: another may write other names.
            let claim = names
                .claims
                .entry(name.to_owned())
                .or_insert(Claim::Refused([false; 3]));
            if let Claim::Refused(r) = claim {
                r[kind.index()] = true;
            }
            return false;
        }
        for w in writes {
            names.written.insert(w, name.to_owned());
        }
        names.claims.insert(name.to_owned(), Claim::Held(kind));
        true
    }

    /// Counts a series `claim` refused, once, and says so once per name and kind.
    fn refuse(&self, key: &Key, kind: Kind) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let series = &mut refused.series[kind.index()];
        if series.contains(key) {
            return;
        }
        series.insert(key.clone());
        self.dropped.increment(1);
        if refused.names.insert((key.name().to_owned(), kind)) {
            tracing::warn!(
                metric = key.name(),
                refused = ?kind,
                "metric name registered as another kind already, or writing a name another \
                 metric writes: these series are dropped (metrics_series_dropped_total)"
            );
        }
    }

    fn buckets_for(&self, name: &str) -> Option<Arc<[f64]>> {
        if let Some((_, b)) = self.by_name.iter().find(|(n, _)| n == name) {
            Some(b.clone())
        } else if name.ends_with("_duration_seconds") {
            Some(self.duration_buckets.clone())
        } else if name.ends_with("_size_bytes") {
            Some(self.size_buckets.clone())
        } else {
            None
        }
    }

    /// The series of `key`, made on its first registration, unless its name holds another
    /// kind.
    fn get_or_create<T>(
        &self,
        lock: &RwLock<Series<T>>,
        key: &Key,
        kind: Kind,
        make: impl FnOnce() -> T,
    ) -> Option<Arc<T>> {
        {
            let series = lock.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = series.by_key.get(key) {
                return Some(v.clone());
            }
            if let Some(v) = series.aliases.get(key) {
                return v.clone();
            }
        }
        let bucketed = kind == Kind::Histogram;
        if let Some(written) = canonical(key, bucketed) {
            let v = self.get_or_create(lock, &written, kind, make);
            let mut w = lock.write().unwrap_or_else(|e| e.into_inner());
            w.aliases.insert(key.clone(), v.clone());
            return v;
        }
        if !self.admit(key, kind) {
            return None;
        }
        let mut w = lock.write().unwrap_or_else(|e| e.into_inner());
        Some(
            w.by_key
                .entry(key.clone())
                .or_insert_with(|| Arc::new(make()))
                .clone(),
        )
    }

    /// `register` with the key the exporter records `key` under (see [`canonical`]): made once
    /// for a key written otherwise, then found again (`metrics`' macros register on every
    /// use).
    fn exporter_key<R>(&self, key: &Key, register: impl FnOnce(&Key) -> R) -> R {
        if !written_otherwise(key, false) {
            return register(key);
        }
        if let Some(k) = self
            .exporter_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return register(k);
        }
        // Retained: the exporter retains the key it is given on every registration, which
        // then costs nothing (an owned key would be copied whole each time).
        let written = canonical(key, false)
            .unwrap_or_else(|| key.clone())
            .to_retained();
        let r = register(&written);
        self.exporter_keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), written);
        r
    }

    /// Whether a new series of `key` may be recorded, here or in the exporter: its name's
    /// claim, the refusal counted when not (see `claim`).
    fn admit(&self, key: &Key, kind: Kind) -> bool {
        let ok = self.claim(key.name(), kind);
        if !ok {
            self.refuse(key, kind);
        }
        ok
    }

    fn describe(&self, name: &KeyName, description: &SharedString) {
        self.help
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.as_str().to_owned())
            .or_insert_with(|| description.to_string());
    }

    /// Removes the series `which` selects.
    fn forget(&self, which: &dyn Fn(&Key) -> bool) {
        fn retain<T>(lock: &RwLock<Series<T>>, which: &dyn Fn(&Key) -> bool) {
            let mut w = lock.write().unwrap_or_else(|e| e.into_inner());
            w.by_key.retain(|k, _| !which(k));
            // An alias goes with its series (a refused one stays refused).
            let kept: HashSet<*const T> = w.by_key.values().map(Arc::as_ptr).collect();
            w.aliases
                .retain(|_, v| v.as_ref().is_none_or(|v| kept.contains(&Arc::as_ptr(v))));
        }
        retain(&self.counters, which);
        retain(&self.gauges, which);
        retain(&self.histograms, which);
    }

    /// The exposition text of what this store holds: the text format 0.0.4, or, with `om`,
    /// OpenMetrics 1.0 (a counter's family named without `_total`, its samples with it; `"`
    /// escaped in `HELP`; no blank lines; exemplars on histogram buckets; the caller ends it
    /// with `# EOF`). No family or sample name is written twice, the exporter's included:
    /// [`Store::claim`] refuses a series that would.
    pub(crate) fn render(&self, om: bool) -> String {
        let mut out = String::new();
        // A series' labels, written once for all its lines.
        let (mut labels, mut names) = (String::new(), Vec::new());
        let help = self.help.read().unwrap_or_else(|e| e.into_inner());
        let end_family = |out: &mut String| {
            if !om {
                out.push('\n');
            }
        };
        let counters = self.counters.read().unwrap_or_else(|e| e.into_inner());
        for (name, series) in grouped(&counters.by_key) {
            let (family, sample) = counter_names(name, om);
            header(&mut out, &family, help.get(name), "counter", om);
            for (key, c) in series {
                self.labels(key, false, &mut labels, &mut names);
                line(
                    &mut out,
                    &sample,
                    "",
                    &labels,
                    None,
                    Sample::Count(c.value()),
                );
            }
            end_family(&mut out);
        }
        let gauges = self.gauges.read().unwrap_or_else(|e| e.into_inner());
        let counter_names_set = self.counter_names.read().unwrap_or_else(|e| e.into_inner());
        for (name, series) in grouped(&gauges.by_key) {
            // A gauge described as a counter is a counter set to its total: the `metrics`
            // facade's counters are integers, so a counter with a fraction (CPU seconds) can
            // only be set through a gauge.
            let counter = counter_names_set.contains(name);
            let (family, sample) = match counter {
                true => counter_names(name, om),
                false => (Cow::Borrowed(name), Cow::Borrowed(name)),
            };
            let kind = if counter { "counter" } else { "gauge" };
            header(&mut out, &family, help.get(name), kind, om);
            for (key, g) in series {
                self.labels(key, false, &mut labels, &mut names);
                line(
                    &mut out,
                    &sample,
                    "",
                    &labels,
                    None,
                    Sample::Float(g.value()),
                );
            }
            end_family(&mut out);
        }
        let histograms = self.histograms.read().unwrap_or_else(|e| e.into_inner());
        for (name, series) in grouped(&histograms.by_key) {
            header(&mut out, name, help.get(name), "histogram", om);
            for (key, h) in series {
                self.labels(key, true, &mut labels, &mut names);
                let (counts, sum) = h.snapshot();
                let bounds = h.bounds.iter().copied().chain([f64::INFINITY]);
                for (i, (b, count)) in bounds.zip(&counts).enumerate() {
                    line(
                        &mut out,
                        name,
                        "_bucket",
                        &labels,
                        Some(b),
                        Sample::Count(*count),
                    );
                    if let Some(e) = h.exemplar(i).filter(|_| om) {
                        exemplar(&mut out, &e);
                    }
                }
                let total = *counts.last().unwrap_or(&0);
                line(&mut out, name, "_sum", &labels, None, Sample::Float(sum));
                line(
                    &mut out,
                    name,
                    "_count",
                    &labels,
                    None,
                    Sample::Count(total),
                );
            }
            end_family(&mut out);
        }
        out
    }

    /// A series' labels as written between its braces (`a="x",b="y"`): the global labels the
    /// series does not set itself, then its own. A label whose name is written already (named
    /// twice, or the same once made valid: `a.b` and `a_b`), and a histogram's own `le`, are
    /// left out: a name twice in one series makes Prometheus refuse the whole scrape.
    fn labels(&self, key: &Key, histogram: bool, out: &mut String, names: &mut Vec<Range<usize>>) {
        out.clear();
        names.clear();
        let mut label = |out: &mut String, k: &str, v: &str| {
            let mark = out.len();
            if mark > 0 {
                out.push(',');
            }
            let start = out.len();
            label_name(out, k);
            let name = &out[start..];
            if (histogram && name == "le") || names.iter().any(|r| out[r.clone()] == *name) {
                out.truncate(mark);
                return;
            }
            names.push(start..out.len());
            out.push_str("=\"");
            escape(out, v, true);
            out.push('"');
        };
        for (k, v) in &self.global_labels {
            if !key.labels().any(|l| l.key() == k) {
                label(out, k, v);
            }
        }
        for l in key.labels() {
            label(out, l.key(), l.value());
        }
    }
}

/// A sample's value: a counter's count or a gauge's (or a histogram sum's) float.
enum Sample {
    Count(u64),
    Float(f64),
}

/// An `f64` as the text format spells it: `+Inf`, `-Inf` and `NaN` (Rust's `Display` writes
/// `inf`, which stricter parsers, OpenMetrics among them, refuse). Written straight into `out`:
/// a bucket's bound, on every bucket line, through a nested `Display` cost 7% of a render.
fn write_float(out: &mut String, v: f64) {
    match v {
        v if v.is_nan() => out.push_str("NaN"),
        f64::INFINITY => out.push_str("+Inf"),
        f64::NEG_INFINITY => out.push_str("-Inf"),
        v => {
            let _ = write!(out, "{v}");
        }
    }
}

/// One sample line: the name, its suffix, the series' labels and a bucket's bound (`le`, the
/// last one `+Inf`), and the value.
fn line(out: &mut String, name: &str, suffix: &str, labels: &str, le: Option<f64>, value: Sample) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            out.push_str(if labels.is_empty() { "le=\"" } else { ",le=\"" });
            write_float(out, le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Sample::Count(n) => {
            let _ = write!(out, "{n}");
        }
        Sample::Float(v) => write_float(out, v),
    }
    out.push('\n');
}

/// One metric name and its series, in render order.
type Group<'a, T> = (&'a str, Vec<(&'a Key, &'a Arc<T>)>);

fn grouped<T>(map: &HashMap<Key, Arc<T>>) -> Vec<Group<'_, T>> {
    let mut all: Vec<_> = map.iter().collect();
    all.sort_by(|a, b| {
        a.0.name().cmp(b.0.name()).then_with(|| {
            a.0.labels()
                .map(|l| (l.key(), l.value()))
                .cmp(b.0.labels().map(|l| (l.key(), l.value())))
        })
    });
    let mut out: Vec<Group<'_, T>> = Vec::new();
    for (k, v) in all {
        match out.last_mut() {
            Some((n, s)) if *n == k.name() => s.push((k, v)),
            _ => out.push((k.name(), vec![(k, v)])),
        }
    }
    out
}

/// A counter's family name and sample name: in the text format both its name; in OpenMetrics
/// the family without `_total`, the samples with it (a counter named without it gains it).
fn counter_names(name: &str, om: bool) -> (Cow<'_, str>, Cow<'_, str>) {
    match (om, name.strip_suffix("_total")) {
        (false, _) => (Cow::Borrowed(name), Cow::Borrowed(name)),
        (true, Some(family)) => (Cow::Borrowed(family), Cow::Borrowed(name)),
        (true, None) => (Cow::Borrowed(name), Cow::Owned(format!("{name}_total"))),
    }
}

fn header(out: &mut String, name: &str, help: Option<&String>, kind: &str, om: bool) {
    if let Some(h) = help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape(out, h, om);
        out.push('\n');
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// An OpenMetrics exemplar after a bucket's value: ` # {trace_id="…",span_id="…"} value
/// timestamp`, the ids in lowercase hex as W3C Trace Context writes them.
fn exemplar(out: &mut String, e: &Exemplar) {
    out.pop();
    let _ = write!(
        out,
        " # {{trace_id=\"{:032x}\",span_id=\"{:016x}\"}} ",
        e.trace_id, e.span_id
    );
    write_float(out, e.value);
    let _ = writeln!(out, " {:.3}", e.at);
}

/// Escapes per the text format: `\` and newline always, `"` in label values.
fn escape(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// The key a series is recorded under: `key` with its label names as the exposition writes
/// them (see [`label_name`]), each once (the first), and for a bucketed histogram without
/// its own `le`; `None` when that is `key` already, as nearly always. Two keys that differ
/// only there (`q.r` and `q_r`, a label named twice) are one series in the exposition, so
/// they record into one instead of writing it twice. The store keeps the key as registered
/// as an alias (`metrics`' macros register on every use: found again without a new key).
fn canonical(key: &Key, bucketed: bool) -> Option<Key> {
    if !written_otherwise(key, bucketed) {
        return None;
    }
    let mut labels: Vec<Label> = Vec::with_capacity(key.labels().len());
    for l in key.labels() {
        let mut name = String::new();
        label_name(&mut name, l.key());
        if (bucketed && name == "le") || labels.iter().any(|k| k.key() == name) {
            continue;
        }
        labels.push(Label::new(name, l.value().to_owned()));
    }
    Some(Key::from_parts(key.name().to_owned(), labels))
}

/// Whether [`canonical`] has another key for `key` (one scan of its labels, no allocation).
fn written_otherwise(key: &Key, bucketed: bool) -> bool {
    let dropped = |i: usize, name: &str| {
        (bucketed && name == "le") || key.labels().take(i).any(|l| l.key() == name)
    };
    !key.labels()
        .enumerate()
        .all(|(i, l)| valid_label_name(l.key()) && !dropped(i, l.key()))
}

/// Whether a label name is one the text format allows (`[a-zA-Z_][a-zA-Z0-9_]*`).
fn valid_label_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A label name as the text format allows it (`[a-zA-Z_][a-zA-Z0-9_]*`): any other character
/// (an OpenTelemetry-style `queue.name`, a dash, a leading digit) written as `_`, as
/// metrics-exporter-prometheus writes it. One such key written as it is would make the whole
/// exposition unreadable to Prometheus.
pub(super) fn label_name(out: &mut String, name: &str) {
    // Nearly every name is valid already: one scan, then the name as it is.
    if valid_label_name(name) {
        out.push_str(name);
        return;
    }
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
}

/// A name this store can render as is (`[a-zA-Z_:][a-zA-Z0-9_:]*`); others go to the exporter,
/// which sanitises them.
fn plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The recorder of [`crate::metrics::Prometheus`]: counters, gauges and bucketed histograms in
/// towerscope's sharded storage, the rest in metrics-exporter-prometheus.
pub struct TowerscopeRecorder {
    pub(crate) inner: PrometheusRecorder,
    pub(crate) store: Arc<Store>,
}

impl std::fmt::Debug for TowerscopeRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TowerscopeRecorder").finish_non_exhaustive()
    }
}

impl Recorder for TowerscopeRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.store.describe(&key, &description);
        self.store
            .counter_names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.as_str().to_owned());
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.store.describe(&key, &description);
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.store.describe(&key, &description);
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let store = &self.store;
        if !plain_name(key.name()) {
            return store.exporter_key(key, |key| match store.admit(key, Kind::Counter) {
                true => self.inner.register_counter(key, metadata),
                false => Counter::noop(),
            });
        }
        store
            .get_or_create(&store.counters, key, Kind::Counter, FastCounter::new)
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let store = &self.store;
        if !plain_name(key.name()) {
            return store.exporter_key(key, |key| match store.admit(key, Kind::Gauge) {
                true => self.inner.register_gauge(key, metadata),
                false => Gauge::noop(),
            });
        }
        store
            .get_or_create(&store.gauges, key, Kind::Gauge, FastGauge::new)
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let store = &self.store;
        let bounds = store
            .buckets_for(key.name())
            .filter(|_| plain_name(key.name()));
        match bounds {
            Some(bounds) => {
                let h = store.get_or_create(&store.histograms, key, Kind::Histogram, || {
                    FastHistogram::new(bounds)
                });
                if store.exemplars && WANTED.with(Cell::get) {
                    REGISTERED.with(|r| r.set(h.clone()));
                }
                h.map_or_else(Histogram::noop, Histogram::from_arc)
            }
            None => store.exporter_key(key, |key| match store.admit(key, Kind::Histogram) {
                true => self.inner.register_histogram(key, metadata),
                false => Histogram::noop(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_inclusive() {
        let h = FastHistogram::new(Arc::from(&[0.1, 1.0][..]));
        for v in [0.05, 0.1, 0.5, 1.0, 7.0] {
            h.record(v);
        }
        let (counts, sum) = h.snapshot();
        assert_eq!(counts, vec![2, 4, 5]);
        assert!((sum - 8.65).abs() < 1e-9);
        // Above every bound, or not a number: +Inf only.
        let h = FastHistogram::new(Arc::from(&[0.1, 1.0][..]));
        h.record(f64::NAN);
        h.record(1.0000001);
        assert_eq!(h.snapshot().0, vec![0, 0, 2]);
    }

    #[test]
    fn histograms_past_one_block_count_every_bucket() {
        // 20 bounds: 22 slots, two blocks per shard; a value in every bucket and +Inf, from
        // four threads (several shards).
        let bounds: Vec<f64> = (1..=20).map(f64::from).collect();
        let h = Arc::new(FastHistogram::new(Arc::from(bounds)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (1..=21).for_each(|v| h.record(f64::from(v))))
            })
            .collect();
        handles.into_iter().for_each(|t| t.join().unwrap());
        let (counts, sum) = h.snapshot();
        assert_eq!(counts, (1..=21).map(|i| 4 * i).collect::<Vec<u64>>());
        assert_eq!(sum, 4.0 * 231.0);
    }

    #[test]
    fn counters_sum_their_shards_across_threads() {
        let c = Arc::new(FastCounter::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.increment(1)))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.value(), 40_000);
        c.absolute(50_000);
        assert_eq!(c.value(), 50_000);
        c.absolute(10);
        assert_eq!(c.value(), 50_000);
    }

    #[test]
    fn gauges_move_across_threads_and_set() {
        let g = Arc::new(FastGauge::new());
        let up = {
            let g = g.clone();
            std::thread::spawn(move || (0..1000).for_each(|_| g.increment(1.0)))
        };
        up.join().unwrap();
        (0..400).for_each(|_| g.decrement(1.0));
        assert_eq!(g.value(), 600.0);
        g.set(3.5);
        assert_eq!(g.value(), 3.5);
        // Whole and fractional moves together, on either side of a set value.
        g.increment(0.25);
        g.decrement(2.0);
        assert_eq!(g.value(), 1.75);
    }

    #[test]
    fn gauges_keep_what_is_not_a_small_whole_number() {
        // Beyond 2^53, and values an integer cannot hold: on the float side, not truncated
        // or saturated into the integer one.
        let g = FastGauge::new();
        g.increment(1e20);
        g.decrement(1e20);
        g.decrement(-3.0);
        assert_eq!(g.value(), 3.0);
        g.increment(f64::INFINITY);
        assert_eq!(g.value(), f64::INFINITY);
        let g = FastGauge::new();
        g.increment(f64::NAN);
        assert!(g.value().is_nan());
    }

    /// What a registry built by `builder` renders after `record` ran against its recorder.
    fn rendered(builder: crate::metrics::PrometheusBuilder, record: impl FnOnce()) -> String {
        let (recorder, prometheus) = builder.build();
        metrics::with_local_recorder(&recorder, record);
        prometheus.render()
    }

    /// Panics, showing the text, unless it holds every one of `lines`.
    fn has_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.contains(line), "{line}: {text}");
        }
    }

    #[test]
    fn a_gauge_described_as_a_counter_renders_as_a_counter_with_its_fraction() {
        let text = rendered(crate::metrics::Prometheus::builder(), || {
            metrics::describe_counter!("cpu_seconds_total", Unit::Seconds, "CPU time.");
            metrics::gauge!("cpu_seconds_total").set(12.34);
            metrics::gauge!("in_use").set(2.5);
        });
        has_lines(
            &text,
            &[
                "# TYPE cpu_seconds_total counter\ncpu_seconds_total 12.34\n",
                "# TYPE in_use gauge\nin_use 2.5\n",
            ],
        );
    }

    #[test]
    fn names_and_label_values_render_safely() {
        assert!(
            plain_name("http_server_request_duration_seconds")
                && !plain_name("a-b")
                && !plain_name("1x")
        );
        let mut s = String::new();
        escape(&mut s, "a\"b\\c\nd", true);
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    /// A label name twice in one series (given twice, or equal once made valid) and a
    /// histogram's own `le` are left out, the first one kept: Prometheus refuses a whole
    /// scrape over one such series.
    #[test]
    fn a_label_name_is_written_once_per_series() {
        let text = rendered(
            crate::metrics::Prometheus::builder().global_label("env", "prod"),
            || {
                metrics::counter!("jobs_total", "queue" => "mail", "queue" => "sms", "a.b" => "1", "a_b" => "2")
                .increment(1);
                metrics::counter!("runs_total", "env" => "dev").increment(1);
                metrics::histogram!("job_duration_seconds", "le" => "mine", "queue" => "mail")
                    .record(0.2);
            },
        );
        has_lines(
            &text,
            &[
                "jobs_total{env=\"prod\",queue=\"mail\",a_b=\"1\"} 1\n",
                "runs_total{env=\"dev\"} 1\n",
                "job_duration_seconds_bucket{env=\"prod\",queue=\"mail\",le=\"0.25\"} 1\n",
                "job_duration_seconds_count{env=\"prod\",queue=\"mail\"} 1\n",
            ],
        );
    }

    #[test]
    fn infinities_and_nan_are_spelt_as_the_text_format_has_them() {
        let text = rendered(crate::metrics::Prometheus::builder(), || {
            metrics::gauge!("up_ratio").set(f64::INFINITY);
            metrics::gauge!("down_ratio").set(f64::NEG_INFINITY);
            metrics::gauge!("odd_ratio").set(f64::NAN);
            metrics::gauge!("half_ratio").set(0.5);
        });
        has_lines(
            &text,
            &[
                "up_ratio +Inf\n",
                "down_ratio -Inf\n",
                "odd_ratio NaN\n",
                "half_ratio 0.5\n",
            ],
        );
    }

    /// Label names outside `[a-zA-Z_][a-zA-Z0-9_]*` (OpenTelemetry-style dotted keys, dashes,
    /// a leading digit), on series and as global labels, are written with `_` in their place,
    /// as metrics-exporter-prometheus writes them: one bad key must not make the whole scrape
    /// unreadable.
    #[test]
    fn label_names_are_sanitised() {
        let text = rendered(
            crate::metrics::Prometheus::builder().global_label("deploy.env", "prod"),
            || {
                metrics::counter!("jobs_total", "queue.name" => "mail", "retry-count" => "2", "9lives" => "x")
                .increment(3);
                metrics::histogram!("job_duration_seconds", "queue.name" => "mail").record(0.2);
                // Spelt two ways, or named twice: one series, written once.
                metrics::counter!("mails_total", "queue.name" => "mail").increment(1);
                metrics::counter!("mails_total", "queue_name" => "mail").increment(2);
                metrics::counter!("mails_total", "queue_name" => "mail", "queue.name" => "x")
                    .increment(4);
                metrics::histogram!("mail_duration_seconds", "le" => "mine").record(0.2);
                metrics::histogram!("mail_duration_seconds").record(0.2);
                // A series' own label replaces the global one of that name, however spelt;
                // in the exporter (a dotted name) too.
                metrics::gauge!("depth", "deploy_env" => "dev").set(1.0);
                metrics::gauge!("depth.max", "deploy_env" => "dev").set(2.0);
            },
        );
        has_lines(
            &text,
            &[
                "jobs_total{deploy_env=\"prod\",queue_name=\"mail\",retry_count=\"2\",_lives=\"x\"} 3\n",
                "job_duration_seconds_bucket{deploy_env=\"prod\",queue_name=\"mail\",le=\"0.25\"} 1\n",
                "mails_total{deploy_env=\"prod\",queue_name=\"mail\"} 7\n",
                "mail_duration_seconds_count{deploy_env=\"prod\"} 2\n",
                "depth{deploy_env=\"dev\"} 1\n",
                "depth_max{deploy_env=\"dev\"} 2\n",
            ],
        );
        assert_eq!(text.matches("mails_total{").count(), 1, "{text}");
    }

    /// A registration that panics leaves the thread's later registrations as they were: not
    /// looking for a histogram to keep exemplars on.
    #[cfg(feature = "otel")]
    #[test]
    fn a_panicking_registration_leaves_no_wish_behind() {
        let panicked = std::panic::catch_unwind(|| with_exemplars(|| panic!("registration")));
        assert!(panicked.is_err());
        assert!(!WANTED.with(Cell::get));
    }

    /// A name keeps the kind it was first registered as: later series of another kind, here
    /// or in the exporter, and under a name equal once made valid, are dropped and counted
    /// once each, never rendered as a second `TYPE` of the name; so are series that would
    /// write a name another metric writes.
    #[test]
    fn a_name_keeps_its_first_kind() {
        let text = rendered(crate::metrics::Prometheus::builder(), || {
            metrics::counter!("jobs").increment(2);
            metrics::gauge!("jobs").set(5.0);
            metrics::gauge!("jobs", "queue" => "mail").set(6.0);
            // Twice: one series, counted once.
            metrics::gauge!("jobs").set(7.0);
            // No buckets: a summary, in the exporter.
            metrics::histogram!("jobs").record(1.0);
            // Dotted: the exporter renders it as `a_b`, a name the store holds as a gauge.
            metrics::gauge!("a_b").set(1.0);
            metrics::counter!("a.b").increment(1);
            metrics::counter!("a.b").increment(1);
            // The other way round: the exporter's name first.
            metrics::histogram!("c.d").record(1.0);
            metrics::counter!("c_d").increment(1);
            metrics::histogram!("c.d").record(3.0);
            // Names another metric writes: the counter `done_total`'s OpenMetrics family, the
            // histogram's count.
            metrics::counter!("done_total").increment(1);
            metrics::gauge!("done").set(1.0);
            metrics::histogram!("h_duration_seconds").record(1.0);
            metrics::gauge!("h_duration_seconds_count").set(1.0);
            // One name spelt two ways, one kind: the exporter would write the one, the store
            // the other, each with its `TYPE`. The first spelling keeps it.
            metrics::counter!("e.f").increment(1);
            metrics::counter!("e_f").increment(1);
            // A gauge takes a counter's names: described as a counter, `g` is written as one,
            // with the samples `g_total` that the gauge `g_total` writes.
            metrics::gauge!("g_total").set(1.0);
            metrics::describe_counter!("g", "Described as a counter.");
            metrics::gauge!("g").set(2.0);
        });
        has_lines(
            &text,
            &[
                "# TYPE jobs counter\njobs 2\n",
                "# TYPE a_b gauge\na_b 1\n",
                "# TYPE c_d summary\n",
                "c_d_count 2\n",
                "# TYPE done_total counter\ndone_total 1\n",
                "h_duration_seconds_count 1\n",
                "# TYPE e_f counter\ne_f 1\n",
                "# TYPE g_total gauge\ng_total 1\n",
                "metrics_series_dropped_total 9\n",
            ],
        );
        assert!(
            !text.contains("\ndone 1") && !text.contains("\ng 2"),
            "{text}"
        );
        assert_eq!(
            text.matches("h_duration_seconds_count").count(),
            1,
            "{text}"
        );
        for name in ["jobs", "a_b", "c_d", "e_f"] {
            let types = text.matches(&format!("# TYPE {name} ")).count();
            assert_eq!(types, 1, "{name}: {text}");
        }
        assert!(
            !text.contains("queue=") && !text.contains("jobs_count"),
            "{text}"
        );
    }

    /// Checks an exposition the way a strict parser reads it: each family's `TYPE` once, each
    /// sample in the family above it (its name or a suffix of it), each series once, each
    /// sample name in one family, each label name valid and once in its series. Returns the series by family (labels without `le` and
    /// `quantile`), `metrics_series_dropped_total` left out, and that counter's value.
    fn parse_strictly(text: &str, om: bool) -> Result<(usize, u64), String> {
        use std::collections::HashMap;
        let mut families = HashSet::new();
        let (mut family, mut series, mut ids) = (String::new(), HashSet::new(), HashSet::new());
        let mut names: HashMap<String, String> = HashMap::new();
        let mut dropped = 0;
        for line in text.lines() {
            if line.starts_with("# HELP ") || (om && line == "# EOF") || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or_default().to_owned();
                if !families.insert(family.clone()) {
                    return Err(format!("family {family} twice"));
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).ok_or(format!("no value: {line}"))?;
            let name = &line[..name_end];
            let id_end = match line.as_bytes()[name_end] {
                b'{' => line.find('}').ok_or(format!("unclosed labels: {line}"))? + 1,
                _ => name_end,
            };
            let id = &line[..id_end];
            let suffix = name.strip_prefix(family.as_str());
            if !matches!(suffix, Some("" | "_total" | "_bucket" | "_sum" | "_count")) {
                return Err(format!("{name} outside its family {family}"));
            }
            if names
                .insert(name.to_owned(), family.clone())
                .is_some_and(|f| f != family)
            {
                return Err(format!("{name} in two families"));
            }
            if !ids.insert(id.to_owned()) {
                return Err(format!("series {id} twice"));
            }
            if name == SERIES_DROPPED {
                dropped = line[id_end..]
                    .trim()
                    .parse()
                    .map_err(|e| format!("{e}: {line}"))?;
                continue;
            }
            let all: Vec<&str> = line[name_end..id_end]
                .trim_matches(['{', '}'])
                .split(',')
                .filter(|l| !l.is_empty())
                .collect();
            let label_names: HashSet<&str> = all
                .iter()
                .map(|l| l.split('=').next().unwrap_or_default())
                .collect();
            if label_names.len() != all.len() || !label_names.iter().all(|n| valid_label_name(n)) {
                return Err(format!("label names: {line}"));
            }
            let labels: Vec<&str> = all
                .into_iter()
                .filter(|l| !l.starts_with("le=") && !l.starts_with("quantile="))
                .collect();
            series.insert((family.clone(), labels.join(",")));
        }
        Ok((series.len(), dropped))
    }

    proptest::proptest! {
        /// Whatever names, kinds, descriptions and labels an application records, in whatever
        /// order, both expositions are ones a strict parser reads, and every distinct series
        /// recorded is written or counted as dropped.
        #[test]
        fn any_names_give_strict_expositions_and_lose_nothing_uncounted(
            records in proptest::collection::vec(
                (0..4usize, 0..7usize, 0..4usize, 0..4usize, 0..3usize),
                1..16,
            ),
            global in proptest::bool::ANY,
        ) {
            const STEMS: [&str; 4] = ["a", "a.b", "a_b", "a-b"];
            const VALUES: [&str; 3] = ["1", "x\"y", "a\\b\nc"];
            const SUFFIXES: [&str; 7] = [
                "", "_total", "_count", "_sum", "_bucket", "_duration_seconds",
                "_duration_seconds_count",
            ];
            let mut builder = crate::metrics::Prometheus::builder();
            if global {
                builder = builder.global_label("q.r", "g");
            }
            let (recorder, prometheus) = builder.build();
            let mut distinct = HashSet::new();
            metrics::with_local_recorder(&recorder, || {
                for &(stem, suffix, kind, labelled, value) in &records {
                    let name = format!("{}{}", STEMS[stem], SUFFIXES[suffix]);
                    if kind == 3 {
                        // A gauge of this name is then written as a counter.
                        metrics::describe_counter!(name, "Described.");
                        continue;
                    }
                    let value = VALUES[value];
                    // `q.r` and `q_r` are one label in the exposition.
                    let label = labelled.min(2);
                    distinct.insert((name.clone(), kind, label, (label > 0).then_some(value)));
                    let labels: Vec<(&str, &str)> = match labelled {
                        0 => vec![],
                        1 => vec![("q", value)],
                        2 => vec![("q.r", value)],
                        _ => vec![("q_r", value)],
                    };
                    match kind {
                        0 => metrics::counter!(name, &labels).increment(1),
                        1 => metrics::gauge!(name, &labels).set(1.0),
                        _ => metrics::histogram!(name, &labels).record(1.0),
                    }
                }
            });
            for (om, text) in [(false, prometheus.render()), (true, prometheus.render_openmetrics())] {
                let (written, dropped) = parse_strictly(&text, om)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
                proptest::prop_assert_eq!(
                    written as u64 + dropped,
                    distinct.len() as u64,
                    "om {}: {}",
                    om,
                    text
                );
            }
        }
    }
}

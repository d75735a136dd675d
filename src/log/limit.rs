//! The per-call-site rate limit of the JSON layer: at most `max` records per call site per
//! window, and a summary record of what each window suppressed.
//!
//! A call site's window is a pair of atomics, reached through a per-thread cache of the sites:
//! records from several workers do not queue on one lock. The sites were one
//! `Mutex<HashMap>` taken for every record (criterion `handler_record/rate_limited_two_threads`,
//! A/B: 220-319 ns with the lock, 138-201 ns without; one thread unchanged, about 70 ns).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Level;

use crate::lifecycle::{AddrHasher, Tick};

/// At most `max` records per call site per `window`, ERROR included.
///
/// The request log's own records (target `towerscope::request`, one per request) are not
/// rate limited: their volume is the request rate, and an access log that keeps 100 requests
/// a minute is no access log. Levels, route exclusion and sampling bound them instead.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Records per window and call site (at most 16,777,215).
    pub max: u32,
    /// The window (kept to the millisecond).
    pub window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            max: 100,
            window: Duration::from_secs(60),
        }
    }
}

/// The bound on call sites the rate limiter tracks (call sites are static code locations, so
/// this is a safety net, not a limit reached in practice).
const MAX_CALLSITES: usize = 10_000;

/// The bits of a site's word that count the records written in its window.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A call site's window, shared by every thread that logs there.
struct Site {
    /// The window's start (milliseconds since the limiter's epoch) above `COUNT_BITS`, and
    /// the records written in it below: one compare-exchange admits a record.
    word: AtomicU64,
    /// Records dropped since the last summary. A record dropped by a thread that read the
    /// window just before another closed it is told in the next summary: none is lost.
    suppressed: AtomicU64,
    level: Level,
    target: String,
    location: String,
}

impl Site {
    /// The summary of `suppressed` records of this site.
    fn summary(&self, suppressed: u64) -> Summary {
        Summary {
            level: self.level,
            target: self.target.clone(),
            location: self.location.clone(),
            suppressed,
        }
    }

    /// Whether a record at `now` may be written, and whether it opened a new window.
    fn admit(&self, now: u64, window: u64, max: u64) -> (bool, bool) {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (start, count) = (word >> COUNT_BITS, word & COUNT_MASK);
            let rolled = now.saturating_sub(start) >= window;
            let (start, count) = if rolled { (now, 0) } else { (start, count) };
            let allowed = count < max;
            if !allowed && !rolled {
                return (false, false);
            }
            let next = (start << COUNT_BITS) | (count + u64::from(allowed));
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (allowed, rolled),
                Err(now_word) => word = now_word,
            }
        }
    }
}

/// What a closed window suppressed, for its summary record.
pub(crate) struct Summary {
    pub(crate) level: Level,
    pub(crate) target: String,
    pub(crate) location: String,
    pub(crate) suppressed: u64,
}

type Sites = HashMap<usize, Arc<Site>, BuildHasherDefault<AddrHasher>>;

/// The rate limiter of one JSON layer.
pub(crate) struct Limiter {
    /// The window, in milliseconds (at least one).
    window: u64,
    /// Records per window (the configured maximum, at most what a site's word counts).
    max: u64,
    /// Tells this limiter's sites apart in the threads' caches.
    id: u64,
    epoch: Tick,
    /// Every site: where a thread finds one it has not cached yet, and what the flusher reads.
    sites: Mutex<Sites>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A thread's sites, by limiter and call site (hashed by the call site's key alone: a thread
/// rarely sees more than one limiter).
type Cache = HashMap<(u64, usize), Arc<Site>, BuildHasherDefault<AddrHasher>>;

thread_local! {
    static CACHED: RefCell<Cache> = RefCell::default();
}

impl Limiter {
    pub(crate) fn new(cfg: RateLimit) -> Self {
        Self {
            window: u64::try_from(cfg.window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            max: u64::from(cfg.max).min(COUNT_MASK),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            epoch: Tick::now(),
            sites: Mutex::default(),
        }
    }

    /// Milliseconds since the limiter was made (the lifecycle's clock: a TSC read where
    /// there is one, cheaper than `Instant::now`).
    fn now(&self) -> u64 {
        let d = self.epoch.until(Tick::now());
        d.as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(d.subsec_millis()))
            .min(u64::MAX >> COUNT_BITS)
    }

    /// Whether a record of call site `key` may be written (`meta`: its metadata, for the
    /// site's summary), and the summary of the site's last window when this record closed it
    /// and it suppressed any.
    pub(crate) fn admit(
        &self,
        key: usize,
        meta: &tracing::Metadata<'_>,
    ) -> (bool, Option<Summary>) {
        let now = self.now();
        // The site as this thread cached it, used in place (no reference counted).
        let cached = CACHED
            .try_with(|c| {
                c.borrow()
                    .get(&(self.id, key))
                    .map(|site| self.admit_at(site, now))
            })
            .ok()
            .flatten();
        if let Some(admitted) = cached {
            return admitted;
        }
        match self.site(key, meta, now) {
            Some(site) => self.admit_at(&site, now),
            // More call sites than the table holds: not limited.
            None => (true, None),
        }
    }

    fn admit_at(&self, site: &Site, now: u64) -> (bool, Option<Summary>) {
        let (allowed, rolled) = site.admit(now, self.window, self.max);
        let summary = rolled
            .then(|| site.suppressed.swap(0, Ordering::AcqRel))
            .filter(|&n| n > 0)
            .map(|n| site.summary(n));
        if !allowed {
            site.suppressed.fetch_add(1, Ordering::AcqRel);
        }
        (allowed, summary)
    }

    /// The site of `key` from the table (made there on its first record), cached for this
    /// thread.
    fn site(&self, key: usize, meta: &tracing::Metadata<'_>, now: u64) -> Option<Arc<Site>> {
        let site = {
            let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
            let full = sites.len() >= MAX_CALLSITES;
            match sites.entry(key) {
                std::collections::hash_map::Entry::Vacant(_) if full => return None,
                e => e
                    .or_insert_with(|| {
                        Arc::new(Site {
                            word: AtomicU64::new(now << COUNT_BITS),
                            suppressed: AtomicU64::new(0),
                            level: *meta.level(),
                            target: meta.target().to_owned(),
                            location: format!(
                                "{}:{}",
                                meta.file().unwrap_or("?"),
                                meta.line().unwrap_or(0)
                            ),
                        })
                    })
                    .clone(),
            }
        };
        let _ = CACHED.try_with(|c| {
            let mut c = c.borrow_mut();
            // Bounded: emptied when full (sites of limiters since dropped go with it; the live
            // ones come back from their tables on their next record).
            if c.len() >= MAX_CALLSITES {
                c.clear();
            }
            c.insert((self.id, key), site.clone())
        });
        Some(site)
    }

    /// The summaries of the windows that have closed with records suppressed (each told once).
    pub(crate) fn closed(&self) -> Vec<Summary> {
        let (now, window) = (self.now(), self.window);
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites
            .values()
            .filter(|s| {
                let start = s.word.load(Ordering::Acquire) >> COUNT_BITS;
                s.suppressed.load(Ordering::Acquire) > 0 && now.saturating_sub(start) >= window
            })
            .filter_map(|s| {
                let suppressed = s.suppressed.swap(0, Ordering::AcqRel);
                (suppressed > 0).then(|| s.summary(suppressed))
            })
            .collect()
    }
}

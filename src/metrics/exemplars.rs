//! A duration histogram's exemplars, as the RED observer, the trace client and the database
//! instrumentation hold them: the histogram's slots when the recorder keeps exemplars
//! ([`PrometheusBuilder::exemplars`](super::PrometheusBuilder::exemplars)), else nothing (no
//! field at all without the `prometheus` and `otel` features).

use metrics::Histogram;

/// Where a histogram's exemplars go, resolved with the histogram (see [`Exemplars::register`]).
#[derive(Clone, Default)]
pub(crate) struct Exemplars {
    #[cfg(all(feature = "prometheus", feature = "otel"))]
    sink: Option<std::sync::Arc<super::fast::FastHistogram>>,
}

impl Exemplars {
    /// Runs `register` (a histogram's registration) and returns the histogram with its
    /// exemplars: none unless the recorder is towerscope's and keeps them. Once per series, off
    /// the request path.
    pub(crate) fn register(register: impl FnOnce() -> Histogram) -> (Histogram, Self) {
        #[cfg(all(feature = "prometheus", feature = "otel"))]
        {
            let (histogram, sink) = super::fast::with_exemplars(register);
            (histogram, Self { sink })
        }
        #[cfg(not(all(feature = "prometheus", feature = "otel")))]
        (register(), Self {})
    }

    /// Offers the trace `ids` gives as the exemplar of `value`, when it is sampled (only a
    /// sampled trace is exported: an exemplar links to something there). `ids` runs only when
    /// exemplars are kept; the rest is out of line.
    #[cfg(feature = "otel")]
    #[inline]
    pub(crate) fn offer(&self, value: f64, ids: impl FnOnce() -> Option<crate::trace::TraceIds>) {
        #[cfg(feature = "prometheus")]
        if let Some(h) = &self.sink {
            offer_to(h, value, ids());
        }
        #[cfg(not(feature = "prometheus"))]
        let _ = (value, ids);
    }
}

#[cfg(all(feature = "prometheus", feature = "otel"))]
#[inline(never)]
fn offer_to(h: &super::fast::FastHistogram, value: f64, ids: Option<crate::trace::TraceIds>) {
    let Some(ids) = ids.filter(|ids| ids.sampled) else {
        return;
    };
    h.offer(super::fast::Exemplar {
        value,
        trace_id: u128::from_be_bytes(ids.trace_id.0),
        span_id: u64::from_be_bytes(ids.span_id.0),
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    });
}

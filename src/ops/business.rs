//! Business events counted with one bounded label.

use metrics::{Counter, Key, Label};

use super::{describe, register_counter, OTHER};

/// A business counter with one label from a fixed set: `business_{name}_total{label}`. Values
/// outside the set are counted as `_other`.
///
/// ```
/// use towerscope::ops::BusinessCounter;
/// let signups = BusinessCounter::new("signups", "plan", &["free", "pro"]);
/// signups.increment("pro");
/// signups.add("free", 3);
/// ```
pub struct BusinessCounter {
    values: Vec<(&'static str, Counter)>,
}

impl std::fmt::Debug for BusinessCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusinessCounter")
            .field(
                "values",
                &self.values.iter().map(|v| v.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl BusinessCounter {
    /// `business_{name}_total` with `label` taking one of `values` (or `_other`).
    pub fn new(name: &str, label: &'static str, values: &[&'static str]) -> Self {
        let metric = format!("business_{name}_total");
        describe(|r| {
            r.describe_counter(
                metric.clone().into(),
                None,
                format!("Business events: {name}, by {label}.").into(),
            )
        });
        let handle = |v: &'static str| {
            (
                v,
                register_counter(&Key::from_parts(metric.clone(), vec![Label::new(label, v)])),
            )
        };
        let mut values: Vec<_> = values.iter().map(|v| handle(v)).collect();
        values.push(handle(OTHER));
        Self { values }
    }

    /// Adds `n` events with this label value.
    pub fn add(&self, value: &str, n: u64) {
        let last = self.values.len() - 1;
        let c = self.values[..last]
            .iter()
            .find(|(v, _)| *v == value)
            .map_or(&self.values[last].1, |(_, c)| c);
        c.increment(n);
    }

    /// Adds one event with this label value.
    pub fn increment(&self, value: &str) {
        self.add(value, 1);
    }
}

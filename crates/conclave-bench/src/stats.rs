//! Latency histograms (HDR) and per-second timelines.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram holds, in microseconds; longer ones are
/// recorded as this (and show as the maximum). Two minutes is longer than
/// any timeout the SDK has.
pub const LATENCY_MAX_MICROS: u64 = 120_000_000;

/// Significant decimal digits the histograms keep (0.1 % resolution).
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency distribution in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    #[must_use]
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// Records one latency (clamped to 1 µs .. [`LATENCY_MAX_MICROS`]).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(1, LATENCY_MAX_MICROS));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Self) {
        // Same bounds on both sides: the addition cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    #[must_use]
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            p9999_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// `p50 / p99 / p99.9 / max` in milliseconds, for a table cell.
    #[must_use]
    pub fn cell(&self) -> String {
        if self.count == 0 {
            return "-".to_owned();
        }
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }

    /// The labelled percentiles a chart shows.
    #[must_use]
    pub fn points(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("p50", self.p50_ms),
            ("p90", self.p90_ms),
            ("p99", self.p99_ms),
            ("p99.9", self.p999_ms),
            ("p99.99", self.p9999_ms),
            ("max", self.max_ms),
        ]
    }
}

/// Counts per one-second bucket since the start of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Timeline {
    buckets: Vec<u64>,
}

/// Longest timeline kept (a day): a clock that jumped cannot make the
/// bucket vector huge.
const TIMELINE_MAX_SECS: u64 = 86_400;

impl Timeline {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one event `since_start` after the start.
    pub fn add(&mut self, since_start: Duration) {
        let second = since_start.as_secs().min(TIMELINE_MAX_SECS);
        let index = usize::try_from(second).unwrap_or(usize::MAX);
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, 0);
        }
        if let Some(bucket) = self.buckets.get_mut(index) {
            *bucket += 1;
        }
    }

    pub fn merge(&mut self, other: &Self) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    #[must_use]
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    #[must_use]
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The median of the full seconds strictly inside `[0, secs)`, without
    /// the first and the last (ramp-up and the cut at the end); `None` when
    /// fewer than three seconds remain.
    #[must_use]
    pub fn steady_median(&self, secs: usize) -> Option<u64> {
        let end = secs.min(self.buckets.len());
        if end < 3 {
            return None;
        }
        let mut inner: Vec<u64> = self.buckets.get(1..end - 1)?.to_vec();
        inner.sort_unstable();
        inner.get(inner.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut latency = Latency::new();
        for micros in 1..=1000 {
            latency.record(Duration::from_micros(micros));
        }
        let mut other = Latency::new();
        other.record(Duration::from_secs(1_000));
        latency.merge(&other);
        let summary = latency.summary();
        assert_eq!(summary.count, 1001);
        assert!((summary.p50_ms - 0.5).abs() < 0.01, "{summary:?}");
        assert!(
            summary.max_ms >= 119_000.0,
            "clamped, not lost: {summary:?}"
        );
        assert_eq!(Latency::new().summary().cell(), "-");
    }

    #[test]
    fn timelines_bucket_by_second_and_merge() {
        let mut a = Timeline::new();
        a.add(Duration::from_millis(10));
        a.add(Duration::from_millis(2_500));
        let mut b = Timeline::new();
        b.add(Duration::from_millis(3_100));
        b.add(Duration::from_millis(3_200));
        a.merge(&b);
        assert_eq!(a.buckets(), &[1, 0, 1, 2]);
        assert_eq!(a.total(), 4);
        assert_eq!(a.steady_median(4), Some(1));
        assert_eq!(a.steady_median(2), None);
    }
}

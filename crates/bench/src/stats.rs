//! Latency recording (an HDR histogram per client, merged at the end) and the summary a run
//! reports: throughput, min/mean/stddev/percentiles/max and a histogram.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies of one client, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// Empty; records 1 µs to 1 hour at 3 significant digits.
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            errors: 0,
            first_error: None,
        }
    }

    /// One successful request that took `d`.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        self.histogram.saturating_record(us);
    }

    /// `n` successful requests that each took `d`.
    pub fn record_n(&mut self, d: Duration, n: u64) {
        let us = (d.as_micros() as u64).max(1);
        self.histogram.saturating_record_n(us, n);
    }

    /// One failed request.
    pub fn fail(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// Adds another client's latencies.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.histogram.add(&other.histogram);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// The summary of what was recorded over `elapsed`.
    pub fn summary(&self, name: &str, elapsed: Duration) -> Section {
        let h = &self.histogram;
        let ms = |us: u64| us as f64 / 1000.0;
        let count = h.len();
        let (min, max) = if count == 0 {
            (0, 0)
        } else {
            (h.min(), h.max())
        };
        Section {
            name: name.to_string(),
            requests: count,
            errors: self.errors,
            first_error: self.first_error.clone(),
            elapsed_seconds: elapsed.as_secs_f64(),
            throughput: if elapsed.is_zero() {
                0.0
            } else {
                count as f64 / elapsed.as_secs_f64()
            },
            latency_ms: LatencySummary {
                min: ms(min),
                mean: h.mean() / 1000.0,
                stddev: h.stdev() / 1000.0,
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(max),
            },
            histogram: buckets(h, min, max),
        }
    }
}

/// Ten equal-width buckets between the fastest and the slowest request, as etcd's tool prints.
fn buckets(h: &Histogram<u64>, min: u64, max: u64) -> Vec<Bucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let width = ((max - min) / 10).max(1);
    let mut out: Vec<Bucket> = (1..=10)
        .map(|i| Bucket {
            // The last bucket ends at the slowest request (integer widths fall short of it).
            upper_ms: if i == 10 {
                max
            } else {
                (min + width * i).min(max)
            } as f64
                / 1000.0,
            count: 0,
        })
        .collect();
    for v in h.iter_recorded() {
        let i = (((v.value_iterated_to() - min) / width) as usize).min(9);
        out[i].count += v.count_at_value();
    }
    out.dedup_by(|b, a| {
        a.upper_ms == b.upper_ms && {
            a.count += b.count;
            true
        }
    });
    out
}

/// Latency statistics in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stddev: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// One histogram bucket: requests at most `upper_ms` (and above the previous bucket).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Upper bound, milliseconds.
    pub upper_ms: f64,
    /// Requests in the bucket.
    pub count: u64,
}

/// What one kind of operation in a run measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Section {
    /// What was measured (`put`, `watch creation`, `event delivery`, …).
    pub name: String,
    /// Successful operations.
    pub requests: u64,
    /// Failed operations.
    pub errors: u64,
    /// The first failure, to say what went wrong.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub elapsed_seconds: f64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Latency statistics.
    pub latency_ms: LatencySummary,
    /// Latency histogram.
    pub histogram: Vec<Bucket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_latencies() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        for ms in 1..=50 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 51..=100 {
            b.record(Duration::from_millis(ms));
        }
        b.fail("boom");
        a.merge(&b);
        let s = a.summary("put", Duration::from_secs(2));
        assert_eq!((s.requests, s.errors), (100, 1));
        assert_eq!(s.first_error.as_deref(), Some("boom"));
        assert_eq!(s.throughput, 50.0);
        let l = &s.latency_ms;
        assert!(
            (l.min - 1.0).abs() < 0.01 && (l.max - 100.0).abs() < 0.1,
            "{l:?}"
        );
        assert!(
            (l.p50 - 50.0).abs() < 0.1 && (l.p99 - 99.0).abs() < 0.1,
            "{l:?}"
        );
        assert!((l.mean - 50.5).abs() < 0.1, "{l:?}");
        assert_eq!(s.histogram.len(), 10);
        assert_eq!(s.histogram.last().map(|b| b.upper_ms), Some(l.max));
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 100);
    }

    #[test]
    fn an_empty_run_has_no_histogram() {
        let s = Latencies::new().summary("range", Duration::from_secs(1));
        assert_eq!((s.requests, s.throughput), (0, 0.0));
        assert!(s.histogram.is_empty());
    }
}

//! Hands out request numbers to the clients until the run is over (a total count or a
//! duration), optionally at a fixed overall rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// After this many requests.
    Total(u64),
    /// After this long.
    Duration(Duration),
}

/// Shared by all clients of one run.
#[derive(Debug)]
pub struct Pacer {
    next: AtomicU64,
    limit: Limit,
    rate: Option<f64>,
    started: Instant,
}

impl Pacer {
    /// Starts the clock now.
    pub fn new(limit: Limit, rate: Option<f64>) -> Self {
        Self {
            next: AtomicU64::new(0),
            limit,
            rate: rate.filter(|r| *r > 0.0),
            started: Instant::now(),
        }
    }

    /// The next request number, after waiting for its turn when a rate is set; `None` once
    /// the run is over.
    pub async fn next(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Limit::Total(total) if i >= total => return None,
            Limit::Duration(d) if self.started.elapsed() >= d => return None,
            _ => {}
        }
        if let Some(rate) = self.rate {
            // Request i is due at i/rate seconds: an open-loop schedule, so a slow answer
            // delays its client, not the offered load.
            let offset = Duration::try_from_secs_f64(i as f64 / rate).unwrap_or(Duration::MAX);
            let mut due = self.started.checked_add(offset);
            // A slow rate must not stretch a timed run past its end.
            if let Limit::Duration(d) = self.limit {
                let end = self.started.checked_add(d);
                due = match (due, end) {
                    (Some(due), Some(end)) => Some(due.min(end)),
                    (None, end) => end,
                    (due, None) => due,
                };
            }
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => return None,
            }
            if let Limit::Duration(d) = self.limit {
                if self.started.elapsed() >= d {
                    return None;
                }
            }
        }
        Some(i)
    }

    /// Requests handed out so far (capped at the total).
    pub fn issued(&self) -> u64 {
        let n = self.next.load(Ordering::Relaxed);
        match self.limit {
            Limit::Total(t) => n.min(t),
            Limit::Duration(_) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_total_hands_out_each_number_once() {
        let p = std::sync::Arc::new(Pacer::new(Limit::Total(100), None));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(i) = p.next().await {
                    got.push(i);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_requests_out() {
        let p = Pacer::new(Limit::Total(11), Some(100.0));
        let start = tokio::time::Instant::now();
        while p.next().await.is_some() {}
        // 11 requests at 100/s: the last is due at 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_duration_ends_the_run() {
        let p = Pacer::new(Limit::Duration(Duration::from_millis(50)), Some(1000.0));
        let mut n = 0;
        while p.next().await.is_some() {
            n += 1;
        }
        assert!((49..=51).contains(&n), "{n}");
    }
}

//! Jittered, capped exponential backoff that resets after a healthy period.

use std::time::{Duration, Instant};

/// Backoff between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    healthy_after: Duration,
    next: Duration,
    healthy_since: Option<Instant>,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`; a connection healthy for `healthy_after` resets it.
    pub fn new(min: Duration, max: Duration, healthy_after: Duration) -> Self {
        Self {
            min,
            max,
            healthy_after,
            next: min,
            healthy_since: None,
        }
    }

    /// The next wait (±20 % jitter so that many clients do not retry in step).
    pub fn next_delay(&mut self) -> Duration {
        if self
            .healthy_since
            .take()
            .is_some_and(|t| t.elapsed() >= self.healthy_after)
        {
            self.next = self.min;
        }
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random_range(0.8..1.2);
        base.mul_f64(jitter)
    }

    /// The un-jittered delay the next failure would start from.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Marks the connection as working from now on.
    pub fn connected(&mut self) {
        self.healthy_since.get_or_insert_with(Instant::now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets_after_a_healthy_period() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(800),
            Duration::ZERO,
        );
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (d, expected) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let expected = Duration::from_millis(expected);
            assert!(
                *d >= expected.mul_f64(0.8) && *d <= expected.mul_f64(1.2),
                "{d:?} vs {expected:?}"
            );
        }
        b.connected();
        let after = b.next_delay();
        assert!(
            after <= Duration::from_millis(120),
            "reset after a healthy connection: {after:?}"
        );
    }

    #[test]
    fn a_short_connection_does_not_reset() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        b.next_delay();
        b.next_delay();
        b.connected();
        assert_eq!(b.current(), Duration::from_millis(400));
        b.next_delay();
        assert_eq!(b.current(), Duration::from_millis(800));
    }
}

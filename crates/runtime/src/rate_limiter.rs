//! How long a failed key waits before it is retried (client-go's rate limiters).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Decides the delay before a key is handed out again.
pub trait RateLimiter<K>: Send + Sync {
    /// The delay for the next retry of `key` (records one more failure).
    fn when(&self, key: &K) -> Duration;
    /// Forgets `key`'s failures (after a success), so memory stays bounded.
    fn forget(&self, key: &K);
    /// How many times `key` has been retried since it was last forgotten.
    fn num_requeues(&self, key: &K) -> u32;
}

/// Per-key exponential backoff: `base * 2^failures`, capped at `max`.
pub struct ItemExponentialFailureRateLimiter<K> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K> ItemExponentialFailureRateLimiter<K> {
    /// A limiter from `base` to `max` (client-go's controller default: 5 ms to 1000 s).
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync> RateLimiter<K> for ItemExponentialFailureRateLimiter<K> {
    fn when(&self, key: &K) -> Duration {
        let mut failures = self.failures.lock();
        let n = failures.entry(key.clone()).or_insert(0);
        let exp = *n;
        *n = n.saturating_add(1);
        let factor = 2f64.powi(exp.min(64) as i32);
        let delay = self.base.as_secs_f64() * factor;
        if delay >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(delay)
        }
    }

    fn forget(&self, key: &K) {
        self.failures.lock().remove(key);
    }

    fn num_requeues(&self, key: &K) -> u32 {
        self.failures.lock().get(key).copied().unwrap_or(0)
    }
}

/// A global token bucket: `qps` tokens a second, at most `burst` saved up.
pub struct BucketRateLimiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl BucketRateLimiter {
    /// client-go's default is 10 qps with a burst of 100.
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            qps,
            burst: burst as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        }
    }
}

impl<K> RateLimiter<K> for BucketRateLimiter {
    fn when(&self, _key: &K) -> Duration {
        let mut state = self.state.lock();
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.qps).min(self.burst) - 1.0;
        *state = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.qps)
        }
    }

    fn forget(&self, _key: &K) {}

    fn num_requeues(&self, _key: &K) -> u32 {
        0
    }
}

/// The longest delay of several limiters.
pub struct MaxOfRateLimiter<K> {
    limiters: Vec<Box<dyn RateLimiter<K>>>,
}

impl<K> MaxOfRateLimiter<K> {
    /// Combines `limiters`.
    pub fn new(limiters: Vec<Box<dyn RateLimiter<K>>>) -> Self {
        Self { limiters }
    }
}

impl<K> RateLimiter<K> for MaxOfRateLimiter<K> {
    fn when(&self, key: &K) -> Duration {
        self.limiters
            .iter()
            .map(|l| l.when(key))
            .max()
            .unwrap_or_default()
    }

    fn forget(&self, key: &K) {
        for l in &self.limiters {
            l.forget(key);
        }
    }

    fn num_requeues(&self, key: &K) -> u32 {
        self.limiters
            .iter()
            .map(|l| l.num_requeues(key))
            .max()
            .unwrap_or(0)
    }
}

/// client-go's `DefaultControllerRateLimiter`: per-key 5 ms → 1000 s, and 10 qps / 100 burst
/// overall.
pub fn default_controller_rate_limiter<K: Eq + Hash + Clone + Send + Sync + 'static>(
) -> MaxOfRateLimiter<K> {
    MaxOfRateLimiter::new(vec![
        Box::new(ItemExponentialFailureRateLimiter::new(
            Duration::from_millis(5),
            Duration::from_secs(1000),
        )),
        Box::new(BucketRateLimiter::new(10.0, 100)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_grows_per_key_caps_and_forgets() {
        let l = ItemExponentialFailureRateLimiter::new(
            Duration::from_millis(5),
            Duration::from_secs(1000),
        );
        let delays: Vec<u128> = (0..4).map(|_| l.when(&"a").as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40]);
        assert_eq!(
            l.when(&"b"),
            Duration::from_millis(5),
            "keys are independent"
        );
        assert_eq!(l.num_requeues(&"a"), 4);
        for _ in 0..40 {
            l.when(&"a");
        }
        assert_eq!(l.when(&"a"), Duration::from_secs(1000));
        l.forget(&"a");
        assert_eq!(l.num_requeues(&"a"), 0);
        assert_eq!(l.when(&"a"), Duration::from_millis(5));
    }

    #[test]
    fn bucket_allows_a_burst_then_spaces_requests() {
        let l = BucketRateLimiter::new(10.0, 3);
        let free: Vec<Duration> = (0..3)
            .map(|_| RateLimiter::<&str>::when(&l, &"k"))
            .collect();
        assert!(free.iter().all(|d| d.is_zero()));
        let fourth = RateLimiter::<&str>::when(&l, &"k");
        assert!(
            fourth > Duration::from_millis(50) && fourth <= Duration::from_millis(100),
            "{fourth:?}"
        );
    }

    #[test]
    fn max_of_takes_the_longest() {
        let l: MaxOfRateLimiter<&str> = default_controller_rate_limiter();
        assert_eq!(l.when(&"k"), Duration::from_millis(5));
        assert_eq!(l.when(&"k"), Duration::from_millis(10));
        assert_eq!(l.num_requeues(&"k"), 2);
        l.forget(&"k");
        assert_eq!(l.num_requeues(&"k"), 0);
    }
}

//! A work queue with client-go's guarantees: a key is queued at most once, is never handed to
//! two workers at once (an add while it is processed queues it again after `done`), can be
//! added after a delay or through a rate limiter, and shutdown can drain in-flight work.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::{labels, Labels, Metrics};
use crate::rate_limiter::{default_controller_rate_limiter, RateLimiter};

/// What a queue can hold.
pub trait QueueKey: Clone + Eq + Hash + Debug + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Debug + Send + Sync + 'static> QueueKey for T {}

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting to be processed (queued, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashMap<K, Instant>,
    queued_at: HashMap<K, Instant>,
    delayed: BinaryHeap<Reverse<(Instant, u64, DelayedKey<K>)>>,
    seq: u64,
    shutting_down: bool,
}

/// Wrapper so the heap orders by time and sequence only.
struct DelayedKey<K>(K);
impl<K> PartialEq for DelayedKey<K> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<K> Eq for DelayedKey<K> {}
impl<K> PartialOrd for DelayedKey<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for DelayedKey<K> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

struct Inner<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    delayed_changed: Arc<Notify>,
    idle: Notify,
    limiter: Box<dyn RateLimiter<K>>,
    metrics: Option<(Arc<Metrics>, Labels)>,
}

/// A rate-limited, deduplicating work queue; cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ferry_runtime::WorkQueue;
/// let queue: WorkQueue<String> = WorkQueue::new();
/// queue.add("a".to_string());
/// queue.add("a".to_string()); // already queued: deduplicated
/// let key = queue.get().await.expect("a key");
/// // ... reconcile `key`; on failure: queue.add_rate_limited(key.clone());
/// queue.forget(&key); // success: reset its backoff
/// queue.done(&key);
/// assert!(queue.is_empty());
/// # }
/// ```
pub struct WorkQueue<K: QueueKey> {
    inner: Arc<Inner<K>>,
}

impl<K: QueueKey> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: QueueKey> WorkQueue<K> {
    /// A queue with client-go's default controller rate limiter.
    pub fn new() -> Self {
        Self::with_rate_limiter(Box::new(default_controller_rate_limiter()))
    }

    /// A queue with `limiter`.
    pub fn with_rate_limiter(limiter: Box<dyn RateLimiter<K>>) -> Self {
        Self::build(limiter, None)
    }

    /// A queue that reports `workqueue_*{name}` metrics.
    pub fn with_metrics(
        limiter: Box<dyn RateLimiter<K>>,
        metrics: Arc<Metrics>,
        name: &str,
    ) -> Self {
        Self::build(limiter, Some((metrics, labels(&[("name", name)]))))
    }

    fn build(limiter: Box<dyn RateLimiter<K>>, metrics: Option<(Arc<Metrics>, Labels)>) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashMap::new(),
                queued_at: HashMap::new(),
                delayed: BinaryHeap::new(),
                seq: 0,
                shutting_down: false,
            }),
            ready: Notify::new(),
            delayed_changed: Arc::new(Notify::new()),
            idle: Notify::new(),
            limiter,
            metrics,
        });
        let weak = Arc::downgrade(&inner);
        // Moves delayed keys into the queue when their time comes.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let next = {
                        let mut state = inner.state.lock();
                        let now = Instant::now();
                        let mut due = Vec::new();
                        while let Some(Reverse((at, _, _))) = state.delayed.peek() {
                            if *at > now {
                                break;
                            }
                            if let Some(Reverse((_, _, DelayedKey(k)))) = state.delayed.pop() {
                                due.push(k);
                            }
                        }
                        let next = state.delayed.peek().map(|Reverse((at, _, _))| *at);
                        let stop = state.shutting_down;
                        drop(state);
                        for k in due {
                            WorkQueue {
                                inner: inner.clone(),
                            }
                            .add(k);
                        }
                        if stop {
                            return;
                        }
                        next
                    };
                    // Holds no strong reference while waiting, so a dropped queue ends this task
                    // (notify_one keeps a permit, so a wake-up sent now is not lost).
                    let changed = inner.delayed_changed.clone();
                    drop(inner);
                    let notified = changed.notified();
                    let sleep = async {
                        match next {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = notified => {}
                        _ = sleep => {}
                    }
                }
            });
        }
        Self { inner }
    }

    fn update_depth(&self, state: &State<K>) {
        if let Some((m, l)) = &self.inner.metrics {
            m.workqueue_depth
                .get_or_create(l)
                .set(state.queue.len() as i64);
        }
    }

    /// Queues `key` unless it is already waiting; a key being processed is queued again
    /// after its `done`.
    pub fn add(&self, key: K) {
        let mut state = self.inner.state.lock();
        if state.shutting_down || state.dirty.contains(&key) {
            return;
        }
        if let Some((m, l)) = &self.inner.metrics {
            m.workqueue_adds.get_or_create(l).inc();
        }
        state.dirty.insert(key.clone());
        state
            .queued_at
            .entry(key.clone())
            .or_insert_with(Instant::now);
        if state.processing.contains_key(&key) {
            return;
        }
        state.queue.push_back(key);
        self.update_depth(&state);
        drop(state);
        self.inner.ready.notify_one();
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut state = self.inner.state.lock();
        if state.shutting_down {
            return;
        }
        state.seq += 1;
        let seq = state.seq;
        state
            .delayed
            .push(Reverse((Instant::now() + delay, seq, DelayedKey(key))));
        drop(state);
        self.inner.delayed_changed.notify_one();
    }

    /// Queues `key` after the rate limiter's delay (a retry after a failure).
    pub fn add_rate_limited(&self, key: K) {
        if let Some((m, l)) = &self.inner.metrics {
            m.workqueue_retries.get_or_create(l).inc();
        }
        let delay = self.inner.limiter.when(&key);
        self.add_after(key, delay);
    }

    /// Forgets `key`'s failures after a success.
    pub fn forget(&self, key: &K) {
        self.inner.limiter.forget(key);
    }

    /// Retries of `key` since it was last forgotten.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.inner.limiter.num_requeues(key)
    }

    /// Waits for the next key; `None` once the queue is shut down and empty. The caller
    /// must call [`WorkQueue::done`] with the key.
    pub async fn get(&self) -> Option<K> {
        loop {
            let notified = self.inner.ready.notified();
            {
                let mut state = self.inner.state.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    let now = Instant::now();
                    if let (Some(at), Some((m, l))) =
                        (state.queued_at.remove(&key), &self.inner.metrics)
                    {
                        m.workqueue_queue_duration
                            .get_or_create(l)
                            .observe(now.duration_since(at).as_secs_f64());
                    }
                    state.processing.insert(key.clone(), now);
                    self.update_depth(&state);
                    return Some(key);
                }
                if state.shutting_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` as processed; if it was added meanwhile it is queued again now.
    pub fn done(&self, key: &K) {
        let mut state = self.inner.state.lock();
        if let Some(started) = state.processing.remove(key) {
            if let Some((m, l)) = &self.inner.metrics {
                m.workqueue_work_duration
                    .get_or_create(l)
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        if state.dirty.contains(key) {
            state.queue.push_back(key.clone());
            self.update_depth(&state);
            drop(state);
            self.inner.ready.notify_one();
        } else if state.processing.is_empty() {
            drop(state);
            self.inner.idle.notify_waiters();
        }
    }

    /// Keys waiting to be handed out.
    pub fn len(&self) -> usize {
        self.inner.state.lock().queue.len()
    }

    /// Whether no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops accepting keys; `get` hands out what is queued, then returns `None`.
    pub fn shutdown(&self) {
        self.inner.state.lock().shutting_down = true;
        self.inner.ready.notify_waiters();
        self.inner.delayed_changed.notify_one();
    }

    /// [`WorkQueue::shutdown`], then waits until every key handed out is done.
    pub async fn shutdown_with_drain(&self) {
        self.shutdown();
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.state.lock().processing.is_empty() {
                return;
            }
            idle.await;
        }
    }

    /// Reports how long in-flight work has been running (call periodically).
    pub fn update_unfinished_work(&self) {
        let Some((m, l)) = &self.inner.metrics else {
            return;
        };
        let state = self.inner.state.lock();
        let now = Instant::now();
        let ages = state
            .processing
            .values()
            .map(|s| now.duration_since(*s).as_secs_f64());
        let (total, longest) = ages.fold((0.0, 0.0f64), |(t, l), a| (t + a, l.max(a)));
        m.workqueue_unfinished_work.get_or_create(l).set(total);
        m.workqueue_longest_running.get_or_create(l).set(longest);
    }
}

impl<K: QueueKey> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Drop for Inner<K> {
    fn drop(&mut self) {
        // Wakes the delay task so it sees the queue is gone and ends.
        self.delayed_changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deduplicates_and_requeues_a_key_added_while_processing() {
        let q: WorkQueue<&str> = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let first = q.get().await;
        assert_eq!(first, Some("a"));
        q.add("a"); // while processing: not handed out again yet
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.get().await, Some("a"), "re-queued after done");
        q.done(&"a");
        q.done(&"b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn delayed_and_rate_limited_adds_arrive_later() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let start = Instant::now();
        q.add_after("later", Duration::from_millis(50));
        q.add_rate_limited("retry");
        let first = q.get().await;
        assert_eq!(first, Some("retry"), "5 ms beats 50 ms");
        assert_eq!(q.get().await, Some("later"));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(q.num_requeues(&"retry"), 1);
        q.forget(&"retry");
        assert_eq!(q.num_requeues(&"retry"), 0);
    }

    #[tokio::test]
    async fn shutdown_drains_queued_keys_then_stops() {
        let q: WorkQueue<u32> = WorkQueue::new();
        q.add(1);
        q.add(2);
        let one = q.get().await;
        q.shutdown();
        q.add(3); // refused after shutdown
        assert_eq!(q.get().await, Some(2));
        assert_eq!(q.get().await, None);
        let drained = {
            let q = q.clone();
            tokio::spawn(async move { q.shutdown_with_drain().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished(), "drain waits for in-flight work");
        q.done(&one.unwrap_or_default());
        q.done(&2);
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drain finished")
            .expect("task");
    }
}

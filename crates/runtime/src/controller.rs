//! A controller: informer events become keys in a work queue, and N workers reconcile them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::informer::{Event, Informer};
use crate::metrics::{labels, Metrics};
use crate::rate_limiter::default_controller_rate_limiter;
use crate::workqueue::WorkQueue;

/// What to do with a key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more until the next event.
    Done,
    /// Reconcile again after this delay.
    RequeueAfter(Duration),
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Worth retrying: the key is requeued with per-key exponential backoff.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (bad spec): the key is not requeued until its next event.
    #[error("terminal: {0}")]
    Terminal(String),
}

/// Decides whether an event should trigger a reconcile.
pub type Predicate<T> = Arc<dyn Fn(&Event<T>) -> bool + Send + Sync>;

/// Passes adds, deletes and resyncs, and updates only where `project` changed: a
/// controller that writes status into the same object then does not trigger itself.
pub fn changed<T, P: PartialEq>(project: impl Fn(&T) -> P + Send + Sync + 'static) -> Predicate<T> {
    Arc::new(move |event| match event {
        Event::Updated { old, new, resync } => {
            *resync || project(&old.value) != project(&new.value)
        }
        _ => true,
    })
}

/// Runs reconciliations for one informer's keys.
///
/// ```no_run
/// # async fn demo(client: etcd_client::Client) {
/// use ferry_runtime::{Action, Controller, Informer, InformerConfig, Metrics};
/// let informer: Informer<serde_json::Value> = Informer::start(client, InformerConfig::new("/things/"));
/// Controller::new("things", informer, Metrics::new())
///     .workers(4)
///     .run(
///         |key, cache| async move {
///             println!("{key}: {:?}", cache.get(&key).map(|o| o.value));
///             Ok(Action::Done)
///         },
///         tokio::signal::ctrl_c(),
///     )
///     .await;
/// # }
/// ```
pub struct Controller<T> {
    name: String,
    informer: Informer<T>,
    queue: WorkQueue<String>,
    workers: usize,
    predicates: Vec<Predicate<T>>,
    metrics: Arc<Metrics>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Controller<T> {
    /// A controller named `name` (the `controller` label of its metrics) over `informer`.
    pub fn new(name: &str, informer: Informer<T>, metrics: Arc<Metrics>) -> Self {
        let queue = WorkQueue::with_metrics(
            Box::new(default_controller_rate_limiter()),
            metrics.clone(),
            name,
        );
        Self {
            name: name.to_string(),
            informer,
            queue,
            workers: 1,
            predicates: Vec::new(),
            metrics,
        }
    }

    /// Number of concurrent workers (a key is never reconciled by two at once).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Only events passing `predicate` trigger a reconcile.
    pub fn with_predicate(mut self, predicate: Predicate<T>) -> Self {
        self.predicates.push(predicate);
        self
    }

    /// The queue, to enqueue keys from elsewhere (another informer, a timer).
    pub fn queue(&self) -> WorkQueue<String> {
        self.queue.clone()
    }

    /// The informer's cache.
    pub fn cache(&self) -> Cache<T> {
        self.informer.cache()
    }

    /// Reconciles until `shutdown` completes, then drains in-flight work. Workers start
    /// after the informer's first list. A panic in `reconcile` is caught, counted and retried.
    pub async fn run<F, Fut>(self, reconcile: F, shutdown: impl Future)
    where
        F: Fn(String, Cache<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
    {
        self.informer.wait_for_sync().await;
        let mut events = self.informer.subscribe();
        let queue = self.queue.clone();
        let predicates = self.predicates.clone();
        let feeder = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if predicates.iter().all(|p| p(&event)) {
                    queue.add(event.key().to_string());
                }
            }
        });
        let reconcile = Arc::new(reconcile);
        let mut workers = Vec::new();
        for _ in 0..self.workers {
            let queue = self.queue.clone();
            let cache = self.informer.cache();
            let reconcile = reconcile.clone();
            let metrics = self.metrics.clone();
            let name = self.name.clone();
            workers.push(tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    process(
                        &name,
                        &queue,
                        &metrics,
                        &key,
                        reconcile(key.clone(), cache.clone()),
                    )
                    .await;
                    queue.done(&key);
                }
            }));
        }
        let queue = self.queue.clone();
        let gauges = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                queue.update_unfinished_work();
            }
        });
        shutdown.await;
        feeder.abort();
        gauges.abort();
        self.queue.shutdown_with_drain().await;
        for w in workers {
            let _ = w.await;
        }
    }
}

async fn process<Fut>(
    name: &str,
    queue: &WorkQueue<String>,
    metrics: &Metrics,
    key: &String,
    work: Fut,
) where
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    let started = Instant::now();
    // Its own task, so that a panic is caught here and not taken down the worker.
    let outcome = tokio::spawn(work).await;
    let controller = labels(&[("controller", name)]);
    metrics
        .reconcile_time
        .get_or_create(&controller)
        .observe(started.elapsed().as_secs_f64());
    let result = match outcome {
        Ok(Ok(Action::Done)) => {
            queue.forget(key);
            "success"
        }
        Ok(Ok(Action::RequeueAfter(delay))) => {
            queue.forget(key);
            queue.add_after(key.clone(), delay);
            "requeue_after"
        }
        Ok(Err(ReconcileError::Transient(e))) => {
            tracing::warn!(controller = name, key = %key, error = %e, "reconcile failed; retrying with backoff");
            metrics.reconcile_errors.get_or_create(&controller).inc();
            queue.add_rate_limited(key.clone());
            "error"
        }
        Ok(Err(ReconcileError::Terminal(e))) => {
            tracing::error!(controller = name, key = %key, error = %e, "reconcile failed terminally; not retrying");
            metrics.reconcile_errors.get_or_create(&controller).inc();
            queue.forget(key);
            "error"
        }
        Err(join) => {
            tracing::error!(controller = name, key = %key, panicked = join.is_panic(), "reconcile panicked; retrying with backoff");
            metrics.reconcile_errors.get_or_create(&controller).inc();
            metrics.reconcile_panics.get_or_create(&controller).inc();
            queue.add_rate_limited(key.clone());
            "error"
        }
    };
    metrics
        .reconcile_total
        .get_or_create(&labels(&[("controller", name), ("result", result)]))
        .inc();
}

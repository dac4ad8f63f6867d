//! Prometheus metrics with the names client-go and controller-runtime users already know.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label sets: `name` for work queues, `controller` (+ `result`) for controllers.
pub type Labels = Vec<(String, String)>;

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 10.0, 10))
}

/// Every metric of the runtime, registered in one registry.
pub struct Metrics {
    registry: parking_lot::Mutex<Registry>,
    pub(crate) workqueue_depth: Family<Labels, Gauge>,
    pub(crate) workqueue_adds: Family<Labels, Counter>,
    pub(crate) workqueue_retries: Family<Labels, Counter>,
    pub(crate) workqueue_queue_duration: Family<Labels, Histogram>,
    pub(crate) workqueue_work_duration: Family<Labels, Histogram>,
    pub(crate) workqueue_unfinished_work: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) workqueue_longest_running: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) reconcile_total: Family<Labels, Counter>,
    pub(crate) reconcile_errors: Family<Labels, Counter>,
    pub(crate) reconcile_panics: Family<Labels, Counter>,
    pub(crate) reconcile_time: Family<Labels, Histogram>,
    pub(crate) informer_decode_errors: Family<Labels, Counter>,
    pub(crate) informer_relists: Family<Labels, Counter>,
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Arc<Self> {
        let m = Self {
            registry: parking_lot::Mutex::new(Registry::default()),
            workqueue_depth: Family::default(),
            workqueue_adds: Family::default(),
            workqueue_retries: Family::default(),
            workqueue_queue_duration: Family::new_with_constructor(histogram),
            workqueue_work_duration: Family::new_with_constructor(histogram),
            workqueue_unfinished_work: Family::default(),
            workqueue_longest_running: Family::default(),
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_panics: Family::default(),
            reconcile_time: Family::new_with_constructor(histogram),
            informer_decode_errors: Family::default(),
            informer_relists: Family::default(),
        };
        {
            let mut r = m.registry.lock();
            r.register(
                "workqueue_depth",
                "Current depth of the work queue",
                m.workqueue_depth.clone(),
            );
            r.register(
                "workqueue_adds",
                "Total adds handled by the work queue",
                m.workqueue_adds.clone(),
            );
            r.register(
                "workqueue_retries",
                "Total retries handled by the work queue",
                m.workqueue_retries.clone(),
            );
            r.register(
                "workqueue_queue_duration_seconds",
                "How long an item stays in the work queue before being requested",
                m.workqueue_queue_duration.clone(),
            );
            r.register(
                "workqueue_work_duration_seconds",
                "How long processing an item from the work queue takes",
                m.workqueue_work_duration.clone(),
            );
            r.register(
                "workqueue_unfinished_work_seconds",
                "Seconds of work in progress not yet observed by work_duration",
                m.workqueue_unfinished_work.clone(),
            );
            r.register(
                "workqueue_longest_running_processor_seconds",
                "Seconds the longest running processor has been running",
                m.workqueue_longest_running.clone(),
            );
            r.register(
                "reconcile",
                "Total reconciliations per controller and result",
                m.reconcile_total.clone(),
            );
            r.register(
                "reconcile_errors",
                "Total reconciliation errors per controller",
                m.reconcile_errors.clone(),
            );
            r.register(
                "reconcile_panics",
                "Total reconciliation panics per controller",
                m.reconcile_panics.clone(),
            );
            r.register(
                "reconcile_time_seconds",
                "Length of reconciliations per controller",
                m.reconcile_time.clone(),
            );
            r.register(
                "informer_decode_errors",
                "Stored values an informer could not decode and skipped",
                m.informer_decode_errors.clone(),
            );
            r.register(
                "informer_relists",
                "Full relists after watch history was compacted",
                m.informer_relists.clone(),
            );
        }
        Arc::new(m)
    }

    /// Every metric in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

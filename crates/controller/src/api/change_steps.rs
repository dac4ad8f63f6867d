//! How long each step of a change through the API takes, as the histogram
//! `ferry_controller_change_step_duration_seconds{step}`: when a rollout starts late, it tells
//! the pre-flight check, the store probe, the SQL commit and the store write apart (the
//! request's total alone cannot).

use std::future::Future;
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One step of a create, update, rollback or delete, in the order they run (the first two
/// side by side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStep {
    /// The current version read back and the pre-flight check (nginx on the candidate).
    Preflight,
    /// The quorum read that refuses a change the store could not take.
    StoreProbe,
    /// The SQL transaction that records the version, its commit included.
    Record,
    /// The store transaction that publishes it to the agents.
    Publish,
}

impl ChangeStep {
    /// Every step, in the order they run.
    pub const ALL: [ChangeStep; 4] = [
        ChangeStep::Preflight,
        ChangeStep::StoreProbe,
        ChangeStep::Record,
        ChangeStep::Publish,
    ];

    /// The value of the metric's `step` label.
    pub fn label(self) -> &'static str {
        match self {
            ChangeStep::Preflight => "preflight",
            ChangeStep::StoreProbe => "store_probe",
            ChangeStep::Record => "record",
            ChangeStep::Publish => "publish",
        }
    }
}

type StepLabel = Vec<(&'static str, &'static str)>;

/// The histogram of change steps, one series per step.
#[derive(Clone)]
pub struct ChangeSteps(Family<StepLabel, Histogram, fn() -> Histogram>);

fn histogram() -> Histogram {
    // 0.25 ms to ~4 s: a healthy step takes a few milliseconds, a stalled one seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl ChangeSteps {
    /// The histogram, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "ferry_controller_change_step_duration_seconds",
            "Time taken by each step of a configuration change through the API",
            family.clone(),
        );
        Self(family)
    }

    /// Runs `step`, observing how long it took whatever its outcome.
    pub async fn time<F: Future>(&self, step: ChangeStep, work: F) -> F::Output {
        let started = Instant::now();
        let out = work.await;
        self.0
            .get_or_create(&vec![("step", step.label())])
            .observe(started.elapsed().as_secs_f64());
        out
    }
}

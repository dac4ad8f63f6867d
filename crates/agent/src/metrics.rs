//! The agent's Prometheus metrics: what it refused to render.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admission::Admission;

/// Counts of what the last render left out, and how often it happened.
pub struct AgentMetrics {
    registry: Registry,
    invalid_instances: Gauge<i64, AtomicI64>,
    refused_configs: Gauge<i64, AtomicI64>,
    renders_with_skips: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_agent");
        let invalid_instances = Gauge::<i64, AtomicI64>::default();
        let refused_configs = Gauge::<i64, AtomicI64>::default();
        let renders_with_skips = Counter::default();
        registry.register(
            "invalid_registry_instances",
            "Registry instances left out of the last render because they failed validation",
            invalid_instances.clone(),
        );
        registry.register(
            "refused_configurations",
            "Configurations refused at the last render because they failed validation",
            refused_configs.clone(),
        );
        registry.register(
            "renders_with_invalid_input",
            "Renders that left out at least one invalid instance or configuration",
            renders_with_skips.clone(),
        );
        Self {
            registry,
            invalid_instances,
            refused_configs,
            renders_with_skips,
        }
    }
}

impl AgentMetrics {
    /// Records one render's admission.
    pub fn observe(&self, admission: &Admission) {
        let skipped = i64::try_from(admission.skipped.len()).unwrap_or(i64::MAX);
        let refused = i64::try_from(admission.refused.len()).unwrap_or(i64::MAX);
        self.invalid_instances.set(skipped);
        self.refused_configs.set(refused);
        if skipped > 0 || refused > 0 {
            self.renders_with_skips.inc();
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

//! The operator's Prometheus metrics, per cluster, from each pass's status.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::records::ClusterStatus;

type Labels = Vec<(String, String)>;
type PerCluster = Family<Labels, Gauge<i64, AtomicI64>>;

/// Gauges of each cluster's members and conditions, and reconcile errors.
pub struct OperatorMetrics {
    registry: Registry,
    desired: PerCluster,
    members: PerCluster,
    healthy: PerCluster,
    learners: PerCluster,
    condition: Family<Labels, Gauge<i64, AtomicI64>>,
    errors: Family<Labels, Counter>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_operator");
        let metrics = Self {
            desired: PerCluster::default(),
            members: PerCluster::default(),
            healthy: PerCluster::default(),
            learners: PerCluster::default(),
            condition: Family::default(),
            errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "cluster_desired_members",
            "The spec's size",
            metrics.desired.clone(),
        );
        registry.register(
            "cluster_members",
            "Members in etcd's member list and the operator's records",
            metrics.members.clone(),
        );
        registry.register(
            "cluster_healthy_members",
            "Members that answered a status request with a leader",
            metrics.healthy.clone(),
        );
        registry.register(
            "cluster_learners",
            "Learners waiting to be promoted",
            metrics.learners.clone(),
        );
        registry.register(
            "cluster_condition",
            "1 when the condition (Available, Progressing, Degraded, QuorumLost) holds",
            metrics.condition.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Passes that failed and were retried",
            metrics.errors.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

fn cluster(name: &str) -> Labels {
    vec![("cluster".into(), name.into())]
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl std::fmt::Debug for OperatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorMetrics")
    }
}

impl OperatorMetrics {
    /// Records a pass's status.
    pub fn observe(&self, status: &ClusterStatus) {
        let labels = cluster(&status.name);
        self.desired.get_or_create(&labels).set(count(status.size));
        self.members
            .get_or_create(&labels)
            .set(count(status.members.len()));
        self.healthy
            .get_or_create(&labels)
            .set(count(status.members.iter().filter(|m| m.healthy).count()));
        self.learners
            .get_or_create(&labels)
            .set(count(status.members.iter().filter(|m| m.learner).count()));
        for c in &status.conditions {
            let mut labels = labels.clone();
            labels.push(("condition".into(), c.kind.clone()));
            self.condition
                .get_or_create(&labels)
                .set(i64::from(c.status));
        }
    }

    /// Counts a failed pass.
    pub fn error(&self, cluster_name: &str) {
        self.errors.get_or_create(&cluster(cluster_name)).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

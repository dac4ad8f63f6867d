//! The operator's loop: lead (several operators may run; one acts), then every interval
//! reconcile each declared cluster and tear down the ones whose spec was deleted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use ferry_runtime::Election;

use crate::metrics::OperatorMetrics;
use crate::reconcile::Reconciler;
use crate::records::Keys;
use crate::runtime::MemberRuntime;
use crate::spec::ClusterSpec;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The prefix of its keys in the management store.
    pub prefix: String,
    /// How often each cluster is reconciled.
    pub interval: Duration,
    /// This operator's name in the election.
    pub identity: String,
    /// Where each pass's status is counted.
    pub metrics: Arc<OperatorMetrics>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The election failed (the management store is unreachable).
    #[error("leader election: {0}")]
    Election(#[from] ferry_runtime::election::ElectionError),
}

/// Runs until the task is dropped: campaigns, and while leading reconciles every cluster.
pub async fn run(
    store: Client,
    runtime: Arc<dyn MemberRuntime>,
    config: OperatorConfig,
) -> Result<(), OperatorError> {
    let keys = Keys::new(&config.prefix);
    let reconciler = Reconciler::new(store.clone(), keys.clone(), runtime);
    let election = Election::new(store.clone(), &keys.election(), 5);
    loop {
        let mut leadership = election
            .campaign(config.identity.as_bytes().to_vec())
            .await?;
        tracing::info!(identity = %config.identity, "leading: reconciling clusters");
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut specs_seen: Vec<ClusterSpec> = Vec::new();
        loop {
            tokio::select! {
                _ = leadership.lost() => break,
                _ = tokio::time::sleep(config.interval) => {}
            }
            let specs = match load_specs(&store, &keys).await {
                Ok(specs) => specs,
                Err(e) => {
                    tracing::warn!(error = %e, "reading cluster specs");
                    continue;
                }
            };
            for spec in &specs {
                if take_recover_request(&store, &keys, &spec.name).await {
                    match reconciler.recover(spec).await {
                        Ok(message) => tracing::warn!(cluster = %spec.name, "{message}"),
                        Err(e) => {
                            tracing::warn!(cluster = %spec.name, error = %e, "recovery failed")
                        }
                    }
                }
                match reconciler.reconcile(spec).await {
                    Ok(status) => {
                        config.metrics.observe(&status);
                        reconciler.backup_if_due(spec, &status).await;
                    }
                    Err(e) => {
                        config.metrics.error(&spec.name);
                        reconciler.report(&spec.name, format!("reconcile failed: {e}"));
                        tracing::warn!(cluster = %spec.name, error = %e, "reconcile failed; retrying");
                    }
                }
            }
            let names: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
            for gone in known.difference(&names) {
                if let Some(spec) = specs_seen.iter().find(|s| &s.name == gone) {
                    match reconciler.tear_down(spec).await {
                        Ok(()) => tracing::info!(cluster = %gone, "spec deleted: members stopped"),
                        Err(e) => tracing::warn!(cluster = %gone, error = %e, "tearing down"),
                    }
                }
            }
            known = names;
            specs_seen = specs;
        }
        tracing::warn!("lost leadership; campaigning again");
    }
}

/// Whether a person asked to recover `cluster` (the request is consumed).
async fn take_recover_request(store: &Client, keys: &Keys, cluster: &str) -> bool {
    store
        .clone()
        .delete(keys.recover(cluster), None)
        .await
        .is_ok_and(|r| r.deleted() > 0)
}

/// Every stored spec; one that does not decode is skipped and logged.
pub async fn load_specs(
    store: &Client,
    keys: &Keys,
) -> Result<Vec<ClusterSpec>, etcd_client::Error> {
    let response = store
        .clone()
        .get(keys.specs(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut specs = Vec::new();
    for kv in response.kvs() {
        match ClusterSpec::parse(kv.value()) {
            Ok(spec) => specs.push(spec),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "invalid spec skipped")
            }
        }
    }
    Ok(specs)
}

//! The operator's loop: lead (several operators may run; one acts), then every interval
//! reconcile each declared cluster and tear down the ones whose spec was deleted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, TxnOp, TxnOpResponse};
use ferry_runtime::election::Leadership;
use ferry_runtime::Election;

use crate::metrics::OperatorMetrics;
use crate::reconcile::{ReconcileError, Reconciler};
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

/// Runs until the task is dropped: campaigns, and while leading reconciles every cluster.
/// A management store that does not answer is waited for (the clusters run on meanwhile).
pub async fn run(store: Client, runtime: Arc<dyn MemberRuntime>, config: OperatorConfig) {
    let keys = Keys::new(&config.prefix);
    let reconciler = Reconciler::new(store.clone(), keys.clone(), runtime);
    let election = Election::new(store.clone(), &keys.election(), 5);
    loop {
        let mut leadership = match election.campaign(config.identity.as_bytes().to_vec()).await {
            Ok(leadership) => leadership,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed; campaigning again in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(identity = %config.identity, "leading: reconciling clusters");
        reconciler.lead(&config.identity, leadership.fence());
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut specs_seen: Vec<ClusterSpec> = Vec::new();
        loop {
            tokio::select! {
                _ = leadership.lost() => break,
                _ = tokio::time::sleep(config.interval) => {}
            }
            if leadership.is_lost() {
                break;
            }
            let specs = match load_specs(&store, &keys).await {
                Ok(specs) => specs,
                Err(e) => {
                    tracing::warn!(error = %e, "reading cluster specs");
                    continue;
                }
            };
            let mut deposed = false;
            for spec in &specs {
                if leadership.is_lost() {
                    deposed = true;
                    break;
                }
                if take_recover_request(&leadership, &keys, &spec.name).await {
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
                    Err(ReconcileError::NotLeader) => {
                        deposed = true;
                        break;
                    }
                    Err(e) => {
                        config.metrics.error(&spec.name);
                        reconciler.report(&spec.name, format!("reconcile failed: {e}"));
                        tracing::warn!(cluster = %spec.name, error = %e, "reconcile failed; retrying");
                    }
                }
            }
            if deposed {
                break;
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

/// Whether a person asked to recover `cluster`; the request is consumed only by the leader.
async fn take_recover_request(leadership: &Leadership, keys: &Keys, cluster: &str) -> bool {
    leadership
        .fenced([TxnOp::delete(keys.recover(cluster), None)])
        .await
        .is_ok_and(|r| {
            r.op_responses()
                .iter()
                .any(|op| matches!(op, TxnOpResponse::Delete(d) if d.deleted() > 0))
        })
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

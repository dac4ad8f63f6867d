//! The example from ferry's original design: desired networks live in the store under
//! `/registry/networks/<namespace>/<name>` as `{"cidr": …, "gateway": …}`; a simulated network
//! backend ("neutron") holds the actual ones. The controller creates missing networks,
//! updates ones whose spec differs and deletes ones whose object was deleted.
//!
//! ```text
//! ferry store &
//! cargo run -p ferry-runtime --example network_controller -- --endpoints 127.0.0.1:2379
//! etcdctl put /registry/networks/default/blue '{"cidr":"10.0.1.0/24","gateway":"10.0.1.1"}'
//! etcdctl put /registry/networks/default/blue '{"cidr":"10.0.2.0/24","gateway":"10.0.2.1"}'
//! etcdctl del /registry/networks/default/blue
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_runtime::{Action, Cache, Controller, Informer, InformerConfig, Metrics, ReconcileError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Where desired networks live.
pub const PREFIX: &str = "/registry/networks/";

/// A network's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Address range, e.g. `10.0.1.0/24`.
    pub cidr: String,
    /// Gateway address.
    pub gateway: String,
}

/// The simulated backend: what "exists" in the network service.
#[derive(Clone, Default)]
pub struct Neutron {
    networks: Arc<Mutex<BTreeMap<String, Network>>>,
}

impl Neutron {
    /// Networks that exist, by `namespace/name`.
    pub fn networks(&self) -> BTreeMap<String, Network> {
        self.networks.lock().clone()
    }

    fn apply(&self, name: &str, desired: Option<Network>) {
        let mut networks = self.networks.lock();
        match (desired, networks.get(name).cloned()) {
            (Some(d), None) => {
                tracing::info!(network = name, cidr = %d.cidr, gateway = %d.gateway, "neutron: created network");
                networks.insert(name.to_string(), d);
            }
            (Some(d), Some(actual)) if d != actual => {
                tracing::info!(network = name, cidr = %d.cidr, gateway = %d.gateway, "neutron: updated network");
                networks.insert(name.to_string(), d);
            }
            (None, Some(_)) => {
                tracing::info!(network = name, "neutron: deleted network");
                networks.remove(name);
            }
            _ => {}
        }
    }
}

/// Makes neutron match the store for one key.
pub async fn reconcile(
    key: String,
    cache: Cache<Network>,
    neutron: Neutron,
) -> Result<Action, ReconcileError> {
    let name = key.strip_prefix(PREFIX).unwrap_or(&key);
    if name.split('/').count() != 2 {
        return Err(ReconcileError::Terminal(format!(
            "{key} is not {PREFIX}<namespace>/<name>"
        )));
    }
    let desired = cache.get(&key).map(|o| (*o.value).clone());
    if let Some(d) = &desired {
        if !d.cidr.contains('/') {
            return Err(ReconcileError::Terminal(format!(
                "{key}: cidr {:?} has no prefix length",
                d.cidr
            )));
        }
    }
    neutron.apply(name, desired);
    Ok(Action::Done)
}

/// The controller, ready to run.
pub fn controller(client: etcd_client::Client, metrics: Arc<Metrics>) -> Controller<Network> {
    let informer =
        Informer::start_with_metrics(client, InformerConfig::new(PREFIX), Some(metrics.clone()));
    Controller::new("network", informer, metrics).workers(2)
}

/// Keeps a simulated network backend in step with `/registry/networks/<namespace>/<name>`.
#[derive(Debug, clap::Parser)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ferry_client::ConnectionArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    tracing_subscriber::fmt().with_env_filter("info").init();
    let client = cli.connection.connect().await?;
    let neutron = Neutron::default();
    let endpoints = cli.connection.endpoints.join(",");
    tracing::info!(%endpoints, prefix = PREFIX, "network controller running; Ctrl-C stops it");
    controller(client, Metrics::new())
        .run(
            move |key, cache| reconcile(key, cache, neutron.clone()),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await;
    Ok(())
}

//! Discovering instances: an informer over the registry prefix, seen as joins, updates and
//! leaves. The informer (from `ferry-runtime`) does the list + watch, the resume after a
//! lost connection and the relist after compaction; this module only interprets it.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use ferry_runtime::{Event, Informer, InformerConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Instance, RegistryError};

/// How discovery retries when the store is unreachable.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// First wait before reconnecting.
    pub min_retry_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_retry_backoff: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            min_retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(2),
        }
    }
}

/// A change to the live set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new instance.
    Joined(Instance),
    /// An instance re-published different metadata.
    Updated(Instance),
    /// An instance is gone (stopped, crashed, or its lease expired).
    Left(Instance),
}

/// The live instances of a service (or of all services), kept current in the background.
pub struct Discovery {
    informer: Informer<Instance>,
    changes: mpsc::UnboundedReceiver<Event<Instance>>,
    live: watch::Receiver<Vec<Instance>>,
    follower: JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Discovery {
    /// Starts discovery of `service` (or every service) under `prefix`; returns after the
    /// first listing, so [`Discovery::instances`] is already complete.
    pub async fn start(
        client: Client,
        prefix: &str,
        service: Option<&str>,
    ) -> Result<Self, RegistryError> {
        Self::start_with(client, prefix, service, DiscoveryConfig::default()).await
    }

    /// [`Discovery::start`] with explicit retry settings.
    pub async fn start_with(
        mut client: Client,
        prefix: &str,
        service: Option<&str>,
        config: DiscoveryConfig,
    ) -> Result<Self, RegistryError> {
        let base = prefix.trim_end_matches('/');
        let key_prefix = match service {
            Some(s) => format!("{base}/{s}/"),
            None => format!("{base}/"),
        };
        // Fail fast on a store that cannot be read, rather than retrying in the background.
        client
            .get(
                key_prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(RegistryError::store(format!("listing {key_prefix}")))?;
        let mut informer_config = InformerConfig::new(key_prefix);
        informer_config.min_backoff = config.min_retry_backoff;
        informer_config.max_backoff = config.max_retry_backoff;
        let informer: Informer<Instance> = Informer::start(client, informer_config);
        informer.wait_for_sync().await;
        let changes = informer.subscribe();
        let cache = informer.cache();
        let (live_tx, live) =
            watch::channel(sorted(cache.list().into_iter().map(|o| (*o.value).clone())));
        let mut updates = informer.subscribe();
        let follower = tokio::spawn(async move {
            while updates.recv().await.is_some() {
                live_tx.send_replace(sorted(cache.list().into_iter().map(|o| (*o.value).clone())));
            }
        });
        Ok(Self {
            informer,
            changes,
            live,
            follower,
        })
    }

    /// The live instances, oldest first.
    pub fn instances(&self) -> Vec<Instance> {
        sorted(
            self.informer
                .cache()
                .list()
                .into_iter()
                .map(|o| (*o.value).clone()),
        )
    }

    /// The next change; instances present at start arrive first, as `Joined`.
    pub async fn next_change(&mut self) -> Option<Change> {
        loop {
            let change = match self.changes.recv().await? {
                Event::Added(o) => Change::Joined((*o.value).clone()),
                Event::Updated { old, new, .. } if old.value != new.value => {
                    Change::Updated((*new.value).clone())
                }
                Event::Updated { .. } => continue,
                Event::Deleted(o) => Change::Left((*o.value).clone()),
            };
            return Some(change);
        }
    }

    /// Waits until the live set satisfies `condition`, returning it.
    pub async fn wait_until(
        &mut self,
        condition: impl Fn(&[Instance]) -> bool,
    ) -> Result<Vec<Instance>, RegistryError> {
        let set = self
            .live
            .wait_for(|set| condition(set))
            .await
            .map_err(|_| RegistryError::Stopped("discovery task ended".into()))?;
        Ok(set.clone())
    }
}

fn sorted(instances: impl Iterator<Item = Instance>) -> Vec<Instance> {
    let mut all: Vec<Instance> = instances.collect();
    all.sort_by(|a, b| a.order().cmp(&b.order()));
    all
}

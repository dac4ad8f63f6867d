//! Discovering instances: list a prefix, then watch it, keeping the live set.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
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
    live: watch::Receiver<Vec<Instance>>,
    changes: mpsc::UnboundedReceiver<Change>,
    task: JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Known = BTreeMap<Vec<u8>, Instance>;

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
        let (known, revision) = list(&mut client, &key_prefix).await?;
        let (changes_tx, changes) = mpsc::unbounded_channel();
        for instance in sorted(&known) {
            let _ = changes_tx.send(Change::Joined(instance));
        }
        let (live_tx, live) = watch::channel(sorted(&known));
        let task = tokio::spawn(follow(
            client, key_prefix, config, known, revision, live_tx, changes_tx,
        ));
        Ok(Self {
            live,
            changes,
            task,
        })
    }

    /// The live instances, oldest first.
    pub fn instances(&self) -> Vec<Instance> {
        self.live.borrow().clone()
    }

    /// The next change (the first listing arrives as `Joined` changes, oldest first).
    pub async fn next_change(&mut self) -> Option<Change> {
        self.changes.recv().await
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

fn sorted(known: &Known) -> Vec<Instance> {
    let mut all: Vec<Instance> = known.values().cloned().collect();
    all.sort_by(|a, b| a.order().cmp(&b.order()));
    all
}

fn decode(key: &[u8], value: &[u8]) -> Option<Instance> {
    match serde_json::from_slice::<Instance>(value) {
        Ok(instance) => Some(instance),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "skipping an entry that is not an instance");
            None
        }
    }
}

async fn list(client: &mut Client, prefix: &str) -> Result<(Known, i64), RegistryError> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(RegistryError::store(format!("listing {prefix}")))?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let known = resp
        .kvs()
        .iter()
        .filter_map(|kv| decode(kv.key(), kv.value()).map(|i| (kv.key().to_vec(), i)))
        .collect();
    Ok((known, revision))
}

/// Why a watch ended.
enum WatchEnd {
    /// The history to resume from was compacted: relist.
    Compacted,
    /// The connection failed: retry from the same revision.
    Failed(String),
    /// Nobody listens any more.
    Closed,
}

async fn follow(
    mut client: Client,
    prefix: String,
    config: DiscoveryConfig,
    mut known: Known,
    mut revision: i64,
    live: watch::Sender<Vec<Instance>>,
    changes: mpsc::UnboundedSender<Change>,
) {
    let mut backoff = config.min_retry_backoff;
    loop {
        let end = watch_from(
            &mut client,
            &prefix,
            &mut known,
            &mut revision,
            &live,
            &changes,
            &mut backoff,
            &config,
        )
        .await;
        match end {
            WatchEnd::Closed => return,
            WatchEnd::Failed(reason) => {
                tracing::debug!(%prefix, %reason, "discovery watch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_retry_backoff);
            }
            WatchEnd::Compacted => match list(&mut client, &prefix).await {
                Ok((fresh, at)) => {
                    tracing::info!(%prefix, revision = at, "history compacted; relisted");
                    // Deliver the difference, so nothing is lost or invented.
                    for (key, old) in &known {
                        if !fresh.contains_key(key)
                            && changes.send(Change::Left(old.clone())).is_err()
                        {
                            return;
                        }
                    }
                    for (key, new) in &fresh {
                        let change = match known.get(key) {
                            None => Change::Joined(new.clone()),
                            Some(old) if old != new => Change::Updated(new.clone()),
                            Some(_) => continue,
                        };
                        if changes.send(change).is_err() {
                            return;
                        }
                    }
                    known = fresh;
                    revision = at;
                    let _ = live.send(sorted(&known));
                }
                Err(e) => {
                    tracing::debug!(%prefix, error = %e, "relist failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.max_retry_backoff);
                }
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_from(
    client: &mut Client,
    prefix: &str,
    known: &mut Known,
    revision: &mut i64,
    live: &watch::Sender<Vec<Instance>>,
    changes: &mpsc::UnboundedSender<Change>,
    backoff: &mut Duration,
    config: &DiscoveryConfig,
) -> WatchEnd {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1);
    let mut stream = match client.watch(prefix, Some(options)).await {
        Ok(s) => s,
        Err(e) => return WatchEnd::Failed(e.to_string()),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return WatchEnd::Failed("watch stream ended".into()),
            Err(e) => return WatchEnd::Failed(e.to_string()),
        };
        if resp.canceled() {
            return if resp.compact_revision() != 0 {
                WatchEnd::Compacted
            } else {
                WatchEnd::Failed(format!("watch cancelled: {}", resp.cancel_reason()))
            };
        }
        *backoff = config.min_retry_backoff;
        if resp.events().is_empty() {
            continue;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *revision = (*revision).max(kv.mod_revision());
            let change = match event.event_type() {
                EventType::Put => match decode(kv.key(), kv.value()) {
                    Some(instance) => match known.insert(kv.key().to_vec(), instance.clone()) {
                        None => Change::Joined(instance),
                        Some(old) if old != instance => Change::Updated(instance),
                        Some(_) => continue,
                    },
                    None => match known.remove(kv.key()) {
                        Some(old) => Change::Left(old),
                        None => continue,
                    },
                },
                EventType::Delete => match known.remove(kv.key()) {
                    Some(old) => Change::Left(old),
                    None => continue,
                },
            };
            if changes.send(change).is_err() {
                return WatchEnd::Closed;
            }
        }
        let _ = live.send(sorted(known));
    }
}

//! One replica: the versioned map, the clock that stamps its writes, and the fan-out that
//! sends every local write to the other replicas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tonic::transport::{Channel, Endpoint};
use uhlc::{Timestamp, HLC};

use crate::proto::sync_client::SyncClient;
use crate::proto::{SyncData, SyncRequest};
use crate::store::{Entry, Store};

/// How a write is sent to a peer: attempts and the delays between them. A peer that stays
/// unreachable is left to anti-entropy, never to an unbounded queue.
const FANOUT_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

/// A change to the map, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The type (keyspace).
    pub ty: i32,
    /// The key.
    pub key: String,
    /// The new value; `None` when deleted.
    pub value: Option<String>,
    /// The version that made the change.
    pub version: Timestamp,
}

/// Counters of the replica's traffic with its peers (Prometheus counters when exported).
#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Writes delivered to a peer by fan-out.
    pub fanout_delivered: AtomicU64,
    /// Fan-outs to a peer that gave up after every attempt (left to anti-entropy).
    pub fanout_failed: AtomicU64,
    /// Total time from a local write to its delivery at a peer, in microseconds.
    pub fanout_micros_total: AtomicU64,
    /// Anti-entropy rounds run.
    pub anti_entropy_rounds: AtomicU64,
    /// Entries anti-entropy (and bootstrap) changed here.
    pub anti_entropy_repaired: AtomicU64,
    /// How long the bootstrap took, in milliseconds (0 until it is done).
    pub bootstrap_millis: AtomicU64,
}

struct Inner {
    metrics: SyncMetrics,
    hlc: HLC,
    store: Mutex<Store>,
    peers: Mutex<Vec<(String, SyncClient<Channel>)>>,
    changes: broadcast::Sender<Change>,
}

/// A replica of the synced map; cheap to clone (all clones are the same replica).
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    /// An empty replica with a fresh clock (a random replica id inside every version).
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                metrics: SyncMetrics::default(),
                hlc: uhlc::HLCBuilder::new().build(),
                store: Mutex::new(Store::default()),
                peers: Mutex::new(Vec::new()),
                changes,
            }),
        }
    }

    /// Replaces the peers writes are sent to (`host:port` of their gRPC service).
    pub fn set_peers(&self, addrs: &[String]) {
        let mut peers = self.inner.peers.lock();
        let mut next = Vec::new();
        for addr in addrs {
            if let Some(existing) = peers.iter().find(|(a, _)| a == addr) {
                next.push(existing.clone());
                continue;
            }
            match Endpoint::from_shared(format!("http://{addr}")) {
                Ok(endpoint) => {
                    let channel = endpoint
                        .connect_timeout(Duration::from_secs(1))
                        .timeout(Duration::from_secs(2))
                        .connect_lazy();
                    next.push((addr.clone(), SyncClient::new(channel)));
                }
                Err(e) => tracing::warn!(peer = %addr, error = %e, "not a peer address; ignored"),
            }
        }
        *peers = next;
    }

    /// The live value of `key` in `ty`.
    pub fn get(&self, ty: i32, key: &str) -> Option<String> {
        self.inner.store.lock().get(ty, key).map(str::to_string)
    }

    /// A key's value or tombstone with its version.
    pub fn entry(&self, ty: i32, key: &str) -> Option<Entry> {
        self.inner.store.lock().entry(ty, key).cloned()
    }

    /// Every live value of `ty`.
    pub fn values(&self, ty: i32) -> std::collections::BTreeMap<String, String> {
        self.inner.store.lock().values(ty)
    }

    /// Every entry of `ty`, tombstones included.
    pub fn entries(&self, ty: i32) -> Vec<(String, Entry)> {
        let store = self.inner.store.lock();
        store
            .entries(ty)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The types that hold anything.
    pub fn types(&self) -> Vec<i32> {
        self.inner.store.lock().types()
    }

    /// Changes from now on (local writes and merged remote ones).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Writes locally under a new version and sends the write to every peer; returns the
    /// version once it is applied here (fan-out continues in the background).
    pub fn set(&self, ty: i32, key: &str, value: &str) -> Timestamp {
        self.write(ty, vec![(key.to_string(), Some(value.to_string()))])[0]
    }

    /// Deletes locally (a tombstone under a new version) and sends it to every peer.
    pub fn delete(&self, ty: i32, key: &str) -> Timestamp {
        self.write(ty, vec![(key.to_string(), None)])[0]
    }

    /// Several writes of one type, each under its own new version, sent to peers together.
    pub fn write(&self, ty: i32, writes: Vec<(String, Option<String>)>) -> Vec<Timestamp> {
        let mut versions = Vec::with_capacity(writes.len());
        let mut out = SyncData {
            r#type: ty,
            ..Default::default()
        };
        for (key, value) in writes {
            let version = self.inner.hlc.new_timestamp();
            self.apply(ty, &key, value.clone(), version);
            out.versions.insert(key.clone(), version.to_string());
            match value {
                Some(v) => {
                    out.data.insert(key, v);
                }
                None => out.deleted.push(key),
            }
            versions.push(version);
        }
        self.fan_out(out);
        versions
    }

    /// Merges an entry written elsewhere (a peer's fan-out, a snapshot); returns whether it
    /// changed anything. The clock moves past the version so later local writes order after.
    pub fn merge(&self, ty: i32, key: &str, value: Option<String>, version: Timestamp) -> bool {
        if let Err(e) = self.inner.hlc.update_with_timestamp(&version) {
            // A peer's clock far ahead: the entry is still merged by its version.
            tracing::debug!(error = %e, "a peer's version is ahead of this clock");
        }
        self.apply(ty, key, value, version)
    }

    fn apply(&self, ty: i32, key: &str, value: Option<String>, version: Timestamp) -> bool {
        let changed = self.inner.store.lock().merge(
            ty,
            key,
            Entry {
                value: value.clone(),
                version,
            },
        );
        if changed {
            let _ = self.inner.changes.send(Change {
                ty,
                key: key.to_string(),
                value,
                version,
            });
        }
        changed
    }

    /// Pulls every entry (tombstones included) from the peer at `addr` and merges it: the
    /// bootstrap snapshot and one anti-entropy round. Returns how many entries changed here.
    pub async fn pull_from(&self, addr: &str) -> Result<usize, tonic::Status> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let response = SyncClient::new(channel)
            .max_decoding_message_size(1 << 30)
            .get_all(SyncRequest {
                data: vec![],
                include_deleted: true,
            })
            .await?
            .into_inner();
        let mut changed = 0;
        for d in response.data {
            let entries = d
                .data
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .chain(d.deleted.into_iter().map(|k| (k, None)));
            for (key, value) in entries {
                let Some(version) = d
                    .versions
                    .get(&key)
                    .and_then(|v| v.parse::<Timestamp>().ok())
                else {
                    continue;
                };
                if self.merge(d.r#type, &key, value, version) {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// The replica's counters.
    pub fn metrics(&self) -> &SyncMetrics {
        &self.inner.metrics
    }

    /// The peers' addresses.
    pub fn peers(&self) -> Vec<String> {
        self.inner
            .peers
            .lock()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    fn fan_out(&self, data: SyncData) {
        let peers = self.inner.peers.lock().clone();
        let started = std::time::Instant::now();
        for (addr, mut client) in peers {
            let inner = self.inner.clone();
            let request = SyncRequest {
                data: vec![data.clone()],
                include_deleted: false,
            };
            tokio::spawn(async move {
                let mut last = String::new();
                for delay in FANOUT_DELAYS {
                    match client.set(request.clone()).await {
                        Ok(_) => {
                            let micros =
                                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                            inner
                                .metrics
                                .fanout_delivered
                                .fetch_add(1, Ordering::Relaxed);
                            inner
                                .metrics
                                .fanout_micros_total
                                .fetch_add(micros, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(delay).await;
                }
                inner.metrics.fanout_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %addr, error = %last, "fan-out gave up; anti-entropy will repair the peer");
            });
        }
    }
}

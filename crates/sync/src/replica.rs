//! One replica: the versioned map, the clock that stamps its writes, and the fan-out that
//! sends every local write to the other replicas.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use uhlc::{Timestamp, HLC, NTP64};

use crate::fanout::{Delivery, Outgoing, PeerLink};
use crate::store::{Entry, Store};

/// How long tombstones are kept by default before they are collected.
pub const DEFAULT_TOMBSTONE_GRACE: Duration = Duration::from_secs(3600);

/// How long a client's write waits for a peer to hold it too before it is acknowledged
/// with this replica's copy only.
pub const REPLICATION_WAIT: Duration = Duration::from_secs(1);

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
    /// Tombstones collected after the grace period.
    pub tombstones_collected: AtomicU64,
    /// Full resyncs after being out of touch for longer than the grace period.
    pub full_resyncs: AtomicU64,
}

/// How a replica behaves.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// How long a tombstone is kept before it is collected; a replica that has not completed
    /// an anti-entropy round for this long is out of touch and resyncs in full.
    pub tombstone_grace: Duration,
    /// Whether the replica starts ready (a standalone replica) or joining (it serves reads
    /// and snapshots only once [`Replica::set_ready`] says so).
    pub ready: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            tombstone_grace: DEFAULT_TOMBSTONE_GRACE,
            ready: true,
        }
    }
}

struct Inner {
    config: ReplicaConfig,
    ready: AtomicBool,
    /// When the last anti-entropy round (or bootstrap) completed, or when the replica last
    /// had no peer to be in touch with.
    last_contact: Mutex<Instant>,
    metrics: SyncMetrics,
    hlc: HLC,
    store: Mutex<Store>,
    peers: Mutex<Vec<PeerLink>>,
    /// Per peer address, where the last completed round left both sides.
    watermarks: Mutex<HashMap<String, Watermark>>,
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
    /// An empty, ready replica with a fresh clock (a random replica id inside every
    /// version) and the default tombstone grace.
    pub fn new() -> Self {
        Self::with_config(ReplicaConfig::default())
    }

    /// An empty replica configured by `config`.
    pub fn with_config(config: ReplicaConfig) -> Self {
        let (changes, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                ready: AtomicBool::new(config.ready),
                config,
                last_contact: Mutex::new(Instant::now()),
                metrics: SyncMetrics::default(),
                hlc: uhlc::HLCBuilder::new().build(),
                store: Mutex::new(Store::default()),
                peers: Mutex::new(Vec::new()),
                watermarks: Mutex::new(HashMap::new()),
                changes,
            }),
        }
    }

    /// Whether the replica is ready: bootstrapped, so its reads are complete and peers may
    /// copy from it.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Marks the replica ready (or not, during a full resync).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Records a completed exchange with a peer (or that there is no peer to be in touch
    /// with).
    pub fn touch(&self) {
        *self.inner.last_contact.lock() = Instant::now();
    }

    /// Whether the replica has been out of touch for longer than the tombstone grace: peers
    /// may have collected deletes it never saw, so its older entries cannot be trusted and
    /// it must resync in full rather than merge (or serve) them.
    pub fn is_stale(&self) -> bool {
        self.inner.last_contact.lock().elapsed() > self.inner.config.tombstone_grace
    }

    /// Whether the replica is ready and in touch: only then does it serve reads, and may
    /// peers copy from it.
    pub fn is_current(&self) -> bool {
        self.is_ready() && !self.is_stale()
    }

    /// The replica's id (the id inside every version it stamps).
    pub fn id(&self) -> String {
        self.inner.hlc.get_id().to_string()
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.inner.config
    }

    /// The clock's time minus the tombstone grace: deletes older than this are collected.
    fn horizon(&self) -> NTP64 {
        let now = uhlc::system_time_clock();
        let grace = NTP64::from(self.inner.config.tombstone_grace);
        if now > grace {
            now - grace
        } else {
            NTP64(0)
        }
    }

    /// Collects tombstones older than the grace period; returns how many.
    pub fn collect_tombstones(&self) -> usize {
        let horizon = self.horizon();
        let n = self.inner.store.lock().collect_tombstones(horizon);
        self.inner
            .metrics
            .tombstones_collected
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// The first step of a full resync: drops every entry older than the grace period (the
    /// peers' snapshot brings back those still alive) and keeps newer ones, which no
    /// collected delete can supersede. Returns how many were dropped.
    pub fn drop_entries_older_than_grace(&self) -> usize {
        let horizon = self.horizon();
        self.inner.store.lock().retain_newer_than(horizon)
    }

    /// The sequence number of the latest change here.
    pub fn seq(&self) -> u64 {
        self.inner.store.lock().seq()
    }

    /// Every entry that changed here after sequence number `after`.
    pub fn changed_after(&self, after: u64) -> Vec<(i32, String, Entry)> {
        self.inner.store.lock().changed_after(after)
    }

    /// What this replica knew of the peer at `addr` after their last round.
    pub(crate) fn watermark(&self, addr: &str) -> Option<Watermark> {
        self.inner.watermarks.lock().get(addr).cloned()
    }

    pub(crate) fn set_watermark(&self, addr: &str, watermark: Watermark) {
        self.inner
            .watermarks
            .lock()
            .insert(addr.to_string(), watermark);
    }

    /// The hash buckets' digests.
    pub fn digests(&self) -> Vec<u64> {
        self.inner.store.lock().digests().to_vec()
    }

    /// Every entry in the given buckets.
    pub fn bucket_entries(&self, buckets: &BTreeSet<usize>) -> Vec<(i32, String, Entry)> {
        self.inner.store.lock().bucket_entries(buckets)
    }

    /// Up to `limit` entries of `ty` after the key `after`, in key order.
    pub fn chunk(&self, ty: i32, after: Option<&str>, limit: usize) -> Vec<(String, Entry)> {
        self.inner.store.lock().chunk(ty, after, limit)
    }

    /// How many live values and tombstones the replica holds.
    pub fn len(&self) -> (usize, usize) {
        let store = self.inner.store.lock();
        (store.len(), store.tombstone_count())
    }

    /// Replaces the peers writes are sent to (`host:port` of their gRPC service). Call it
    /// within a Tokio runtime: each new peer gets a sender task.
    pub fn set_peers(&self, addrs: &[String]) {
        let mut peers = self.inner.peers.lock();
        let mut current: Vec<PeerLink> = std::mem::take(&mut *peers);
        for addr in addrs {
            if peers.iter().any(|p| &p.addr == addr) {
                continue;
            }
            if let Some(i) = current.iter().position(|p| &p.addr == addr) {
                peers.push(current.swap_remove(i));
                continue;
            }
            match PeerLink::new(addr, self.downgrade()) {
                Ok(link) => peers.push(link),
                Err(e) => tracing::warn!(peer = %addr, error = %e, "not a peer address; ignored"),
            }
        }
    }

    fn downgrade(&self) -> WeakReplica {
        WeakReplica(Arc::downgrade(&self.inner))
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
        self.write_tracked(ty, writes).0
    }

    /// Like [`Replica::write`], but returns once a peer also holds the writes (or `wait` has
    /// passed, or there is no peer), with how many replicas hold them: a write acknowledged
    /// with 2 or more survives this replica's crash right after the acknowledgement.
    pub async fn write_replicated(
        &self,
        ty: i32,
        writes: Vec<(String, Option<String>)>,
        wait: Duration,
    ) -> (Vec<Timestamp>, usize) {
        let (versions, mut delivered, peers) = self.write_tracked(ty, writes);
        if peers == 0 {
            return (versions, 1);
        }
        let copies = match tokio::time::timeout(wait, delivered.recv()).await {
            Ok(Some(())) => 2,
            _ => 1,
        };
        (versions, copies)
    }

    fn write_tracked(
        &self,
        ty: i32,
        writes: Vec<(String, Option<String>)>,
    ) -> (Vec<Timestamp>, mpsc::Receiver<()>, usize) {
        let peers = self.inner.peers.lock();
        let (done, delivered) = mpsc::channel(peers.len().max(1));
        let deliveries: Vec<Arc<Delivery>> = peers
            .iter()
            .map(|_| Delivery::new(writes.len(), done.clone()))
            .collect();
        let written = Instant::now();
        let mut versions = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            let version = self.inner.hlc.new_timestamp();
            self.apply(ty, &key, value.clone(), version);
            for (peer, delivery) in peers.iter().zip(&deliveries) {
                let queued = peer.send(Outgoing {
                    ty,
                    key: key.clone(),
                    value: value.clone(),
                    version,
                    written,
                    delivered: Some(delivery.clone()),
                });
                if !queued {
                    self.inner
                        .metrics
                        .fanout_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            versions.push(version);
        }
        (versions, delivered, peers.len())
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
            .map(|p| p.addr.clone())
            .collect()
    }
}

/// Where a completed anti-entropy round left a pair of replicas: the next round exchanges
/// only what changed on either side since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watermark {
    /// The peer's id at the time (a restarted peer has a new one, and new numbers).
    pub peer_id: String,
    /// Every change at the peer up to this number was reflected here.
    pub their_seq: u64,
    /// Every change here up to this number was reflected at the peer.
    pub our_seq: u64,
}

/// A replica that may be gone: what a peer's sender task holds, so that dropping the last
/// handle of a replica ends its tasks.
pub(crate) struct WeakReplica(Weak<Inner>);

impl WeakReplica {
    pub(crate) fn upgrade(&self) -> Option<Replica> {
        self.0.upgrade().map(|inner| Replica { inner })
    }
}

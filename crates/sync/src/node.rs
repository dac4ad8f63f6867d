//! A replica as a member of its service: it serves gRPC, announces itself in the registry
//! (`<prefix>/<service>/<id>`, labels `protocol` and `ready`, the start time in the record),
//! follows the other instances of the service as its peers, bootstraps from the
//! longest-running ready one, runs anti-entropy, collects old tombstones, resyncs in full
//! after being out of touch, and says when it is ready.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_registry::{announce, AnnounceConfig, Announcement, Discovery, Instance};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::anti_entropy::{round, snapshot_from};
use crate::replica::DEFAULT_TOMBSTONE_GRACE;
use crate::{Replica, ReplicaConfig, SyncService};

/// The protocol version in the registry record's labels.
pub const PROTOCOL: &str = "hellorpc/1+versions";
/// The label that says whether an instance is ready (bootstrapped and in touch).
pub const READY_LABEL: &str = "ready";
/// The default anti-entropy interval.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(30);
/// How long a joining replica waits for a peer to serve its snapshot before it starts with
/// what it has (anti-entropy fills in the rest).
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The registry service the replicas share.
    pub service: String,
    /// This replica's id, unique in the service.
    pub id: String,
    /// Where the gRPC service listens (port 0 picks one).
    pub grpc_listen: SocketAddr,
    /// The registry prefix.
    pub registry_prefix: String,
    /// How often to run anti-entropy with a random peer (jittered ±20 %).
    pub anti_entropy_interval: Duration,
    /// How long tombstones are kept; out of touch for longer means a full resync.
    pub tombstone_grace: Duration,
}

impl NodeConfig {
    /// A node of `service` named `id` on `grpc_listen`, with the default registry prefix,
    /// anti-entropy interval (30 s) and tombstone grace (1 h).
    pub fn new(service: impl Into<String>, id: impl Into<String>, grpc_listen: SocketAddr) -> Self {
        Self {
            service: service.into(),
            id: id.into(),
            grpc_listen,
            registry_prefix: ferry_registry::DEFAULT_PREFIX.to_string(),
            anti_entropy_interval: DEFAULT_ANTI_ENTROPY_INTERVAL,
            tombstone_grace: DEFAULT_TOMBSTONE_GRACE,
        }
    }
}

impl NodeConfig {
    /// Checks the intervals: both above zero, and the grace more than twice the interval.
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.anti_entropy_interval.is_zero() || self.tombstone_grace.is_zero() {
            return Err(NodeError::Invalid(
                "the anti-entropy interval and the tombstone grace must be above zero".into(),
            ));
        }
        if self.tombstone_grace <= self.anti_entropy_interval * 2 {
            return Err(NodeError::Invalid(format!(
            "the tombstone grace ({:?}) must be more than twice the anti-entropy interval ({:?}), \
             or replicas would count as out of touch between two rounds",
            self.tombstone_grace, self.anti_entropy_interval
        )));
        }
        Ok(())
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The gRPC address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Registering or discovering failed.
    #[error("{0}")]
    Registry(#[from] ferry_registry::RegistryError),
}

/// A running node.
pub struct Node {
    /// The replica it serves.
    pub replica: Replica,
    /// Where its gRPC service listens.
    pub grpc_addr: SocketAddr,
    membership: Arc<Membership>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Whether bootstrap is done (reads are complete from now on).
    pub fn is_ready(&self) -> bool {
        self.replica.is_ready()
    }

    /// The peers' addresses.
    pub fn peers(&self) -> Vec<String> {
        self.replica.peers()
    }

    /// Deregisters and stops.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(announcement) = self.membership.announcement.lock().await.take() {
            let _ = announcement.stop().await;
        }
    }
}

/// This replica's registration and its view of the others.
struct Membership {
    me: std::sync::Mutex<Instance>,
    announcement: Mutex<Option<Announcement>>,
    /// The service's live instances, oldest first.
    instances: watch::Receiver<Vec<Instance>>,
}

impl Membership {
    /// The other instances, ready ones first, each group oldest first.
    fn others(&self) -> Vec<Instance> {
        let id = self.me().id;
        let mut others: Vec<Instance> = self
            .instances
            .borrow()
            .iter()
            .filter(|i| i.id != id)
            .cloned()
            .collect();
        others.sort_by_key(|i| !is_labelled_ready(i));
        others
    }

    fn me(&self) -> Instance {
        self.me
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Says in the registry whether this replica is ready.
    async fn publish_ready(&self, ready: bool) {
        let me = {
            let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            me.labels.insert(READY_LABEL.into(), ready.to_string());
            me.clone()
        };
        if let Some(announcement) = self.announcement.lock().await.as_mut() {
            if let Err(e) = announcement.update(&me).await {
                // The record is written again with the label when the store answers.
                tracing::warn!(error = %e, ready, "could not publish readiness");
            }
        }
    }
}

fn is_labelled_ready(instance: &Instance) -> bool {
    instance.labels.get(READY_LABEL).map(String::as_str) == Some("true")
}

/// Serves, announces, follows peers, bootstraps, and runs anti-entropy.
pub async fn start(client: etcd_client::Client, config: NodeConfig) -> Result<Node, NodeError> {
    config.validate()?;
    let replica = Replica::with_config(ReplicaConfig {
        tombstone_grace: config.tombstone_grace,
        ready: false,
    });
    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.grpc_listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: config.grpc_listen,
        source,
    })?;
    let server = {
        let replica = replica.clone();
        tokio::spawn(async move {
            if let Err(e) = SyncService::new(replica).serve(listener).await {
                tracing::error!(error = %e, "sync gRPC server stopped");
            }
        })
    };
    // Following the peers before announcing: writes fan out to this replica as soon as it is
    // announced, and merging is order-independent, so nothing needs buffering meanwhile.
    let mut discovery = Discovery::start(
        client.clone(),
        &config.registry_prefix,
        Some(&config.service),
    )
    .await?;
    let mut me = Instance::new(&config.service, &config.id, grpc_addr.to_string());
    me.labels.insert("protocol".into(), PROTOCOL.into());
    me.labels.insert(READY_LABEL.into(), "false".into());
    let announcement = announce(
        client,
        AnnounceConfig {
            prefix: config.registry_prefix.clone(),
            ..AnnounceConfig::default()
        },
        me.clone(),
    )
    .await?;
    let (instances_tx, instances) = watch::channel(discovery.instances());
    let membership = Arc::new(Membership {
        me: std::sync::Mutex::new(me),
        announcement: Mutex::new(Some(announcement)),
        instances,
    });
    let addrs_of =
        |m: &Membership| -> Vec<String> { m.others().into_iter().map(|i| i.addr).collect() };
    replica.set_peers(&addrs_of(&membership));
    let follower = {
        let replica = replica.clone();
        let membership = membership.clone();
        tokio::spawn(async move {
            while discovery.next_change().await.is_some() {
                instances_tx.send_replace(discovery.instances());
                replica.set_peers(&addrs_of(&membership));
            }
        })
    };
    let background = {
        let replica = replica.clone();
        let membership = membership.clone();
        let interval = config.anti_entropy_interval;
        tokio::spawn(async move {
            let started = Instant::now();
            join(&replica, &membership).await;
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            replica
                .metrics()
                .bootstrap_millis
                .store(millis.max(1), Ordering::Relaxed);
            loop {
                let jitter = rand::random_range(0.8..1.2);
                tokio::time::sleep(interval.mul_f64(jitter)).await;
                let collected = replica.collect_tombstones();
                if collected > 0 {
                    tracing::debug!(collected, "tombstones past the grace collected");
                }
                if replica.is_stale() {
                    resync(&replica, &membership).await;
                } else {
                    anti_entropy(&replica).await;
                }
            }
        })
    };
    Ok(Node {
        replica,
        grpc_addr,
        membership,
        tasks: vec![server, follower, background],
    })
}

/// Bootstrap: the snapshot of the longest-running ready peer, one anti-entropy round, then
/// ready. With no peer, or when no peer serves and this replica is the oldest of those not
/// yet ready (they all started together), it is ready with what it has.
async fn join(replica: &Replica, membership: &Membership) {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let source = loop {
        let others = membership.others();
        if others.is_empty() {
            break None;
        }
        let mut served = None;
        for peer in &others {
            match snapshot_from(replica, &peer.addr).await {
                Ok(n) => {
                    tracing::info!(peer = %peer.id, entries = n, "snapshot merged");
                    replica
                        .metrics()
                        .anti_entropy_repaired
                        .fetch_add(n as u64, Ordering::Relaxed);
                    served = Some(peer.addr.clone());
                    break;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.id, error = %e.message(), "no snapshot")
                }
            }
        }
        if served.is_some() {
            break served;
        }
        let me = membership.me();
        let oldest = others
            .iter()
            .all(|o| (&o.start_time, &o.id) > (&me.start_time, &me.id));
        if oldest && !others.iter().any(is_labelled_ready) {
            tracing::info!(
                "no peer is ready and this replica is the oldest: starting the service's map"
            );
            break None;
        }
        if started.elapsed() > JOIN_PATIENCE {
            tracing::warn!(
                "no peer served a snapshot for {JOIN_PATIENCE:?}; ready with what this replica has, anti-entropy fills in the rest"
            );
            break None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    };
    if let Some(peer) = source {
        // Writes that reached the peer while the snapshot streamed, and this replica's own.
        if let Err(e) = round(replica, &peer).await {
            tracing::debug!(%peer, error = %e.message(), "the round after the snapshot failed");
        }
    }
    replica.touch();
    replica.set_ready(true);
    membership.publish_ready(true).await;
}

/// Out of touch for longer than the tombstone grace: peers may have collected deletes this
/// replica never saw, so its entries older than the grace go, and it joins again.
async fn resync(replica: &Replica, membership: &Membership) {
    replica
        .metrics()
        .full_resyncs
        .fetch_add(1, Ordering::Relaxed);
    replica.set_ready(false);
    membership.publish_ready(false).await;
    let dropped = replica.drop_entries_older_than_grace();
    tracing::warn!(
        dropped,
        "out of touch for longer than the tombstone grace: full resync"
    );
    join(replica, membership).await;
}

/// One round with a random peer; when it fails, the next, until one succeeds.
async fn anti_entropy(replica: &Replica) {
    let mut peers = replica.peers();
    if peers.is_empty() {
        replica.touch();
        return;
    }
    let start = rand::random_range(0..peers.len());
    peers.rotate_left(start);
    for peer in peers {
        match round(replica, &peer).await {
            Ok(outcome) if outcome.buckets_differing == 0 => {
                tracing::trace!(%peer, "anti-entropy: in step");
                return;
            }
            Ok(outcome) => {
                tracing::info!(%peer, ?outcome, "anti-entropy repaired entries");
                return;
            }
            Err(e) => tracing::debug!(%peer, error = %e.message(), "anti-entropy round failed"),
        }
    }
}

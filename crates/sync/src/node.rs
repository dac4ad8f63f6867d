//! A replica as a member of its service: it serves gRPC, announces itself in the registry
//! (`<prefix>/<service>/<id>`, with the protocol version as a label), follows the other
//! instances of the service as its peers, bootstraps from the longest-running one, runs
//! anti-entropy, and says when it is ready.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_registry::{announce, AnnounceConfig, Announcement, Discovery, Instance};
use tokio::task::JoinHandle;

use crate::{Replica, SyncService};

/// The protocol version in the registry record's labels.
pub const PROTOCOL: &str = "hellorpc/1+versions";

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
    /// How often to pull from a random peer (jittered ±20 %).
    pub anti_entropy_interval: Duration,
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
    ready: Arc<AtomicBool>,
    announcement: Announcement,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Whether bootstrap is done (reads are complete from now on).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Deregisters and stops.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.announcement.stop().await;
    }
}

/// Serves, announces, follows peers, bootstraps, and runs anti-entropy.
pub async fn start(client: etcd_client::Client, config: NodeConfig) -> Result<Node, NodeError> {
    let replica = Replica::new();
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
    // Following the peers first: writes fan out to this replica as soon as it is announced,
    // and merging is order-independent, so nothing needs buffering during the bootstrap.
    let mut discovery = Discovery::start(
        client.clone(),
        &config.registry_prefix,
        Some(&config.service),
    )
    .await?;
    let mut me = Instance::new(&config.service, &config.id, grpc_addr.to_string());
    me.labels.insert("protocol".into(), PROTOCOL.into());
    let announcement = announce(
        client,
        AnnounceConfig {
            prefix: config.registry_prefix.clone(),
            ..AnnounceConfig::default()
        },
        me,
    )
    .await?;
    let peers_of = {
        let id = config.id.clone();
        move |instances: &[Instance]| -> Vec<String> {
            instances
                .iter()
                .filter(|i| i.id != id)
                .map(|i| i.addr.clone())
                .collect()
        }
    };
    let oldest_peer = peers_of(&discovery.instances()).into_iter().next();
    replica.set_peers(&peers_of(&discovery.instances()));
    let follower = {
        let replica = replica.clone();
        tokio::spawn(async move {
            while discovery.next_change().await.is_some() {
                replica.set_peers(&peers_of(&discovery.instances()));
            }
        })
    };
    let ready = Arc::new(AtomicBool::new(false));
    let background = {
        let replica = replica.clone();
        let ready = ready.clone();
        let interval = config.anti_entropy_interval;
        tokio::spawn(async move {
            // Bootstrap: the longest-running peer's snapshot, then one more round, then ready.
            let started = std::time::Instant::now();
            if let Some(peer) = oldest_peer {
                let mut delay = Duration::from_millis(100);
                loop {
                    match replica.pull_from(&peer).await {
                        Ok(n) => {
                            replica
                                .metrics()
                                .anti_entropy_repaired
                                .fetch_add(n as u64, Ordering::Relaxed);
                            tracing::info!(%peer, entries = n, "bootstrapped from the longest-running peer");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "bootstrap pull failed; trying again");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                            if delay >= Duration::from_secs(5) {
                                break;
                            }
                        }
                    }
                }
                anti_entropy_round(&replica).await;
            }
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            replica
                .metrics()
                .bootstrap_millis
                .store(millis.max(1), Ordering::Relaxed);
            ready.store(true, Ordering::Release);
            loop {
                let jitter = rand::random_range(0.8..1.2);
                tokio::time::sleep(interval.mul_f64(jitter)).await;
                anti_entropy_round(&replica).await;
            }
        })
    };
    Ok(Node {
        replica,
        grpc_addr,
        ready,
        announcement,
        tasks: vec![server, follower, background],
    })
}

/// One pull from a random peer.
async fn anti_entropy_round(replica: &Replica) {
    let peers = replica.peers();
    if peers.is_empty() {
        return;
    }
    let peer = &peers[rand::random_range(0..peers.len())];
    replica
        .metrics()
        .anti_entropy_rounds
        .fetch_add(1, Ordering::Relaxed);
    let result = replica.pull_from(peer).await;
    if let Ok(n) = &result {
        replica
            .metrics()
            .anti_entropy_repaired
            .fetch_add(*n as u64, Ordering::Relaxed);
    }
    match result {
        Ok(0) => tracing::debug!(%peer, "anti-entropy: in step"),
        Ok(n) => tracing::info!(%peer, repaired = n, "anti-entropy repaired entries"),
        Err(e) => tracing::debug!(%peer, error = %e, "anti-entropy round failed"),
    }
}

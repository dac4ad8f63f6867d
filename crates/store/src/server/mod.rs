//! The gRPC front end: etcd's KV, Watch, Lease, Maintenance, Cluster, Lock and Election
//! services over [`MvccStore`].

mod access;
mod auth;
mod auto_compaction;
mod cluster;
mod connection;
mod election;
mod gateway;
mod grpc_metrics;
mod http;
mod idle_checkpoint;
mod kv;
mod lease;
mod lock;
mod maintenance;
pub mod metrics;
mod own_runtime;
mod queue;
mod tls;
mod unary_kv;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader,
};
use tokio::net::TcpListener;

pub use auto_compaction::AutoCompaction;
pub use own_runtime::start_on_own_runtime;
pub use tls::ServerTls;

use crate::error::StoreError;
use crate::mvcc::kvstore::{Limits, MvccStore};

/// The version reported by Status; etcd clients gate features on it.
pub const SERVER_VERSION: &str = "3.5.0";
/// How long a shutdown waits for open requests and streams before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The raft term a single member reports: it is always the leader of its first term.
const RAFT_TERM: u64 = 1;
/// Headroom gRPC allows above `--max-request-bytes`, as etcd does, so that a request a little
/// too large gets etcd's own error instead of a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Everything `ferry store` is configured with.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where the backend lives.
    pub data_dir: PathBuf,
    /// This member's human-readable name.
    pub name: String,
    /// Addresses to serve clients on.
    pub listen_client_urls: Vec<String>,
    /// Extra `http://` addresses serving only `/metrics`, `/health` and `/version`
    /// (etcd's `--listen-metrics-urls`).
    pub listen_metrics_urls: Vec<String>,
    /// Client URLs reported by MemberList (defaults to the listen URLs).
    pub advertise_client_urls: Vec<String>,
    /// Peer URLs reported by MemberList. ferry serves no peer traffic; the URLs are
    /// reported so that tools expecting etcd's member fields see the same shape.
    pub advertise_peer_urls: Vec<String>,
    /// Backend size at which NOSPACE is raised.
    pub quota_backend_bytes: u64,
    /// Most operations in one transaction branch.
    pub max_txn_ops: usize,
    /// Largest request accepted.
    pub max_request_bytes: usize,
    /// Automatic compaction, if any.
    pub auto_compaction: Option<AutoCompaction>,
    /// How often watches that asked for progress notifications get one when idle.
    pub watch_progress_notify_interval: Duration,
    /// Committed batches buffered for each watch stream before a stream that is behind
    /// must catch up from history (it never blocks writers either way).
    pub watch_feed_capacity: usize,
    /// TLS for `https://` listeners.
    pub tls: Option<ServerTls>,
    /// How long a simple auth token stays valid after its last use (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// The bcrypt cost of stored passwords (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
}

impl StoreConfig {
    /// etcd's defaults, with the data dir given.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            name: "default".into(),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_metrics_urls: Vec::new(),
            advertise_client_urls: Vec::new(),
            advertise_peer_urls: vec!["http://localhost:2380".into()],
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            auto_compaction: None,
            watch_progress_notify_interval: Duration::from_secs(600),
            watch_feed_capacity: 1024,
            tls: None,
            auth_token_ttl: crate::auth::DEFAULT_TOKEN_TTL,
            bcrypt_cost: crate::auth::DEFAULT_BCRYPT_COST,
        }
    }
}

/// Parses an etcd client URL (`http://host:port` or `https://host:port`) into the address to
/// bind and whether it serves TLS.
pub fn parse_client_url(url: &str) -> Result<(String, bool), StoreError> {
    let invalid = |why: &str| StoreError::InvalidUrl {
        url: url.to_string(),
        reason: why.to_string(),
    };
    let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(invalid("expected http://HOST:PORT or https://HOST:PORT"));
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || !hostport.contains(':') || hostport.contains('/') {
        return Err(invalid("expected http://HOST:PORT or https://HOST:PORT"));
    }
    Ok((hostport.to_string(), tls))
}

/// What every service needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub store: MvccStore,
    pub auth: Arc<crate::auth::AuthStore>,
    pub metrics: Arc<metrics::StoreMetrics>,
    pub config: Arc<StoreConfig>,
    pub client_urls: Arc<Vec<String>>,
}

impl Context {
    /// A response header for `revision`, with this member's ids.
    pub fn header(&self, revision: i64) -> Option<PbResponseHeader> {
        let shared = self.store.shared();
        Some(PbResponseHeader {
            cluster_id: shared.cluster_id,
            member_id: shared.member_id,
            revision,
            raft_term: RAFT_TERM,
        })
    }

    /// Fills in the ids of a header the store produced.
    pub fn fill(&self, header: &mut Option<PbResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.store.current_revision(), |h| h.revision);
        *header = self.header(revision);
    }

    /// etcd's request size limit.
    pub fn check_size(&self, msg: &impl prost::Message) -> Result<(), StoreError> {
        if msg.encoded_len() > self.config.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        Ok(())
    }
}

/// A store serving clients.
pub struct RunningStore {
    /// The addresses it listens on (ports resolved).
    pub local_addrs: Vec<SocketAddr>,
    /// The addresses of the metrics listeners (ports resolved).
    pub metrics_addrs: Vec<SocketAddr>,
    tasks: tokio::task::JoinSet<Result<(), StoreError>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The runtime serving it, when it has one of its own (declared last: dropped after the
    /// tasks).
    own_runtime: Option<own_runtime::OwnRuntime>,
}

impl RunningStore {
    /// Stops serving: in-flight requests get a grace period, then open streams (watches,
    /// keep-alives) are closed.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        let _ = self.stop.send(true);
        let graceful = async {
            while let Some(joined) = self.tasks.join_next().await {
                joined.map_err(|e| StoreError::Backend(format!("server task: {e}")))??;
            }
            Ok::<_, StoreError>(())
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, graceful).await {
            Ok(result) => result,
            Err(_) => {
                tracing::info!("closing client streams still open after the shutdown grace period");
                self.tasks.abort_all();
                Ok(())
            }
        }
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), StoreError> {
        tokio::select! {
            _ = signal => {}
            Some(joined) = self.tasks.join_next() => {
                joined.map_err(|e| StoreError::Backend(format!("server task: {e}")))??;
            }
        }
        self.shutdown().await
    }
}

/// Opens the store and starts serving it on every listen URL.
pub async fn start(config: StoreConfig) -> Result<RunningStore, StoreError> {
    let tls = config.tls.as_ref().map(ServerTls::load).transpose()?;
    let mut listeners = Vec::new();
    let mut secure = Vec::new();
    for url in &config.listen_client_urls {
        let (addr, https) = parse_client_url(url)?;
        if https && tls.is_none() {
            return Err(StoreError::InvalidUrl {
                url: url.clone(),
                reason: "an https:// listener needs --cert-file and --key-file".into(),
            });
        }
        secure.push(https);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StoreError::Io {
                what: format!("listening on {url}"),
                source,
            })?;
        listeners.push(listener);
    }
    let local_addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StoreError::Io {
            what: "reading listener address".into(),
            source,
        })?;
    let limits = Limits {
        max_txn_ops: config.max_txn_ops,
        quota_backend_bytes: config.quota_backend_bytes,
        feed_capacity: config.watch_feed_capacity,
    };
    let store = MvccStore::open(&config.data_dir, limits)?;
    let client_urls = if config.advertise_client_urls.is_empty() {
        local_addrs
            .iter()
            .zip(&secure)
            .map(|(a, https)| format!("{}://{a}", if *https { "https" } else { "http" }))
            .collect()
    } else {
        config.advertise_client_urls.clone()
    };
    let auth =
        crate::auth::AuthStore::open(store.clone(), config.auth_token_ttl, config.bcrypt_cost)
            .map_err(|e| StoreError::Backend(format!("loading users and roles: {e}")))?;
    let ctx = Context {
        store: store.clone(),
        auth: Arc::new(auth),
        metrics: Arc::new(metrics::StoreMetrics::new(&store)),
        config: Arc::new(config.clone()),
        client_urls: Arc::new(client_urls),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(policy) = config.auto_compaction.clone() {
        let mut stopped = stopped.clone();
        let store = store.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = auto_compaction::run(store, policy) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }
    {
        let mut stopped = stopped.clone();
        let store = store.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = idle_checkpoint::run(store) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }
    {
        let mut stopped = stopped.clone();
        let store = store.clone();
        let metrics = ctx.metrics.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = lease::revoke_expired(store, metrics) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    const KEEPALIVE: Duration = Duration::from_secs(30);
    let grpc_counters = Arc::new(grpc_metrics::GrpcCounters::new(&ctx.metrics));
    for ((listener, addr), https) in listeners.into_iter().zip(&local_addrs).zip(secure) {
        // etcd's HTTP endpoints and JSON gateway share the port with gRPC (HTTP/1.1 and
        // HTTP/2).
        let routes = tonic::service::Routes::from(
            http::routes(ctx.clone())
                .merge(gateway::routes(ctx.clone()))
                .layer(axum::middleware::from_fn(http::cors)),
        )
        .add_service(
            PbKvServer::new(kv::KvService::new(ctx.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            PbMaintenanceServer::new(maintenance::MaintenanceService::new(ctx.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(PbClusterServer::new(cluster::ClusterService::new(
            ctx.clone(),
        )))
        .add_service(
            crate::proto::etcdserverpb::watch_server::WatchServer::new(watch::WatchService::new(
                ctx.clone(),
            ))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(PbLeaseServer::new(lease::LeaseService::new(ctx.clone())))
        .add_service(crate::proto::etcdserverpb::auth_server::AuthServer::new(
            auth::AuthService::new(ctx.clone()),
        ))
        .add_service(crate::proto::v3lockpb::lock_server::LockServer::new(
            lock::LockService::new(ctx.clone()),
        ))
        .add_service(
            crate::proto::v3electionpb::election_server::ElectionServer::new(
                election::ElectionService::new(ctx.clone()),
            ),
        );
        tracing::info!(address = %addr, tls = https, name = %config.name, "serving etcd v3 clients");
        let service = tower::ServiceBuilder::new()
            .layer(grpc_metrics::GrpcMetricsLayer(grpc_counters.clone()))
            .service(unary_kv::UnaryKv::new(
                routes.prepare(),
                kv::KvService::new(ctx.clone()),
                max_message,
            ));
        let acceptor = if https { tls.clone() } else { None };
        let stopped = stopped.clone();
        tasks.spawn(async move {
            connection::accept(listener, acceptor, service, KEEPALIVE, stopped).await;
            Ok(())
        });
    }
    let mut metrics_addrs = Vec::new();
    for url in &config.listen_metrics_urls {
        let (addr, https) = parse_client_url(url)?;
        if https {
            return Err(StoreError::InvalidUrl {
                url: url.clone(),
                reason: "metrics listeners serve http:// only".into(),
            });
        }
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StoreError::Io {
                what: format!("listening on {url}"),
                source,
            })?;
        metrics_addrs.push(listener.local_addr().map_err(|source| StoreError::Io {
            what: "reading listener address".into(),
            source,
        })?);
        let app = http::routes(ctx.clone());
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| StoreError::Backend(format!("metrics server: {e}")))
        });
    }
    Ok(RunningStore {
        local_addrs,
        metrics_addrs,
        tasks,
        stop,
        own_runtime: None,
    })
}

//! `ferry controller`: the API server, its registration, and the reconciliation that makes
//! etcd match SQL — on start and periodically, by one replica at a time (leader election).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use ferry_registry::{announce, AnnounceConfig, Announcement, Instance};
use ferry_runtime::Election;
use prometheus_client::registry::Registry;

use crate::api::{router, ApiState};
use crate::audit::Audit;
use crate::auth::Tokens;
use crate::keys::Keys;
use crate::publish::Publisher;
use crate::record::Record;

/// How often the leader looks at the rollouts in waves.
const WAVES_INTERVAL: Duration = Duration::from_millis(200);

/// How a controller runs.
pub struct ControllerConfig {
    /// This replica's name.
    pub name: String,
    /// SQL URL.
    pub database: String,
    /// Address of the REST API.
    pub listen: SocketAddr,
    /// Root prefix of the key layout.
    pub root: String,
    /// Accepted tokens.
    pub tokens: Tokens,
    /// The file they came from: reloaded on SIGHUP and when it changes (a malformed new
    /// file is refused and the tokens in force are kept).
    pub tokens_file: Option<std::path::PathBuf>,
    /// Where audit lines are appended, besides the log.
    pub audit_log: Option<std::path::PathBuf>,
    /// TLS for the API; plain HTTP when `None`.
    pub tls: Option<ferry_client::tls::ServerTlsFiles>,
    /// How often the leader makes etcd match SQL.
    pub reconcile_interval: Duration,
    /// The pre-flight check of every change.
    pub preflight: crate::preflight::PreflightConfig,
}

impl ControllerConfig {
    /// Checks what can be checked before connecting: the name and the root prefix fit the key
    /// layout, and the database URL names a supported database.
    pub fn validate(&self) -> Result<(), StartError> {
        Keys::parse(&self.root)?;
        crate::keys::validate_name("controller name", &self.name)?;
        crate::record::Dialect::of(&self.database)?;
        Ok(())
    }
}

/// A running controller.
pub struct RunningController {
    /// Where the API listens.
    pub local_addr: SocketAddr,
    announcement: Announcement,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningController {
    /// Deregisters and stops.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.announcement.stop().await;
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// SQL failed.
    #[error("database: {0}")]
    Record(#[from] crate::record::RecordError),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The name or the root prefix cannot be part of the key layout.
    #[error("{0}")]
    Invalid(#[from] crate::keys::KeyError),
    /// The pre-flight check cannot be set up.
    #[error("{0}")]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The TLS files are unusable.
    #[error("API TLS: {0}")]
    Tls(#[from] ferry_client::tls::TlsError),
    /// The audit log cannot be opened.
    #[error("audit log {path}: {source}")]
    AuditLog {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Registration failed.
    #[error("registering the controller: {0}")]
    Registry(#[from] ferry_registry::RegistryError),
    /// The store's authentication refuses the controller's user what it must read.
    #[error("{0}")]
    Denied(#[from] ferry_client::access::AccessDenied),
}

/// Starts the API, registers, and runs the reconciliation leader election.
pub async fn start(
    client: Client,
    config: ControllerConfig,
) -> Result<RunningController, StartError> {
    config.validate()?;
    let keys = Keys::parse(&config.root)?;
    let acceptor = match &config.tls {
        Some(files) => Some(ferry_client::tls::server_acceptor(files, &[b"http/1.1"])?),
        None => None,
    };
    let audit = match &config.audit_log {
        Some(path) => Audit::to_file(path).map_err(|source| StartError::AuditLog {
            path: path.clone(),
            source,
        })?,
        None => Audit::to_log(),
    };
    ferry_client::access::check_read_access(
        &client,
        &[
            ("the configurations", keys.all_configs()),
            ("the agents", format!("{}/", keys.agent_registry())),
        ],
    )
    .await?;
    let record = Record::connect(&config.database).await?;
    let publisher = Publisher::new(client.clone(), keys.clone());
    let mut registry = Registry::default();
    let requests = prometheus_client::metrics::family::Family::default();
    registry.register(
        "http_requests",
        "API requests by method and status code",
        requests.clone(),
    );
    let change_steps = crate::api::ChangeSteps::register(&mut registry);
    let preflight = crate::preflight::Preflight::start(&config.preflight)?;
    let state = Arc::new(ApiState {
        record: record.clone(),
        publisher: publisher.clone(),
        client: client.clone(),
        keys: keys.clone(),
        tokens: Arc::new(parking_lot::RwLock::new(config.tokens)),
        audit,
        requests,
        registry: parking_lot::Mutex::new(registry),
        preflight,
        change_steps,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let mut tasks = Vec::new();
    if let Some(path) = config.tokens_file.clone() {
        tasks.push(tokio::spawn(crate::token_reload::watch(
            path,
            state.clone(),
        )));
    }
    let app = router(state);
    tasks.push(tokio::spawn(crate::serve::serve(listener, app, acceptor)));
    let me = Instance::new("controller", &config.name, local_addr.to_string());
    let announcement = announce(
        client.clone(),
        AnnounceConfig {
            prefix: keys.root().to_string(),
            ..AnnounceConfig::default()
        },
        me,
    )
    .await?;
    let election = Election::new(client, &keys.election("reconciler"), 5);
    let name = config.name.clone();
    let interval = config.reconcile_interval;
    let reconciler = tokio::spawn(async move {
        loop {
            let mut leadership = match election.campaign(name.clone()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciler election failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(controller = %name, "leading reconciliation");
            let mut tick = tokio::time::interval(interval);
            // Rollouts in waves move on within a fraction of a second of the last report.
            let mut waves_tick = tokio::time::interval(WAVES_INTERVAL);
            loop {
                tokio::select! {
                    _ = waves_tick.tick() => {
                        if let Err(e) = publisher.advance_waves().await {
                            tracing::warn!(error = %e, "advancing rollouts in waves failed");
                        }
                    }
                    _ = tick.tick() => {
                        match publisher.reconcile(&record).await {
                            Ok(report) if report != Default::default() => tracing::info!(?report, "etcd reconciled with SQL"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
                        }
                    }
                    _ = leadership.lost() => {
                        tracing::warn!(controller = %name, "lost reconciliation leadership");
                        break;
                    }
                }
            }
        }
    });
    tracing::info!(address = %local_addr, "controller API listening");
    Ok(RunningController {
        local_addr,
        announcement,
        tasks: {
            tasks.push(reconciler);
            tasks
        },
    })
}

//! ferry's agent (SYSTEM.md part 5): watches its environment's configurations, renders them
//! into one nginx configuration through the renderer (the built-in template, or the user's
//! own confd-style template), checks and reloads, and reports each configuration's result
//! to its status key. It re-renders when a configuration or a registry service it routes to
//! changes, resynchronises periodically (default every 3 minutes), and never installs a
//! configuration that fails its check: the last good one keeps serving, also across
//! restarts while the store is unreachable (it is the file on disk).

#![warn(missing_docs)]

pub mod admission;
mod apply;
mod blame;
mod metrics;
pub mod stored_config;
pub mod view;

pub use metrics::AgentMetrics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use ferry_controller::keys::Keys;
use ferry_registry::{announce, AnnounceConfig, Announcement, Instance};
use ferry_runtime::{Informer, InformerConfig};
use stored_config::StoredConfig;
use tokio::task::JoinHandle;

/// How long the agent waits with no new change before rendering (consul-template's
/// `wait` minimum): a burst (one transaction's events, a service's instances coming up
/// together) arrives within it and is rendered once, while a lone change waits no more than
/// this.
const QUIET: Duration = Duration::from_millis(2);

/// How long a burst that deletes a wave target settles at least. A rollout in waves
/// completes in one transaction that sets the environment's version and deletes the
/// targets, but the two arrive on different watch streams; when the environment's key has
/// not arrived by the render, the agent reads it from the store (`view`), so this wait only
/// saves that read in the usual case. A rollback deletes targets alone and waits this long
/// too.
const TARGET_DELETED_SETTLE: Duration = Duration::from_millis(10);

/// How long the read of the configurations after a target deletion may take before the
/// agent keeps what is installed and tries again.
const VIEW_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How soon a render that could not know the environment's configurations is tried again.
const VIEW_RETRY: Duration = Duration::from_millis(500);

/// The longest a render waits for changes to stop (consul-template's `wait` maximum): a
/// stream of changes that never pauses is still rendered this often.
const SETTLE_MAX: Duration = Duration::from_millis(50);

/// The built-in nginx template (shared with the controller's pre-flight check).
pub use ferry_controller::nginx::NGINX_TEMPLATE;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Environment.
    pub env: String,
    /// This agent's name, unique in its environment.
    pub name: String,
    /// Its address, reported in the registry.
    pub ip: String,
    /// Root prefix of ferry's keys.
    pub root: String,
    /// Registry prefix of the services configurations route to.
    pub services_prefix: String,
    /// nginx prefix directory: the configuration is `<prefix>/conf/nginx.conf`.
    pub nginx_prefix: PathBuf,
    /// Address the rendered servers listen on for HTTP (`0.0.0.0:80`, `127.0.0.1:8080`).
    pub listen: String,
    /// Address the virtual hosts with TLS listen on for HTTPS (`0.0.0.0:443`).
    pub tls_listen: String,
    /// A confd-style template to use instead of the built-in one.
    pub template: Option<PathBuf>,
    /// Command checking the staged configuration (`{{.src}}`), e.g. `nginx -t -p … -c {{.src}}`.
    pub check_cmd: Option<String>,
    /// Command reloading nginx after a change.
    pub reload_cmd: Option<String>,
    /// Full resynchronisation period.
    pub resync: Duration,
}

/// A running agent.
pub struct RunningAgent {
    announcement: Announcement,
    task: JoinHandle<()>,
    metrics: Arc<AgentMetrics>,
}

impl RunningAgent {
    /// The agent's metrics (`AgentMetrics::encode` gives Prometheus' text format).
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    /// Deregisters and stops.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.announcement.stop().await;
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Registering failed.
    #[error("registering the agent: {0}")]
    Registry(#[from] ferry_registry::RegistryError),
    /// The template or output directory is unusable.
    #[error("{0}")]
    Setup(String),
    /// A name or the root prefix cannot be part of the key layout.
    #[error("{0}")]
    Invalid(#[from] ferry_controller::keys::KeyError),
    /// The store's authentication refuses the agent's user what the agent must read.
    #[error("{0}")]
    Denied(#[from] ferry_client::access::AccessDenied),
}

impl AgentConfig {
    /// Checks everything that can be checked before connecting: names and the root prefix
    /// fit the key layout, the address is an IP or a DNS name, the template is readable.
    pub fn validate(&self) -> Result<(), AgentError> {
        ferry_controller::keys::validate_env(&self.env)?;
        ferry_controller::keys::validate_name("agent name", &self.name)?;
        Keys::parse(&self.root)?;
        let prefix = self.services_prefix.trim_end_matches('/');
        if !self.services_prefix.starts_with('/') || prefix.is_empty() {
            return Err(AgentError::Setup(format!(
                "services prefix {:?} must be an absolute key prefix like /services",
                self.services_prefix
            )));
        }
        if self.ip.parse::<std::net::IpAddr>().is_err() && !ferry_client::is_dns_name(&self.ip) {
            return Err(AgentError::Setup(format!(
                "agent address {:?} is neither an IP address nor a DNS name",
                self.ip
            )));
        }
        if self.resync < Duration::from_secs(1) {
            return Err(AgentError::Setup(format!(
                "resync period {:?} must be at least 1s",
                self.resync
            )));
        }
        if let Some(path) = &self.template {
            std::fs::read_to_string(path)
                .map_err(|e| AgentError::Setup(format!("--template {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// Registers the agent and starts applying configurations.
pub async fn start(client: Client, config: AgentConfig) -> Result<RunningAgent, AgentError> {
    config.validate()?;
    let conf_dir = config.nginx_prefix.join("conf");
    for dir in ["conf", "logs", "tmp"] {
        std::fs::create_dir_all(config.nginx_prefix.join(dir)).map_err(|e| {
            AgentError::Setup(format!(
                "creating {}: {e}",
                config.nginx_prefix.join(dir).display()
            ))
        })?;
    }
    let templates = conf_dir.join("ferry-templates");
    std::fs::create_dir_all(&templates)
        .map_err(|e| AgentError::Setup(format!("creating {}: {e}", templates.display())))?;
    let text = match &config.template {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| AgentError::Setup(format!("--template {}: {e}", path.display())))?,
        None => NGINX_TEMPLATE.to_string(),
    };
    std::fs::write(templates.join("nginx.tmpl"), text)
        .map_err(|e| AgentError::Setup(e.to_string()))?;
    let keys = Keys::parse(&config.root)?;
    // The agent's registry entry is a service instance like any other: `host:port`, where
    // the port is the one it serves HTTP on.
    let port = config
        .listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(80);
    let addr = ferry_client::HostPort {
        host: config.ip.clone(),
        port,
    };
    ferry_client::access::check_read_access(
        &client,
        &[
            (
                "its environment's configurations",
                keys.configs(&config.env),
            ),
            (
                "its rollout-in-waves targets",
                keys.wave_targets(&config.env, &config.name),
            ),
            (
                "the services",
                format!("{}/", config.services_prefix.trim_end_matches('/')),
            ),
        ],
    )
    .await?;
    let me = Instance::new(&config.env, &config.name, addr.to_string());
    let announcement = announce(
        client.clone(),
        AnnounceConfig {
            prefix: keys.agent_registry(),
            ..AnnounceConfig::default()
        },
        me,
    )
    .await?;
    let mut informer_config = InformerConfig::new(keys.configs(&config.env));
    informer_config.resync_period = Some(config.resync);
    // Any JSON decodes: a value that is not a configuration must still be reported as refused.
    let configs: Informer<StoredConfig> = Informer::start(client.clone(), informer_config);
    // The versions a rollout in waves has given this agent ahead of its environment.
    let mut wave_config = InformerConfig::new(keys.wave_targets(&config.env, &config.name));
    wave_config.resync_period = Some(config.resync);
    let wave_targets: Informer<StoredConfig> = Informer::start(client.clone(), wave_config);
    let services: Informer<Instance> = Informer::start(
        client.clone(),
        InformerConfig::new(format!("{}/", config.services_prefix.trim_end_matches('/'))),
    );
    let metrics = Arc::new(AgentMetrics::default());
    let task = tokio::spawn(
        apply::Applier {
            client,
            keys,
            configs,
            wave_targets,
            services,
            templates,
            metrics: metrics.clone(),
            reported: HashMap::new(),
            warned: Default::default(),
            last_good: HashMap::new(),
            targets_deleted_at: 0,
            // The agent wrote the template file above and nothing changes it while it runs.
            template: parking_lot::Mutex::new(ferry_render::TemplateCache::pinned()),
            installed: Default::default(),
            site: ferry_controller::nginx::NginxSite {
                name: config.name.clone(),
                env: config.env.clone(),
                prefix: config.nginx_prefix.clone(),
                listen: config.listen.clone(),
                tls_listen: config.tls_listen.clone(),
            }
            .pairs(),
            resource: ferry_controller::nginx::template_resource(
                config.nginx_prefix.join("conf/nginx.conf"),
                config.check_cmd.clone(),
                config.reload_cmd.clone(),
                "ferry-agent",
            ),
            config,
        }
        .run(),
    );
    Ok(RunningAgent {
        announcement,
        task,
        metrics,
    })
}

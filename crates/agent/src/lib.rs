//! ferry's agent (SYSTEM.md part 5): watches its environment's configurations, renders them
//! into one nginx configuration through the renderer (the built-in template, or the user's
//! own confd-style template), checks and reloads, and reports each configuration's result
//! to its status key. It re-renders when a configuration or a registry service it routes to
//! changes, resynchronises periodically (default every 3 minutes), and never installs a
//! configuration that fails its check: the last good one keeps serving, also across
//! restarts while the store is unreachable (it is the file on disk).

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use ferry_controller::api::AgentStatus;
use ferry_controller::keys::Keys;
use ferry_controller::{IngressDocument, PublishedConfig};
use ferry_registry::{announce, AnnounceConfig, Announcement, Instance};
use ferry_render::{render_resource, KvSnapshot, Outcome, RenderOptions, TemplateResource};
use ferry_runtime::{Informer, InformerConfig};
use tokio::task::JoinHandle;

/// How long the agent lets a burst of changes (one transaction's events, a service's
/// instances coming up together) settle before rendering: long enough to render once per
/// burst, short enough not to dominate the time to a complete rollout.
const SETTLE: Duration = Duration::from_millis(10);

/// The built-in nginx template.
pub const NGINX_TEMPLATE: &str = include_str!("nginx.tmpl");

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
}

impl RunningAgent {
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
    let me = Instance::new(&config.env, &config.name, &config.ip);
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
    let configs: Informer<PublishedConfig> = Informer::start(client.clone(), informer_config);
    let services: Informer<Instance> = Informer::start(
        client.clone(),
        InformerConfig::new(format!("{}/", config.services_prefix.trim_end_matches('/'))),
    );
    let task = tokio::spawn(apply_loop(
        client, config, keys, configs, services, templates,
    ));
    Ok(RunningAgent { announcement, task })
}

async fn apply_loop(
    mut client: Client,
    config: AgentConfig,
    keys: Keys,
    configs: Informer<PublishedConfig>,
    services: Informer<Instance>,
    templates: PathBuf,
) {
    configs.wait_for_sync().await;
    services.wait_for_sync().await;
    let mut config_events = configs.subscribe();
    let mut service_events = services.subscribe();
    let mut reported: HashMap<String, (i64, bool, String)> = HashMap::new();
    loop {
        // Whatever changed, render everything once the burst is over.
        tokio::select! {
            Some(_) = config_events.recv() => {}
            Some(_) = service_events.recv() => {}
            else => return,
        }
        tokio::time::sleep(SETTLE).await;
        while config_events.try_recv().is_ok() || service_events.try_recv().is_ok() {}
        apply(
            &mut client,
            &config,
            &keys,
            &configs,
            &services,
            &templates,
            &mut reported,
        )
        .await;
    }
}

async fn apply(
    client: &mut Client,
    config: &AgentConfig,
    keys: &Keys,
    configs: &Informer<PublishedConfig>,
    services: &Informer<Instance>,
    templates: &std::path::Path,
    reported: &mut HashMap<String, (i64, bool, String)>,
) {
    let current: Vec<Arc<PublishedConfig>> = configs
        .cache()
        .list()
        .into_iter()
        .map(|o| o.value)
        .collect();
    let mut pairs = BTreeMap::new();
    pairs.insert("/agent/name".to_string(), config.name.clone());
    pairs.insert("/agent/env".to_string(), config.env.clone());
    pairs.insert(
        "/agent/prefix".to_string(),
        config.nginx_prefix.display().to_string(),
    );
    pairs.insert("/agent/listen".to_string(), config.listen.clone());
    pairs.insert("/agent/tls_listen".to_string(), config.tls_listen.clone());
    // Redirects name the HTTPS port unless it is the default one.
    let tls_port = config.tls_listen.rsplit(':').next().unwrap_or("443");
    pairs.insert(
        "/agent/tls_port_suffix".to_string(),
        match tls_port {
            "443" => String::new(),
            port => format!(":{port}"),
        },
    );
    for c in &current {
        pairs.insert(
            format!("/configs/{}", c.id),
            serde_json::to_string(c.as_ref()).unwrap_or_default(),
        );
    }
    let base = config.services_prefix.trim_end_matches('/');
    for obj in services.cache().list() {
        let suffix = obj.key.strip_prefix(base).unwrap_or(&obj.key);
        pairs.insert(
            format!("/services{suffix}"),
            serde_json::to_string(obj.value.as_ref()).unwrap_or_default(),
        );
    }
    let snapshot = KvSnapshot {
        pairs,
        revision: configs.cache().revision(),
    };
    let resource = TemplateResource {
        src: "nginx.tmpl".into(),
        dest: config.nginx_prefix.join("conf/nginx.conf"),
        keys: vec![],
        prefix: String::new(),
        mode: Some("0644".into()),
        uid: None,
        gid: None,
        owner: None,
        group: None,
        check_cmd: config.check_cmd.clone(),
        reload_cmd: config.reload_cmd.clone(),
        wait: None,
        file: PathBuf::from("ferry-agent"),
    };
    let outcome = render_resource(
        &resource,
        templates,
        Arc::new(snapshot),
        RenderOptions::default(),
    )
    .await;
    let failure = match &outcome {
        Ok(Outcome::Updated) => {
            tracing::info!(agent = %config.name, configs = current.len(), "configuration applied");
            None
        }
        Ok(_) => None,
        Err(e) => {
            tracing::error!(agent = %config.name, error = %e, "configuration refused; the last good one keeps serving");
            Some(e.to_string())
        }
    };
    let builtin = config.template.is_none();
    for c in &current {
        let (ok, message) = match (&failure, &c.document) {
            (Some(reason), _) => (false, reason.clone()),
            (None, IngressDocument::Opaque { .. }) if builtin => (
                false,
                "an opaque configuration needs a custom --template".to_string(),
            ),
            (None, _) => (true, String::new()),
        };
        let entry = (c.version, ok, message.clone());
        if reported.get(&c.id) == Some(&entry) {
            continue;
        }
        let status = AgentStatus {
            agent: config.name.clone(),
            version: c.version,
            ok,
            message,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        let key = keys.status(&config.env, &c.id, &config.name);
        match client
            .put(key, serde_json::to_vec(&status).unwrap_or_default(), None)
            .await
        {
            Ok(_) => {
                reported.insert(c.id.clone(), entry);
            }
            Err(e) => {
                tracing::warn!(agent = %config.name, error = %e, "reporting status failed; will retry")
            }
        }
    }
    // Forget configurations that were deleted (the controller removes their status keys).
    let live: std::collections::HashSet<&str> = current.iter().map(|c| c.id.as_str()).collect();
    reported.retain(|id, _| live.contains(id.as_str()));
}

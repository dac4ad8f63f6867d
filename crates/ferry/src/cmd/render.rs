//! `ferry render`: confd's command line over the renderer. confd's single-dash flags
//! (`-onetime`, `-confdir …`) work as well as double-dash ones, and `-config-file` reads
//! confd's TOML config (flags win over it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use ferry_render::status::StatusBoard;
use ferry_render::watch::{interval_mode, watch_mode, Job, Report, Wait};
use ferry_render::{load_confdir, Outcome, RenderOptions, TemplateResource};
use serde::Deserialize;

use ferry_client::ConnectionArgs;

/// Arguments of `ferry render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Render every resource once and exit (non-zero if any failed).
    #[arg(long)]
    onetime: bool,
    /// Render every resource every N seconds.
    #[arg(long)]
    interval: Option<u64>,
    /// Render each resource whenever its keys change (after a quiet period).
    #[arg(long)]
    watch: bool,
    /// Default quiet period for -watch, `min:max` (a resource's `wait` overrides it).
    #[arg(long, default_value = "50ms:500ms")]
    wait: String,
    /// Show what would change without writing anything or running commands.
    #[arg(long)]
    noop: bool,
    /// Install without running check_cmd or reload_cmd.
    #[arg(long = "sync-only")]
    sync_only: bool,
    /// Keep the staged file when check_cmd fails.
    #[arg(long = "keep-stage-file")]
    keep_stage_file: bool,
    /// confd's config dir, holding conf.d/ and templates/ [default: /etc/confd].
    #[arg(long)]
    confdir: Option<PathBuf>,
    /// confd's TOML config file.
    #[arg(long = "config-file")]
    config_file: Option<PathBuf>,
    /// Key prefix for every resource.
    #[arg(long)]
    prefix: Option<String>,
    /// confd's name for an endpoint (repeatable); same as --endpoints.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Accepted for confd compatibility: etcd or etcdv3 (both mean the etcd v3 API).
    #[arg(long)]
    backend: Option<String>,
    /// confd's name for --cert.
    #[arg(long = "client-cert")]
    client_cert: Option<PathBuf>,
    /// confd's name for --key.
    #[arg(long = "client-key")]
    client_key: Option<PathBuf>,
    /// confd's name for --cacert.
    #[arg(long = "client-ca-keys")]
    client_ca_keys: Option<PathBuf>,
    /// confd's name for --user (with -password).
    #[arg(long)]
    username: Option<String>,
    /// DNS server (ip:port) for lookupSRV [default: the first nameserver of /etc/resolv.conf].
    #[arg(long)]
    nameserver: Option<SocketAddr>,
    /// Write each resource's last render as JSON to this file.
    #[arg(long = "status-file")]
    status_file: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long = "metrics-addr")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

/// The confd.toml keys ferry reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfdFile {
    backend: Option<String>,
    confdir: Option<PathBuf>,
    interval: Option<u64>,
    nodes: Option<Vec<String>>,
    prefix: Option<String>,
    noop: Option<bool>,
    watch: Option<bool>,
    sync_only: Option<bool>,
    #[serde(alias = "client_cert")]
    client_cert: Option<PathBuf>,
    #[serde(alias = "client_key")]
    client_key: Option<PathBuf>,
    #[serde(alias = "client_cakeys")]
    client_cakeys: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
}

/// confd spells long flags with one dash; turn `-onetime` into `--onetime`.
pub fn confd_style(args: Vec<String>) -> Vec<String> {
    let is_render = args.get(1).is_some_and(|a| a == "render");
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if is_render && i > 1 && a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

impl RenderArgs {
    /// Merges `-config-file` under the flags.
    fn apply_config_file(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.config_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading -config-file {}", path.display()))?;
        let file: ConfdFile =
            toml::from_str(&text).map_err(|e| anyhow!("-config-file {}: {e}", path.display()))?;
        self.backend = self.backend.take().or(file.backend);
        self.confdir = self.confdir.take().or(file.confdir);
        self.prefix = self.prefix.take().or(file.prefix);
        if self.interval.is_none() && !self.onetime && !self.watch {
            self.interval = file.interval.filter(|_| !file.watch.unwrap_or(false));
        }
        self.watch |= file.watch.unwrap_or(false) && !self.onetime && self.interval.is_none();
        self.noop |= file.noop.unwrap_or(false);
        self.sync_only |= file.sync_only.unwrap_or(false);
        if self.nodes.is_empty() {
            self.nodes = file.nodes.unwrap_or_default();
        }
        self.client_cert = self.client_cert.take().or(file.client_cert);
        self.client_key = self.client_key.take().or(file.client_key);
        self.client_ca_keys = self.client_ca_keys.take().or(file.client_cakeys);
        self.username = self.username.take().or(file.username);
        if self.connection.password.is_none() {
            self.connection.password = file.password;
        }
        Ok(())
    }

    /// Runs the chosen mode.
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.apply_config_file()?;
        let backend = self.backend.clone().unwrap_or_else(|| "etcdv3".into());
        if backend != "etcd" && backend != "etcdv3" {
            return Err(anyhow!(
                "-backend {backend:?}: ferry render reads etcd (etcd or etcdv3)"
            ));
        }
        let modes = [self.onetime, self.watch, self.interval.is_some()]
            .iter()
            .filter(|m| **m)
            .count();
        if modes > 1 {
            return Err(anyhow!("choose one of -onetime, -watch and -interval"));
        }
        if modes == 0 && !self.noop {
            return Err(anyhow!("choose a mode: -onetime, -watch or -interval N"));
        }
        if self.interval == Some(0) {
            return Err(anyhow!("-interval must be at least 1 second"));
        }
        if self.noop && (self.watch || self.interval.is_some()) {
            return Err(anyhow!("-noop goes with -onetime"));
        }
        let default_wait = Wait::parse(&self.wait).map_err(|e| anyhow!("-wait: {e}"))?;
        if !self.nodes.is_empty() {
            self.connection.endpoints = self.nodes.clone();
        }
        self.connection.cert = self.connection.cert.take().or(self.client_cert.take());
        self.connection.key = self.connection.key.take().or(self.client_key.take());
        self.connection.cacert = self.connection.cacert.take().or(self.client_ca_keys.take());
        self.connection.user = self.connection.user.take().or(self.username.take());
        self.connection.config()?;
        let confdir = self
            .confdir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/confd"));
        let resources = load_confdir(&confdir).context("loading template resources")?;
        let continuous = !(self.onetime || self.noop);
        let mut waits = Vec::with_capacity(resources.len());
        for resource in &resources {
            let wait = match &resource.wait {
                Some(w) => {
                    Wait::parse(w).map_err(|e| anyhow!("{}: wait: {e}", resource.file.display()))?
                }
                None => default_wait,
            };
            waits.push(wait);
            // In -onetime mode a broken resource fails alone, as with confd; a long-running
            // mode would retry it forever, so it is refused before starting.
            if continuous {
                check_runnable(&confdir, resource)?;
            }
        }
        let client = self.connection.connect().await?;
        let board = Arc::new(StatusBoard::default());
        if let Some(addr) = self.metrics_addr {
            let board = board.clone();
            super::serve_metrics("-metrics-addr", addr, move || board.prometheus()).await?;
        }
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let report: Report = {
            let (board, status_file, failures) =
                (board.clone(), self.status_file.clone(), failures.clone());
            Arc::new(move |resource, revision, result| {
                board.record(resource, revision, &result);
                match &result {
                    Ok(Outcome::Updated) => {
                        tracing::info!(dest = %resource.dest.display(), revision, "updated")
                    }
                    Ok(Outcome::Unchanged) => {
                        tracing::debug!(dest = %resource.dest.display(), revision, "in sync")
                    }
                    Ok(Outcome::WouldUpdate { diff }) => {
                        println!("{} would change:\n{diff}", resource.dest.display())
                    }
                    Ok(Outcome::Checked) => {}
                    Err(e) => {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(resource = %resource.file.display(), revision, error = %e, "render failed");
                        eprintln!("{}: {e}", resource.file.display());
                    }
                }
                if let Some(path) = &status_file {
                    if let Err(e) = board.write_file(path) {
                        tracing::warn!(file = %path.display(), error = %e, "cannot write the status file");
                    }
                }
            })
        };
        let job = Job {
            client,
            prefix: self.prefix.clone().unwrap_or_default(),
            templates: confdir.join("templates"),
            options: RenderOptions {
                noop: self.noop,
                sync_only: self.sync_only,
                keep_stage_file: self.keep_stage_file,
                nameserver: self.nameserver,
                check_only: false,
            },
            report,
        };
        if self.onetime || self.noop {
            let mut job = job;
            for resource in &resources {
                job.render_once(resource).await;
            }
            let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
            if failed > 0 {
                return Err(anyhow!(
                    "{failed} of {} template resources failed",
                    resources.len()
                ));
            }
            return Ok(());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (resource, wait) in resources.into_iter().zip(waits) {
            match self.interval {
                Some(secs) => tasks.spawn(interval_mode(
                    job.clone(),
                    resource,
                    Duration::from_secs(secs),
                )),
                None => tasks.spawn(watch_mode(job.clone(), resource, wait)),
            };
        }
        super::shutdown_signal().await;
        tasks.abort_all();
        Ok(())
    }
}

/// What a resource needs to render at all: its template, and a directory for `dest`.
fn check_runnable(confdir: &std::path::Path, resource: &TemplateResource) -> anyhow::Result<()> {
    let file = resource.file.display();
    let src = confdir.join("templates").join(&resource.src);
    std::fs::metadata(&src).map_err(|e| anyhow!("{file}: template {}: {e}", src.display()))?;
    let dir = match resource.dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(anyhow!(
            "{file}: dest {}: the directory {} does not exist",
            resource.dest.display(),
            dir.display()
        ));
    }
    Ok(())
}

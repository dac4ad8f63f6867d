//! `ferry render`: confd's command line over the renderer. confd's single-dash flags
//! (`-onetime`, `-confdir …`) are accepted as well as double-dash ones.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;
use std::time::Duration;

use ferry_render::watch::{interval_mode, watch_mode, Report, Wait};
use ferry_render::{load_confdir, render_resource, KvSnapshot, Outcome};

use super::connection::ConnectionArgs;

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
    /// confd's config dir, holding conf.d/ and templates/.
    #[arg(long, default_value = "/etc/confd")]
    confdir: PathBuf,
    /// Key prefix for every resource.
    #[arg(long, default_value = "")]
    prefix: String,
    /// confd's name for an endpoint (repeatable); same as --endpoints.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Accepted for confd compatibility: etcd or etcdv3 (both mean the etcd v3 API).
    #[arg(long, default_value = "etcdv3")]
    backend: String,
    #[command(flatten)]
    connection: ConnectionArgs,
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
    /// Renders every resource of the conf dir once.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if self.backend != "etcd" && self.backend != "etcdv3" {
            return Err(anyhow!(
                "-backend {:?}: ferry render reads etcd (etcd or etcdv3)",
                self.backend
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
        let default_wait = Wait::parse(&self.wait).map_err(|e| anyhow!("-wait: {e}"))?;
        if !self.nodes.is_empty() {
            self.connection.endpoints = self.nodes.clone();
        }
        let resources = load_confdir(&self.confdir).context("loading template resources")?;
        let mut client = self.connection.connect().await?;
        let templates = self.confdir.join("templates");
        if self.watch || self.interval.is_some() {
            if self.noop {
                return Err(anyhow!("-noop goes with -onetime"));
            }
            let report: Report = Arc::new(|resource, revision, result| match result {
                Ok(Outcome::Updated) => {
                    tracing::info!(dest = %resource.dest.display(), revision, "updated")
                }
                Ok(_) => tracing::debug!(dest = %resource.dest.display(), revision, "in sync"),
                Err(e) => {
                    tracing::error!(resource = %resource.file.display(), revision, error = %e, "render failed")
                }
            });
            let mut tasks = tokio::task::JoinSet::new();
            for resource in resources {
                let wait = match &resource.wait {
                    Some(w) => {
                        Wait::parse(w).map_err(|e| anyhow!("{}: {e}", resource.file.display()))?
                    }
                    None => default_wait,
                };
                let (client, prefix, templates, report) = (
                    client.clone(),
                    self.prefix.clone(),
                    templates.clone(),
                    report.clone(),
                );
                match self.interval {
                    Some(secs) => tasks.spawn(interval_mode(
                        client,
                        resource,
                        prefix,
                        templates,
                        Duration::from_secs(secs),
                        report,
                    )),
                    None => tasks.spawn(watch_mode(
                        client, resource, prefix, templates, wait, report,
                    )),
                };
            }
            super::shutdown_signal().await;
            tasks.abort_all();
            return Ok(());
        }
        let mut failed = 0;
        for resource in &resources {
            let prefix = format!(
                "{}/{}",
                self.prefix.trim_end_matches('/'),
                resource.prefix.trim_matches('/')
            );
            let snapshot = KvSnapshot::read(&mut client, &prefix, &resource.keys)
                .await
                .with_context(|| format!("{}: reading keys", resource.file.display()))?;
            match render_resource(resource, &templates, Arc::new(snapshot), self.noop).await {
                Ok(Outcome::Unchanged) => {
                    tracing::info!(dest = %resource.dest.display(), "in sync")
                }
                Ok(Outcome::Updated) => tracing::info!(dest = %resource.dest.display(), "updated"),
                Ok(Outcome::WouldUpdate { diff }) => {
                    println!("{} would change:\n{diff}", resource.dest.display());
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(resource = %resource.file.display(), error = %e, "render failed");
                    eprintln!("{}: {e}", resource.file.display());
                }
            }
        }
        if failed > 0 {
            return Err(anyhow!(
                "{failed} of {} template resources failed",
                resources.len()
            ));
        }
        Ok(())
    }
}

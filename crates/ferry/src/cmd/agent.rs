//! `ferry agent`: applies one environment's configurations to nginx and reports back.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use ferry_agent::{start, AgentConfig};

use super::connection::ConnectionArgs;

/// Arguments of `ferry agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Environment this agent serves.
    #[arg(long)]
    env: String,
    /// Agent name, unique in its environment.
    #[arg(long)]
    name: String,
    /// Address reported in the registry.
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Root prefix of ferry's keys.
    #[arg(long, default_value = "/ingress")]
    root: String,
    /// Registry prefix of the services configurations route to.
    #[arg(long, default_value = "/services")]
    services_prefix: String,
    /// nginx prefix directory (the configuration is PREFIX/conf/nginx.conf).
    #[arg(long)]
    nginx_prefix: PathBuf,
    /// Port the rendered servers listen on (127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    listen_port: u16,
    /// A confd-style template instead of the built-in one.
    #[arg(long)]
    template: Option<PathBuf>,
    /// Command checking the staged configuration; {{.src}} is its path.
    #[arg(long)]
    check_cmd: Option<String>,
    /// Command reloading nginx after a change.
    #[arg(long)]
    reload_cmd: Option<String>,
    /// Full resynchronisation period.
    #[arg(long, default_value = "3m")]
    resync: String,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl AgentArgs {
    /// Runs until SIGINT/SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let resync =
            ferry_store::duration::parse(&self.resync).map_err(|e| anyhow!("--resync: {e}"))?;
        if resync.is_zero() {
            return Err(anyhow!("--resync must be longer than zero"));
        }
        // Serve the last good configuration first: it is on disk, and nginx may need starting
        // (after a reboot) even while the store is unreachable.
        let conf = self.nginx_prefix.join("conf/nginx.conf");
        if let (true, Some(reload)) = (conf.exists(), &self.reload_cmd) {
            match tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(reload)
                .status()
                .await
            {
                Ok(s) if s.success() => {
                    tracing::info!(conf = %conf.display(), "serving the last good configuration")
                }
                Ok(s) => {
                    tracing::warn!(status = %s, "reload_cmd failed for the last good configuration")
                }
                Err(e) => tracing::warn!(error = %e, "reload_cmd could not start"),
            }
        }
        // Wait for the store rather than give up: nginx keeps serving meanwhile.
        let mut delay = std::time::Duration::from_millis(200);
        let client = loop {
            match self.connection.connect().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "store unreachable; keeping the last good configuration");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = super::shutdown_signal() => return Ok(()),
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        };
        tracing::info!("connected to the store");
        let agent = start(
            client,
            AgentConfig {
                env: self.env,
                name: self.name,
                ip: self.ip,
                root: self.root,
                services_prefix: self.services_prefix,
                nginx_prefix: self.nginx_prefix,
                listen_port: self.listen_port,
                template: self.template,
                check_cmd: self.check_cmd,
                reload_cmd: self.reload_cmd,
                resync,
            },
        )
        .await
        .context("starting the agent")?;
        super::shutdown_signal().await;
        agent.stop().await;
        Ok(())
    }
}

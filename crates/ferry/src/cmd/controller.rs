//! `ferry controller`: the REST API over the SQL record, publishing to etcd.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use ferry_controller::auth::Tokens;
use ferry_controller::server::{start, ControllerConfig};

use ferry_client::ConnectionArgs;

/// Arguments of `ferry controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// This replica's name (unique among controllers).
    #[arg(long, default_value_t = format!("controller-{}", std::process::id()))]
    name: String,
    /// SQL database: sqlite://FILE, mysql://USER:PASS@HOST/DB or postgres://USER:PASS@HOST/DB.
    #[arg(
        long,
        default_value = "sqlite://ferry-controller.db",
        env = "FERRY_DATABASE"
    )]
    database: String,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Root prefix of ferry's keys.
    #[arg(long, default_value = "/ingress")]
    root: String,
    /// Token file: lines `name:role:environments:sha256-of-token` (`ferry token create`
    /// makes them); reloaded on SIGHUP and when it changes.
    #[arg(long, env = "FERRY_TOKENS")]
    tokens: PathBuf,
    /// Serve the API over TLS with this certificate (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Append one JSON line per change and per refused request to this file (the log gets
    /// them too).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// How often the leader makes etcd match SQL.
    #[arg(long, default_value = "30s", value_parser = ferry_client::args::positive_duration)]
    reconcile_interval: std::time::Duration,
    /// Check each change with `nginx -t` before accepting it (the environment's configuration
    /// rendered through the agents' template): auto (when nginx is installed), on or off.
    #[arg(long, default_value = "auto")]
    preflight: ferry_controller::preflight::PreflightMode,
    /// The nginx binary of the pre-flight check.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    preflight_nginx: PathBuf,
    /// The agents' template, when they run with `--template` (default: the built-in one).
    #[arg(long)]
    preflight_template: Option<PathBuf>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl ControllerArgs {
    /// Runs until SIGINT/SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let tokens = Tokens::load(&self.tokens)
            .map_err(|e| anyhow!("--tokens {}: {e}", self.tokens.display()))?;
        let config = ControllerConfig {
            name: self.name,
            database: self.database,
            listen: self.listen,
            root: self.root,
            tokens,
            tokens_file: Some(self.tokens.clone()),
            audit_log: self.audit_log,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(ferry_client::tls::ServerTlsFiles {
                    cert,
                    key,
                    client_ca: self.client_ca,
                    client_cert_optional: false,
                }),
                _ => None,
            },
            reconcile_interval: self.reconcile_interval,
            preflight: ferry_controller::preflight::PreflightConfig {
                mode: self.preflight,
                nginx: self.preflight_nginx,
                template: self.preflight_template,
            },
        };
        config.validate()?;
        let tls = config.tls.is_some();
        let client = self.connection.connect().await?;
        let running = start(client, config)
            .await
            .context("starting the controller")?;
        let scheme = if tls { "https" } else { "http" };
        println!("controller API on {scheme}://{}", running.local_addr);
        super::shutdown_signal().await;
        running.stop().await;
        Ok(())
    }
}

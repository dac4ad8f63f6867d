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
    /// Token file: lines `admin:TOKEN` or `read:TOKEN`.
    #[arg(long)]
    tokens: PathBuf,
    /// How often the leader makes etcd match SQL.
    #[arg(long, default_value = "30s", value_parser = ferry_client::args::positive_duration)]
    reconcile_interval: std::time::Duration,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl ControllerArgs {
    /// Runs until SIGINT/SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let tokens = Tokens::load(&self.tokens).map_err(|e| anyhow!("--tokens {e}"))?;
        let config = ControllerConfig {
            name: self.name,
            database: self.database,
            listen: self.listen,
            root: self.root,
            tokens,
            reconcile_interval: self.reconcile_interval,
        };
        config.validate()?;
        let client = self.connection.connect().await?;
        let running = start(client, config)
            .await
            .context("starting the controller")?;
        println!("controller API on http://{}", running.local_addr);
        super::shutdown_signal().await;
        running.stop().await;
        Ok(())
    }
}

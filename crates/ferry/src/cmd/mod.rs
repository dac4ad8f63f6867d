//! The command line: one subcommand per component.

mod agent;
mod bench;
mod cluster;
mod config;
mod controller;
mod registry;
mod render;
mod store;
mod store_auth;
mod sync;
mod token;
mod up;

pub use render::confd_style;

use clap::{Parser, Subcommand};

/// ferry: service registration, discovery and configuration distribution on the etcd v3 API.
#[derive(Debug, Parser)]
#[command(name = "ferry", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level: error, warn, info, debug or trace (FERRY_LOG takes tracing filters). A
    /// release build logs up to debug: trace-level events are left out when it is compiled.
    #[arg(long = "log-level", global = true)]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded etcd-compatible store (or restore one from a snapshot).
    Store(store::StoreArgs),
    /// Announce service instances and discover them.
    Registry(registry::RegistryArgs),
    /// Render confd template resources from the store (confd-compatible).
    Render(render::RenderArgs),
    /// Run the ingress controller: REST API, SQL record, publishing to etcd.
    Controller(controller::ControllerArgs),
    /// Run an agent: apply an environment's configurations to nginx and report back.
    Agent(agent::AgentArgs),
    /// Run everything on this machine: store, controller, agents, nginx, demo backends.
    Up(up::UpArgs),
    /// Manage configurations through the controller's API.
    Config(config::ConfigArgs),
    /// Run a peer-sync replica: an in-memory cache kept in step with the service's other
    /// replicas over gRPC (hellorpc.Sync), with a REST API.
    Sync(sync::SyncArgs),
    /// The etcd operator: keeps each declared etcd cluster at its spec (members as local
    /// processes).
    Operator(cluster::OperatorArgs),
    /// Declare etcd clusters for the operator and read their status.
    Cluster(cluster::ClusterArgs),
    /// Make API tokens for the controller's token file.
    Token(token::TokenArgs),
    /// Benchmark any etcd v3 endpoint (the embedded store or etcd) with etcd's workloads.
    Bench(bench::BenchArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Store(args) => args.run().await,
            Command::Registry(args) => args.run().await,
            Command::Render(args) => args.run().await,
            Command::Controller(args) => args.run().await,
            Command::Agent(args) => args.run().await,
            Command::Up(args) => args.run().await,
            Command::Config(args) => args.run().await,
            Command::Bench(args) => args.run().await,
            Command::Token(args) => args.run().await,
            Command::Sync(args) => args.run().await,
            Command::Operator(args) => args.run().await,
            Command::Cluster(args) => args.run().await,
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) on `addr` in the background.
pub(crate) async fn serve_metrics(
    flag: &str,
    addr: std::net::SocketAddr,
    text: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move { text() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops ferry");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_has_consistent_flags_and_help() {
        super::Cli::command().debug_assert();
    }
}

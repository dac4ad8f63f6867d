//! `ferry registry`: announce an instance, list and watch instances.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use ferry_registry::{AnnounceConfig, Change, Discovery, Instance};

use ferry_client::ConnectionArgs;

/// Arguments of `ferry registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    action: RegistryAction,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Key prefix of the registry.
    #[arg(long, default_value = ferry_registry::DEFAULT_PREFIX, global = true)]
    prefix: String,
}

#[derive(Debug, Subcommand)]
enum RegistryAction {
    /// Register an instance and keep it registered until SIGINT/SIGTERM.
    Announce(AnnounceArgs),
    /// List live instances, optionally following changes.
    List(ListArgs),
}

#[derive(Debug, Args)]
struct AnnounceArgs {
    /// Service name.
    #[arg(long)]
    service: String,
    /// Instance id, unique within the service.
    #[arg(long)]
    id: String,
    /// Address the instance serves on.
    #[arg(long)]
    addr: String,
    /// Version to publish.
    #[arg(long, default_value = "")]
    version: String,
    /// A label, `key=value` (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
    /// Keep-alive interval.
    #[arg(long, default_value = "2s", value_parser = ferry_client::args::positive_duration)]
    keepalive: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Keep running and print every join, update and leave.
    #[arg(long)]
    watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

impl RegistryArgs {
    /// Runs the chosen registry action.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            RegistryAction::Announce(args) => announce(args, &self.connection, &self.prefix).await,
            RegistryAction::List(args) => list(args, &self.connection, &self.prefix).await,
        }
    }
}

fn labels(meta: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    meta.iter()
        .map(|m| {
            m.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--meta {m:?} is not KEY=VALUE"))
        })
        .collect()
}

async fn announce(
    args: AnnounceArgs,
    connection: &ConnectionArgs,
    prefix: &str,
) -> anyhow::Result<()> {
    let keep_alive_interval = args.keepalive;
    let mut instance = Instance::new(&args.service, &args.id, &args.addr);
    instance.version = args.version;
    instance.labels = labels(&args.meta)?;
    let config = AnnounceConfig {
        prefix: prefix.to_string(),
        ttl: args.ttl,
        keep_alive_interval,
        ..AnnounceConfig::default()
    };
    instance.validate()?;
    let client = connection.connect().await?;
    let announcement = ferry_registry::announce(client, config, instance)
        .await
        .context("announcing the instance")?;
    tracing::info!(key = announcement.key(), state = ?announcement.state(), "announced");
    println!("announced {}", announcement.key());
    super::shutdown_signal().await;
    announcement.stop().await.context("deregistering")?;
    println!("deregistered {}", args.id);
    Ok(())
}

fn print_table(instances: &[Instance]) {
    println!(
        "{:<16} {:<20} {:<24} {:<26} {:<10} LABELS",
        "SERVICE", "ID", "ADDRESS", "STARTED", "VERSION"
    );
    for i in instances {
        let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<16} {:<20} {:<24} {:<26} {:<10} {}",
            i.service,
            i.id,
            i.addr,
            i.start_time,
            i.version,
            labels.join(",")
        );
    }
}

async fn list(args: ListArgs, connection: &ConnectionArgs, prefix: &str) -> anyhow::Result<()> {
    if let Some(service) = &args.service {
        if service.is_empty() || service.contains('/') {
            return Err(anyhow!(
                "--service {service:?}: a service name is non-empty and contains no '/'"
            ));
        }
    }
    let client = connection.connect().await?;
    let mut discovery = Discovery::start(client, prefix, args.service.as_deref())
        .await
        .context("listing instances")?;
    let instances = discovery.instances();
    match args.output {
        Output::Table => print_table(&instances),
        Output::Json => println!("{}", serde_json::to_string_pretty(&instances)?),
    }
    if !args.watch {
        return Ok(());
    }
    // The initial listing arrives as joins; skip those already printed.
    for _ in 0..instances.len() {
        discovery.next_change().await;
    }
    let signal = super::shutdown_signal();
    tokio::pin!(signal);
    loop {
        let change = tokio::select! {
            change = discovery.next_change() => change,
            _ = &mut signal => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => continue,
        };
        let Some(change) = change else {
            return Err(anyhow!("discovery stopped"));
        };
        let (kind, instance) = match &change {
            Change::Joined(i) => ("joined", i),
            Change::Updated(i) => ("updated", i),
            Change::Left(i) => ("left", i),
        };
        match args.output {
            Output::Table => println!(
                "{:<8} {}/{} {}",
                kind.to_uppercase(),
                instance.service,
                instance.id,
                instance.addr
            ),
            Output::Json => println!(
                "{}",
                serde_json::json!({"change": kind, "instance": instance})
            ),
        }
    }
}

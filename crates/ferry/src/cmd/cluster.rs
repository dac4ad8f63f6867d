//! `ferry operator` and `ferry cluster`: the etcd operator, and the commands that declare
//! clusters and read their status from the management store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use ferry_client::ConnectionArgs;
use ferry_operator::{ClusterSpec, ClusterStatus, Keys, LocalProcesses, OperatorConfig};

/// Arguments of `ferry operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Prefix of the operator's keys in the management store.
    #[arg(long, default_value = ferry_operator::DEFAULT_PREFIX)]
    prefix: String,
    /// How often each cluster is reconciled.
    #[arg(long, default_value = "1s", value_parser = ferry_client::args::positive_duration)]
    interval: Duration,
    /// This operator's name in the leader election (default: `operator-<pid>`).
    #[arg(long)]
    identity: Option<String>,
    /// Serve Prometheus metrics (`ferry_operator_*`, per cluster) on this address.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

impl OperatorArgs {
    /// Runs the operator until SIGINT/SIGTERM (the clusters keep running).
    pub async fn run(self) -> anyhow::Result<()> {
        check_prefix(&self.prefix)?;
        let store = self.connection.connect().await?;
        let identity = self
            .identity
            .unwrap_or_else(|| format!("operator-{}", std::process::id()));
        let metrics = Arc::new(ferry_operator::OperatorMetrics::default());
        if let Some(addr) = self.metrics_addr {
            let metrics = metrics.clone();
            super::serve_metrics("--metrics-addr", addr, move || metrics.encode()).await?;
        }
        let config = OperatorConfig {
            prefix: self.prefix,
            interval: self.interval,
            identity,
            metrics,
        };
        tokio::select! {
            () = ferry_operator::run(store, Arc::new(LocalProcesses::new()), config) => {}
            _ = super::shutdown_signal() => {}
        }
        Ok(())
    }
}

fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    if !prefix.starts_with('/') || prefix.chars().any(char::is_control) {
        return Err(anyhow!("--prefix {prefix:?} must start with '/'"));
    }
    Ok(())
}

/// Arguments of `ferry cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: ClusterAction,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Prefix of the operator's keys in the management store.
    #[arg(long, default_value = ferry_operator::DEFAULT_PREFIX, global = true)]
    prefix: String,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Declare (or change) a cluster from a JSON spec file (`-` for stdin).
    Apply {
        /// The spec file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print a cluster's spec.
    Get {
        /// The cluster.
        name: String,
    },
    /// List the declared clusters.
    List,
    /// Delete a cluster's spec: the operator stops its members (their data stays).
    Delete {
        /// The cluster.
        name: String,
    },
    /// Take a verified backup now (into the spec's backup URL) and apply its retention.
    Backup {
        /// The cluster.
        name: String,
    },
    /// Create a new cluster from a verified backup (the spec of the cluster it came from,
    /// renamed): a new cluster token and id, the same keys and values.
    Restore {
        /// The backup's URL (`file:///…/<cluster>/<time>-rev<revision>.db`,
        /// `s3://bucket/prefix/<cluster>/<time>-rev<revision>.db`).
        #[arg(long = "from")]
        from: String,
        /// The new cluster's name.
        #[arg(long)]
        name: String,
        /// The spec to start from (renamed) instead of the source cluster's, e.g. when that
        /// cluster is gone; its backup policy must reach an `s3://` backup.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Recover a cluster that lost quorum: the operator rebuilds it from the surviving member
    /// with the highest revision and grows it back (a person's decision, never automatic).
    Recover {
        /// The cluster.
        name: String,
    },
    /// Print a cluster's members, conditions, operation in progress and events.
    Status {
        /// The cluster.
        name: String,
        /// `text` or `json`.
        #[arg(short = 'o', long = "output", default_value = "text")]
        output: String,
        /// Keep printing as the status changes.
        #[arg(long)]
        watch: bool,
    },
}

impl ClusterArgs {
    /// Runs the chosen action.
    pub async fn run(self) -> anyhow::Result<()> {
        check_prefix(&self.prefix)?;
        let keys = Keys::new(&self.prefix);
        let name_ok = |name: &str| -> anyhow::Result<()> {
            if ferry_registry::valid_name(name) {
                Ok(())
            } else {
                Err(anyhow!(
                    "{name:?} is not a cluster name (letters, digits, '-', '_', '.')"
                ))
            }
        };
        match self.action {
            ClusterAction::Apply { file } => {
                let spec = read_spec(&file)?;
                let mut store = self.connection.connect().await?;
                let stored = store.get(keys.spec(&spec.name), None).await?;
                if let Some(kv) = stored.kvs().first() {
                    if let Ok(old) = ClusterSpec::parse(kv.value()) {
                        spec.check_update(&old)
                            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
                    }
                }
                let value = serde_json::to_vec_pretty(&spec)?;
                store
                    .put(keys.spec(&spec.name), value, None)
                    .await
                    .context("writing the spec")?;
                println!("cluster {} applied (size {})", spec.name, spec.size);
            }
            ClusterAction::Get { name } => {
                name_ok(&name)?;
                let mut store = self.connection.connect().await?;
                let response = store.get(keys.spec(&name), None).await?;
                let kv = response
                    .kvs()
                    .first()
                    .ok_or_else(|| anyhow!("no cluster {name:?}"))?;
                println!("{}", String::from_utf8_lossy(kv.value()));
            }
            ClusterAction::List => {
                let store = self.connection.connect().await?;
                for spec in ferry_operator::operator::load_specs(&store, &keys).await? {
                    println!("{}\tsize {}", spec.name, spec.size);
                }
            }
            ClusterAction::Delete { name } => {
                name_ok(&name)?;
                let mut store = self.connection.connect().await?;
                let deleted = store.delete(keys.spec(&name), None).await?.deleted();
                if deleted == 0 {
                    return Err(anyhow!("no cluster {name:?}"));
                }
                println!("cluster {name} deleted; the operator stops its members");
            }
            ClusterAction::Backup { name } => {
                name_ok(&name)?;
                let mut store = self.connection.connect().await?;
                let spec = load_spec(&mut store, &keys, &name).await?;
                let policy = spec
                    .backup
                    .as_ref()
                    .ok_or_else(|| anyhow!("cluster {name} has no backup policy in its spec"))?;
                let status = load_status(&mut store, &keys, &name).await?;
                let source = status
                    .members
                    .iter()
                    .filter(|m| m.healthy && !m.learner)
                    .min_by_key(|m| m.leader)
                    .ok_or_else(|| anyhow!("cluster {name} has no healthy voting member"))?;
                let backend = ferry_operator::backup::Backend::open(policy)?;
                let work = spec.data_root.join(".ferry-work").join(&spec.name);
                let info = ferry_operator::backup::take(&spec, &source.client_url, &backend, &work)
                    .await
                    .context("taking the backup")?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                backend.apply_retention(&spec.name, policy, now).await?;
                println!("{}", serde_json::to_string(&info)?);
            }
            ClusterAction::Restore { from, name, file } => {
                name_ok(&name)?;
                let mut store = self.connection.connect().await?;
                if store.get(keys.spec(&name), None).await?.count() > 0 {
                    return Err(anyhow!(
                        "cluster {name:?} exists; restore creates a new cluster"
                    ));
                }
                let mut spec = match &file {
                    Some(file) => read_spec(file)?,
                    None => {
                        let source = source_cluster(&from).ok_or_else(|| {
                            anyhow!("--from {from}: not <backend>/<cluster>/<backup>.db; name a spec with -f")
                        })?;
                        load_spec(&mut store, &keys, source).await.with_context(|| {
                            format!("the spec of {source}, the cluster the backup came from (or give one with -f)")
                        })?
                    }
                };
                let backend =
                    ferry_operator::backup::Backend::holding(&from, spec.backup.as_ref())?;
                let info = backend
                    .info_of(&from)
                    .await
                    .with_context(|| format!("--from {from}: not a backup this operator took"))?;
                spec.name = name.clone();
                spec.restore_from = Some(from.clone());
                spec.validate()
                    .map_err(|e| anyhow!("the restored spec: {e}"))?;
                store
                    .put(keys.spec(&name), serde_json::to_vec_pretty(&spec)?, None)
                    .await?;
                println!(
                    "cluster {name} created from {from} (revision {}, cluster {})",
                    info.revision, info.cluster
                );
            }
            ClusterAction::Recover { name } => {
                name_ok(&name)?;
                let mut store = self.connection.connect().await?;
                load_spec(&mut store, &keys, &name).await?;
                store.put(keys.recover(&name), "requested", None).await?;
                println!("recovery of {name} requested; follow it with `ferry cluster status {name} --watch`");
            }
            ClusterAction::Status {
                name,
                output,
                watch,
            } => {
                name_ok(&name)?;
                if output != "text" && output != "json" {
                    return Err(anyhow!("-o {output:?}: use text or json"));
                }
                let mut store = self.connection.connect().await?;
                let key = keys.status(&name);
                let response = store.get(key.as_str(), None).await?;
                let mut shown = StatusPrinter::new(&name, output == "json");
                match response.kvs().first() {
                    Some(kv) => shown.show(kv.value())?,
                    None if !watch => {
                        return Err(anyhow!(
                            "no status for cluster {name:?} (is the operator running?)"
                        ))
                    }
                    None => {}
                }
                if !watch {
                    return Ok(());
                }
                // Every change from the revision read on, in order, as etcd's watch delivers it.
                let revision = response.header().map(|h| h.revision()).unwrap_or(0);
                let mut stream = store
                    .watch(
                        key.as_str(),
                        Some(etcd_client::WatchOptions::new().with_start_revision(revision + 1)),
                    )
                    .await?;
                while let Some(response) = stream.message().await? {
                    for event in response.events() {
                        match (event.event_type(), event.kv()) {
                            (etcd_client::EventType::Put, Some(kv)) => shown.show(kv.value())?,
                            (etcd_client::EventType::Delete, _) => {
                                println!("cluster {name}: deleted");
                                shown.forget();
                            }
                            _ => {}
                        }
                    }
                }
                return Err(anyhow!("the management store ended the watch"));
            }
        }
        Ok(())
    }
}

/// Prints a cluster's status each time it changes (the time of the pass that wrote it aside).
struct StatusPrinter {
    name: String,
    json: bool,
    last: Option<ClusterStatus>,
}

impl StatusPrinter {
    fn new(name: &str, json: bool) -> Self {
        Self {
            name: name.to_string(),
            json,
            last: None,
        }
    }

    fn show(&mut self, value: &[u8]) -> anyhow::Result<()> {
        let status = serde_json::from_slice::<ClusterStatus>(value)
            .with_context(|| format!("the status of {} does not decode", self.name))?;
        let unchanged = self.last.as_ref().is_some_and(|last| {
            ClusterStatus {
                updated: status.updated,
                ..last.clone()
            } == status
        });
        if !unchanged {
            if self.json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print_status(&status);
            }
            self.last = Some(status);
        }
        Ok(())
    }

    fn forget(&mut self) {
        self.last = None;
    }
}

/// Reads and validates a spec file (`-` is stdin).
fn read_spec(file: &std::path::Path) -> anyhow::Result<ClusterSpec> {
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .context("reading the spec from stdin")?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    ClusterSpec::parse(&bytes).map_err(|e| anyhow!("{}: invalid spec: {e}", file.display()))
}

/// The cluster a backup URL names (`…/<cluster>/<backup>.db`).
fn source_cluster(url: &str) -> Option<&str> {
    let mut segments = url.rsplit('/');
    segments.next().filter(|file| file.ends_with(".db"))?;
    segments.next().filter(|cluster| !cluster.is_empty())
}

async fn load_spec(
    store: &mut etcd_client::Client,
    keys: &Keys,
    name: &str,
) -> anyhow::Result<ClusterSpec> {
    let response = store.get(keys.spec(name), None).await?;
    let kv = response
        .kvs()
        .first()
        .ok_or_else(|| anyhow!("no cluster {name:?}"))?;
    ClusterSpec::parse(kv.value()).map_err(|e| anyhow!("the stored spec of {name}: {e}"))
}

async fn load_status(
    store: &mut etcd_client::Client,
    keys: &Keys,
    name: &str,
) -> anyhow::Result<ClusterStatus> {
    let response = store.get(keys.status(name), None).await?;
    let kv = response
        .kvs()
        .first()
        .ok_or_else(|| anyhow!("no status for cluster {name:?} (is the operator running?)"))?;
    serde_json::from_slice(kv.value())
        .with_context(|| format!("the status of {name} does not decode"))
}

fn print_status(s: &ClusterStatus) {
    println!(
        "cluster {} (size {}; operator {})",
        s.name, s.size, s.operator
    );
    for c in &s.conditions {
        println!("  {:<12} {:<5} {}", c.kind, c.status, c.message);
    }
    if !s.operation.is_empty() {
        println!("  operation: {}", s.operation);
    }
    if let Some(b) = &s.last_backup {
        println!(
            "  last backup: {} (revision {}, at {})",
            b.url, b.revision, b.time
        );
    }
    println!("  NAME                ID                CLIENT URL              HEALTHY LEADER LEARNER REVISION DB SIZE");
    for m in &s.members {
        println!(
            "  {:<19} {:<17} {:<23} {:<7} {:<6} {:<7} {:<8} {}",
            m.name, m.id, m.client_url, m.healthy, m.leader, m.learner, m.revision, m.db_size
        );
    }
    for e in s.events.iter().rev().take(10).rev() {
        println!("  event {}: {}", e.time, e.message);
    }
}

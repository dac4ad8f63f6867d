//! `ferry store`: the embedded store, with etcd's flag names and defaults.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use ferry_store::{AutoCompaction, StoreConfig};

/// Arguments of `ferry store`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StoreArgs {
    #[command(subcommand)]
    action: Option<StoreAction>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// Create a new data dir from a snapshot taken with `etcdctl snapshot save`.
    Restore(RestoreArgs),
    /// Create least-privilege users for ferry's controllers, agents and announcers (and
    /// root), then enable authentication; works on the embedded store and on etcd.
    AuthBootstrap(Box<super::store_auth::BootstrapArgs>),
}

/// Flags of the running store (etcd's names and defaults).
#[derive(Debug, Args)]
struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default", env = "ETCD_NAME")]
    name: String,
    /// Path to the data directory [default: ${name}.etcd].
    #[arg(long, env = "ETCD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(
        long,
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        env = "ETCD_LISTEN_CLIENT_URLS"
    )]
    listen_client_urls: Vec<String>,
    /// Comma-separated http:// URLs serving only /metrics, /health and /version.
    #[arg(long, value_delimiter = ',', env = "ETCD_LISTEN_METRICS_URLS")]
    listen_metrics_urls: Vec<String>,
    /// Comma-separated client URLs to advertise to the cluster [default: the listen URLs].
    #[arg(long, value_delimiter = ',', env = "ETCD_ADVERTISE_CLIENT_URLS")]
    advertise_client_urls: Vec<String>,
    /// Peer URLs reported in the member list (ferry serves no peer traffic).
    #[arg(
        long,
        default_value = "http://localhost:2380",
        value_delimiter = ',',
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS"
    )]
    initial_advertise_peer_urls: Vec<String>,
    /// Raise the NOSPACE alarm when the backend exceeds this many bytes (0 = 2 GiB).
    #[arg(long, default_value_t = 0, env = "ETCD_QUOTA_BACKEND_BYTES")]
    quota_backend_bytes: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128, env = "ETCD_MAX_TXN_OPS")]
    max_txn_ops: usize,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1536 * 1024, env = "ETCD_MAX_REQUEST_BYTES")]
    max_request_bytes: usize,
    /// Interval of progress notifications to idle watches that asked for them.
    #[arg(
        long,
        default_value = "10m",
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"
    )]
    experimental_watch_progress_notify_interval: String,
    /// Server certificate for https:// listeners.
    #[arg(long, env = "ETCD_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Key of the server certificate.
    #[arg(long, env = "ETCD_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// CA that signs client certificates.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH")]
    client_cert_auth: bool,
    /// Interpret --auto-compaction-retention as a duration (periodic) or a revision count.
    #[arg(long, default_value = "periodic", env = "ETCD_AUTO_COMPACTION_MODE")]
    auto_compaction_mode: String,
    /// Auto compaction retention: 0 turns it off; hours or a duration (periodic), or revisions.
    #[arg(long, default_value = "0", env = "ETCD_AUTO_COMPACTION_RETENTION")]
    auto_compaction_retention: String,
    /// The kind of auth token: `simple` (etcd's default; JWT is not built).
    #[arg(long, default_value = "simple", env = "ETCD_AUTH_TOKEN")]
    auth_token: String,
    /// Seconds a simple token stays valid after its last use.
    #[arg(long, default_value_t = 300, env = "ETCD_AUTH_TOKEN_TTL")]
    auth_token_ttl: u64,
    /// The bcrypt cost of stored passwords (4 to 31).
    #[arg(long, default_value_t = 10, env = "ETCD_BCRYPT_COST")]
    bcrypt_cost: u32,
}

/// Arguments of `ferry store restore`.
#[derive(Debug, Args)]
struct RestoreArgs {
    /// The snapshot file.
    #[arg(long)]
    snapshot: PathBuf,
    /// The new data dir (must not hold a store yet).
    #[arg(long)]
    data_dir: PathBuf,
    /// Accept a file without a SHA-256 trailer: an etcd backend database copied from a
    /// member's data dir (`member/snap/db`), as `etcdctl snapshot restore --skip-hash-check`.
    #[arg(long)]
    skip_hash_check: bool,
}

impl StoreArgs {
    /// Runs the store until SIGINT/SIGTERM, or performs the chosen action.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            Some(StoreAction::Restore(args)) => restore(args),
            Some(StoreAction::AuthBootstrap(args)) => args.run().await,
            None => serve(self.serve).await,
        }
    }
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let restored =
        ferry_store::snapshot::restore(&args.snapshot, &args.data_dir, args.skip_hash_check)?;
    println!(
        "restored {} revisions (store revision {}) into {}",
        restored.revisions,
        restored.revision,
        args.data_dir.display()
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.max_txn_ops == 0 {
        return Err(anyhow!("--max-txn-ops must be at least 1"));
    }
    if args.max_request_bytes == 0 {
        return Err(anyhow!("--max-request-bytes must be at least 1"));
    }
    let auto_compaction =
        AutoCompaction::parse(&args.auto_compaction_mode, &args.auto_compaction_retention)
            .map_err(|e| anyhow!(e))?;
    let progress = ferry_client::duration::parse(&args.experimental_watch_progress_notify_interval)
        .map_err(|e| anyhow!("--experimental-watch-progress-notify-interval: {e}"))?;
    if progress.is_zero() {
        return Err(anyhow!(
            "--experimental-watch-progress-notify-interval must be longer than zero"
        ));
    }
    let tls = match (args.cert_file, args.key_file) {
        (Some(cert_file), Some(key_file)) => Some(ferry_store::ServerTls {
            cert_file,
            key_file,
            trusted_ca_file: args.trusted_ca_file,
            client_cert_auth: args.client_cert_auth,
        }),
        (None, None) if args.client_cert_auth || args.trusted_ca_file.is_some() => {
            return Err(anyhow!(
                "--client-cert-auth and --trusted-ca-file need --cert-file and --key-file"
            ))
        }
        (None, None) => None,
        _ => return Err(anyhow!("--cert-file and --key-file go together")),
    };
    if args.auth_token != "simple" {
        return Err(anyhow!(
            "--auth-token {:?}: only simple tokens are built (JWT is not)",
            args.auth_token
        ));
    }
    if args.auth_token_ttl == 0 {
        return Err(anyhow!("--auth-token-ttl must be at least 1 (seconds)"));
    }
    if !(4..=31).contains(&args.bcrypt_cost) {
        return Err(anyhow!(
            "--bcrypt-cost {} is outside 4 to 31",
            args.bcrypt_cost
        ));
    }
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    let mut config = StoreConfig::new(&data_dir);
    config.name = args.name;
    config.listen_client_urls = args.listen_client_urls;
    config.listen_metrics_urls = args.listen_metrics_urls;
    config.advertise_client_urls = args.advertise_client_urls;
    config.advertise_peer_urls = args.initial_advertise_peer_urls;
    if args.quota_backend_bytes > 0 {
        config.quota_backend_bytes = args.quota_backend_bytes;
    }
    config.max_txn_ops = args.max_txn_ops;
    config.max_request_bytes = args.max_request_bytes;
    config.auto_compaction = auto_compaction;
    config.watch_progress_notify_interval = progress;
    config.tls = tls;
    config.auth_token_ttl = std::time::Duration::from_secs(args.auth_token_ttl);
    config.bcrypt_cost = args.bcrypt_cost;
    let running = ferry_store::start(config)
        .await
        .with_context(|| format!("starting the store in {}", data_dir.display()))?;
    for addr in &running.local_addrs {
        tracing::info!(data_dir = %data_dir.display(), "ready to serve client requests on http://{addr}");
    }
    for addr in &running.metrics_addrs {
        tracing::info!("serving /metrics and /health on http://{addr}");
    }
    running.run_until(super::shutdown_signal()).await?;
    tracing::info!("store stopped cleanly");
    Ok(())
}

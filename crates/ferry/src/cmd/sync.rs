//! `ferry sync`: one peer-sync replica as a process, with a REST face for its cache.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use clap::Args;
use ferry_client::ConnectionArgs;
use ferry_sync::replica::REPLICATION_WAIT;
use ferry_sync::service::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use ferry_sync::{Node, NodeConfig};
use serde::Deserialize;
use serde_json::json;

/// Arguments of `ferry sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The registry service the replicas share.
    #[arg(long)]
    service: String,
    /// This replica's id, unique in the service.
    #[arg(long)]
    id: String,
    /// Where the gRPC service (hellorpc.Sync) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_listen: SocketAddr,
    /// Where the REST API listens.
    #[arg(long, default_value = "127.0.0.1:8090")]
    http_listen: SocketAddr,
    /// Registry prefix.
    #[arg(long, default_value = ferry_registry::DEFAULT_PREFIX)]
    registry_prefix: String,
    /// How often to compare digests with a random peer (jittered by ±20 %).
    #[arg(long, default_value = "30s", value_parser = ferry_client::args::positive_duration)]
    anti_entropy_interval: Duration,
    /// How long deletes are remembered; a replica out of touch for longer resyncs in full.
    /// Must be more than twice the anti-entropy interval.
    #[arg(long, default_value = "1h", value_parser = ferry_client::args::positive_duration)]
    tombstone_grace: Duration,
    #[command(flatten)]
    connection: ConnectionArgs,
}

type Shared = Arc<Node>;

/// A refused request: its status and a JSON `{"error": …}` body.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, message.into())
}

fn cache_type(text: &str) -> Result<i32, Refusal> {
    text.parse::<i32>().map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("type {text:?} is not a 32-bit integer"),
        )
    })
}

fn check_key(key: &str) -> Result<(), Refusal> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("a key must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn ready(node: &Node) -> Result<(), Refusal> {
    if node.replica.is_current() {
        Ok(())
    } else if node.is_ready() {
        Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "out of touch for longer than the tombstone grace; resyncing from the peers",
        ))
    } else {
        Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "bootstrapping from the peers; reads are served once complete",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
}

async fn get_one(
    State(node): State<Shared>,
    Path((ty, key)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let ty = cache_type(&ty)?;
    ready(&node)?;
    match node.replica.entry(ty, &key) {
        Some(entry) if entry.value.is_some() => Ok(Json(json!({
            "type": ty, "key": key, "value": entry.value, "version": entry.version.to_string(),
        }))
        .into_response()),
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no key {key:?} in type {ty}"),
        )),
    }
}

async fn put_one(
    State(node): State<Shared>,
    Path((ty, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let ty = cache_type(&ty)?;
    check_key(&key)?;
    let body: PutBody = serde_json::from_slice(&body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"value\": \"…\"}}: {e}"),
        )
    })?;
    if body.value.len() > MAX_VALUE_BYTES {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("the value is over {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let (versions, replicas) = node
        .replica
        .write_replicated(ty, vec![(key.clone(), Some(body.value))], REPLICATION_WAIT)
        .await;
    let version = versions.first().map(ToString::to_string);
    Ok(
        Json(json!({ "type": ty, "key": key, "version": version, "replicas": replicas }))
            .into_response(),
    )
}

async fn delete_one(
    State(node): State<Shared>,
    Path((ty, key)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let ty = cache_type(&ty)?;
    check_key(&key)?;
    let (versions, replicas) = node
        .replica
        .write_replicated(ty, vec![(key.clone(), None)], REPLICATION_WAIT)
        .await;
    let version = versions.first().map(ToString::to_string);
    Ok(Json(json!({
        "type": ty, "key": key, "version": version, "deleted": true, "replicas": replicas,
    }))
    .into_response())
}

async fn get_type(State(node): State<Shared>, Path(ty): Path<String>) -> Result<Response, Refusal> {
    let ty = cache_type(&ty)?;
    ready(&node)?;
    Ok(Json(json!({ "type": ty, "entries": node.replica.values(ty) })).into_response())
}

async fn readyz(State(node): State<Shared>) -> Result<&'static str, Refusal> {
    ready(&node)?;
    Ok("ready")
}

async fn metrics(State(node): State<Shared>) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let (entries, tombstones) = node.replica.len();
    let m = node.replica.metrics();
    let delivered = m.fanout_delivered.load(Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "ferry_sync_entries",
        "gauge",
        "Live entries in this replica.",
        entries as f64,
    );
    metric(
        "ferry_sync_tombstones",
        "gauge",
        "Deletes kept until the tombstone grace has passed.",
        tombstones as f64,
    );
    metric(
        "ferry_sync_tombstones_collected_total",
        "counter",
        "Tombstones collected after the grace.",
        m.tombstones_collected.load(Relaxed) as f64,
    );
    metric(
        "ferry_sync_full_resyncs_total",
        "counter",
        "Full resyncs after being out of touch for longer than the tombstone grace.",
        m.full_resyncs.load(Relaxed) as f64,
    );
    metric(
        "ferry_sync_peers",
        "gauge",
        "Peers writes are sent to.",
        node.replica.peers().len() as f64,
    );
    metric(
        "ferry_sync_ready",
        "gauge",
        "Whether bootstrap is done.",
        f64::from(u8::from(node.is_ready())),
    );
    metric(
        "ferry_sync_fanout_delivered_total",
        "counter",
        "Writes delivered to a peer by fan-out.",
        delivered as f64,
    );
    metric(
        "ferry_sync_fanout_failed_total",
        "counter",
        "Fan-outs that gave up after every attempt.",
        m.fanout_failed.load(Relaxed) as f64,
    );
    metric(
        "ferry_sync_fanout_seconds_sum",
        "counter",
        "Time from a local write to its delivery at a peer, summed.",
        m.fanout_micros_total.load(Relaxed) as f64 / 1e6,
    );
    metric(
        "ferry_sync_anti_entropy_rounds_total",
        "counter",
        "Anti-entropy rounds run.",
        m.anti_entropy_rounds.load(Relaxed) as f64,
    );
    metric(
        "ferry_sync_anti_entropy_repaired_total",
        "counter",
        "Entries that bootstrap and anti-entropy changed here.",
        m.anti_entropy_repaired.load(Relaxed) as f64,
    );
    metric(
        "ferry_sync_bootstrap_seconds",
        "gauge",
        "How long the bootstrap took.",
        m.bootstrap_millis.load(Relaxed) as f64 / 1e3,
    );
    out
}

impl SyncArgs {
    /// Runs until SIGINT/SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        if !ferry_registry::valid_name(&self.service) || !ferry_registry::valid_name(&self.id) {
            anyhow::bail!(
                "--service {:?} and --id {:?} must be 1 to 253 letters, digits, '-', '_' or '.'",
                self.service,
                self.id
            );
        }
        let config = NodeConfig {
            service: self.service,
            id: self.id,
            grpc_listen: self.grpc_listen,
            registry_prefix: self.registry_prefix,
            anti_entropy_interval: self.anti_entropy_interval,
            tombstone_grace: self.tombstone_grace,
        };
        config
            .validate()
            .context("--anti-entropy-interval and --tombstone-grace")?;
        let client = self.connection.connect().await?;
        let http = tokio::net::TcpListener::bind(self.http_listen)
            .await
            .with_context(|| format!("--http-listen {}", self.http_listen))?;
        let node = Arc::new(
            ferry_sync::node::start(client, config)
                .await
                .context("starting the replica")?,
        );
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/v1/cache/{ty}", get(get_type))
            .route(
                "/v1/cache/{ty}/{key}",
                get(get_one).put(put_one).delete(delete_one),
            )
            .with_state(node.clone());
        println!(
            "sync replica: gRPC on {}, REST on http://{}",
            node.grpc_addr,
            http.local_addr()?
        );
        tokio::select! {
            result = axum::serve(http.tap_io(|tcp| { let _ = tcp.set_nodelay(true); }), app) => result.context("serving the REST API")?,
            _ = super::shutdown_signal() => {}
        }
        if let Ok(node) = Arc::try_unwrap(node) {
            node.stop().await;
        }
        Ok(())
    }
}

//! etcd's HTTP endpoints on the client port, beside gRPC: `/version`, `/health` and
//! `/metrics` (parsed as Prometheus text, etcd's names present and moving with load), against
//! `ferry store` and real etcd 3.4 with the same assertions.

mod common;

use common::Server;
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use ferry_controller::http_client::{request, HttpReply};

against_both!(&[];
    version_names_the_server_and_cluster_versions,
    health_is_false_while_an_alarm_is_raised,
    metrics_carry_etcds_names_and_move_with_load,
    every_answer_allows_any_origin_and_options_is_answered,
);

async fn get(server: &Server, path: &str) -> anyhow::Result<HttpReply> {
    Ok(request(&server.endpoint(), "GET", path, None, &[], "").await?)
}

async fn version_names_the_server_and_cluster_versions(server: &Server) -> anyhow::Result<()> {
    let reply = get(server, "/version").await?;
    assert_eq!(reply.status, 200);
    let version: serde_json::Value = serde_json::from_str(&reply.body)?;
    let server_version = version["etcdserver"].as_str().unwrap_or_default();
    let cluster_version = version["etcdcluster"].as_str().unwrap_or_default();
    assert!(server_version.starts_with("3."), "{version}");
    assert!(
        cluster_version.starts_with("3.") && cluster_version.ends_with(".0"),
        "{version}"
    );
    Ok(())
}

async fn health_is_false_while_an_alarm_is_raised(server: &Server) -> anyhow::Result<()> {
    let healthy = get(server, "/health").await?;
    assert_eq!(healthy.status, 200, "{}", healthy.body);
    let body: serde_json::Value = serde_json::from_str(&healthy.body)?;
    assert_eq!(body["health"], "true");
    let mut c = server.client().await?;
    let mut every_member = AlarmOptions::new();
    every_member.with_member(0);
    c.alarm(
        AlarmAction::Activate,
        AlarmType::Nospace,
        Some(every_member.clone()),
    )
    .await?;
    let alarmed = get(server, "/health").await?;
    assert_eq!(alarmed.status, 503, "{}", alarmed.body);
    let body: serde_json::Value = serde_json::from_str(&alarmed.body)?;
    assert_eq!(body["health"], "false");
    c.alarm(
        AlarmAction::Deactivate,
        AlarmType::Nospace,
        Some(every_member),
    )
    .await?;
    assert_eq!(get(server, "/health").await?.status, 200);
    Ok(())
}

/// The value of the sample `name` with labels including `labels` (0 when absent).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(server: &Server) -> anyhow::Result<prometheus_parse::Scrape> {
    let reply = get(server, "/metrics").await?;
    assert_eq!(reply.status, 200);
    let lines = reply.body.lines().map(|l| Ok(l.to_string()));
    Ok(prometheus_parse::Scrape::parse(lines)?)
}

async fn metrics_carry_etcds_names_and_move_with_load(server: &Server) -> anyhow::Result<()> {
    let before = scrape(server).await?;
    for name in [
        "etcd_server_has_leader",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_watcher_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            before.samples.iter().any(|s| s.metric == name),
            "no {name} in /metrics"
        );
    }
    assert_eq!(sample(&before, "etcd_server_has_leader", &[]), 1.0);
    // Every served method's counters exist before it is called (go-grpc-prometheus's
    // InitializeMetrics, which etcd runs), for every code.
    for (name, labels) in [
        (
            "grpc_server_started_total",
            &[
                ("grpc_service", "etcdserverpb.Maintenance"),
                ("grpc_method", "MoveLeader"),
                ("grpc_type", "unary"),
            ][..],
        ),
        (
            "grpc_server_handled_total",
            &[
                ("grpc_service", "etcdserverpb.Maintenance"),
                ("grpc_method", "MoveLeader"),
                ("grpc_code", "FailedPrecondition"),
            ][..],
        ),
        (
            "grpc_server_started_total",
            &[
                ("grpc_service", "etcdserverpb.Watch"),
                ("grpc_method", "Watch"),
                ("grpc_type", "bidi_stream"),
            ][..],
        ),
    ] {
        assert!(
            before.samples.iter().any(
                |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            ),
            "no {name}{labels:?} in /metrics before any call"
        );
    }
    let mut c = server.client().await?;
    for i in 0..20 {
        c.put(format!("metrics/{i}"), "v", None).await?;
    }
    let _watch = c.watch("metrics/", None).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = scrape(server).await?;
    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (b, a) = (sample(&before, name, labels), sample(&after, name, labels));
        assert!(a >= b + by, "{name}{labels:?}: {b} → {a}");
    };
    grew("etcd_mvcc_put_total", &[], 20.0);
    grew("etcd_debugging_mvcc_keys_total", &[], 20.0);
    grew("etcd_debugging_mvcc_watcher_total", &[], 1.0);
    grew(
        "grpc_server_handled_total",
        &[("grpc_method", "Put"), ("grpc_code", "OK")],
        20.0,
    );
    grew(
        "grpc_server_started_total",
        &[("grpc_service", "etcdserverpb.KV"), ("grpc_method", "Put")],
        20.0,
    );
    // etcd batches backend commits (every 100 ms); each put is fsynced in its log.
    grew("etcd_disk_backend_commit_duration_seconds_count", &[], 1.0);
    grew("etcd_disk_wal_fsync_duration_seconds_count", &[], 20.0);
    Ok(())
}

/// `--listen-metrics-urls`: /metrics and /health on a port of their own.
async fn a_metrics_listener_serves_metrics_and_health(kind: common::Kind) -> anyhow::Result<()> {
    let port = ferry_testkit::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let _server = common::start(kind, &["--listen-metrics-urls", &url]).await?;
    let addr = format!("127.0.0.1:{port}");
    let metrics = request(&addr, "GET", "/metrics", None, &[], "").await?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("etcd_server_has_leader 1"),
        "{}",
        metrics.body
    );
    let health = request(&addr, "GET", "/health", None, &[], "").await?;
    assert_eq!(health.status, 200);
    assert!(
        health.body.contains("\"health\":\"true\""),
        "{}",
        health.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ferry_a_metrics_listener_serves_metrics_and_health() -> anyhow::Result<()> {
    a_metrics_listener_serves_metrics_and_health(common::Kind::Ferry).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_metrics_listener_serves_metrics_and_health() -> anyhow::Result<()> {
    a_metrics_listener_serves_metrics_and_health(common::Kind::Etcd).await
}

/// etcd's default CORS: any origin, and OPTIONS answered at once.
async fn every_answer_allows_any_origin_and_options_is_answered(
    server: &Server,
) -> anyhow::Result<()> {
    let version = get(server, "/version").await?;
    assert!(
        version.headers.contains("access-control-allow-origin: *"),
        "{}",
        version.headers
    );
    let preflight = request(&server.endpoint(), "OPTIONS", "/v3/kv/range", None, &[], "").await?;
    assert_eq!(preflight.status, 200);
    assert!(preflight.body.is_empty(), "{}", preflight.body);
    assert!(
        preflight
            .headers
            .contains("access-control-allow-headers: accept, content-type, authorization"),
        "{}",
        preflight.headers
    );
    Ok(())
}

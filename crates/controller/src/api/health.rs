//! Liveness, readiness and metrics: unauthenticated, for probes and scrapers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::Shared;

/// What readiness depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// The SQL database answers.
    pub sql: bool,
    /// The store answers.
    pub etcd: bool,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// SQL and the store both answer.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "SQL or the store does not answer", body = Readiness),
    ))]
pub async fn readyz(State(s): State<Shared>) -> Response {
    let sql = s.record.list_all().await.is_ok();
    let etcd = s.client.clone().status().await.is_ok();
    let code = if sql && etcd {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Readiness { sql, etcd })).into_response()
}

/// Prometheus metrics (`http_requests_total`, the publisher's and the reconciliation's).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(s): State<Shared>) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &s.registry.lock());
    out
}

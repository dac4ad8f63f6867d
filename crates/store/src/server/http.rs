//! etcd's HTTP endpoints on the client port, beside gRPC (HTTP/1.1 or HTTP/2, TLS when the
//! listener has it): `GET /version`, `GET /health`, `GET /metrics`.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::{Context, SERVER_VERSION};

/// The routes.
pub(crate) fn routes(ctx: Context) -> Router {
    let health = ctx.clone();
    let metrics = ctx;
    Router::new()
        .route(
            "/version",
            get(|| async {
                Json(serde_json::json!({
                    "etcdserver": SERVER_VERSION,
                    "etcdcluster": cluster_version(),
                }))
            }),
        )
        .route("/health", get(move || async move { health_of(&health) }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.metrics.encode(&metrics.store),
                )
            }),
        )
}

/// etcd's default CORS (`--cors '*'`): every answer allows any origin, and any `OPTIONS`
/// request is answered at once with 200 and no body.
pub(crate) async fn cors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue, Method};
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// The cluster version etcd reports: the server's major.minor with patch 0.
fn cluster_version() -> String {
    let mut parts = SERVER_VERSION.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}.0"),
        _ => SERVER_VERSION.to_string(),
    }
}

/// etcd 3.5's health answer: healthy unless an alarm is raised or the store refuses
/// writes after a storage failure.
fn health_of(ctx: &Context) -> impl IntoResponse {
    let shared = ctx.store.shared();
    let reason = if !shared.nospace_members.lock().is_empty() {
        Some("ALARM NOSPACE")
    } else if shared.poisoned.lock().is_some() {
        Some("STORAGE FAILURE")
    } else {
        None
    };
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(serde_json::json!({
            "health": if reason.is_some() { "false" } else { "true" },
            "reason": reason.unwrap_or(""),
        })),
    )
}

//! One JSON shape for every refusal. The handlers answer `{"error": …}` themselves; axum's
//! extractors (a query without `version`, a path that does not decode), an unknown route and
//! a method a route does not serve answer plain text or nothing, which API clients and the
//! OpenAPI contract do not expect. This layer rewrites those into the same shape, keeping
//! the status and the text.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;

/// Refusal bodies larger than this are not extractor texts; they are left alone.
const MAX_TEXT: usize = 64 * 1024;

/// `response` with a JSON body if it is an error without one.
pub async fn as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        default_message(status)
    } else {
        text
    };
    let body = json!({ "error": message }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "no such route".into(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".into(),
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase(),
    }
}

//! The REST API: configurations per environment (create, get, list, update with `If-Match`,
//! delete, history, rollback), rollout status, environments and their live agents, health,
//! metrics and the OpenAPI document. Every change commits to SQL first, then publishes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use etcd_client::{Client, GetOptions};
use ferry_registry::Instance;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{Audit, AuditEvent};
use crate::auth::{Identity, Role, Tokens};
use crate::document::IngressDocument;
use crate::keys::Keys;
use crate::publish::Publisher;
use crate::record::{ConfigRecord, Record, RecordError};

/// What an agent writes to `<root>/ingress_config_status/<env>/<uuid>/<agent>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's name.
    pub agent: String,
    /// The configuration version it last tried.
    pub version: i64,
    /// Whether that version is installed and serving.
    pub ok: bool,
    /// Why not, when it failed.
    #[serde(default)]
    pub message: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub time: String,
}

/// Everything the handlers share.
pub struct ApiState {
    /// The SQL record.
    pub record: Record,
    /// Writes to etcd.
    pub publisher: Publisher,
    /// A store client for reads.
    pub client: Client,
    /// The key layout.
    pub keys: Keys,
    /// Accepted bearer tokens (replaced whole when the token file is reloaded).
    pub tokens: Arc<parking_lot::RwLock<Tokens>>,
    /// Where changes and refusals are recorded.
    pub audit: Audit,
    /// `http_requests_total{method,code}`.
    pub requests: Family<Vec<(String, String)>, Counter>,
    /// The metrics registry.
    pub registry: parking_lot::Mutex<prometheus_client::registry::Registry>,
}

type Shared = Arc<ApiState>;

/// An error response: status and a JSON body `{"error": …, "field": …}`.
pub struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, json!({ "error": message.into() }))
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match &e {
            RecordError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
            RecordError::Conflict { current, .. } => ApiError(
                StatusCode::PRECONDITION_FAILED,
                json!({ "error": e.to_string(), "current_version": current }),
            ),
            _ => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// Who is calling: the bearer token and the peer address, as the request carries them.
pub struct Caller {
    token: Option<String>,
    peer: Option<std::net::SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        Ok(Self { token, peer })
    }
}

impl ApiState {
    /// The caller's identity, if its token may do `need` in `env` (every environment it
    /// covers when `env` is `None`); a refusal is audited.
    fn authorize(
        &self,
        caller: &Caller,
        need: Role,
        env: Option<&str>,
    ) -> Result<Identity, ApiError> {
        let identity = caller
            .token
            .as_deref()
            .and_then(|t| self.tokens.read().authenticate(t).cloned());
        let refusal = match (&identity, &caller.token) {
            (None, None) => Some((StatusCode::UNAUTHORIZED, "missing bearer token".to_string())),
            (None, Some(_)) => Some((StatusCode::UNAUTHORIZED, "unknown token".to_string())),
            (Some(who), _) if who.role == Role::Read && need == Role::Admin => Some((
                StatusCode::FORBIDDEN,
                format!("token {:?} may only read", who.name),
            )),
            (Some(who), _) => match env {
                Some(env) if !who.scope.covers(env) => Some((
                    StatusCode::FORBIDDEN,
                    format!("token {:?} does not cover environment {env:?}", who.name),
                )),
                _ => None,
            },
        };
        match (refusal, identity) {
            (None, Some(identity)) => Ok(identity),
            (refusal, identity) => {
                let (status, reason) =
                    refusal.unwrap_or((StatusCode::UNAUTHORIZED, "unknown token".to_string()));
                self.audit.record(&AuditEvent {
                    identity: identity.as_ref().map(|i| i.name.as_str()),
                    env,
                    source: caller.peer,
                    status: Some(status.as_u16()),
                    reason: Some(&reason),
                    ..AuditEvent::new("refused")
                });
                Err(error(status, reason))
            }
        }
    }

    /// Refuses a change while the store cannot take writes (no quorum, unreachable): the
    /// change would sit in SQL unpublished with no agent seeing it, so it is not accepted.
    async fn ensure_store_writable(&self) -> Result<(), ApiError> {
        // A linearizable read needs the quorum, exactly as a write does.
        let mut client = self.client.clone();
        let probe = client.get(self.keys.root(), Some(GetOptions::new().with_count_only()));
        let reason = match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 3s".to_string(),
        };
        Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": format!("the store cannot take writes now (no quorum or unreachable: {reason}); nothing was changed, try again") }),
        ))
    }

    /// Records a committed change.
    fn audit_change(&self, action: &str, who: &Identity, caller: &Caller, rec: &ConfigRecord) {
        self.audit.record(&AuditEvent {
            identity: Some(&who.name),
            env: Some(&rec.env),
            id: Some(&rec.id),
            version: Some(rec.version),
            source: caller.peer,
            ..AuditEvent::new(action)
        });
    }
}

fn if_match(headers: &HeaderMap) -> Result<i64, ApiError> {
    let raw = headers.get(header::IF_MATCH).ok_or_else(|| {
        error(
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match with the version you changed is required",
        )
    })?;
    raw.to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "If-Match must be a version number"))
}

fn valid_env(env: &str) -> Result<(), ApiError> {
    crate::keys::validate_env(env).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": e.reason, "field": "env"}),
        )
    })
}

fn with_etag(status: StatusCode, rec: &ConfigRecord) -> Response {
    let mut resp = (status, Json(rec)).into_response();
    if let Ok(v) = format!("\"{}\"", rec.version).parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn parse_document(body: &[u8]) -> Result<IngressDocument, ApiError> {
    IngressDocument::from_json(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            json!({ "error": e.reason, "field": e.path }),
        )
    })
}

/// Publishes a committed change; `Err` says why it is not in the store yet.
async fn publish_after_commit(state: &ApiState, rec: &ConfigRecord) -> Result<(), String> {
    let result = if rec.deleted {
        state.publisher.unpublish(&rec.env, &rec.id).await
    } else {
        state.publisher.publish(rec).await.map(|_| ())
    };
    result.map_err(|e| {
        // SQL holds the change; the periodic reconciliation publishes it.
        tracing::warn!(env = %rec.env, id = %rec.id, error = %e, "publishing failed; reconciliation will retry");
        e.to_string()
    })
}

/// The answer to a committed change: the record, and whether it reached the store
/// (`"published": false` with `"publish_error"` until the reconciliation publishes it).
async fn changed(state: &ApiState, status: StatusCode, rec: ConfigRecord) -> Response {
    let published = publish_after_commit(state, &rec).await;
    let mut body = serde_json::to_value(&rec).unwrap_or_else(|_| json!({}));
    body["published"] = json!(published.is_ok());
    if let Err(reason) = published {
        body["publish_error"] = json!(reason);
    }
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = format!("\"{}\"", rec.version).parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn create(
    State(s): State<Shared>,
    Path(env): Path<String>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    valid_env(&env)?;
    let who = s.authorize(&caller, Role::Admin, Some(&env))?;
    let doc = parse_document(&body)?;
    s.ensure_store_writable().await?;
    let rec = s.record.create(&env, &doc, &who.name).await?;
    s.audit_change("create", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::CREATED, rec).await)
}

async fn list(
    State(s): State<Shared>,
    Path(env): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    valid_env(&env)?;
    s.authorize(&caller, Role::Read, Some(&env))?;
    Ok(Json(s.record.list(&env).await?).into_response())
}

async fn fetch(
    State(s): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Response, ApiError> {
    s.authorize(&caller, Role::Read, Some(&env))?;
    Ok(with_etag(StatusCode::OK, &s.record.get(&env, &id).await?))
}

async fn update(
    State(s): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = s.authorize(&caller, Role::Admin, Some(&env))?;
    let expected = if_match(&headers)?;
    let doc = parse_document(&body)?;
    s.ensure_store_writable().await?;
    let rec = s
        .record
        .update(&env, &id, expected, &doc, &who.name)
        .await?;
    s.audit_change("update", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::OK, rec).await)
}

async fn remove(
    State(s): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = s.authorize(&caller, Role::Admin, Some(&env))?;
    let expected = if_match(&headers)?;
    s.ensure_store_writable().await?;
    let rec = s.record.delete(&env, &id, expected, &who.name).await?;
    s.audit_change("delete", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::OK, rec).await)
}

async fn history(
    State(s): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Response, ApiError> {
    s.authorize(&caller, Role::Read, Some(&env))?;
    Ok(Json(s.record.history(&env, &id).await?).into_response())
}

#[derive(Deserialize)]
struct RollbackQuery {
    version: i64,
}

async fn rollback(
    State(s): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    Query(q): Query<RollbackQuery>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = s.authorize(&caller, Role::Admin, Some(&env))?;
    let expected = if_match(&headers)?;
    s.ensure_store_writable().await?;
    let rec = s
        .record
        .rollback(&env, &id, q.version, expected, &who.name)
        .await?;
    s.audit_change("rollback", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::OK, rec).await)
}

async fn live_agents(s: &ApiState, env: &str) -> Result<Vec<Instance>, ApiError> {
    let resp = s
        .client
        .clone()
        .get(s.keys.agents(env), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}")))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// The rollout of one configuration: every live agent and what it applied.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Rollout {
    /// The configuration's current version.
    pub version: i64,
    /// One row per live agent.
    pub agents: Vec<AgentRollout>,
    /// Counts.
    pub summary: Summary,
    /// Whether the store holds this version (SQL committed it; publishing may have failed,
    /// and the reconciliation publishes it when the store takes writes again).
    #[serde(default = "published_default")]
    pub published: bool,
    /// Why not, while not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_pending: Option<String>,
}

fn published_default() -> bool {
    true
}

/// One live agent's state for a configuration.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentRollout {
    /// Agent name.
    pub agent: String,
    /// Its address.
    pub ip: String,
    /// Version it last reported (0: none yet).
    pub applied_version: i64,
    /// `applied`, `failed` or `pending`.
    pub state: String,
    /// Failure reason.
    pub message: String,
}

/// Rollout counts; `complete` means every live agent (at least one) applied the current
/// version.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Live agents.
    pub live: usize,
    /// Applied the current version.
    pub applied: usize,
    /// Failed the current version.
    pub failed: usize,
    /// Not reported yet.
    pub pending: usize,
    /// Whether the rollout is done.
    pub complete: bool,
}

async fn status(
    State(s): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Response, ApiError> {
    s.authorize(&caller, Role::Read, Some(&env))?;
    let rec = s.record.get(&env, &id).await?;
    let agents = live_agents(&s, &env).await?;
    let reports = s
        .client
        .clone()
        .get(
            s.keys.statuses(&env, &id),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}")))?;
    let reports: Vec<AgentStatus> = reports
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    let mut rows = Vec::new();
    for agent in agents {
        let report = reports.iter().find(|r| r.agent == agent.id);
        let (applied_version, state, message) = match report {
            Some(r) if r.version == rec.version && r.ok => {
                (r.version, "applied", r.message.clone())
            }
            Some(r) if r.version == rec.version => (r.version, "failed", r.message.clone()),
            Some(r) => (r.version, "pending", String::new()),
            None => (0, "pending", String::new()),
        };
        rows.push(AgentRollout {
            agent: agent.id.clone(),
            ip: agent.addr.clone(),
            applied_version,
            state: state.into(),
            message,
        });
    }
    let stored = s
        .client
        .clone()
        .get(s.keys.config(&env, &id), None)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}")))?;
    let stored_version = stored
        .kvs()
        .first()
        .and_then(|kv| crate::publish::stored_version(kv.value()));
    let published = stored_version.is_some_and(|v| v >= rec.version);
    let publish_pending = (!published).then(|| {
        format!(
            "version {} is committed but not yet in the store (it holds {}); the \
             reconciliation publishes it once the store takes writes",
            rec.version,
            stored_version.map_or("no version".to_string(), |v| format!("version {v}"))
        )
    });
    let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
    let summary = Summary {
        live: rows.len(),
        applied: count("applied"),
        failed: count("failed"),
        pending: count("pending"),
        complete: published && !rows.is_empty() && count("applied") == rows.len(),
    };
    Ok(Json(Rollout {
        version: rec.version,
        agents: rows,
        summary,
        published,
        publish_pending,
    })
    .into_response())
}

async fn environments(State(s): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    let who = s.authorize(&caller, Role::Read, None)?;
    let mut envs: std::collections::BTreeMap<String, Vec<Instance>> =
        std::collections::BTreeMap::new();
    for rec in s.record.list_all().await? {
        envs.entry(rec.env).or_default();
    }
    let all = s
        .client
        .clone()
        .get(
            s.keys.agents("").trim_end_matches('/').to_string() + "/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}")))?;
    for kv in all.kvs() {
        if let Ok(agent) = serde_json::from_slice::<Instance>(kv.value()) {
            envs.entry(agent.service.clone()).or_default().push(agent);
        }
    }
    let body: Vec<serde_json::Value> = envs
        .into_iter()
        .filter(|(env, _)| who.scope.covers(env))
        .map(|(env, agents)| json!({ "env": env, "agents": agents }))
        .collect();
    Ok(Json(body).into_response())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Shared>) -> Response {
    let sql = s.record.list_all().await.is_ok();
    let etcd = s.client.clone().status().await.is_ok();
    let code = if sql && etcd {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "sql": sql, "etcd": etcd }))).into_response()
}

async fn metrics(State(s): State<Shared>) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &s.registry.lock());
    out
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

/// The API's routes over `state`.
pub fn router(state: Shared) -> Router {
    let counter = state.requests.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/environments", get(environments))
        .route("/api/v1/environments/{env}/configs", get(list).post(create))
        .route(
            "/api/v1/environments/{env}/configs/{id}",
            get(fetch).put(update).delete(remove),
        )
        .route(
            "/api/v1/environments/{env}/configs/{id}/history",
            get(history),
        )
        .route(
            "/api/v1/environments/{env}/configs/{id}/rollback",
            post(rollback),
        )
        .route(
            "/api/v1/environments/{env}/configs/{id}/status",
            get(status),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::map_response(crate::refusal::as_json))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    let method = req.method().to_string();
                    let resp = next.run(req).await;
                    counter
                        .get_or_create(&vec![
                            ("method".into(), method),
                            ("code".into(), resp.status().as_u16().to_string()),
                        ])
                        .inc();
                    resp
                }
            },
        ))
        .with_state(state)
}

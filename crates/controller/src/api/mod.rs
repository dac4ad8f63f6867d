//! The REST API: configurations per environment (create, get, list, update with `If-Match`,
//! delete, history, rollback), rollout status (also as a live event stream), environments
//! and their live agents, the caller's identity, health, metrics, the OpenAPI document and
//! the dashboard. Every change commits to SQL first, then publishes.
//!
//! The routes and the OpenAPI document come from the same handlers (`utoipa`): a route
//! cannot exist without its description, nor the other way round.

mod change_steps;
mod configs;
mod environments;
mod health;
mod params;
mod rollout;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use etcd_client::{Client, GetOptions};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use change_steps::{ChangeStep, ChangeSteps};

use crate::audit::{Audit, AuditEvent};
use crate::auth::{Identity, Role, Tokens};
use crate::keys::Keys;
use crate::publish::Publisher;
use crate::record::{ConfigRecord, Record, RecordError};

pub use configs::Changed;
pub use environments::{EnvironmentAgents, Whoami};
pub use health::Readiness;
pub use params::IF_MATCH_PATTERN;
pub use rollout::{AgentRollout, Rollout, Summary};

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
    /// The pre-flight check, when it is on.
    pub preflight: Option<Arc<crate::preflight::Preflight>>,
    /// `ferry_controller_change_step_duration_seconds{step}`.
    pub change_steps: ChangeSteps,
}

type Shared = Arc<ApiState>;

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: String,
    /// The request field it concerns (a document path like `virtual_hosts[0].hostname`, or
    /// `env`, `id`, `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The configuration's current version, when `If-Match` named another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// The configuration a pre-flight refusal is blamed on (absent when it is the one
    /// being created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blamed: Option<String>,
}

/// An error response: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    /// A refusal with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(
            status,
            ErrorBody {
                error: message.into(),
                field: None,
                current_version: None,
                blamed: None,
            },
        )
    }

    /// A refusal that names the request field at fault.
    pub fn field(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, message);
        e.1.field = Some(field.into());
        e
    }

    /// The status it answers.
    pub fn status(&self) -> StatusCode {
        self.0
    }

    /// The body it answers.
    pub fn body(&self) -> &ErrorBody {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

fn store_unavailable(e: etcd_client::Error) -> ApiError {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}"))
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match &e {
            RecordError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
            RecordError::Conflict { current, .. } => {
                let mut refusal = error(StatusCode::PRECONDITION_FAILED, e.to_string());
                refusal.1.current_version = Some(*current);
                refusal
            }
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
    /// Callers run it beside the pre-flight check (a refusal of the check still comes first):
    /// the round trip does not add to the time before the change is published.
    async fn ensure_store_writable(&self) -> Result<(), ApiError> {
        // A linearizable read needs the quorum, exactly as a write does.
        let mut client = self.client.clone();
        let probe = client.get(self.keys.root(), Some(GetOptions::new().with_count_only()));
        let answer = self.change_steps.time(
            ChangeStep::StoreProbe,
            tokio::time::timeout(std::time::Duration::from_secs(3), probe),
        );
        let reason = match answer.await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 3s".to_string(),
        };
        Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store cannot take writes now (no quorum or unreachable: {reason}); nothing was changed, try again"),
        ))
    }

    /// Runs the pre-flight check on `change` unless the admin skipped it (the reason is
    /// recorded in history by the caller). Refused: 422 with nginx's message.
    async fn preflight(
        &self,
        change: &crate::publish::PublishedConfig,
        existing: bool,
        skipped: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(check) = &self.preflight else {
            return Ok(());
        };
        if skipped.is_some() {
            return Ok(());
        }
        self.change_steps
            .time(
                ChangeStep::Preflight,
                self.run_preflight(check, change, existing),
            )
            .await
    }

    async fn run_preflight(
        &self,
        check: &crate::preflight::Preflight,
        change: &crate::publish::PublishedConfig,
        existing: bool,
    ) -> Result<(), ApiError> {
        let others: Vec<crate::publish::PublishedConfig> = self
            .record
            .list(&change.env)
            .await?
            .iter()
            .map(crate::publish::PublishedConfig::from)
            .collect();
        check
            .check(&change.env, &others, change)
            .await
            .map_err(|refusal| {
                let which = if existing {
                    format!("configuration {}", change.id)
                } else {
                    "the new configuration".to_string()
                };
                let mut e = error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "pre-flight check: nginx refuses environment {:?} with {which}; nothing was changed: {}",
                        change.env, refusal.message
                    ),
                );
                e.1.blamed = existing.then(|| change.id.clone());
                e
            })
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

/// The documented routes, each with its OpenAPI operation.
fn documented_routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(environments::whoami))
        .routes(routes!(environments::environments))
        .routes(routes!(configs::list, configs::create))
        .routes(routes!(configs::fetch, configs::update, configs::remove))
        .routes(routes!(configs::history))
        .routes(routes!(configs::rollback))
        .routes(routes!(rollout::status))
        .routes(routes!(rollout::status_events))
}

/// The OpenAPI document of the routes [`router`] serves, as served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    let (_, api) = documented_routes().split_for_parts();
    crate::openapi::finish(api)
}

/// The API's routes over `state`.
pub fn router(state: Shared) -> Router {
    let counter = state.requests.clone();
    let (routes, api) = documented_routes().split_for_parts();
    let document = Arc::new(crate::openapi::finish(api));
    routes
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .merge(crate::ui::routes())
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

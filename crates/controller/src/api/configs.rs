//! Configurations: create, list, get, replace, delete, history, rollback.
//!
//! Every secured operation can also answer 400, 401, 403 and 500 with an `ErrorBody`;
//! `crate::openapi` adds those to each operation's description.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::params::{
    if_match, valid_env, valid_skip_reason, ConfigPath, EnvPath, RollbackQuery, WriteQuery,
};
use super::{ApiError, ApiState, Caller, ChangeStep, ErrorBody, Shared};
use crate::auth::Role;
use crate::document::IngressDocument;
use crate::publish::PublishedConfig;
use crate::record::{Author, ConfigRecord};

/// The answer to a committed change: the record, and whether it reached the store.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Changed {
    /// The configuration as committed.
    #[serde(flatten)]
    pub record: ConfigRecord,
    /// Whether the store holds this version. SQL committed it either way; while `false`,
    /// the periodic reconciliation publishes it once the store takes writes.
    pub published: bool,
    /// Why it is not published yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_error: Option<String>,
}

fn etag(mut resp: Response, version: i64) -> Response {
    if let Ok(v) = format!("\"{version}\"").parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn parse_document(body: &[u8]) -> Result<IngressDocument, ApiError> {
    IngressDocument::from_json(body)
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, e.path, e.reason))
}

/// Publishes a committed change; `Err` says why it is not in the store yet.
async fn publish_after_commit(state: &ApiState, rec: &ConfigRecord) -> Result<(), String> {
    let publish = state.publisher.publish_change(rec);
    let published = state.change_steps.time(ChangeStep::Publish, publish).await;
    published.map_err(|e| {
        // SQL holds the change; the periodic reconciliation publishes it.
        tracing::warn!(env = %rec.env, id = %rec.id, error = %e, "publishing failed; reconciliation will retry");
        e.to_string()
    })
}

/// The pre-flight check of `document` as the next version of the configuration at `p`.
async fn check_replacement(
    s: &ApiState,
    p: &ConfigPath,
    document: IngressDocument,
    skipped: Option<&str>,
) -> Result<(), ApiError> {
    let current = s.record.get(&p.env, &p.id).await?;
    let candidate = PublishedConfig {
        version: current.version + 1,
        document,
        ..PublishedConfig::from(&current)
    };
    s.preflight(&candidate, true, skipped).await
}

async fn changed(state: &ApiState, status: StatusCode, record: ConfigRecord) -> Response {
    let published = publish_after_commit(state, &record).await;
    let version = record.version;
    let body = Changed {
        record,
        published: published.is_ok(),
        publish_error: published.err(),
    };
    etag((status, Json(body)).into_response(), version)
}

/// Create a configuration (version 1).
#[utoipa::path(post, path = "/api/v1/environments/{env}/configs", operation_id = "createConfig",
    tag = "configs", params(EnvPath, WriteQuery), security(("bearer" = [])),
    request_body(content = IngressDocument, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; ETag is its version", body = Changed,
            headers(("ETag" = String, description = "The version, quoted")),
            links(
                ("getConfig" = (operation_id = "getConfig", parameters(("env" = "$request.path.env"), ("id" = "$response.body#/id")))),
                ("updateConfig" = (operation_id = "updateConfig", parameters(("env" = "$request.path.env"), ("id" = "$response.body#/id"), ("header.If-Match" = "$response.header.ETag")))),
                ("deleteConfig" = (operation_id = "deleteConfig", parameters(("env" = "$request.path.env"), ("id" = "$response.body#/id"), ("header.If-Match" = "$response.header.ETag")))),
                ("getHistory" = (operation_id = "getHistory", parameters(("env" = "$request.path.env"), ("id" = "$response.body#/id")))),
                ("getStatus" = (operation_id = "getStatus", parameters(("env" = "$request.path.env"), ("id" = "$response.body#/id")))),
                ("rollbackConfig" = (operation_id = "rollbackConfig", parameters(("env" = "$request.path.env"), ("id" = "$response.body#/id"), ("version" = "$response.body#/version"), ("header.If-Match" = "$response.header.ETag")))),
            )),
        (status = 422, description = "The pre-flight check failed: nginx refuses the environment's configuration with this change; nothing was changed", body = ErrorBody),
        (status = 503, description = "The store cannot take writes; nothing was changed", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<Shared>,
    Path(p): Path<EnvPath>,
    Query(q): Query<WriteQuery>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    valid_env(&p.env)?;
    let skipped = valid_skip_reason(q.skip_preflight.as_deref())?;
    let who = s.authorize(&caller, Role::Admin, Some(&p.env))?;
    let doc = parse_document(&body)?;
    let candidate = PublishedConfig {
        id: uuid::Uuid::new_v4().to_string(),
        env: p.env.clone(),
        version: 1,
        document: doc.clone(),
        changed_by: who.name.clone(),
        changed_at: String::new(),
    };
    let (checked, writable) = tokio::join!(
        s.preflight(&candidate, false, skipped),
        s.ensure_store_writable()
    );
    checked.and(writable)?;
    let author = Author {
        name: &who.name,
        preflight_skipped: skipped,
    };
    let recorded = s.record.create(&p.env, &doc, author);
    let rec = s.change_steps.time(ChangeStep::Record, recorded).await?;
    s.audit_change("create", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::CREATED, rec).await)
}

/// The environment's configurations.
#[utoipa::path(get, path = "/api/v1/environments/{env}/configs", operation_id = "listConfigs",
    tag = "configs", params(EnvPath), security(("bearer" = [])),
    responses((status = 200, description = "Every configuration of the environment", body = Vec<ConfigRecord>)))]
pub async fn list(
    State(s): State<Shared>,
    Path(p): Path<EnvPath>,
    caller: Caller,
) -> Result<Response, ApiError> {
    valid_env(&p.env)?;
    s.authorize(&caller, Role::Read, Some(&p.env))?;
    Ok(Json(s.record.list(&p.env).await?).into_response())
}

/// One configuration; its ETag is its version.
#[utoipa::path(get, path = "/api/v1/environments/{env}/configs/{id}", operation_id = "getConfig",
    tag = "configs", params(ConfigPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "The configuration", body = ConfigRecord,
            headers(("ETag" = String, description = "The version, quoted"))),
        (status = 404, description = "No such configuration", body = ErrorBody),
    ))]
pub async fn fetch(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    caller: Caller,
) -> Result<Response, ApiError> {
    p.validate()?;
    s.authorize(&caller, Role::Read, Some(&p.env))?;
    let rec = s.record.get(&p.env, &p.id).await?;
    let version = rec.version;
    Ok(etag(Json(rec).into_response(), version))
}

/// Replace a configuration's document (`If-Match`: the version you changed).
#[utoipa::path(put, path = "/api/v1/environments/{env}/configs/{id}", operation_id = "updateConfig",
    tag = "configs", security(("bearer" = [])),
    params(ConfigPath, WriteQuery, ("If-Match" = String, Header, description = "The version you changed: its ETag (\"5\") or the number", pattern = r#"^("[0-9]{1,18}"|[0-9]{1,18})$"#)),
    request_body(content = IngressDocument, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed; ETag is the new version", body = Changed,
            headers(("ETag" = String, description = "The version, quoted")),
            links(
                ("getConfig" = (operation_id = "getConfig", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id")))),
                ("getHistory" = (operation_id = "getHistory", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id")))),
                ("rollbackConfig" = (operation_id = "rollbackConfig", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id"), ("version" = "1"), ("header.If-Match" = "$response.header.ETag")))),
                ("deleteConfig" = (operation_id = "deleteConfig", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id"), ("header.If-Match" = "$response.header.ETag")))),
            )),
        (status = 404, description = "No such configuration", body = ErrorBody),
        (status = 412, description = "If-Match is not the current version", body = ErrorBody),
        (status = 428, description = "If-Match is missing", body = ErrorBody),
        (status = 422, description = "The pre-flight check failed: nginx refuses the environment's configuration with this change; nothing was changed", body = ErrorBody),
        (status = 503, description = "The store cannot take writes; nothing was changed", body = ErrorBody),
    ))]
pub async fn update(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    Query(q): Query<WriteQuery>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.validate()?;
    let skipped = valid_skip_reason(q.skip_preflight.as_deref())?;
    let who = s.authorize(&caller, Role::Admin, Some(&p.env))?;
    let expected = if_match(&headers)?;
    let doc = parse_document(&body)?;
    let (checked, writable) = tokio::join!(
        check_replacement(&s, &p, doc.clone(), skipped),
        s.ensure_store_writable()
    );
    checked.and(writable)?;
    let author = Author {
        name: &who.name,
        preflight_skipped: skipped,
    };
    let recorded = s.record.update(&p.env, &p.id, expected, &doc, author);
    let rec = s.change_steps.time(ChangeStep::Record, recorded).await?;
    s.audit_change("update", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::OK, rec).await)
}

/// Delete a configuration (`If-Match`: its current version); its history stays.
#[utoipa::path(delete, path = "/api/v1/environments/{env}/configs/{id}", operation_id = "deleteConfig",
    tag = "configs", security(("bearer" = [])),
    params(ConfigPath, ("If-Match" = String, Header, description = "The version you deleted: its ETag (\"5\") or the number", pattern = r#"^("[0-9]{1,18}"|[0-9]{1,18})$"#)),
    responses(
        (status = 200, description = "Deleted: the deletion's record", body = Changed,
            headers(("ETag" = String, description = "The version, quoted")),
            links(
                ("getConfig" = (operation_id = "getConfig", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id")))),
            )),
        (status = 404, description = "No such configuration", body = ErrorBody),
        (status = 412, description = "If-Match is not the current version", body = ErrorBody),
        (status = 428, description = "If-Match is missing", body = ErrorBody),
        (status = 503, description = "The store cannot take writes; nothing was changed", body = ErrorBody),
    ))]
pub async fn remove(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    p.validate()?;
    let who = s.authorize(&caller, Role::Admin, Some(&p.env))?;
    let expected = if_match(&headers)?;
    s.ensure_store_writable().await?;
    let recorded = s.record.delete(&p.env, &p.id, expected, who.name.as_str());
    let rec = s.change_steps.time(ChangeStep::Record, recorded).await?;
    s.audit_change("delete", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::OK, rec).await)
}

/// Every version of a configuration, oldest first, deletions included (it outlives a
/// delete: the history is the audit trail).
#[utoipa::path(get, path = "/api/v1/environments/{env}/configs/{id}/history", operation_id = "getHistory",
    tag = "configs", params(ConfigPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "Every version", body = Vec<ConfigRecord>),
        (status = 404, description = "No such configuration, now or before", body = ErrorBody),
    ))]
pub async fn history(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    caller: Caller,
) -> Result<Response, ApiError> {
    p.validate()?;
    s.authorize(&caller, Role::Read, Some(&p.env))?;
    Ok(Json(s.record.history(&p.env, &p.id).await?).into_response())
}

/// Make an earlier version's document current again, as a new version (`If-Match`: the
/// current version).
#[utoipa::path(post, path = "/api/v1/environments/{env}/configs/{id}/rollback", operation_id = "rollbackConfig",
    tag = "configs", security(("bearer" = [])),
    params(ConfigPath, RollbackQuery, ("If-Match" = String, Header, description = "The current version: its ETag (\"5\") or the number", pattern = r#"^("[0-9]{1,18}"|[0-9]{1,18})$"#)),
    responses(
        (status = 200, description = "Rolled back; ETag is the new version", body = Changed,
            headers(("ETag" = String, description = "The version, quoted")),
            links(
                ("getConfig" = (operation_id = "getConfig", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id")))),
                ("getStatus" = (operation_id = "getStatus", parameters(("env" = "$request.path.env"), ("id" = "$request.path.id")))),
            )),
        (status = 404, description = "No such configuration or version", body = ErrorBody),
        (status = 412, description = "If-Match is not the current version", body = ErrorBody),
        (status = 428, description = "If-Match is missing", body = ErrorBody),
        (status = 422, description = "The pre-flight check failed: nginx refuses the environment's configuration with this change; nothing was changed", body = ErrorBody),
        (status = 503, description = "The store cannot take writes; nothing was changed", body = ErrorBody),
    ))]
pub async fn rollback(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    Query(q): Query<RollbackQuery>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    p.validate()?;
    q.validate()?;
    let who = s.authorize(&caller, Role::Admin, Some(&p.env))?;
    let expected = if_match(&headers)?;
    let target = s.record.version(&p.env, &p.id, q.version).await?;
    let skipped = q.skip_preflight.as_deref();
    let (checked, writable) = tokio::join!(
        check_replacement(&s, &p, target.document, skipped),
        s.ensure_store_writable()
    );
    checked.and(writable)?;
    let author = Author {
        name: &who.name,
        preflight_skipped: skipped,
    };
    let recorded = s
        .record
        .rollback(&p.env, &p.id, q.version, expected, author);
    let rec = s.change_steps.time(ChangeStep::Record, recorded).await?;
    s.audit_change("rollback", &who, &caller, &rec);
    Ok(changed(&s, StatusCode::OK, rec).await)
}

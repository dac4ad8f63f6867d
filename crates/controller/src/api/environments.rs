//! Environments with their live agents, and the caller's own identity.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use etcd_client::GetOptions;
use ferry_registry::Instance;
use serde::{Deserialize, Serialize};

use super::{store_unavailable, ApiError, Caller, ErrorBody, Shared};
use crate::auth::{Role, Scope};

/// One environment and its live agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentAgents {
    /// The environment.
    pub env: String,
    /// Its agents registered now (each one's lease is alive).
    pub agents: Vec<Instance>,
}

/// Who a token is and what it may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Whoami {
    /// The token holder's name (recorded in history and the audit log).
    pub name: String,
    /// `admin` (read and change) or `read`.
    #[schema(pattern = "^(admin|read)$")]
    pub role: String,
    /// The environments it covers; `null`: every environment.
    pub environments: Option<Vec<String>>,
}

/// The calling token's identity: a dashboard shows write controls only to `admin`.
#[utoipa::path(get, path = "/api/v1/whoami", operation_id = "whoami", tag = "environments",
    security(("bearer" = [])),
    responses((status = 200, description = "The token's name, role and environments", body = Whoami)))]
pub async fn whoami(State(s): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    let who = s.authorize(&caller, Role::Read, None)?;
    Ok(Json(Whoami {
        name: who.name.clone(),
        role: who.role.as_str().to_string(),
        environments: match &who.scope {
            Scope::All => None,
            Scope::Only(envs) => Some(envs.clone()),
        },
    })
    .into_response())
}

/// Every environment the token covers that has configurations or live agents, with its
/// live agents.
#[utoipa::path(get, path = "/api/v1/environments", operation_id = "listEnvironments", tag = "environments",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Environments and their live agents", body = Vec<EnvironmentAgents>),
        (status = 503, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn environments(State(s): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    let who = s.authorize(&caller, Role::Read, None)?;
    let mut envs: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
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
        .map_err(store_unavailable)?;
    for kv in all.kvs() {
        if let Ok(agent) = serde_json::from_slice::<Instance>(kv.value()) {
            envs.entry(agent.service.clone()).or_default().push(agent);
        }
    }
    let body: Vec<EnvironmentAgents> = envs
        .into_iter()
        .filter(|(env, _)| who.scope.covers(env))
        .map(|(env, agents)| EnvironmentAgents { env, agents })
        .collect();
    Ok(Json(body).into_response())
}

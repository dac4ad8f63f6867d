//! Rollout status: every live agent of the environment and what it applied of one
//! configuration, as one answer or as a live stream of server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use etcd_client::{GetOptions, WatchOptions, WatchStream};
use ferry_registry::Instance;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use std::collections::BTreeMap;

use super::params::ConfigPath;
use super::{store_unavailable, AgentStatus, ApiError, ApiState, Caller, ErrorBody, Shared};
use crate::auth::Role;
use crate::waves::WavePhase;

/// The rollout of one configuration: every live agent and what it applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
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
    /// The rollout in waves of this version, when its document has a strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<WaveStatus>,
}

/// Where a rollout in waves stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WaveStatus {
    /// Progressing, baking, complete, halted or rolled back.
    pub phase: WavePhase,
    /// The current wave, from 1.
    pub wave: usize,
    /// How many agents each wave covers (cumulative).
    pub sizes: Vec<usize>,
    /// The agents the version has been published to so far.
    pub targeted: Vec<String>,
    /// The version agents not yet reached (or rolled back) run.
    pub previous_version: Option<i64>,
    /// The agent that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_agent: Option<String>,
    /// Why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many live agents report each version (as a string key).
    pub agents_per_version: BTreeMap<String, usize>,
}

fn published_default() -> bool {
    true
}

/// One live agent's state for a configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AgentRollout {
    /// Agent name.
    pub agent: String,
    /// Its address.
    pub ip: String,
    /// Version it last reported (0: none yet).
    pub applied_version: i64,
    /// `applied`, `failed` or `pending` (the version is meant for it), `waiting` (a rollout
    /// in waves has not reached it) or `rolled_back` (it returned to the previous version).
    #[schema(pattern = "^(applied|failed|pending|waiting|rolled_back)$")]
    pub state: String,
    /// Failure reason.
    pub message: String,
}

/// Rollout counts; `complete` means every live agent (at least one) applied the current
/// version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
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

async fn live_agents(s: &ApiState, env: &str) -> Result<Vec<Instance>, ApiError> {
    let resp = s
        .client
        .clone()
        .get(s.keys.agents(env), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(store_unavailable)?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// The rollout as it stands: SQL's current version against the agents' reports.
async fn rollout(s: &ApiState, env: &str, id: &str) -> Result<Rollout, ApiError> {
    let rec = s.record.get(env, id).await?;
    let agents = live_agents(s, env).await?;
    let reports = s
        .client
        .clone()
        .get(
            s.keys.statuses(env, id),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(store_unavailable)?;
    let reports: Vec<AgentStatus> = reports
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    let waves = s
        .publisher
        .wave_rollout(env, id)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map(|(w, _)| w)
        .filter(|w| w.config.version == rec.version);
    let mut rows = Vec::new();
    for agent in agents {
        let report = reports.iter().find(|r| r.agent == agent.id);
        let reached = waves.as_ref().is_none_or(|w| {
            w.phase == WavePhase::Complete
                || (w.phase != WavePhase::RolledBack && w.targeted().contains(&agent.id))
        });
        let was_reached = waves
            .as_ref()
            .is_some_and(|w| w.phase == WavePhase::RolledBack && w.targeted().contains(&agent.id));
        let (applied_version, state, message) = match report {
            Some(r) if reached && r.version == rec.version && r.ok => {
                (r.version, "applied", r.message.clone())
            }
            Some(r) if reached && r.version == rec.version => {
                (r.version, "failed", r.message.clone())
            }
            Some(r) if was_reached && r.version != rec.version && r.ok => {
                (r.version, "rolled_back", String::new())
            }
            Some(r) if reached => (r.version, "pending", String::new()),
            Some(r) => (r.version, "waiting", String::new()),
            None if reached => (0, "pending", String::new()),
            None => (0, "waiting", String::new()),
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
        .get(s.keys.config(env, id), None)
        .await
        .map_err(store_unavailable)?;
    let stored_version = stored
        .kvs()
        .first()
        .and_then(|kv| crate::publish::stored_version(kv.value()));
    let published = stored_version.is_some_and(|v| v >= rec.version) || waves.is_some();
    let publish_pending = (!published).then(|| {
        format!(
            "version {} is committed but not yet in the store (it holds {}); the \
             reconciliation publishes it once the store takes writes",
            rec.version,
            stored_version.map_or("no version".to_string(), |v| format!("version {v}"))
        )
    });
    let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
    let waves = waves.map(|w| {
        let mut agents_per_version = BTreeMap::new();
        for row in rows.iter().filter(|r| r.applied_version > 0) {
            *agents_per_version
                .entry(row.applied_version.to_string())
                .or_insert(0) += 1;
        }
        WaveStatus {
            phase: w.phase,
            wave: w.wave + 1,
            sizes: w.sizes.clone(),
            targeted: w.targeted().to_vec(),
            previous_version: w.previous,
            failed_agent: w.failed_agent.clone(),
            reason: w.reason.clone(),
            agents_per_version,
        }
    });
    let summary = Summary {
        live: rows.len(),
        applied: count("applied"),
        failed: count("failed"),
        pending: count("pending"),
        complete: published
            && !rows.is_empty()
            && count("applied") == rows.len()
            && waves
                .as_ref()
                .is_none_or(|w| w.phase == WavePhase::Complete),
    };
    Ok(Rollout {
        version: rec.version,
        agents: rows,
        summary,
        published,
        publish_pending,
        waves,
    })
}

/// The rollout of a configuration to every live agent of its environment.
#[utoipa::path(get, path = "/api/v1/environments/{env}/configs/{id}/status", operation_id = "getStatus",
    tag = "rollout", params(ConfigPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "Per agent: the version it applied, or why it failed", body = Rollout),
        (status = 404, description = "No such configuration", body = ErrorBody),
        (status = 503, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn status(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    caller: Caller,
) -> Result<Response, ApiError> {
    p.validate()?;
    s.authorize(&caller, Role::Read, Some(&p.env))?;
    Ok(Json(rollout(&s, &p.env, &p.id).await?).into_response())
}

/// The rollout as server-sent events: a `rollout` event with the status at once, then one
/// whenever it changes (an agent reports, joins or leaves; a new version is published). An
/// `error` event (an `ErrorBody`) ends the stream, e.g. when the configuration is deleted
/// or the token no longer covers it.
#[utoipa::path(get, path = "/api/v1/environments/{env}/configs/{id}/status/events", operation_id = "streamStatus",
    tag = "rollout", params(ConfigPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "`event: rollout` with a Rollout as data, at once and on every change", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such configuration", body = ErrorBody),
        (status = 503, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn status_events(
    State(s): State<Shared>,
    Path(p): Path<ConfigPath>,
    caller: Caller,
) -> Result<Response, ApiError> {
    p.validate()?;
    s.authorize(&caller, Role::Read, Some(&p.env))?;
    let first = rollout(&s, &p.env, &p.id).await?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(follow(s, p, caller, first, tx));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

type EventSender = mpsc::Sender<Result<Event, Infallible>>;

fn rollout_event(r: &Rollout) -> Event {
    Event::default()
        .event("rollout")
        .data(serde_json::to_string(r).unwrap_or_default())
}

fn error_event(e: &ApiError) -> Event {
    Event::default()
        .event("error")
        .data(serde_json::to_string(e.body()).unwrap_or_default())
}

/// Watches what a rollout is made of and sends it again whenever it changed, until the
/// client goes away.
async fn follow(s: Shared, p: ConfigPath, caller: Caller, first: Rollout, tx: EventSender) {
    let mut last = first;
    if tx.send(Ok(rollout_event(&last))).await.is_err() {
        return;
    }
    loop {
        let watches = open_watches(&s, &p).await;
        let mut watches = match watches {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "rollout stream: watch failed; retrying");
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let changed = tokio::select! {
                _ = tx.closed() => return,
                m = watches.agents.message() => m.is_ok_and(|m| m.is_some()),
                m = watches.reports.message() => m.is_ok_and(|m| m.is_some()),
                m = watches.config.message() => m.is_ok_and(|m| m.is_some()),
                m = watches.waves.message() => m.is_ok_and(|m| m.is_some()),
            };
            // Reports of several agents arrive together: one recomputation covers them.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let current = match s.authorize(&caller, Role::Read, Some(&p.env)) {
                Ok(_) => rollout(&s, &p.env, &p.id).await,
                Err(e) => Err(e),
            };
            match current {
                Ok(r) if r != last => {
                    if tx.send(Ok(rollout_event(&r))).await.is_err() {
                        return;
                    }
                    last = r;
                }
                Ok(_) => {}
                Err(e) if e.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE => {}
                Err(e) => {
                    let _ = tx.send(Ok(error_event(&e))).await;
                    return;
                }
            }
            if !changed {
                // A watch ended or failed: open them again.
                break;
            }
        }
    }
}

/// The watches a rollout stream follows (each ends when dropped).
struct RolloutWatches {
    agents: WatchStream,
    reports: WatchStream,
    config: WatchStream,
    waves: WatchStream,
}

/// The agents of the environment, their reports on this configuration, the
/// configuration's published key and its rollout in waves.
async fn open_watches(s: &ApiState, p: &ConfigPath) -> Result<RolloutWatches, etcd_client::Error> {
    let mut client = s.client.clone();
    let prefix = || Some(WatchOptions::new().with_prefix());
    let agents = client.watch(s.keys.agents(&p.env), prefix()).await?;
    let reports = client
        .watch(s.keys.statuses(&p.env, &p.id), prefix())
        .await?;
    let config = client.watch(s.keys.config(&p.env, &p.id), None).await?;
    let waves = client.watch(s.keys.rollout(&p.env, &p.id), None).await?;
    Ok(RolloutWatches {
        agents,
        reports,
        config,
        waves,
    })
}

//! Rollouts in waves. A version whose document has a [`RolloutStrategy`] is not written to
//! the environment's key at once: the agents of the first wave get it under their own
//! `ingress_config_wave/<env>/<agent>/<uuid>` key (which they prefer to the environment's),
//! and the leader's driver moves on wave by wave once every agent of a wave applied it and
//! the bake time passed. The last wave ends with the environment's key holding the version
//! and the per-agent keys gone. A failure halts the rollout; with `on_failure: rollback` the
//! per-agent keys are deleted, so the agents that had the new version return to the
//! environment's (the previous) one.
//!
//! The progress lives in the store (`ingress_rollout/<env>/<uuid>`), written in the same
//! transaction as the per-agent keys and guarded by its revision, so a controller killed in
//! the middle of a wave, or a new leader, continues exactly where it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use ferry_registry::Instance;
use serde::{Deserialize, Serialize};

use crate::api::AgentStatus;
use crate::document::{OnFailure, RolloutStrategy};
use crate::publish::{stored_version, PublishError, PublishedConfig, Publisher};
use crate::record::ConfigRecord;

/// Where a rollout in waves stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WavePhase {
    /// The current wave's agents are applying the version.
    Progressing,
    /// Every agent of the current wave applied it; the bake time is running.
    Baking,
    /// Every wave is done: the environment's key holds the version.
    Complete,
    /// An agent failed; agents keep what they run (`on_failure: halt`).
    Halted,
    /// An agent failed; the agents that had the version returned to the previous one.
    RolledBack,
}

/// A configuration version's rollout in waves, as the controller keeps it in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveRollout {
    /// The version being rolled out.
    pub config: PublishedConfig,
    /// The version the environment's key held when it started.
    pub previous: Option<i64>,
    /// The strategy of the version's document.
    pub strategy: RolloutStrategy,
    /// Cumulative wave sizes over [`WaveRollout::agents`].
    pub sizes: Vec<usize>,
    /// The live agents when it started, in rollout order.
    pub agents: Vec<String>,
    /// The current wave (from 0).
    pub wave: usize,
    /// Where it stands.
    pub phase: WavePhase,
    /// When the current wave's bake time started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baking_since: Option<String>,
    /// The agent that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_agent: Option<String>,
    /// Why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WaveRollout {
    /// The agents the version has been published to so far.
    pub fn targeted(&self) -> &[String] {
        let n = self
            .sizes
            .get(self.wave)
            .copied()
            .unwrap_or(0)
            .min(self.agents.len());
        &self.agents[..n]
    }

    /// Whether the driver still has work on it.
    pub fn active(&self) -> bool {
        matches!(self.phase, WavePhase::Progressing | WavePhase::Baking)
    }

    /// Whether its per-agent keys are meant to be in the store.
    fn keeps_targets(&self) -> bool {
        matches!(
            self.phase,
            WavePhase::Progressing | WavePhase::Baking | WavePhase::Halted
        )
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn elapsed_since(rfc3339: &str) -> Duration {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

impl Publisher {
    /// The rollout in waves of `env`/`id` and its revision, if there is one.
    pub async fn wave_rollout(
        &self,
        env: &str,
        id: &str,
    ) -> Result<Option<(WaveRollout, i64)>, PublishError> {
        let resp = self
            .client()
            .get(self.keys().rollout(env, id), None)
            .await?;
        Ok(resp.kvs().first().and_then(|kv| {
            serde_json::from_slice(kv.value())
                .ok()
                .map(|r| (r, kv.mod_revision()))
        }))
    }

    async fn live_agents(&self, env: &str) -> Result<Vec<String>, PublishError> {
        let resp = self
            .client()
            .get(
                self.keys().agents(env),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Instance>(kv.value()).ok())
            .map(|i| i.id)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Starts rolling `record` out in waves by `strategy`, replacing any earlier rollout of
    /// the configuration (never one of a newer version).
    pub async fn start_waves(
        &self,
        record: &ConfigRecord,
        strategy: &RolloutStrategy,
    ) -> Result<(), PublishError> {
        let (env, id) = (record.env.as_str(), record.id.as_str());
        loop {
            let agents = self.live_agents(env).await?;
            let sizes = strategy.sizes(agents.len());
            if sizes.is_empty() {
                // No agent to roll out to: the version is simply the environment's.
                self.publish(record).await?;
                return self.clear_waves(env, id).await;
            }
            let old = self.wave_rollout(env, id).await?;
            if old
                .as_ref()
                .is_some_and(|(r, _)| r.config.version >= record.version)
            {
                return Ok(());
            }
            let previous = self
                .client()
                .get(self.keys().config(env, id), None)
                .await?
                .kvs()
                .first()
                .and_then(|kv| stored_version(kv.value()));
            let state = WaveRollout {
                config: PublishedConfig::from(record),
                previous,
                strategy: strategy.clone(),
                sizes,
                agents,
                wave: 0,
                phase: WavePhase::Progressing,
                baking_since: None,
                failed_agent: None,
                reason: None,
            };
            let mut ops = Vec::new();
            if let Some((old, _)) = &old {
                // The old rollout's targets go, except those the new one overwrites (a
                // transaction may not name a key twice).
                for agent in old.agents.iter().filter(|a| !state.targeted().contains(a)) {
                    ops.push(TxnOp::delete(self.keys().wave_target(env, agent, id), None));
                }
            }
            let body = serde_json::to_vec(&state.config).unwrap_or_default();
            for agent in state.targeted() {
                ops.push(TxnOp::put(
                    self.keys().wave_target(env, agent, id),
                    body.clone(),
                    None,
                ));
            }
            ops.push(TxnOp::put(
                self.keys().rollout(env, id),
                serde_json::to_vec(&state).unwrap_or_default(),
                None,
            ));
            if self
                .commit_guarded(env, id, old.map(|(_, rev)| rev), ops)
                .await?
            {
                tracing::info!(env, id, version = record.version, sizes = ?state.sizes, "rollout in waves started");
                return Ok(());
            }
        }
    }

    /// Ends any rollout in waves of `env`/`id`: its per-agent keys and its record.
    pub async fn clear_waves(&self, env: &str, id: &str) -> Result<(), PublishError> {
        let Some((old, _)) = self.wave_rollout(env, id).await? else {
            return Ok(());
        };
        let mut ops: Vec<TxnOp> = old
            .agents
            .iter()
            .map(|agent| TxnOp::delete(self.keys().wave_target(env, agent, id), None))
            .collect();
        ops.push(TxnOp::delete(self.keys().rollout(env, id), None));
        self.client().txn(Txn::new().and_then(ops)).await?;
        Ok(())
    }

    /// Applies `ops` if the rollout record is still at `revision` (absent when `None`).
    async fn commit_guarded(
        &self,
        env: &str,
        id: &str,
        revision: Option<i64>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, PublishError> {
        let key = self.keys().rollout(env, id);
        let guard = match revision {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([guard]).and_then(ops);
        Ok(self.client().txn(txn).await?.succeeded())
    }

    /// One pass of the driver over every active rollout in waves; how many moved.
    pub async fn advance_waves(&self) -> Result<usize, PublishError> {
        let resp = self
            .client()
            .get(
                self.keys().all_rollouts(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut moved = 0;
        for kv in resp.kvs() {
            let Ok(state) = serde_json::from_slice::<WaveRollout>(kv.value()) else {
                continue;
            };
            if state.active() && self.advance(state, kv.mod_revision()).await? {
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Moves one rollout on if it can: a failure stops it, a wave all applied starts its
    /// bake time, a baked wave gives way to the next, the last one completes it.
    async fn advance(&self, mut state: WaveRollout, revision: i64) -> Result<bool, PublishError> {
        let (env, id) = (state.config.env.clone(), state.config.id.clone());
        let version = state.config.version;
        let live: BTreeSet<String> = self.live_agents(&env).await?.into_iter().collect();
        let reports: BTreeMap<String, AgentStatus> = self
            .client()
            .get(
                self.keys().statuses(&env, &id),
                Some(GetOptions::new().with_prefix()),
            )
            .await?
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<AgentStatus>(kv.value()).ok())
            .map(|s| (s.agent.clone(), s))
            .collect();
        // Agents that left are not waited for.
        let wave: Vec<&String> = state
            .targeted()
            .iter()
            .filter(|a| live.contains(*a))
            .collect();
        let failed = wave.iter().find_map(|a| {
            reports
                .get(*a)
                .filter(|r| r.version == version && !r.ok)
                .map(|r| (a.to_string(), r.message.clone()))
        });
        let mut ops = Vec::new();
        if let Some((agent, message)) = failed {
            state.failed_agent = Some(agent.clone());
            state.reason = Some(format!(
                "agent {agent} failed version {version} in wave {}: {message}",
                state.wave + 1
            ));
            state.baking_since = None;
            match state.strategy.on_failure {
                OnFailure::Rollback => {
                    state.phase = WavePhase::RolledBack;
                    for a in &state.agents {
                        ops.push(TxnOp::delete(self.keys().wave_target(&env, a, &id), None));
                    }
                }
                OnFailure::Halt => state.phase = WavePhase::Halted,
            }
            tracing::warn!(env, id, version, reason = ?state.reason, phase = ?state.phase, "rollout in waves stopped");
        } else {
            let all_applied = wave.iter().all(|a| {
                reports
                    .get(*a)
                    .is_some_and(|r| r.version == version && r.ok)
            });
            match (state.phase, all_applied) {
                (WavePhase::Progressing, true) => {
                    state.phase = WavePhase::Baking;
                    state.baking_since = Some(now());
                }
                (WavePhase::Baking, _) => {
                    let baked = state
                        .baking_since
                        .as_deref()
                        .map(elapsed_since)
                        .unwrap_or_default()
                        >= Duration::from_secs(u64::from(state.strategy.bake_seconds));
                    if !baked {
                        return Ok(false);
                    }
                    if state.wave + 1 < state.sizes.len() {
                        let before = state.targeted().len();
                        state.wave += 1;
                        state.phase = WavePhase::Progressing;
                        state.baking_since = None;
                        let body = serde_json::to_vec(&state.config).unwrap_or_default();
                        for a in &state.targeted()[before..] {
                            ops.push(TxnOp::put(
                                self.keys().wave_target(&env, a, &id),
                                body.clone(),
                                None,
                            ));
                        }
                        tracing::info!(
                            env,
                            id,
                            version,
                            wave = state.wave + 1,
                            agents = state.targeted().len(),
                            "next wave"
                        );
                    } else {
                        // Every wave done: the version is the environment's.
                        let body = serde_json::to_vec(&state.config).unwrap_or_default();
                        ops.push(TxnOp::put(self.keys().config(&env, &id), body, None));
                        for a in &state.agents {
                            ops.push(TxnOp::delete(self.keys().wave_target(&env, a, &id), None));
                        }
                        state.phase = WavePhase::Complete;
                        state.baking_since = None;
                        tracing::info!(env, id, version, "rollout in waves complete");
                    }
                }
                _ => return Ok(false),
            }
        }
        ops.push(TxnOp::put(
            self.keys().rollout(&env, &id),
            serde_json::to_vec(&state).unwrap_or_default(),
            None,
        ));
        self.commit_guarded(&env, &id, Some(revision), ops).await
    }

    /// Deletes per-agent keys no rollout in waves accounts for (a controller that died
    /// between two writes, a restored snapshot).
    pub(crate) async fn remove_stray_wave_targets(&self) -> Result<usize, PublishError> {
        let prefix = self.keys().all_wave_targets();
        let targets = self
            .client()
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let mut removed = 0;
        let mut states: BTreeMap<(String, String), Option<WaveRollout>> = BTreeMap::new();
        for kv in targets.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let mut parts = key.strip_prefix(&prefix).unwrap_or_default().splitn(3, '/');
            let (Some(env), Some(agent), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let state = match states.get(&(env.to_string(), id.to_string())) {
                Some(s) => s.clone(),
                None => {
                    let s = self.wave_rollout(env, id).await?.map(|(s, _)| s);
                    states.insert((env.to_string(), id.to_string()), s.clone());
                    s
                }
            };
            let wanted =
                state.is_some_and(|s| s.keeps_targets() && s.targeted().iter().any(|a| a == agent));
            if !wanted {
                self.client().delete(key.as_str(), None).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

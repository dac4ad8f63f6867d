//! Announcing an instance: one lease, kept alive, re-announced if it is lost.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Instance, RegistryError, DEFAULT_PREFIX};

/// How an instance is announced.
#[derive(Debug, Clone)]
pub struct AnnounceConfig {
    /// Key prefix (default `/services`).
    pub prefix: String,
    /// Lease TTL in seconds (default 5).
    pub ttl: i64,
    /// Keep-alive interval (default 2 s).
    pub keep_alive_interval: Duration,
    /// Longest wait between re-announce attempts while the store is unreachable.
    pub max_retry_backoff: Duration,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
            ttl: 5,
            keep_alive_interval: Duration::from_secs(2),
            max_retry_backoff: Duration::from_secs(2),
        }
    }
}

/// Where an announcement stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceState {
    /// Registered under this lease.
    Live {
        /// The lease id.
        lease: i64,
    },
    /// The lease was lost; re-announcing.
    Reconnecting {
        /// Why.
        reason: String,
    },
}

/// A running announcement; [`Announcement::stop`] deregisters.
pub struct Announcement {
    key: String,
    state: watch::Receiver<AnnounceState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    client: Client,
}

/// Registers `instance` and keeps it registered until [`Announcement::stop`]. Returns once
/// the instance is visible in the store.
pub async fn announce(
    mut client: Client,
    config: AnnounceConfig,
    instance: Instance,
) -> Result<Announcement, RegistryError> {
    instance.validate()?;
    if config.ttl < 1 {
        return Err(RegistryError::Invalid {
            what: "TTL",
            reason: format!("{} s: must be at least 1 s", config.ttl),
        });
    }
    if config.keep_alive_interval < std::time::Duration::from_millis(100) {
        return Err(RegistryError::Invalid {
            what: "keep-alive interval",
            reason: format!("{:?} must be at least 100ms", config.keep_alive_interval),
        });
    }
    if config.keep_alive_interval.as_secs_f64() >= config.ttl as f64 {
        return Err(RegistryError::Invalid {
            what: "keep-alive interval",
            reason: format!(
                "{:?} must be shorter than the TTL ({} s)",
                config.keep_alive_interval, config.ttl
            ),
        });
    }
    let key = instance.key(&config.prefix);
    let value = serde_json::to_vec(&instance).map_err(|e| RegistryError::Invalid {
        what: "instance",
        reason: e.to_string(),
    })?;
    let lease = register(&mut client, &key, &value, config.ttl).await?;
    let (state_tx, state) = watch::channel(AnnounceState::Live { lease });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(keep_registered(
        client.clone(),
        config,
        key.clone(),
        value,
        lease,
        state_tx,
        stopped,
    ));
    Ok(Announcement {
        key,
        state,
        stop,
        task,
        client,
    })
}

async fn register(
    client: &mut Client,
    key: &str,
    value: &[u8],
    ttl: i64,
) -> Result<i64, RegistryError> {
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(RegistryError::store(format!("granting a lease for {key}")))?
        .id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(RegistryError::store(format!("writing {key}")))?;
    Ok(lease)
}

/// Keeps the lease alive; when it is lost (expired during a partition, store restored or
/// restarted without it) the instance registers again under a new lease.
async fn keep_registered(
    mut client: Client,
    config: AnnounceConfig,
    key: String,
    value: Vec<u8>,
    mut lease: i64,
    state: watch::Sender<AnnounceState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let reason = tokio::select! {
            reason = keep_alive(&mut client, lease, config.keep_alive_interval) => reason,
            _ = stopped.wait_for(|s| *s) => return,
        };
        tracing::warn!(key = %key, lease, %reason, "registration lost; announcing again");
        let _ = state.send(AnnounceState::Reconnecting { reason });
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            match register(&mut client, &key, &value, config.ttl).await {
                Ok(new_lease) => {
                    lease = new_lease;
                    backoff = Duration::from_millis(100);
                    tracing::info!(key = %key, lease, "announced again");
                    let _ = state.send(AnnounceState::Live { lease });
                    break;
                }
                Err(e) => {
                    tracing::debug!(key = %key, error = %e, "re-announce failed");
                    backoff = (backoff * 2).min(config.max_retry_backoff);
                }
            }
        }
    }
}

/// Renews `lease` every `interval`; returns why it stopped working.
async fn keep_alive(client: &mut Client, lease: i64, interval: Duration) -> String {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return format!("opening the keep-alive stream: {e}"),
    };
    let mut timer = tokio::time::interval(interval);
    loop {
        timer.tick().await;
        if let Err(e) = keeper.keep_alive().await {
            return format!("sending a keep-alive: {e}");
        }
        match tokio::time::timeout(interval * 2, responses.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "the lease expired".into(),
            Ok(Ok(None)) => return "the keep-alive stream ended".into(),
            Ok(Err(e)) => return format!("keep-alive failed: {e}"),
            Err(_) => return "no keep-alive answer".into(),
        }
    }
}

impl Announcement {
    /// The key the instance is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current state.
    pub fn state(&self) -> AnnounceState {
        self.state.borrow().clone()
    }

    /// Waits for the next state change.
    pub async fn changed(&mut self) -> Result<AnnounceState, RegistryError> {
        self.state
            .changed()
            .await
            .map_err(|_| RegistryError::Stopped("announcement task ended".into()))?;
        Ok(self.state())
    }

    /// Deregisters: revokes the lease, so the key disappears at once.
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        if let AnnounceState::Live { lease } = self.state() {
            match self.client.lease_revoke(lease).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "revoking the lease failed; deleting the key")
                }
            }
        }
        self.client
            .delete(self.key.as_str(), None)
            .await
            .map_err(RegistryError::store(format!("deleting {}", self.key)))?;
        Ok(())
    }
}

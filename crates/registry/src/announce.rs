//! Announcing an instance: one lease, kept alive, re-announced if it is lost.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use parking_lot::Mutex;
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
    /// The keep-alive stream is broken (the lease is kept and renewed again as soon as a
    /// member answers) or the lease is gone (the instance is being registered again).
    Reconnecting {
        /// Why.
        reason: String,
    },
}

/// A running announcement; [`Announcement::stop`] deregisters.
pub struct Announcement {
    key: String,
    prefix: String,
    /// The record as registered now; a re-registration after a lost lease writes this one.
    value: Arc<Mutex<Vec<u8>>>,
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
    let value = Arc::new(Mutex::new(value));
    let prefix = config.prefix.clone();
    let task = tokio::spawn(keep_registered(
        client.clone(),
        config,
        key.clone(),
        value.clone(),
        lease,
        state_tx,
        stopped,
    ));
    Ok(Announcement {
        key,
        prefix,
        value,
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

/// Why keeping a lease alive stopped.
enum KeepAliveEnd {
    /// The store says the lease is gone (expired or revoked): only now is the instance
    /// registered again, under a new lease.
    LeaseGone,
    /// The stream broke (a member died, a partition): the lease may well be alive, so the
    /// keep-alive is reopened on the same lease, on whichever member answers.
    StreamBroken(String),
}

/// Keeps the lease alive across broken streams, and registers again only when the store
/// says the lease is gone. While the stream is down the state is `Reconnecting`; the
/// registration itself stays as it is.
async fn keep_registered(
    mut client: Client,
    config: AnnounceConfig,
    key: String,
    value: Arc<Mutex<Vec<u8>>>,
    mut lease: i64,
    state: watch::Sender<AnnounceState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let end = tokio::select! {
            end = keep_alive(&mut client, lease, &config, &state) => end,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match end {
            KeepAliveEnd::StreamBroken(reason) => {
                if matches!(*state.borrow(), AnnounceState::Live { .. }) {
                    // The stream had worked: this is a new failure, not a retry.
                    backoff = Duration::from_millis(100);
                }
                tracing::info!(key = %key, lease, %reason, "keep-alive stream broken; reopening it on the same lease");
                let _ = state.send(AnnounceState::Reconnecting { reason });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                // The lease is still alive and must be renewed within its TTL: retries on a
                // broken stream stay at most one keep-alive interval apart (a growing
                // backoff outlasted a 5 s TTL while a paused member kept timing out).
                backoff = (backoff * 2).min(config.keep_alive_interval);
                continue;
            }
            KeepAliveEnd::LeaseGone => {
                tracing::warn!(key = %key, lease, "the lease is gone; announcing again");
                let _ = state.send(AnnounceState::Reconnecting {
                    reason: "the lease expired".into(),
                });
            }
        }
        loop {
            let current = value.lock().clone();
            match register(&mut client, &key, &current, config.ttl).await {
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
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }
}

/// How long a keep-alive stream may take to open or to answer before it is given up and
/// opened again: short enough that three tries after a missed renewal still fit in the TTL
/// (a member that stopped answering, paused or partitioned, must not cost the lease), never
/// more than two intervals, and at least 100 ms.
fn patience(ttl: i64, interval: Duration) -> Duration {
    let room = Duration::from_secs(u64::try_from(ttl).unwrap_or(0)).saturating_sub(interval);
    (room / 3).clamp(Duration::from_millis(100), interval * 2)
}

/// Renews `lease` every keep-alive interval until the stream breaks or the lease is gone;
/// marks the registration live again once a renewal succeeds.
async fn keep_alive(
    client: &mut Client,
    lease: i64,
    config: &AnnounceConfig,
    state: &watch::Sender<AnnounceState>,
) -> KeepAliveEnd {
    let interval = config.keep_alive_interval;
    let patience = patience(config.ttl, interval);
    let opening = tokio::time::timeout(patience, client.lease_keep_alive(lease)).await;
    let (mut keeper, mut responses) = match opening {
        Ok(Ok(pair)) => pair,
        // etcd-client sends a first keep-alive when opening and reports a gone lease so.
        Ok(Err(e)) if e.to_string().contains("lease not found") => return KeepAliveEnd::LeaseGone,
        Ok(Err(e)) => {
            return KeepAliveEnd::StreamBroken(format!("opening the keep-alive stream: {e}"))
        }
        Err(_) => {
            return KeepAliveEnd::StreamBroken("opening the keep-alive stream timed out".into())
        }
    };
    let mut timer = tokio::time::interval(interval);
    loop {
        timer.tick().await;
        if let Err(e) = keeper.keep_alive().await {
            return KeepAliveEnd::StreamBroken(format!("sending a keep-alive: {e}"));
        }
        match tokio::time::timeout(patience, responses.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                if !matches!(*state.borrow(), AnnounceState::Live { lease: l } if l == lease) {
                    let _ = state.send(AnnounceState::Live { lease });
                }
            }
            Ok(Ok(Some(_))) => return KeepAliveEnd::LeaseGone,
            Ok(Ok(None)) => {
                return KeepAliveEnd::StreamBroken("the keep-alive stream ended".into())
            }
            Ok(Err(e)) if e.to_string().contains("lease not found") => {
                return KeepAliveEnd::LeaseGone
            }
            Ok(Err(e)) => return KeepAliveEnd::StreamBroken(format!("keep-alive failed: {e}")),
            Err(_) => return KeepAliveEnd::StreamBroken("no keep-alive answer".into()),
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

    /// Replaces the registered record (new labels, a new version) under the same key and
    /// lease; a later re-registration writes the new record. The service and id cannot
    /// change: they make the key.
    pub async fn update(&mut self, instance: &Instance) -> Result<(), RegistryError> {
        instance.validate()?;
        if instance.key(&self.prefix) != self.key {
            return Err(RegistryError::Invalid {
                what: "instance",
                reason: format!(
                    "{} is not the announced {}",
                    instance.key(&self.prefix),
                    self.key
                ),
            });
        }
        let value = serde_json::to_vec(instance).map_err(|e| RegistryError::Invalid {
            what: "instance",
            reason: e.to_string(),
        })?;
        *self.value.lock() = value.clone();
        if let AnnounceState::Live { lease } = self.state() {
            self.client
                .put(
                    self.key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(RegistryError::store(format!("updating {}", self.key)))?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// After the last renewal the next goes out one interval later; if the member does not
    /// answer, two tries (each given up after `patience`, then a 100 ms pause) end before
    /// the TTL, leaving a third one time to reach another member, whenever the TTL leaves
    /// 600 ms beyond the interval.
    #[test]
    fn two_silent_tries_end_before_the_ttl() {
        let pause = Duration::from_millis(100);
        for ttl in [1, 2, 3, 5, 8, 10, 30, 60] {
            for interval_ms in [100, 250, 500, 1_000, 2_000, 5_000, 20_000] {
                let interval = Duration::from_millis(interval_ms);
                let lease = Duration::from_secs(ttl as u64);
                if interval >= lease {
                    continue; // refused by `announce`
                }
                let wait = patience(ttl, interval);
                assert!(wait >= pause, "ttl {ttl}, interval {interval:?}");
                assert!(wait <= interval * 2, "ttl {ttl}, interval {interval:?}");
                if lease >= interval + 6 * pause {
                    let second_given_up = interval + 2 * (wait + pause);
                    assert!(
                        second_given_up <= lease,
                        "ttl {ttl}, interval {interval:?}: {second_given_up:?}"
                    );
                }
            }
        }
        // The defaults (5 s, 2 s) gave up on a silent member only after 4 s, past the TTL.
        assert_eq!(patience(5, Duration::from_secs(2)), Duration::from_secs(1));
    }
}

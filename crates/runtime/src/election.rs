//! Leader election on an etcd lease, as etcd's own election API (`concurrency.Election`):
//! each candidate puts `<prefix>/<lease id>` with its lease; the key with the lowest create
//! revision leads; every other candidate waits for the deletion of the key just before its
//! own. A leader's writes are fenced: they run in a transaction that compares the leader
//! key's create revision, so a leader whose lease is gone cannot write.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why an election operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The store refused or could not answer.
    #[error("{action}: {source}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },
    /// The leadership is gone (lease expired or revoked): the write was not made.
    #[error("not the leader any more (key {0} is gone)")]
    NotLeader(String),
}

fn store(action: &'static str) -> impl FnOnce(etcd_client::Error) -> ElectionError {
    move |source| ElectionError::Store { action, source }
}

/// An election among the candidates under one prefix.
///
/// ```no_run
/// # async fn demo(client: etcd_client::Client) -> Result<(), ferry_runtime::election::ElectionError> {
/// use ferry_runtime::Election;
/// let election = Election::new(client, "/ferry/election/reconciler", 5);
/// let leadership = election.campaign("replica-1").await?;
/// // Only the leader's writes land; a deposed leader gets ElectionError::NotLeader.
/// leadership.fenced([etcd_client::TxnOp::put("/state", "written by the leader", None)]).await?;
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Election {
    client: Client,
    prefix: String,
    ttl: i64,
}

/// Being the leader. Dropping it stops the keep-alive without resigning (as a crash would:
/// the lease then expires); [`Leadership::resign`] hands over at once.
pub struct Leadership {
    client: Client,
    key: String,
    lease: i64,
    create_revision: i64,
    lost: watch::Receiver<bool>,
    keep_alive: JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl Election {
    /// Candidates under `prefix`, each holding a lease of `ttl` seconds.
    pub fn new(client: Client, prefix: &str, ttl: i64) -> Self {
        Self {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            ttl,
        }
    }

    /// Becomes a candidate with `value` and waits until it leads.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership, ElectionError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.ttl, None)
            .await
            .map_err(store("granting the election lease"))?
            .id();
        let key = format!("{}/{lease:x}", self.prefix);
        let value = value.into();
        let put = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = client
            .txn(put)
            .await
            .map_err(store("creating the candidate key"))?;
        let create_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let (lost_tx, lost) = watch::channel(false);
        let keep_alive = tokio::spawn(keep_alive(client.clone(), lease, self.ttl, lost_tx));
        let leadership = Leadership {
            client: client.clone(),
            key: key.clone(),
            lease,
            create_revision,
            lost,
            keep_alive,
        };
        loop {
            let before = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(create_revision - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1);
            let resp = client
                .get(format!("{}/", self.prefix), Some(before))
                .await
                .map_err(store("finding the previous candidate"))?;
            let Some(previous) = resp.kvs().first() else {
                return Ok(leadership);
            };
            let previous = previous.key().to_vec();
            let from = resp.header().map(|h| h.revision()).unwrap_or(0) + 1;
            let mut stream = client
                .watch(
                    previous.clone(),
                    Some(WatchOptions::new().with_start_revision(from)),
                )
                .await
                .map_err(store("watching the previous candidate"))?;
            'wait: loop {
                match stream
                    .message()
                    .await
                    .map_err(store("watching the previous candidate"))?
                {
                    Some(resp) => {
                        if resp
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Delete)
                            || resp.canceled()
                        {
                            break 'wait;
                        }
                    }
                    None => break 'wait,
                }
            }
            if *leadership.lost.borrow() {
                return Err(ElectionError::NotLeader(key));
            }
        }
    }

    /// Follows the leadership: the receiver always holds the current leader's value (`None`
    /// while nobody leads) and changes when the leader does. Ends when the receiver drops.
    pub fn observe(&self) -> watch::Receiver<Option<Vec<u8>>> {
        let (tx, rx) = watch::channel(None);
        let election = self.clone();
        tokio::spawn(async move {
            let mut client = election.client.clone();
            let prefix = format!("{}/", election.prefix);
            let first = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1);
            loop {
                let resp = match client.get(prefix.as_str(), Some(first.clone())).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "observing the election; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let leader = resp.kvs().first().map(|kv| kv.value().to_vec());
                let read_at = resp.header().map(|h| h.revision()).unwrap_or(0);
                tx.send_if_modified(|current| {
                    let changed = *current != leader;
                    *current = leader;
                    changed
                });
                // Watch from just after the read, so no change between the two is missed.
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(read_at + 1);
                let Ok(mut stream) = client.watch(prefix.as_str(), Some(options)).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        m = stream.message() => match m {
                            Ok(Some(resp)) if resp.events().is_empty() && !resp.canceled() => continue,
                            _ => break,
                        }
                    }
                }
            }
        });
        rx
    }

    /// The current leader's key and value, if any.
    pub async fn leader(&self) -> Result<Option<(String, Vec<u8>)>, ElectionError> {
        let mut client = self.client.clone();
        let first = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let resp = client
            .get(format!("{}/", self.prefix), Some(first))
            .await
            .map_err(store("reading the leader"))?;
        Ok(resp.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        }))
    }
}

async fn keep_alive(mut client: Client, lease: i64, ttl: i64, lost: watch::Sender<bool>) {
    let interval = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    let Ok((mut keeper, mut responses)) = client.lease_keep_alive(lease).await else {
        let _ = lost.send(true);
        return;
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if keeper.keep_alive().await.is_err() {
            break;
        }
        match responses.message().await {
            Ok(Some(r)) if r.ttl() > 0 => {}
            _ => break,
        }
    }
    let _ = lost.send(true);
}

impl Leadership {
    /// The leader key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the lease was lost (the leadership is gone).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Waits until the leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// The comparison that holds only while this leadership does, for a caller that builds
    /// its own transactions.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.create_revision)
    }

    /// Runs `ops` only while this leadership holds: fails with `NotLeader` otherwise.
    pub async fn fenced(&self, ops: impl Into<Vec<TxnOp>>) -> Result<TxnResponse, ElectionError> {
        let txn = Txn::new().when([self.fence()]).and_then(ops);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(store("fenced write"))?;
        if resp.succeeded() {
            Ok(resp)
        } else {
            Err(ElectionError::NotLeader(self.key.clone()))
        }
    }

    /// Steps down at once: the lease is revoked and the next candidate leads.
    pub async fn resign(self) -> Result<(), ElectionError> {
        self.keep_alive.abort();
        self.client
            .clone()
            .lease_revoke(self.lease)
            .await
            .map_err(store("revoking the election lease"))?;
        Ok(())
    }
}

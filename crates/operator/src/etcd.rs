//! Talking to a managed cluster: one client per member for per-member calls (status, move
//! leader), a client over the voters for membership changes, every call bounded by a
//! timeout (etcd waits for membership changes without a deadline of its own).

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Member, MemberAddOptions, TlsOptions};

use crate::spec::ClusterSpec;

/// How long one call to a managed cluster may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A call to a managed cluster that failed: the message says which and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EtcdCallError(pub String);

impl EtcdCallError {
    /// Whether etcd refused to promote a learner that has not caught up yet.
    pub fn learner_not_ready(&self) -> bool {
        self.0.contains("in sync with leader")
    }
}

async fn bounded<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdCallError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(EtcdCallError(format!("{what}: {e}"))),
        Err(_) => Err(EtcdCallError(format!(
            "{what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// How the operator reaches a cluster's members: plain, or TLS with the cluster's CA and
/// (for client certificate authentication) the member certificate as its client identity.
#[derive(Clone, Default)]
pub struct Access {
    tls: Option<TlsOptions>,
}

impl Access {
    /// The access `spec` declares; its TLS files are read now.
    pub fn of(spec: &ClusterSpec) -> Result<Self, EtcdCallError> {
        let Some(client) = spec.tls.as_ref().and_then(|t| t.client.as_ref()) else {
            return Ok(Self::default());
        };
        let files = ferry_client::TlsFiles {
            ca: Some(client.trusted_ca_file.clone()),
            cert: Some(client.cert_file.clone()),
            key: Some(client.key_file.clone()),
            insecure_skip_verify: false,
        };
        let tls = ferry_client::tls_options(&files)
            .map_err(|e| EtcdCallError(format!("tls.client: {e}")))?;
        Ok(Self { tls: Some(tls) })
    }

    async fn client(&self, urls: &[String]) -> Result<Client, EtcdCallError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(CALL_TIMEOUT);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        bounded(
            &format!("connecting to {}", urls.join(",")),
            Client::connect(urls, Some(options)),
        )
        .await
    }

    /// A client of the member at `url`, connected without a call of its own.
    pub async fn member_client(&self, url: &str) -> Result<Client, EtcdCallError> {
        self.client(&[url.to_string()]).await
    }
}

/// What one member says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHealth {
    /// Its id.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its store revision.
    pub revision: i64,
    /// Its database size.
    pub db_size: i64,
    /// The part of the database in use (the rest is free pages a defragmentation returns).
    pub db_in_use: i64,
    /// Whether it is a learner.
    pub learner: bool,
}

impl Access {
    /// Asks the member at `url` for its status; `None` when it does not answer, has no leader
    /// or reports an error.
    pub async fn health(&self, url: &str) -> Option<MemberHealth> {
        let mut c = self.client(&[url.to_string()]).await.ok()?;
        let status = tokio::time::timeout(Duration::from_secs(1), c.status())
            .await
            .ok()?
            .ok()?;
        if status.leader() == 0 || !status.errors().is_empty() {
            return None;
        }
        let header = status.header()?;
        Some(MemberHealth {
            id: header.member_id(),
            leader: status.leader(),
            revision: header.revision(),
            db_size: status.db_size(),
            db_in_use: status.raft_used_db_size(),
            learner: status.is_learner(),
        })
    }

    /// The store revision of the member at `url`, leader or not (a member of a cluster that
    /// lost quorum still answers this).
    pub async fn revision(&self, url: &str) -> Option<i64> {
        let mut c = self.client(&[url.to_string()]).await.ok()?;
        let status = tokio::time::timeout(Duration::from_secs(1), c.status())
            .await
            .ok()?
            .ok()?;
        status.header().map(|h| h.revision())
    }

    /// The member list, as the members at `urls` see it.
    pub async fn member_list(&self, urls: &[String]) -> Result<Vec<Member>, EtcdCallError> {
        let mut c = self.client(urls).await?;
        Ok(bounded("listing members", c.member_list())
            .await?
            .members()
            .to_vec())
    }

    /// Adds a learner with `peer_url`; returns its id.
    pub async fn add_learner(&self, urls: &[String], peer_url: &str) -> Result<u64, EtcdCallError> {
        let mut c = self.client(urls).await?;
        let response = bounded(
            &format!("adding a learner at {peer_url}"),
            c.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner())),
        )
        .await?;
        response
            .member()
            .map(|m| m.id())
            .ok_or_else(|| EtcdCallError("adding a learner: no member in the answer".into()))
    }

    /// Promotes the learner `id` to a voting member.
    pub async fn promote(&self, urls: &[String], id: u64) -> Result<(), EtcdCallError> {
        let mut c = self.client(urls).await?;
        bounded(&format!("promoting {id:x}"), c.member_promote(id)).await?;
        Ok(())
    }

    /// Removes the member `id`, asking the members at `urls` (never the one removed).
    pub async fn remove(&self, urls: &[String], id: u64) -> Result<(), EtcdCallError> {
        let mut c = self.client(urls).await?;
        bounded(&format!("removing {id:x}"), c.member_remove(id)).await?;
        Ok(())
    }

    /// Defragments the member at `url` (it blocks that member meanwhile).
    pub async fn defragment(&self, url: &str) -> Result<(), EtcdCallError> {
        let mut c = self.client(&[url.to_string()]).await?;
        match tokio::time::timeout(Duration::from_secs(120), c.defragment()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(EtcdCallError(format!("defragmenting {url}: {e}"))),
            Err(_) => Err(EtcdCallError(format!(
                "defragmenting {url}: no answer within 120s"
            ))),
        }
    }

    /// Moves leadership from the leader at `leader_url` to `target`.
    pub async fn move_leader(&self, leader_url: &str, target: u64) -> Result<(), EtcdCallError> {
        let mut c = self.client(&[leader_url.to_string()]).await?;
        bounded(
            &format!("moving leadership to {target:x}"),
            c.move_leader(target),
        )
        .await?;
        Ok(())
    }
}

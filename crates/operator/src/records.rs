//! What the operator keeps in the management store, and where: specs (written by `ferry
//! cluster apply`), the members it created (so a restarted operator adopts them and finishes
//! an interrupted step), and each cluster's status (read by `ferry cluster status`).
//!
//! ```text
//! <prefix>/specs/<cluster>             ClusterSpec
//! <prefix>/members/<cluster>/<member>  MemberRecord
//! <prefix>/status/<cluster>            ClusterStatus
//! <prefix>/leader                      the operators' election
//! ```

use serde::{Deserialize, Serialize};

/// The default prefix of the operator's keys.
pub const DEFAULT_PREFIX: &str = "/ferry/operator";

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Every spec.
    pub fn specs(&self) -> String {
        format!("{}/specs/", self.prefix)
    }

    /// One cluster's spec.
    pub fn spec(&self, cluster: &str) -> String {
        format!("{}{cluster}", self.specs())
    }

    /// One cluster's member records.
    pub fn members(&self, cluster: &str) -> String {
        format!("{}/members/{cluster}/", self.prefix)
    }

    /// One member's record.
    pub fn member(&self, cluster: &str, member: &str) -> String {
        format!("{}{member}", self.members(cluster))
    }

    /// One cluster's status.
    pub fn status(&self, cluster: &str) -> String {
        format!("{}/status/{cluster}", self.prefix)
    }

    /// A person's request to recover a cluster that lost quorum (`ferry cluster recover`).
    pub fn recover(&self, cluster: &str) -> String {
        format!("{}/recover/{cluster}", self.prefix)
    }

    /// The operators' leader election.
    pub fn election(&self) -> String {
        format!("{}/leader", self.prefix)
    }
}

/// Where a member is in its life, as the operator drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The first member of a new cluster.
    Seed,
    /// Recorded, not yet added to etcd's member list.
    Adding,
    /// Added as a learner; started; waiting to be promoted.
    Learner,
    /// A voting member.
    Voter,
    /// Being removed: out of the member list, process stopped, data wiped, record deleted.
    Removing,
}

/// A member the operator created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its etcd name (`<cluster>-<hex>`), never reused.
    pub name: String,
    /// Its etcd member id, once added (0 before).
    pub id: u64,
    /// Its client port on 127.0.0.1.
    pub client_port: u16,
    /// Its peer port on 127.0.0.1.
    pub peer_port: u16,
    /// Where it runs.
    pub phase: Phase,
    /// When it was recorded (Unix seconds): a learner older than the spec's timeout is
    /// removed.
    pub created: u64,
    /// Why it is being removed, when it is.
    #[serde(default)]
    pub reason: String,
    /// The binary and flags it was last started with (the spec's `etcd`, as JSON): a member
    /// whose configuration differs from the spec's is restarted by a rolling change.
    #[serde(default)]
    pub config: String,
    /// Set just before a rolling change stops it to start it again, cleared with the new
    /// `config`: an operator that dies between the two leaves it set, and the next one
    /// starts a member it finds gone instead of waiting out the failure grace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restarting: bool,
    /// Whether its client URL is https (fixed when it is created: etcd's member list holds
    /// its URLs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_tls: bool,
    /// Whether its peer URL is https.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peer_tls: bool,
}

fn url(tls: bool, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

impl MemberRecord {
    /// Its client URL.
    pub fn client_url(&self) -> String {
        url(self.client_tls, self.client_port)
    }

    /// Its peer URL.
    pub fn peer_url(&self) -> String {
        url(self.peer_tls, self.peer_port)
    }
}

/// One member as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Its id, in hex as etcdctl prints it.
    pub id: String,
    /// Its client URL.
    pub client_url: String,
    /// Its peer URL.
    pub peer_url: String,
    /// Whether it answered a status request, with a leader and no error.
    pub healthy: bool,
    /// Whether it is the leader.
    pub leader: bool,
    /// Whether it is a learner.
    pub learner: bool,
    /// Its store revision.
    pub revision: i64,
    /// Its database size in bytes.
    pub db_size: i64,
    /// The part of the database in use, in bytes (the rest is free after compaction).
    #[serde(default)]
    pub db_size_in_use: i64,
    /// The operator's phase for it.
    pub phase: String,
}

/// A condition of the cluster, as Kubernetes controllers report them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// `Available`, `Progressing`, `Degraded` or `QuorumLost`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it holds.
    pub status: bool,
    /// Why, in a sentence.
    pub message: String,
}

/// Something the operator did or refused, with when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    pub time: u64,
    /// What.
    pub message: String,
}

/// The events a status keeps.
pub const MAX_EVENTS: usize = 50;

/// A cluster's observed state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub name: String,
    /// The declared size.
    pub size: usize,
    /// Every member, from etcd's member list and the operator's records.
    pub members: Vec<MemberStatus>,
    /// Available, Progressing, Degraded, QuorumLost.
    pub conditions: Vec<Condition>,
    /// The step in progress, or empty.
    pub operation: String,
    /// The latest events, oldest first (at most [`MAX_EVENTS`]).
    pub events: Vec<Event>,
    /// The latest verified backup this operator took.
    #[serde(default)]
    pub last_backup: Option<crate::backup::BackupInfo>,
    /// When the status was written (Unix seconds).
    pub updated: u64,
    /// The (leading) operator that wrote it.
    #[serde(default)]
    pub operator: String,
}

impl ClusterStatus {
    /// Whether the condition `kind` holds.
    pub fn condition(&self, kind: &str) -> bool {
        self.conditions.iter().any(|c| c.kind == kind && c.status)
    }

    /// The client URLs of the voting members: what clients should use as endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.learner && !m.client_url.is_empty())
            .map(|m| m.client_url.clone())
            .collect()
    }
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

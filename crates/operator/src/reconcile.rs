//! One cluster brought one step closer to its spec, following etcd's runtime-reconfiguration
//! rules: a seed first; growth one learner at a time (recorded before it is added, added,
//! started, promoted once etcd says it caught up, removed if it never does); shrinking one
//! member at a time, leadership moved away first, the removed member's data wiped; a member
//! gone or unhealthy for longer than the grace replaced; and in front of every step a quorum
//! guard. etcd's member list is the truth; the member records carry what it cannot (ports,
//! phase), written before each step, so a killed operator finishes the step when it returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, Member, Txn, TxnOp};
use parking_lot::Mutex;

use crate::backup::{self, Backend, BackupInfo};
use crate::etcd::{self, MemberHealth};
use crate::records::{
    now, ClusterStatus, Condition, Event, Keys, MemberRecord, MemberStatus, Phase, MAX_EVENTS,
};
use crate::runtime::{Launch, MemberRuntime, ProcessState};
use crate::spec::{quorum, ClusterSpec};

/// How long no member may answer, while some member's process still runs, before the
/// members whose process is gone are restarted on their data.
const SILENCE_BEFORE_RESTART: Duration = Duration::from_secs(5);

/// How many times a new member (a learner, or a seed that never wrote data) is started
/// before a process that keeps exiting (a port taken since it was picked, a bad flag, a full
/// disk) is replaced by a new member on new ports, instead of waiting out the learner
/// timeout or restarting a seed forever.
pub const STARTS_BEFORE_REPLACING: u32 = 3;

/// Why a reconcile pass failed (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The management store failed.
    #[error("management store: {0}")]
    Store(#[from] etcd_client::Error),
    /// A record in the management store does not decode.
    #[error("record {key}: {reason}")]
    Record {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The member runtime failed.
    #[error("{0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// No free port for a new member.
    #[error("allocating a port: {0}")]
    Port(std::io::Error),
    /// Restoring a backup failed.
    #[error("restore: {0}")]
    Backup(backup::BackupError),
    /// The spec's TLS files could not be read.
    #[error("{0}")]
    Access(#[from] etcd::EtcdCallError),
    /// Another operator leads now (this one was paused or cut off past its lease).
    #[error("no longer the leading operator")]
    NotLeader,
}

/// What a pass saw of one recorded member.
struct Observed {
    record: MemberRecord,
    process: ProcessState,
    health: Option<MemberHealth>,
    listed: Option<Member>,
}

/// Reconciles clusters; keeps what must survive between passes (since when a member is
/// unhealthy, each cluster's recent events).
pub struct Reconciler {
    store: Client,
    keys: Keys,
    runtime: Arc<dyn MemberRuntime>,
    unhealthy_since: Mutex<HashMap<String, Instant>>,
    /// Per new member (learner, seed without data), how many times this operator started it.
    new_member_starts: Mutex<HashMap<String, u32>>,
    /// Per cluster, since when no member has answered while some process still runs.
    silent_since: Mutex<HashMap<String, Instant>>,
    events: Mutex<HashMap<String, Vec<Event>>>,
    /// Per cluster, when the next scheduled backup is due (Unix seconds).
    next_backup: Mutex<HashMap<String, i64>>,
    last_backup: Mutex<HashMap<String, BackupInfo>>,
    /// Per cluster, how its members are reached (read from the spec's TLS files once a pass).
    access: Mutex<HashMap<String, etcd::Access>>,
    /// The leadership's fence (see [`Reconciler::lead`]).
    fence: Mutex<Option<Compare>>,
    identity: Mutex<String>,
}

impl Reconciler {
    /// A reconciler writing to the management store `store` under `keys`, running members
    /// with `runtime`.
    pub fn new(store: Client, keys: Keys, runtime: Arc<dyn MemberRuntime>) -> Self {
        Self {
            store,
            keys,
            runtime,
            unhealthy_since: Mutex::new(HashMap::new()),
            new_member_starts: Mutex::new(HashMap::new()),
            silent_since: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            next_backup: Mutex::new(HashMap::new()),
            last_backup: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
            fence: Mutex::new(None),
            identity: Mutex::new(String::new()),
        }
    }

    /// Records an event in the cluster's status (deduplicated against the last one).
    pub fn report(&self, cluster: &str, message: String) {
        self.event(cluster, message);
    }

    fn event(&self, cluster: &str, message: String) {
        tracing::info!(cluster, "{message}");
        let mut events = self.events.lock();
        let list = events.entry(cluster.to_string()).or_default();
        // A step retried every pass (etcd refusing an add for a few seconds after a member
        // started) is one event, not fifty.
        if list.last().is_some_and(|e| e.message == message) {
            return;
        }
        list.push(Event {
            time: now(),
            message,
        });
        if list.len() > MAX_EVENTS {
            let excess = list.len() - MAX_EVENTS;
            list.drain(..excess);
        }
    }

    /// The member records of `cluster`, oldest first.
    pub async fn records(&self, cluster: &str) -> Result<Vec<MemberRecord>, ReconcileError> {
        let prefix = self.keys.members(cluster);
        let response = self
            .store
            .clone()
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let mut records = Vec::new();
        for kv in response.kvs() {
            let record: MemberRecord =
                serde_json::from_slice(kv.value()).map_err(|e| ReconcileError::Record {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    reason: e.to_string(),
                })?;
            records.push(record);
        }
        records.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(records)
    }

    async fn save(&self, cluster: &str, record: &MemberRecord) -> Result<(), ReconcileError> {
        let value = serde_json::to_vec(record).map_err(|e| ReconcileError::Record {
            key: record.name.clone(),
            reason: e.to_string(),
        })?;
        self.write(TxnOp::put(
            self.keys.member(cluster, &record.name),
            value,
            None,
        ))
        .await
    }

    async fn forget(&self, cluster: &str, record: &MemberRecord) -> Result<(), ReconcileError> {
        self.write(TxnOp::delete(self.keys.member(cluster, &record.name), None))
            .await
    }

    fn new_record(&self, spec: &ClusterSpec, phase: Phase) -> Result<MemberRecord, ReconcileError> {
        let ports = ferry_client::free_loopback_ports(2).map_err(ReconcileError::Port)?;
        let (client_port, peer_port) = (ports[0], ports[1]);
        Ok(MemberRecord {
            name: format!("{}-{:06x}", spec.name, rand::random::<u32>() & 0xff_ffff),
            id: 0,
            client_port,
            peer_port,
            phase,
            created: now(),
            reason: String::new(),
            config: spec.member_config(),
            restarting: false,
            client_tls: spec.client_tls(),
            peer_tls: spec.peer_tls(),
        })
    }

    /// From now on, every write to the management store (and every step) is made only while
    /// `fence` holds: a deposed leader (paused past its lease, then resumed) changes nothing.
    /// `identity` names this operator in the statuses it writes.
    pub fn lead(&self, identity: &str, fence: Compare) {
        *self.fence.lock() = Some(fence);
        *self.identity.lock() = identity.to_string();
    }

    /// Writes `op` to the management store, under the fence when there is one.
    async fn write(&self, op: TxnOp) -> Result<(), ReconcileError> {
        let fence = self.fence.lock().clone();
        let txn = match fence {
            Some(fence) => Txn::new().when([fence]).and_then([op]),
            None => Txn::new().and_then([op]),
        };
        let response = self.store.clone().txn(txn).await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader)
        }
    }

    /// Fails unless this operator still leads: checked before every step on a cluster.
    async fn ensure_leading(&self) -> Result<(), ReconcileError> {
        let Some(fence) = self.fence.lock().clone() else {
            return Ok(());
        };
        let response = self.store.clone().txn(Txn::new().when([fence])).await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader)
        }
    }

    /// Stops every member of a deleted cluster and forgets it (the data dirs stay).
    pub async fn tear_down(&self, spec: &ClusterSpec) -> Result<(), ReconcileError> {
        self.ensure_leading().await?;
        for record in self.records(&spec.name).await? {
            self.stop(spec, &record);
            self.forget(&spec.name, &record).await?;
        }
        self.write(TxnOp::delete(self.keys.status(&spec.name), None))
            .await
    }

    /// Reads how `spec`'s members are reached (its TLS files), for the calls that follow.
    fn refresh_access(&self, spec: &ClusterSpec) -> Result<(), ReconcileError> {
        let access = etcd::Access::of(spec)?;
        self.access.lock().insert(spec.name.clone(), access);
        Ok(())
    }

    /// How `spec`'s members are reached, as last read.
    fn access(&self, spec: &ClusterSpec) -> etcd::Access {
        self.access
            .lock()
            .get(&spec.name)
            .cloned()
            .unwrap_or_default()
    }

    /// One pass over `spec`: observe, take at most one step, write the status.
    pub async fn reconcile(&self, spec: &ClusterSpec) -> Result<ClusterStatus, ReconcileError> {
        self.refresh_access(spec)?;
        self.ensure_leading().await?;
        let records = self.records(&spec.name).await?;
        if records.is_empty() {
            let seed = self.new_record(spec, Phase::Seed)?;
            if let Some(from) = &spec.restore_from {
                // The seed starts from the backup's data, as a new cluster (new token, new
                // cluster id); the other members join it as learners.
                let data = Backend::holding(from, spec.backup.as_ref())
                    .map_err(ReconcileError::Backup)?
                    .fetch(from)
                    .await
                    .map_err(ReconcileError::Backup)?;
                let work = self.work_dir(spec);
                std::fs::create_dir_all(&work).map_err(|e| {
                    ReconcileError::Backup(backup::BackupError::Io {
                        what: format!("creating {}", work.display()),
                        source: e,
                    })
                })?;
                let file = work.join("restore.db");
                std::fs::write(&file, data).map_err(|e| {
                    ReconcileError::Backup(backup::BackupError::Io {
                        what: format!("writing {}", file.display()),
                        source: e,
                    })
                })?;
                backup::restore_into(
                    spec,
                    &file,
                    &self.runtime.data_dir(spec, &seed),
                    &seed.name,
                    &seed.peer_url(),
                    &format!("ferry-{}-{}", spec.name, seed.name),
                )
                .map_err(ReconcileError::Backup)?;
                let _ = std::fs::remove_file(&file);
                self.event(
                    &spec.name,
                    format!("restored {from} into seed {}", seed.name),
                );
            }
            self.save(&spec.name, &seed).await?;
            self.start(spec, &seed, std::slice::from_ref(&seed), "new")?;
            self.event(
                &spec.name,
                format!("bootstrapping the cluster with seed {}", seed.name),
            );
            return self
                .write_status(spec, &[], None, "bootstrapping the seed member")
                .await;
        }
        let observed = self.observe(spec, records).await;
        let voter_urls: Vec<String> = observed
            .iter()
            .filter(|o| {
                matches!(o.record.phase, Phase::Seed | Phase::Voter | Phase::Removing)
                    && o.health.is_some_and(|h| !h.learner)
            })
            .map(|o| o.record.client_url())
            .collect();
        let list = if voter_urls.is_empty() {
            None
        } else {
            self.access(spec).member_list(&voter_urls).await.ok()
        };
        let Some(list) = list else {
            // No member answers: restart the ones whose process is gone (a host restart),
            // never rebuild anything: quorum loss is for a person to decide. While some
            // process still runs, only once the silence has lasted: one pass of timed-out
            // checks on a loaded host restarted a killed member on its data instead of
            // replacing it after the grace.
            let none_healthy = observed.iter().all(|o| o.health.is_none());
            let any_running = observed
                .iter()
                .any(|o| matches!(o.process, ProcessState::Running(_)));
            let silent_for = self
                .silent_since
                .lock()
                .entry(spec.name.clone())
                .or_insert_with(Instant::now)
                .elapsed();
            let restart = none_healthy && (!any_running || silent_for >= SILENCE_BEFORE_RESTART);
            for o in observed.iter().filter(|_| restart) {
                let has_data = self
                    .runtime
                    .data_dir(spec, &o.record)
                    .join("member")
                    .exists();
                let restartable = has_data || o.record.phase == Phase::Seed;
                if o.process == ProcessState::Gone
                    && o.record.phase != Phase::Removing
                    && restartable
                {
                    // A seed that never wrote its data starts the cluster again; any other
                    // member has data, and etcd ignores the initial cluster then.
                    if o.record.phase == Phase::Seed
                        && !has_data
                        && self.gave_up_starting(&o.record)
                    {
                        self.runtime.wipe(spec, &o.record)?;
                        self.forget(&spec.name, &o.record).await?;
                        self.event(
                            &spec.name,
                            format!(
                                "seed {}: its process exited {STARTS_BEFORE_REPLACING} times before the cluster started (see {}); starting a new seed",
                                o.record.name,
                                self.log_of(spec, &o.record).display()
                            ),
                        );
                        continue;
                    }
                    let (cluster, state) = if o.record.phase == Phase::Seed {
                        (vec![o.record.clone()], "new")
                    } else {
                        (Vec::new(), "existing")
                    };
                    self.start(spec, &o.record, &cluster, state)?;
                    self.event(
                        &spec.name,
                        format!("no member answers; restarted {} on its data", o.record.name),
                    );
                }
            }
            return self
                .write_status(spec, &observed, None, "waiting for a quorum of members")
                .await;
        };
        self.silent_since.lock().remove(&spec.name);
        let observed: Vec<Observed> = observed
            .into_iter()
            .map(|mut o| {
                o.listed = list
                    .iter()
                    .find(|m| m.peer_urls().iter().any(|u| *u == o.record.peer_url()))
                    .cloned();
                o
            })
            .collect();
        // Observing took a while: a deposed leader must not act on what it saw.
        self.ensure_leading().await?;
        let operation = self.step(spec, &observed, &list, &voter_urls).await?;
        self.write_status(spec, &observed, Some(&list), &operation)
            .await
    }

    async fn observe(&self, spec: &ClusterSpec, records: Vec<MemberRecord>) -> Vec<Observed> {
        let mut observed = Vec::new();
        for record in records {
            let process = self.runtime.inspect(spec, &record);
            let health = match process {
                ProcessState::Running(_) => self.access(spec).health(&record.client_url()).await,
                ProcessState::Gone => None,
            };
            let mut since = self.unhealthy_since.lock();
            if health.is_some() {
                since.remove(&record.name);
            } else {
                since
                    .entry(record.name.clone())
                    .or_insert_with(Instant::now);
            }
            observed.push(Observed {
                record,
                process,
                health,
                listed: None,
            });
        }
        observed
    }

    fn start(
        &self,
        spec: &ClusterSpec,
        member: &MemberRecord,
        cluster: &[MemberRecord],
        state: &'static str,
    ) -> Result<(), ReconcileError> {
        let initial_cluster = cluster
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        self.runtime.start(
            spec,
            member,
            &Launch {
                initial_cluster,
                state,
                token: format!("ferry-{}-{}", spec.name, member.name),
                force_new_cluster: false,
            },
        )?;
        Ok(())
    }

    /// Rebuilds a cluster that lost quorum from the surviving member with the highest
    /// revision: every member stopped, the others' data wiped and records dropped, the
    /// survivor started once with `--force-new-cluster` (its data, no other member), then
    /// normally; the next passes grow it back with learners. Only on a person's request.
    pub async fn recover(&self, spec: &ClusterSpec) -> Result<String, ReconcileError> {
        self.refresh_access(spec)?;
        self.ensure_leading().await?;
        let records = self.records(&spec.name).await?;
        let mut best: Option<(i64, MemberRecord)> = None;
        for record in &records {
            if self.runtime.inspect(spec, record) == ProcessState::Gone {
                continue;
            }
            if let Some(revision) = self.access(spec).revision(&record.client_url()).await {
                if best.as_ref().is_none_or(|(r, _)| revision > *r) {
                    best = Some((revision, record.clone()));
                }
            }
        }
        let Some((revision, survivor)) = best else {
            let message = "recover: no member answers; restore the newest verified backup with `ferry cluster restore`".to_string();
            self.event(&spec.name, message.clone());
            return Ok(message);
        };
        for record in &records {
            self.stop(spec, record);
        }
        for record in records.iter().filter(|r| r.name != survivor.name) {
            self.runtime.wipe(spec, record)?;
            self.forget(&spec.name, record).await?;
        }
        self.runtime.start(
            spec,
            &survivor,
            &Launch {
                initial_cluster: vec![format!("{}={}", survivor.name, survivor.peer_url())],
                state: "existing",
                token: format!("ferry-{}-{}", spec.name, survivor.name),
                force_new_cluster: true,
            },
        )?;
        let until = Instant::now() + Duration::from_secs(30);
        while self
            .access(spec)
            .health(&survivor.client_url())
            .await
            .is_none()
        {
            if Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Once: a member left running with the flag would drop members again at restart.
        self.stop(spec, &survivor);
        self.start(spec, &survivor, std::slice::from_ref(&survivor), "existing")?;
        let mut record = survivor.clone();
        record.phase = Phase::Voter;
        self.save(&spec.name, &record).await?;
        self.unhealthy_since.lock().clear();
        let message = format!(
            "recovered from {} (revision {revision}) as a one-member cluster; growing back to {}",
            survivor.name, spec.size
        );
        self.event(&spec.name, message.clone());
        Ok(message)
    }

    /// A scratch directory for backups and restores, outside the members' directories.
    fn work_dir(&self, spec: &ClusterSpec) -> std::path::PathBuf {
        spec.data_root.join(".ferry-work").join(&spec.name)
    }

    /// Takes a verified backup now from a healthy member (a follower when there is one),
    /// applies retention, and records it in the status.
    pub async fn backup_now(
        &self,
        spec: &ClusterSpec,
        status: &ClusterStatus,
    ) -> Result<BackupInfo, backup::BackupError> {
        let policy = spec.backup.as_ref().ok_or_else(|| {
            backup::BackupError::Url(format!("cluster {} has no backup policy", spec.name))
        })?;
        let source = status
            .members
            .iter()
            .filter(|m| m.healthy && !m.learner)
            .min_by_key(|m| m.leader)
            .ok_or_else(|| {
                backup::BackupError::Etcd("no healthy voting member to back up".into())
            })?;
        let backend = Backend::open(policy)?;
        let work = self.work_dir(spec);
        let info = backup::take(spec, &source.client_url, &backend, &work).await?;
        let deleted = backend.apply_retention(&spec.name, policy, now()).await?;
        self.event(
            &spec.name,
            format!(
                "backup {} verified (revision {}, hash {:08x}); {deleted} old backups deleted",
                info.url, info.revision, info.hash
            ),
        );
        self.last_backup
            .lock()
            .insert(spec.name.clone(), info.clone());
        Ok(info)
    }

    /// Takes the scheduled backup when it is due and the cluster is available.
    pub async fn backup_if_due(&self, spec: &ClusterSpec, status: &ClusterStatus) {
        let Some(policy) = &spec.backup else {
            return;
        };
        let Ok(cron) = policy.cron() else {
            return;
        };
        let now_ts = chrono::Utc::now();
        let due = {
            let mut next = self.next_backup.lock();
            let entry = next.entry(spec.name.clone()).or_insert_with(|| {
                cron.find_next_occurrence(&now_ts, false)
                    .map(|t| t.timestamp())
                    .unwrap_or(i64::MAX)
            });
            *entry <= now_ts.timestamp()
        };
        if !due || !status.condition("Available") {
            return;
        }
        if let Err(e) = self.backup_now(spec, status).await {
            self.event(&spec.name, format!("backup failed: {e}"));
        }
        let next = cron
            .find_next_occurrence(&chrono::Utc::now(), false)
            .map(|t| t.timestamp())
            .unwrap_or(i64::MAX);
        self.next_backup.lock().insert(spec.name.clone(), next);
    }

    /// Stops a member, off the async workers (it waits for the process to exit).
    fn stop(&self, spec: &ClusterSpec, member: &MemberRecord) {
        tokio::task::block_in_place(|| self.runtime.stop(spec, member, Duration::from_secs(10)));
    }

    /// Counts one more start of a new member; true (and the count forgotten) once it was
    /// started [`STARTS_BEFORE_REPLACING`] times and its process is gone again.
    fn gave_up_starting(&self, member: &MemberRecord) -> bool {
        let mut starts = self.new_member_starts.lock();
        let count = starts.entry(member.name.clone()).or_insert(0);
        *count += 1;
        if *count > STARTS_BEFORE_REPLACING {
            starts.remove(&member.name);
            return true;
        }
        false
    }

    /// Where a member's process writes its output.
    fn log_of(&self, spec: &ClusterSpec, member: &MemberRecord) -> std::path::PathBuf {
        self.runtime
            .data_dir(spec, member)
            .with_file_name("etcd.log")
    }

    fn unhealthy_for(&self, name: &str) -> Duration {
        self.unhealthy_since
            .lock()
            .get(name)
            .map(Instant::elapsed)
            .unwrap_or_default()
    }

    /// Takes at most one step; returns what is in progress (empty when at spec).
    async fn step(
        &self,
        spec: &ClusterSpec,
        observed: &[Observed],
        list: &[Member],
        voter_urls: &[String],
    ) -> Result<String, ReconcileError> {
        let cluster = &spec.name;
        let voters: Vec<&Member> = list.iter().filter(|m| !m.is_learner()).collect();
        let healthy_voters = observed
            .iter()
            .filter(|o| o.health.is_some_and(|h| !h.learner))
            .filter(|o| o.listed.as_ref().is_some_and(|m| !m.is_learner()))
            .count();
        let leader = observed.iter().find_map(|o| o.health.map(|h| h.leader));
        let learners = list.iter().filter(|m| m.is_learner()).count();

        // The list describes these records' cluster when it holds one of their ids.
        let same_cluster = observed
            .iter()
            .any(|o| o.record.id != 0 && list.iter().any(|m| m.id() == o.record.id))
            || observed.iter().all(|o| o.record.id == 0);
        if !same_cluster {
            // The answering members are not the cluster these records describe (none of
            // their ids): removing "strays" or "missing" members would destroy one of them.
            return Ok("refused: the members that answer are not this cluster's".into());
        }
        // Finish what a record says is under way.
        for o in observed {
            let mut record = o.record.clone();
            match (record.phase, &o.listed) {
                (Phase::Removing, Some(m)) => {
                    let others: Vec<String> = voter_urls
                        .iter()
                        .filter(|u| **u != record.client_url())
                        .cloned()
                        .collect();
                    let removing_voter = !m.is_learner();
                    if removing_voter
                        && healthy_voters.saturating_sub(usize::from(o.health.is_some()))
                            < quorum(voters.len().saturating_sub(1))
                    {
                        return Ok(format!(
                            "refused: removing {} would leave fewer healthy voters than a quorum",
                            record.name
                        ));
                    }
                    if removing_voter && leader == Some(m.id()) {
                        if let Some(target) = observed.iter().find(|t| {
                            t.record.name != record.name
                                && t.health.is_some_and(|h| !h.learner)
                                && t.listed.as_ref().is_some_and(|l| !l.is_learner())
                        }) {
                            if let Some(id) = target.listed.as_ref().map(Member::id) {
                                match self
                                    .access(spec)
                                    .move_leader(&record.client_url(), id)
                                    .await
                                {
                                    Ok(()) => self.event(
                                        cluster,
                                        format!(
                                            "moved leadership from {} to {}",
                                            record.name, target.record.name
                                        ),
                                    ),
                                    Err(e) => self.event(cluster, format!("{e}")),
                                }
                                return Ok(format!("moving leadership away from {}", record.name));
                            }
                        }
                    }
                    match self.access(spec).remove(&others, m.id()).await {
                        Ok(()) => self.event(
                            cluster,
                            format!(
                                "removed {} from the member list ({})",
                                record.name, record.reason
                            ),
                        ),
                        Err(e) => self.event(cluster, format!("{e}")),
                    }
                    return Ok(format!("removing {}", record.name));
                }
                (Phase::Removing, None) => {
                    self.stop(spec, &record);
                    self.runtime.wipe(spec, &record)?;
                    self.forget(cluster, &record).await?;
                    self.event(
                        cluster,
                        format!("stopped {} and wiped its data", record.name),
                    );
                    return Ok(format!("removed {}", record.name));
                }
                (Phase::Adding, None) => {
                    if learners > 0 {
                        return Ok("waiting for the learner in progress".into());
                    }
                    match self
                        .access(spec)
                        .add_learner(voter_urls, &record.peer_url())
                        .await
                    {
                        Ok(id) => {
                            record.id = id;
                            record.phase = Phase::Learner;
                            self.save(cluster, &record).await?;
                            self.event(cluster, format!("added {} as a learner", record.name));
                        }
                        Err(e) => self.event(cluster, format!("{e}")),
                    }
                    return Ok(format!("adding {}", record.name));
                }
                (Phase::Adding, Some(m)) => {
                    // Added before the operator could write it down.
                    record.id = m.id();
                    record.phase = Phase::Learner;
                    self.save(cluster, &record).await?;
                    return Ok(format!("adding {}", record.name));
                }
                (Phase::Learner, Some(m)) => {
                    if !m.is_learner() {
                        self.new_member_starts.lock().remove(&record.name);
                        record.phase = Phase::Voter;
                        self.save(cluster, &record).await?;
                        continue;
                    }
                    if o.process == ProcessState::Gone {
                        if self.gave_up_starting(&record) {
                            let log = self.log_of(spec, &record);
                            record.phase = Phase::Removing;
                            record.reason = format!(
                                "its process exited {STARTS_BEFORE_REPLACING} times before catching up"
                            );
                            self.save(cluster, &record).await?;
                            self.event(
                                cluster,
                                format!(
                                    "learner {}: its process exited {STARTS_BEFORE_REPLACING} times before catching up (see {}); replacing it",
                                    record.name,
                                    log.display()
                                ),
                            );
                            return Ok(format!("removing learner {}", record.name));
                        }
                        let mut members: Vec<MemberRecord> = observed
                            .iter()
                            .filter(|x| x.listed.is_some())
                            .map(|x| x.record.clone())
                            .collect();
                        members.sort_by(|a, b| a.name.cmp(&b.name));
                        self.start(spec, &record, &members, "existing")?;
                        self.event(cluster, format!("started learner {}", record.name));
                        return Ok(format!("starting learner {}", record.name));
                    }
                    if now().saturating_sub(record.created) > spec.learner_timeout.as_secs() {
                        record.phase = Phase::Removing;
                        record.reason = "the learner never caught up".into();
                        self.save(cluster, &record).await?;
                        self.event(
                            cluster,
                            format!(
                                "learner {} did not catch up within {:?}; removing it",
                                record.name, spec.learner_timeout
                            ),
                        );
                        return Ok(format!("removing learner {}", record.name));
                    }
                    // Promotion adds a voter: the healthy ones plus it must still be a quorum.
                    if healthy_voters + 1 < quorum(voters.len() + 1) {
                        return Ok(format!(
                            "refused: promoting {} would need {} healthy voters, {} are",
                            record.name,
                            quorum(voters.len() + 1) - 1,
                            healthy_voters
                        ));
                    }
                    match self.access(spec).promote(voter_urls, m.id()).await {
                        Ok(()) => {
                            self.new_member_starts.lock().remove(&record.name);
                            record.phase = Phase::Voter;
                            self.save(cluster, &record).await?;
                            self.event(
                                cluster,
                                format!("promoted {} to a voting member", record.name),
                            );
                        }
                        Err(e) if e.learner_not_ready() => {}
                        Err(e) => self.event(cluster, format!("{e}")),
                    }
                    return Ok(format!("promoting learner {}", record.name));
                }
                (Phase::Learner | Phase::Voter | Phase::Seed, None) => {
                    // Gone from the member list (removed by a step the operator did not
                    // finish, or by hand): it can never rejoin with its data.
                    record.phase = Phase::Removing;
                    record.reason = "not in the member list".into();
                    self.save(cluster, &record).await?;
                    return Ok(format!("removing {}", record.name));
                }
                (Phase::Seed, Some(m)) => {
                    // Bootstrapped: from now on it is a voter like any other (a seed whose
                    // data is gone is never started as a new cluster again).
                    record.phase = Phase::Voter;
                    record.id = m.id();
                    self.save(cluster, &record).await?;
                }
                (Phase::Voter, Some(m)) if record.id != m.id() => {
                    record.id = m.id();
                    self.save(cluster, &record).await?;
                }
                (Phase::Voter, Some(_)) => {}
            }
        }

        // Members in etcd's list that the operator never made (added by hand, or left by a
        // lost record) are removed, within the quorum guard.
        if let Some(stray) = list.iter().find(|m| {
            !observed
                .iter()
                .any(|o| o.listed.as_ref().is_some_and(|l| l.id() == m.id()))
        }) {
            let urls: Vec<String> = voter_urls.to_vec();
            if stray.is_learner() || healthy_voters >= quorum(voters.len().saturating_sub(1)) {
                match self.access(spec).remove(&urls, stray.id()).await {
                    Ok(()) => self.event(
                        cluster,
                        format!(
                            "removed member {:x} ({}), which the operator did not create",
                            stray.id(),
                            stray.name()
                        ),
                    ),
                    Err(e) => self.event(cluster, format!("{e}")),
                }
            }
            return Ok(format!("removing stray member {:x}", stray.id()));
        }

        if let Some(step) = self.finish_interrupted_restart(spec, observed).await? {
            return Ok(step);
        }

        // Replace a voter gone or unhealthy for longer than the grace.
        for o in observed {
            if o.health.is_none()
                && o.listed.as_ref().is_some_and(|m| !m.is_learner())
                && self.unhealthy_for(&o.record.name) > spec.failure_grace
            {
                if healthy_voters < quorum(voters.len().saturating_sub(1)) {
                    return Ok(format!(
                        "refused: replacing {} would leave fewer healthy voters than a quorum",
                        o.record.name
                    ));
                }
                let mut record = o.record.clone();
                record.phase = Phase::Removing;
                record.reason = format!("unhealthy for longer than {:?}", spec.failure_grace);
                self.save(cluster, &record).await?;
                self.event(
                    cluster,
                    format!(
                        "{} has been unhealthy for longer than {:?}; replacing it",
                        record.name, spec.failure_grace
                    ),
                );
                return Ok(format!("replacing {}", record.name));
            }
        }

        if learners > 0 {
            return Ok("waiting for the learner to catch up".into());
        }
        if let Some(step) = self.rolling_change(spec, observed, leader).await? {
            return Ok(step);
        }
        if let Some(step) = self.defragment(spec, observed, leader).await {
            return Ok(step);
        }
        if voters.len() < spec.size {
            if healthy_voters < quorum(voters.len()) {
                return Ok("refused: growing needs a quorum of healthy voters".into());
            }
            let record = self.new_record(spec, Phase::Adding)?;
            self.save(cluster, &record).await?;
            self.event(
                cluster,
                format!(
                    "growing from {} to {}: recorded {}",
                    voters.len(),
                    spec.size,
                    record.name
                ),
            );
            return Ok(format!("adding {}", record.name));
        }
        if voters.len() > spec.size {
            // A cluster that lost a member is not shrunk: with one of three down, leaving
            // one member would bet everything on the survivor. The failed member recovers
            // or is replaced first.
            let unhealthy: Vec<&str> = observed
                .iter()
                .filter(|o| {
                    o.health.is_none() && o.listed.as_ref().is_some_and(|m| !m.is_learner())
                })
                .map(|o| o.record.name.as_str())
                .collect();
            if !unhealthy.is_empty() {
                return Ok(format!(
                    "refused: shrinking waits while a voting member is unhealthy ({}): it recovers or is replaced after {:?}",
                    unhealthy.join(", "),
                    spec.failure_grace
                ));
            }
            // Otherwise a follower goes; the leader last.
            let victim = observed
                .iter()
                .filter(|o| o.listed.as_ref().is_some_and(|m| !m.is_learner()))
                .min_by_key(|o| {
                    let is_leader = o.listed.as_ref().map(Member::id) == leader;
                    (
                        o.health.is_some(),
                        is_leader,
                        std::cmp::Reverse(o.record.created),
                    )
                });
            if let Some(victim) = victim {
                let after = healthy_voters.saturating_sub(usize::from(victim.health.is_some()));
                if after < quorum(voters.len().saturating_sub(1)) {
                    return Ok(format!(
                        "refused: shrinking would leave {after} healthy voters, fewer than a quorum of {}",
                        voters.len().saturating_sub(1)
                    ));
                }
                let mut record = victim.record.clone();
                record.phase = Phase::Removing;
                record.reason = format!("shrinking from {} to {}", voters.len(), spec.size);
                self.save(cluster, &record).await?;
                self.event(
                    cluster,
                    format!("{}: removing {}", record.reason, record.name),
                );
                return Ok(format!("removing {}", record.name));
            }
        }
        Ok(String::new())
    }

    /// Restarts one member whose binary or flags differ from the spec's: followers first,
    /// the leader last after leadership moved away, each only once every voter is healthy.
    async fn rolling_change(
        &self,
        spec: &ClusterSpec,
        observed: &[Observed],
        leader: Option<u64>,
    ) -> Result<Option<String>, ReconcileError> {
        let cluster = &spec.name;
        let wanted = spec.member_config();
        let voters: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.listed.as_ref().is_some_and(|m| !m.is_learner()))
            .collect();
        let stale: Vec<&&Observed> = voters
            .iter()
            .filter(|o| o.record.config != wanted)
            .collect();
        if stale.is_empty() {
            return Ok(None);
        }
        let unhealthy: Vec<&&Observed> = voters.iter().filter(|o| o.health.is_none()).collect();
        if let Some(restarted) = unhealthy.iter().find(|o| o.record.config == wanted) {
            return Ok(Some(format!(
                "rolling change: waiting for {} to be healthy",
                restarted.record.name
            )));
        }
        if !unhealthy.is_empty() {
            return Ok(Some(format!(
                "refused: a rolling change waits while a voting member is unhealthy ({})",
                unhealthy
                    .iter()
                    .map(|o| o.record.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let is_leader = |o: &Observed| o.listed.as_ref().map(Member::id) == leader;
        let Some(target) = stale.iter().min_by_key(|o| is_leader(o)) else {
            return Ok(None);
        };
        if is_leader(target) && voters.len() > 1 {
            let successor = voters
                .iter()
                .filter(|o| o.record.name != target.record.name)
                .min_by_key(|o| o.record.config != wanted);
            if let Some(id) = successor.and_then(|o| o.listed.as_ref().map(Member::id)) {
                match self
                    .access(spec)
                    .move_leader(&target.record.client_url(), id)
                    .await
                {
                    Ok(()) => self.event(
                        cluster,
                        format!(
                            "rolling change: moved leadership away from {}",
                            target.record.name
                        ),
                    ),
                    Err(e) => self.event(cluster, format!("{e}")),
                }
                return Ok(Some(format!(
                    "rolling change: moving leadership away from {}",
                    target.record.name
                )));
            }
        }
        let mut record = target.record.clone();
        record.restarting = true;
        self.save(cluster, &record).await?;
        self.stop(spec, &record);
        let name = self.start_on_spec(spec, record).await?;
        self.event(
            cluster,
            format!("rolling change: restarted {name} with the spec's binary and flags"),
        );
        Ok(Some(format!("rolling change: restarted {name}")))
    }

    /// Starts a stopped voter on its data with the spec's binary and flags, and records
    /// that it runs them (the restart finished); returns its name.
    async fn start_on_spec(
        &self,
        spec: &ClusterSpec,
        mut record: MemberRecord,
    ) -> Result<String, ReconcileError> {
        self.start(spec, &record, &[], "existing")?;
        record.config = spec.member_config();
        record.restarting = false;
        self.save(&spec.name, &record).await?;
        self.unhealthy_since.lock().remove(&record.name);
        Ok(record.name)
    }

    /// Starts a voter that a rolling change stopped and an operator that died did not start
    /// again (its record still says it is restarting and its process is gone): it was
    /// stopped on purpose, so it is not a failure to wait out and replace.
    async fn finish_interrupted_restart(
        &self,
        spec: &ClusterSpec,
        observed: &[Observed],
    ) -> Result<Option<String>, ReconcileError> {
        let Some(stopped) = observed.iter().find(|o| {
            o.record.restarting
                && o.process == ProcessState::Gone
                && o.listed.as_ref().is_some_and(|m| !m.is_learner())
        }) else {
            return Ok(None);
        };
        let name = self.start_on_spec(spec, stopped.record.clone()).await?;
        self.event(
            &spec.name,
            format!("rolling change: started {name}, which an interrupted restart left stopped"),
        );
        Ok(Some(format!("rolling change: restarted {name}")))
    }

    /// Defragments one member whose free fraction exceeds the policy's: followers first,
    /// the leader last after leadership moved away, only while every voter is healthy.
    async fn defragment(
        &self,
        spec: &ClusterSpec,
        observed: &[Observed],
        leader: Option<u64>,
    ) -> Option<String> {
        let policy = spec.defrag.as_ref()?;
        let cluster = &spec.name;
        let voters: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.listed.as_ref().is_some_and(|m| !m.is_learner()))
            .collect();
        let due = |o: &Observed| {
            o.health.is_some_and(|h| {
                let size = h.db_size.max(1) as f64;
                u64::try_from(h.db_size).unwrap_or(0) > policy.min_db_bytes
                    && (h.db_size - h.db_in_use) as f64 / size > policy.free_fraction
            })
        };
        let is_leader = |o: &Observed| o.listed.as_ref().map(Member::id) == leader;
        let target = voters
            .iter()
            .filter(|o| due(o))
            .min_by_key(|o| is_leader(o))?;
        if voters.iter().any(|o| o.health.is_none()) {
            return Some(format!(
                "refused: defragmenting {} waits while a voting member is unhealthy",
                target.record.name
            ));
        }
        if is_leader(target) && voters.len() > 1 {
            let successor = voters
                .iter()
                .find(|o| o.record.name != target.record.name)?;
            let id = successor.listed.as_ref().map(Member::id)?;
            match self
                .access(spec)
                .move_leader(&target.record.client_url(), id)
                .await
            {
                Ok(()) => self.event(
                    cluster,
                    format!(
                        "defragmentation: moved leadership away from {}",
                        target.record.name
                    ),
                ),
                Err(e) => self.event(cluster, format!("{e}")),
            }
            return Some(format!(
                "defragmentation: moving leadership away from {}",
                target.record.name
            ));
        }
        let before = target.health.map(|h| h.db_size).unwrap_or(0);
        match self
            .access(spec)
            .defragment(&target.record.client_url())
            .await
        {
            Ok(()) => self.event(
                cluster,
                format!(
                    "defragmented {} ({before} bytes before)",
                    target.record.name
                ),
            ),
            Err(e) => self.event(cluster, format!("{e}")),
        }
        Some(format!("defragmenting {}", target.record.name))
    }

    async fn write_status(
        &self,
        spec: &ClusterSpec,
        observed: &[Observed],
        list: Option<&[Member]>,
        operation: &str,
    ) -> Result<ClusterStatus, ReconcileError> {
        let mut members = Vec::new();
        for o in observed {
            let listed = list.and_then(|l| {
                l.iter()
                    .find(|m| m.peer_urls().iter().any(|u| *u == o.record.peer_url()))
            });
            members.push(MemberStatus {
                name: o.record.name.clone(),
                id: format!("{:x}", listed.map(Member::id).unwrap_or(o.record.id)),
                client_url: o.record.client_url(),
                peer_url: o.record.peer_url(),
                healthy: o.health.is_some(),
                leader: o.health.is_some_and(|h| h.leader == h.id),
                learner: listed.is_some_and(Member::is_learner),
                revision: o.health.map(|h| h.revision).unwrap_or(0),
                db_size: o.health.map(|h| h.db_size).unwrap_or(0),
                db_size_in_use: o.health.map(|h| h.db_in_use).unwrap_or(0),
                phase: format!("{:?}", o.record.phase).to_lowercase(),
            });
        }
        let voters = list.map_or(0, |l| l.iter().filter(|m| !m.is_learner()).count());
        let healthy_voters = members.iter().filter(|m| m.healthy && !m.learner).count();
        let quorum_ok = list.is_some() && healthy_voters >= quorum(voters);
        let at_spec = voters == spec.size
            && healthy_voters == voters
            && members.len() == voters
            && operation.is_empty();
        let condition = |kind: &str, status: bool, message: String| Condition {
            kind: kind.into(),
            status,
            message,
        };
        let conditions = vec![
            condition(
                "Available",
                quorum_ok,
                format!("{healthy_voters} of {voters} voting members healthy"),
            ),
            condition(
                "Progressing",
                !at_spec,
                if operation.is_empty() {
                    format!("{voters} of {} voting members", spec.size)
                } else {
                    operation.to_string()
                },
            ),
            condition(
                "Degraded",
                healthy_voters < voters || members.iter().any(|m| !m.healthy),
                format!(
                    "unhealthy: {}",
                    members
                        .iter()
                        .filter(|m| !m.healthy)
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            condition(
                "QuorumLost",
                !quorum_ok,
                if quorum_ok {
                    String::new()
                } else {
                    "fewer healthy voting members than a quorum; `ferry cluster recover` decides"
                        .into()
                },
            ),
        ];
        let status = ClusterStatus {
            name: spec.name.clone(),
            size: spec.size,
            members,
            conditions,
            operation: operation.to_string(),
            events: self
                .events
                .lock()
                .get(&spec.name)
                .cloned()
                .unwrap_or_default(),
            last_backup: self.last_backup.lock().get(&spec.name).cloned(),
            updated: now(),
            operator: self.identity.lock().clone(),
        };
        let value = serde_json::to_vec(&status).map_err(|e| ReconcileError::Record {
            key: self.keys.status(&spec.name),
            reason: e.to_string(),
        })?;
        self.write(TxnOp::put(self.keys.status(&spec.name), value, None))
            .await?;
        Ok(status)
    }
}

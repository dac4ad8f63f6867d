//! etcd as the distribution channel: publishing a configuration version, and making etcd
//! match SQL (adds, fixes, removes strays) so that a crash between the two writes, a lost
//! etcd or a restored snapshot all converge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use crate::document::IngressDocument;
use crate::keys::Keys;
use crate::record::{ConfigRecord, Record, RecordError};

/// What agents read from `<root>/ingress_config/<env>/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedConfig {
    /// Configuration id.
    pub id: String,
    /// Environment.
    pub env: String,
    /// Version agents must report having applied.
    pub version: i64,
    /// The document.
    pub document: IngressDocument,
    /// Who made this version.
    pub changed_by: String,
    /// When.
    pub changed_at: String,
}

impl From<&ConfigRecord> for PublishedConfig {
    fn from(r: &ConfigRecord) -> Self {
        Self {
            id: r.id.clone(),
            env: r.env.clone(),
            version: r.version,
            document: r.document.clone(),
            changed_by: r.changed_by.clone(),
            changed_at: r.changed_at.clone(),
        }
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store refused or could not answer.
    #[error("etcd: {0}")]
    Store(#[from] etcd_client::Error),
    /// Reading SQL failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What a reconciliation changed in etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Configurations written because they were missing.
    pub added: usize,
    /// Configurations rewritten because etcd held another version.
    pub fixed: usize,
    /// Keys deleted because SQL has no such live configuration.
    pub removed: usize,
}

/// Writes configurations to etcd.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    keys: Keys,
    /// What this controller last wrote or read at each configuration key, so that a
    /// change is one guarded write instead of a read and a write (see [`Publisher::publish`]).
    seen: Arc<parking_lot::Mutex<HashMap<String, Seen>>>,
}

/// A configuration key's value as this controller last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Absent,
    /// Its revision and the version it holds (`None`: not a configuration this controller
    /// can read, overwritten as an older one).
    At {
        mod_revision: i64,
        version: Option<i64>,
    },
}

impl Seen {
    fn of(kv: Option<&KeyValue>) -> Self {
        match kv {
            Some(kv) => Self::At {
                mod_revision: kv.mod_revision(),
                version: stored_version(kv.value()),
            },
            None => Self::Absent,
        }
    }
}

/// The version of a published configuration's stored value.
pub fn stored_version(value: &[u8]) -> Option<i64> {
    serde_json::from_slice::<PublishedConfig>(value)
        .ok()
        .map(|p| p.version)
}

impl Publisher {
    /// Publishes under `keys`' root.
    pub fn new(client: Client, keys: Keys) -> Self {
        Self {
            client,
            keys,
            seen: Arc::default(),
        }
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Publishes a committed change the way its document says: a deletion removes it, a
    /// rollout strategy starts a rollout in waves, otherwise every agent gets it at once
    /// (and any earlier rollout in waves of the configuration ends).
    pub async fn publish_change(&self, record: &ConfigRecord) -> Result<(), PublishError> {
        if record.deleted {
            return self.unpublish(&record.env, &record.id).await;
        }
        match record.document.rollout() {
            Some(strategy) => self.start_waves(record, strategy).await,
            None => {
                self.publish(record).await?;
                self.clear_waves(&record.env, &record.id).await
            }
        }
    }

    /// Writes `record` unless etcd already holds the same or a newer version (two
    /// controllers publishing at once can never move a configuration backwards).
    ///
    /// The write is guarded by the key's revision as this controller last saw it, and the
    /// same transaction reads the key when the guard fails: a change published by the only
    /// controller is one round trip, and any other writer meanwhile (another controller, a
    /// rollout in waves, a restore) only costs a second one, as a read would have.
    pub async fn publish(&self, record: &ConfigRecord) -> Result<bool, PublishError> {
        let key = self.keys.config(&record.env, &record.id);
        let body = serde_json::to_vec(&PublishedConfig::from(record)).unwrap_or_default();
        let mut client = self.client.clone();
        let mut seen = self.seen.lock().get(&key).copied().unwrap_or(Seen::Absent);
        loop {
            // A version this controller saw at least as new is left alone, but only once
            // the store confirms it is still there: the key may have been deleted since.
            let (guard, write) = match seen {
                Seen::At {
                    mod_revision,
                    version,
                } => (
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision),
                    version.is_none_or(|v| v < record.version),
                ),
                Seen::Absent => (
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    true,
                ),
            };
            let then = if write {
                vec![TxnOp::put(key.as_str(), body.clone(), None)]
            } else {
                Vec::new()
            };
            let txn = Txn::new()
                .when([guard])
                .and_then(then)
                .or_else([TxnOp::get(key.as_str(), None)]);
            let answer = client.txn(txn).await?;
            if answer.succeeded() && !write {
                return Ok(false);
            }
            if answer.succeeded() {
                let written = Seen::At {
                    mod_revision: answer.header().map_or(0, |h| h.revision()),
                    version: Some(record.version),
                };
                self.seen.lock().insert(key, written);
                return Ok(true);
            }
            // Someone else wrote meanwhile: look again at what the transaction read.
            seen = match answer.op_responses().first() {
                Some(TxnOpResponse::Get(got)) => Seen::of(got.kvs().first()),
                _ => Seen::Absent,
            };
            self.seen.lock().insert(key.clone(), seen);
        }
    }

    /// Removes a deleted configuration, its agents' status keys and any rollout in waves.
    pub async fn unpublish(&self, env: &str, id: &str) -> Result<(), PublishError> {
        self.clear_waves(env, id).await?;
        let mut client = self.client.clone();
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.config(env, id), None),
            TxnOp::delete(
                self.keys.statuses(env, id),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ]);
        client.txn(txn).await?;
        self.seen.lock().remove(&self.keys.config(env, id));
        Ok(())
    }

    /// Makes etcd hold exactly SQL's live configurations at their current versions.
    pub async fn reconcile(&self, record: &Record) -> Result<ReconcileReport, PublishError> {
        let desired: BTreeMap<String, ConfigRecord> = record
            .list_all()
            .await?
            .into_iter()
            .map(|r| (self.keys.config(&r.env, &r.id), r))
            .collect();
        let mut client = self.client.clone();
        let prefix = self.keys.all_configs();
        let actual = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut report = ReconcileReport::default();
        let mut seen = BTreeMap::new();
        for kv in actual.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            seen.insert(key.clone(), stored_version(kv.value()));
            if !desired.contains_key(&key) {
                let (env, id) = key
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split_once('/'))
                    .unwrap_or(("", ""));
                self.unpublish(env, id).await?;
                report.removed += 1;
            }
        }
        let rollouts: BTreeMap<String, crate::waves::WaveRollout> = client
            .get(
                self.keys.all_rollouts(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<crate::waves::WaveRollout>(kv.value()).ok())
            .map(|r| (self.keys.config(&r.config.env, &r.config.id), r))
            .collect();
        for (key, rec) in &desired {
            let stored = seen.get(key).copied().flatten();
            let rollout = rollouts.get(key);
            if let Some(strategy) = rec.document.rollout() {
                match rollout {
                    // Done, but the environment's key lost it: write it again.
                    Some(r)
                        if r.config.version == rec.version
                            && r.phase == crate::waves::WavePhase::Complete
                            && stored != Some(rec.version) =>
                    {
                        self.force(rec).await?;
                        report.fixed += 1;
                    }
                    // The driver has it; the environment's key moves when the last wave is done.
                    Some(r) if r.config.version == rec.version => {}
                    _ if stored != Some(rec.version) => {
                        self.start_waves(rec, strategy).await?;
                        report.fixed += 1;
                    }
                    _ => {}
                }
                continue;
            }
            if rollout.is_some() {
                // A version without waves replaced one that had them.
                self.clear_waves(&rec.env, &rec.id).await?;
            }
            match seen.get(key) {
                None => {
                    self.publish(rec).await?;
                    report.added += 1;
                }
                Some(v) if *v != Some(rec.version) => {
                    // Also rewrites a newer version left by a restored snapshot: SQL is the record.
                    self.force(rec).await?;
                    report.fixed += 1;
                }
                Some(_) => {}
            }
        }
        report.removed += self.remove_stray_wave_targets().await?;
        Ok(report)
    }

    async fn force(&self, record: &ConfigRecord) -> Result<(), PublishError> {
        let key = self.keys.config(&record.env, &record.id);
        let body = serde_json::to_vec(&PublishedConfig::from(record)).unwrap_or_default();
        let written = self.client.clone().put(key.as_str(), body, None).await?;
        let seen = Seen::At {
            mod_revision: written.header().map_or(0, |h| h.revision()),
            version: Some(record.version),
        };
        self.seen.lock().insert(key, seen);
        Ok(())
    }
}

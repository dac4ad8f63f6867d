//! The durable half of the store: redb tables and what they hold.
//!
//! `kv` maps a [`Revision`] to the protobuf-encoded `KeyValue` written at that revision (a
//! tombstone is a `KeyValue` with version 0); `meta` holds counters and ids; `lease` maps a
//! lease id to its TTL. The in-memory [`TreeIndex`] is rebuilt from `kv` on open.

use std::collections::HashMap;
use std::path::Path;

use etcd_client::proto::PbKeyValue;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::key_index::{KeyChange, TreeIndex};
use super::revision::Revision;
use crate::error::StoreError;

/// Revision bytes → encoded `KeyValue`.
pub const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Name → integer.
pub const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id → granted TTL in seconds.
pub const LEASE: TableDefinition<i64, i64> = TableDefinition::new("lease");
/// `user/<name>` → etcd's encoded `authpb.User`; `role/<name>` → `authpb.Role`.
pub const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");

/// `meta` key: the revision the store was last compacted at.
pub const META_COMPACT_REV: &str = "compact_revision";
/// `auth` key prefix of a user: `user/<name>`.
pub const AUTH_USER_PREFIX: &str = "user/";
/// `auth` key prefix of a role: `role/<name>`.
pub const AUTH_ROLE_PREFIX: &str = "role/";

/// `meta` key: this store's cluster id.
pub const META_CLUSTER_ID: &str = "cluster_id";
/// `meta` key: this store's member id.
pub const META_MEMBER_ID: &str = "member_id";
/// `meta` key: number of write requests applied (reported as the raft index).
pub const META_APPLIED_INDEX: &str = "applied_index";
/// `meta` key: 1 while the NOSPACE alarm is raised for this member.
pub const META_ALARM_NOSPACE: &str = "alarm_nospace";
/// `meta` key prefix: `alarm_nospace/<member id>` is 1 while a NOSPACE alarm a client raised
/// for another member id (0: every member) stands.
pub const META_ALARM_NOSPACE_FOR: &str = "alarm_nospace/";
/// `meta` key: the write-ahead log sequence number of the last batch applied (durable up to
/// the last durable commit; the log holds the batches after it).
pub const META_WAL_SEQ: &str = "wal_seq";
/// `meta` key: the highest revision ever published (survives compaction of tombstones).
pub const META_CURRENT_REV: &str = "current_revision";

/// `meta` key: 1 while authentication is enabled.
pub const META_AUTH_ENABLED: &str = "auth_enabled";
/// `meta` key: the auth revision.
pub const META_AUTH_REVISION: &str = "auth_revision";

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "ferry.redb";

/// What a store needs from its history when it opens.
pub struct Recovered {
    /// The key index rebuilt from the `kv` table.
    pub index: TreeIndex,
    /// The last revision written.
    pub current_rev: i64,
    /// The revision last compacted at.
    pub compact_rev: i64,
    /// This store's cluster id.
    pub cluster_id: u64,
    /// This store's member id.
    pub member_id: u64,
    /// Write requests applied so far (the raft index reported).
    pub applied_index: i64,
    /// The member ids a NOSPACE alarm is raised for.
    pub nospace: Vec<u64>,
    /// Leases: id and granted TTL.
    pub leases: Vec<(i64, i64)>,
    /// Live keys with a lease, and the lease.
    pub leased: Vec<(Vec<u8>, i64)>,
}

/// redb's page cache. Its default (1 GiB) keeps every page written in memory, which made the
/// store's resident memory grow with the data set (500 MiB at 1M keys of 256 B); pages beyond
/// this are read back from the operating system's page cache, which is shared and reclaimable.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Opens (or creates) the database in `data_dir`, refusing one another process holds.
pub fn open(data_dir: &Path) -> Result<Database, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
        what: format!("creating data dir {}", data_dir.display()),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    match redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(&path)
    {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(StoreError::DataDirLocked(data_dir.to_path_buf()))
        }
        Err(e) => Err(StoreError::Backend(format!(
            "opening {}: {e}",
            path.display()
        ))),
    }
}

/// Creates the tables and ids of a new store; a no-op for an existing one.
pub fn initialise(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(StoreError::backend)?;
    {
        txn.open_table(KV).map_err(StoreError::backend)?;
        txn.open_table(LEASE).map_err(StoreError::backend)?;
        txn.open_table(AUTH).map_err(StoreError::backend)?;
        let mut meta = txn.open_table(META).map_err(StoreError::backend)?;
        for name in [META_CLUSTER_ID, META_MEMBER_ID] {
            if meta.get(name).map_err(StoreError::backend)?.is_none() {
                let id = (rand::random::<u64>() >> 1).max(1) as i64;
                meta.insert(name, id).map_err(StoreError::backend)?;
            }
        }
    }
    txn.commit().map_err(StoreError::backend)
}

/// Reads everything the store keeps in memory back from disk.
pub fn recover(db: &Database) -> Result<Recovered, StoreError> {
    let txn = db.begin_read().map_err(StoreError::backend)?;
    let meta = txn.open_table(META).map_err(StoreError::backend)?;
    let get = |name: &str| -> Result<i64, StoreError> {
        Ok(meta
            .get(name)
            .map_err(StoreError::backend)?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    let compact_rev = get(META_COMPACT_REV)?;
    let mut current_rev = get(META_CURRENT_REV)?.max(compact_rev);
    let mut index = TreeIndex::default();
    let mut leased = HashMap::new();
    let kv = txn.open_table(KV).map_err(StoreError::backend)?;
    for entry in kv.iter().map_err(StoreError::backend)? {
        let (rev, value) = entry.map_err(StoreError::backend)?;
        let rev = Revision::from_bytes(rev.value())
            .ok_or_else(|| StoreError::Corrupt("kv table key is not a revision".into()))?;
        let kv = decode_kv(value.value())?;
        index.record(&kv.key, change_of(rev, &kv));
        // Rows come in revision order: the last one of a key is its live state.
        if kv.lease != 0 {
            leased.insert(kv.key, kv.lease);
        } else {
            leased.remove(&kv.key);
        }
        current_rev = current_rev.max(rev.main);
    }
    let leases = txn
        .open_table(LEASE)
        .map_err(StoreError::backend)?
        .iter()
        .map_err(StoreError::backend)?
        .map(|e| {
            e.map(|(id, ttl)| (id.value(), ttl.value()))
                .map_err(StoreError::backend)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Recovered {
        index,
        leased: leased.into_iter().collect(),
        current_rev,
        compact_rev,
        cluster_id: get(META_CLUSTER_ID)? as u64,
        member_id: get(META_MEMBER_ID)? as u64,
        applied_index: get(META_APPLIED_INDEX)?,
        nospace: nospace_members(
            db,
            get(META_MEMBER_ID)? as u64,
            get(META_ALARM_NOSPACE)? != 0,
        )?,
        leases,
    })
}

/// The member ids with a raised NOSPACE alarm.
fn nospace_members(db: &Database, own: u64, own_raised: bool) -> Result<Vec<u64>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::backend)?;
    let meta = txn.open_table(META).map_err(StoreError::backend)?;
    let mut members: Vec<u64> = own_raised.then_some(own).into_iter().collect();
    for row in meta
        .range(META_ALARM_NOSPACE_FOR..)
        .map_err(StoreError::backend)?
    {
        let (k, v) = row.map_err(StoreError::backend)?;
        let Some(id) = k.value().strip_prefix(META_ALARM_NOSPACE_FOR) else {
            break;
        };
        if v.value() != 0 {
            if let Ok(id) = id.parse::<u64>() {
                members.push(id);
            }
        }
    }
    members.sort_unstable();
    members.dedup();
    Ok(members)
}

/// Decodes one stored `KeyValue`.
pub fn decode_kv(bytes: &[u8]) -> Result<PbKeyValue, StoreError> {
    PbKeyValue::decode(bytes).map_err(|e| StoreError::Corrupt(format!("stored KeyValue: {e}")))
}

/// The index entry describing a stored `KeyValue`.
pub fn change_of(rev: Revision, kv: &PbKeyValue) -> KeyChange {
    KeyChange {
        rev,
        create_revision: kv.create_revision,
        version: kv.version,
    }
}

/// Loads the value stored at `rev` through any readable `kv` table.
pub fn load<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    rev: Revision,
) -> Result<PbKeyValue, StoreError> {
    let bytes = rev.to_bytes();
    let value = table
        .get(bytes.as_slice())
        .map_err(StoreError::backend)?
        .ok_or_else(|| StoreError::Corrupt(format!("no value stored at revision {rev:?}")))?;
    decode_kv(value.value())
}

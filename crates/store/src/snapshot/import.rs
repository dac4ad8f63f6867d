//! Creates a store from an etcd backend database (an etcd snapshot, or ferry's own).

use prost::Message;
use redb::Database;

use super::bolt_read::BoltFile;
use super::etcd_layout as etcd;
use super::Restored;
use crate::auth::model::{Role, User};
use crate::mvcc::backend::{self, AUTH, KV, LEASE, META};
use crate::mvcc::revision::Revision;
use etcd_client::proto::PbKeyValue;

/// Copies keys with their history, compaction revision, consistent index, leases and auth
/// from `file` into the empty store `db`. Alarms and membership are not carried over: they
/// name the members of the old cluster, and a restored store is a new one (as with
/// `etcdctl snapshot restore`).
pub fn import(file: &BoltFile<'_>, db: &Database) -> Result<Restored, String> {
    let keys = file
        .bucket(etcd::KEY)?
        .ok_or("no `key` bucket: not an etcd backend database")?;
    let meta_rows = file.bucket(etcd::META)?.unwrap_or_default();
    let meta_value = |name: &[u8]| meta_rows.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);

    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let mut restored = Restored {
        revisions: 0,
        revision: 0,
    };
    {
        let mut kv_table = txn.open_table(KV).map_err(|e| e.to_string())?;
        for (key, value) in keys {
            let (main, sub, tombstone) = etcd::parse_rev_key(key)
                .ok_or_else(|| format!("`key` bucket: {key:02x?} is not a revision"))?;
            let mut kv = PbKeyValue::decode(value)
                .map_err(|e| format!("`key` bucket: revision {main}/{sub}: {e}"))?;
            if kv.key.is_empty() {
                return Err(format!(
                    "`key` bucket: revision {main}/{sub} has an empty key"
                ));
            }
            if tombstone {
                kv = PbKeyValue {
                    key: kv.key,
                    mod_revision: main,
                    ..PbKeyValue::default()
                };
            } else if kv.version <= 0 || kv.mod_revision != main {
                return Err(format!(
                    "`key` bucket: revision {main}/{sub} holds version {} at mod_revision {}",
                    kv.version, kv.mod_revision
                ));
            }
            kv_table
                .insert(
                    Revision::new(main, sub).to_bytes().as_slice(),
                    kv.encode_to_vec().as_slice(),
                )
                .map_err(|e| e.to_string())?;
            restored.revisions += 1;
            restored.revision = restored.revision.max(main);
        }

        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        if let Some(bytes) = meta_value(etcd::FINISHED_COMPACT) {
            let (compacted, _, _) = etcd::parse_rev_key(bytes)
                .ok_or("`meta` bucket: finishedCompactRev is not a revision")?;
            meta.insert(backend::META_COMPACT_REV, compacted)
                .map_err(|e| e.to_string())?;
            restored.revision = restored.revision.max(compacted);
        }
        if let Some(bytes) = meta_value(etcd::CONSISTENT_INDEX) {
            let index = u64_be(bytes).ok_or("`meta` bucket: consistent_index is not 8 bytes")?;
            meta.insert(backend::META_APPLIED_INDEX, index as i64)
                .map_err(|e| e.to_string())?;
        }
        meta.insert(backend::META_CURRENT_REV, restored.revision)
            .map_err(|e| e.to_string())?;

        let auth_rows = file.bucket(etcd::AUTH)?.unwrap_or_default();
        for (key, value) in auth_rows {
            if key == etcd::AUTH_ENABLED {
                let on = value.first().is_some_and(|&b| b == 1);
                meta.insert(backend::META_AUTH_ENABLED, i64::from(on))
                    .map_err(|e| e.to_string())?;
            } else if key == etcd::AUTH_REVISION {
                let rev = u64_be(value).ok_or("`auth` bucket: authRevision is not 8 bytes")?;
                meta.insert(backend::META_AUTH_REVISION, rev as i64)
                    .map_err(|e| e.to_string())?;
            }
        }

        let mut lease_table = txn.open_table(LEASE).map_err(|e| e.to_string())?;
        for (key, value) in file.bucket(etcd::LEASE)?.unwrap_or_default() {
            let lease = etcd::StoredLease::decode(value)
                .map_err(|e| format!("`lease` bucket: {key:02x?}: {e}"))?;
            if lease.id <= 0 || lease.ttl <= 0 {
                return Err(format!(
                    "`lease` bucket: lease {} has TTL {}",
                    lease.id, lease.ttl
                ));
            }
            lease_table
                .insert(lease.id, lease.ttl)
                .map_err(|e| e.to_string())?;
        }

        let mut auth_table = txn.open_table(AUTH).map_err(|e| e.to_string())?;
        for (bucket, prefix) in [
            (etcd::AUTH_USERS, backend::AUTH_USER_PREFIX),
            (etcd::AUTH_ROLES, backend::AUTH_ROLE_PREFIX),
        ] {
            for (name, value) in file.bucket(bucket)?.unwrap_or_default() {
                let name = std::str::from_utf8(name)
                    .map_err(|_| format!("auth: a name in {prefix} is not UTF-8"))?;
                let decoded = if bucket == etcd::AUTH_USERS {
                    User::decode(value).map(drop)
                } else {
                    Role::decode(value).map(drop)
                };
                decoded.map_err(|e| format!("auth: {prefix}{name}: {e}"))?;
                auth_table
                    .insert(format!("{prefix}{name}").as_str(), value)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok(restored)
}

fn u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

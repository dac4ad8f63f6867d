//! Writes the store's contents as an etcd 3.4 backend database (bbolt, etcd's buckets and
//! encodings), the file `etcdctl snapshot restore` turns into a member's data dir.

use std::path::Path;

use bbolt_rs::{Bolt, BoltOptions, BucketRwApi, DbApi, DbRwAPI, TxApi, TxRwRefApi};
use prost::Message;
use redb::{ReadTransaction, ReadableTable};

use super::etcd_layout as etcd;
use crate::error::StoreError;
use crate::mvcc::backend::{self, AUTH, KV, LEASE, META};
use crate::mvcc::revision::Revision;

/// etcd's page size on the platforms it runs on.
const PAGE_SIZE: usize = 4096;
/// Keys written per bbolt transaction, so that memory stays bounded on large stores.
const BATCH: usize = 50_000;

/// Writes every table read through `txn` (one consistent view) to a new bbolt file at
/// `path`; returns the database's size (bbolt's high-water mark times its page size), the
/// length `etcdctl` and etcd read as the database.
pub fn export(txn: &ReadTransaction, path: &Path) -> Result<u64, StoreError> {
    let mut bolt = BoltOptions::builder()
        .page_size(PAGE_SIZE)
        .no_sync()
        .build()
        .open(path)
        .map_err(bolt_err)?;
    bolt.update(|mut tx| {
        for name in etcd::BUCKETS {
            tx.create_bucket_if_not_exists(name)?;
        }
        Ok(())
    })
    .map_err(bolt_err)?;

    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(BATCH);
    let kv = txn.open_table(KV).map_err(StoreError::backend)?;
    for row in kv.iter().map_err(StoreError::backend)? {
        let (rev, value) = row.map_err(StoreError::backend)?;
        let rev = Revision::from_bytes(rev.value())
            .ok_or_else(|| StoreError::Corrupt("kv table key is not a revision".into()))?;
        let mut kv = backend::decode_kv(value.value())?;
        let tombstone = kv.version == 0;
        let value = if tombstone {
            // etcd stores a delete as the key alone, marked in the revision key.
            kv.mod_revision = 0;
            kv.encode_to_vec()
        } else {
            value.value().to_vec()
        };
        batch.push((etcd::rev_key(rev.main, rev.sub, tombstone), value));
        if batch.len() == BATCH {
            put_all(&mut bolt, etcd::KEY, &mut batch)?;
        }
    }
    put_all(&mut bolt, etcd::KEY, &mut batch)?;

    let meta = txn.open_table(META).map_err(StoreError::backend)?;
    let get = |name: &str| -> Result<i64, StoreError> {
        Ok(meta
            .get(name)
            .map_err(StoreError::backend)?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    let applied = get(backend::META_APPLIED_INDEX)?.max(0) as u64;
    let mut meta_rows = vec![(
        etcd::CONSISTENT_INDEX.to_vec(),
        applied.to_be_bytes().to_vec(),
    )];
    let compacted = get(backend::META_COMPACT_REV)?;
    if compacted > 0 {
        for name in [etcd::SCHEDULED_COMPACT, etcd::FINISHED_COMPACT] {
            meta_rows.push((name.to_vec(), etcd::rev_key(compacted, 0, false)));
        }
    }
    put_all(&mut bolt, etcd::META, &mut meta_rows)?;

    let mut leases = Vec::new();
    for row in txn
        .open_table(LEASE)
        .map_err(StoreError::backend)?
        .iter()
        .map_err(StoreError::backend)?
    {
        let (id, ttl) = row.map_err(StoreError::backend)?;
        let (id, ttl) = (id.value(), ttl.value());
        let stored = etcd::StoredLease {
            id,
            ttl,
            remaining_ttl: 0,
        };
        leases.push(((id as u64).to_be_bytes().to_vec(), stored.encode_to_vec()));
    }
    put_all(&mut bolt, etcd::LEASE, &mut leases)?;

    let mut auth_rows = vec![
        (
            etcd::AUTH_ENABLED.to_vec(),
            vec![u8::from(get(backend::META_AUTH_ENABLED)? == 1)],
        ),
        (
            etcd::AUTH_REVISION.to_vec(),
            (get(backend::META_AUTH_REVISION)?.max(1) as u64)
                .to_be_bytes()
                .to_vec(),
        ),
    ];
    put_all(&mut bolt, etcd::AUTH, &mut auth_rows)?;
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    for row in txn
        .open_table(AUTH)
        .map_err(StoreError::backend)?
        .iter()
        .map_err(StoreError::backend)?
    {
        let (key, value) = row.map_err(StoreError::backend)?;
        let key = key.value();
        if let Some(name) = key.strip_prefix(backend::AUTH_USER_PREFIX) {
            users.push((name.as_bytes().to_vec(), value.value().to_vec()));
        } else if let Some(name) = key.strip_prefix(backend::AUTH_ROLE_PREFIX) {
            roles.push((name.as_bytes().to_vec(), value.value().to_vec()));
        }
    }
    put_all(&mut bolt, etcd::AUTH_USERS, &mut users)?;
    put_all(&mut bolt, etcd::AUTH_ROLES, &mut roles)?;

    let mut alarms = Vec::new();
    let own = get(backend::META_MEMBER_ID)? as u64;
    let raised = get(backend::META_ALARM_NOSPACE)? != 0;
    for row in meta.iter().map_err(StoreError::backend)? {
        let (key, on) = row.map_err(StoreError::backend)?;
        let member = match key.value().strip_prefix(backend::META_ALARM_NOSPACE_FOR) {
            Some(id) => id.parse::<u64>().ok(),
            None => None,
        };
        if let (Some(member), true) = (member, on.value() != 0) {
            alarms.push(member);
        }
    }
    if raised {
        alarms.push(own);
    }
    let mut alarm_rows: Vec<_> = alarms
        .into_iter()
        .map(|member_id| {
            let alarm = etcd::StoredAlarm {
                member_id,
                alarm: etcd::ALARM_NOSPACE,
            };
            (alarm.encode_to_vec(), Vec::new())
        })
        .collect();
    put_all(&mut bolt, etcd::ALARM, &mut alarm_rows)?;

    let size = bolt.begin().map_err(bolt_err)?.size();
    bolt.close();
    Ok(size)
}

/// Puts `rows` into `bucket` in one bbolt transaction and empties `rows`.
fn put_all(
    bolt: &mut Bolt,
    bucket: &[u8],
    rows: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    bolt.update(|mut tx| {
        let mut b = tx
            .bucket_mut(bucket)
            .ok_or(bbolt_rs::Error::BucketNotFound)?;
        // Keys arrive in order: full pages, as bbolt's own sequential loads do.
        b.set_fill_percent(1.0);
        for (k, v) in rows.iter() {
            b.put(k, v)?;
        }
        Ok(())
    })
    .map_err(bolt_err)?;
    rows.clear();
    Ok(())
}

fn bolt_err(e: bbolt_rs::Error) -> StoreError {
    StoreError::Backend(format!("writing the etcd-format snapshot: {e}"))
}

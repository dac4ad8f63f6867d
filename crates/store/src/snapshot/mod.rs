//! Point-in-time snapshots of the whole store in etcd's format, and restoring a new data
//! dir from one.
//!
//! A snapshot is an etcd 3.4 backend database — a bbolt file with etcd's buckets and
//! encodings — followed by the SHA-256 of those bytes, exactly what etcd's Snapshot RPC
//! streams. So `etcdctl snapshot status/restore` read ferry's snapshots and a real etcd
//! cluster can be started from one, and `ferry store restore` reads etcd's snapshots: the
//! migration path in both directions.

mod bolt_read;
pub mod etcd_layout;
mod export;
mod import;

use std::io::{Read, Write};
use std::path::Path;

use redb::ReadTransaction;
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::mvcc::backend;

/// Length of the SHA-256 trailer.
pub const DIGEST_LEN: usize = 32;
/// etcd recognises the trailer by the stream's length: a whole number of 512-byte sectors
/// plus the digest.
const SECTOR: usize = 512;

/// Writes a snapshot of the backend as `txn` sees it to `out` (using a scratch file in
/// `scratch_dir`), returning how many bytes were written.
pub fn write(
    txn: &ReadTransaction,
    scratch_dir: &Path,
    out: &mut impl Write,
) -> Result<u64, StoreError> {
    let io = |what: &'static str| {
        move |source| StoreError::Io {
            what: what.into(),
            source,
        }
    };
    let scratch = tempfile::tempdir_in(scratch_dir).map_err(io("creating snapshot scratch dir"))?;
    let path = scratch.path().join("snapshot.db");
    let size = export::export(txn, &path)?;
    let mut file = std::fs::File::open(&path).map_err(io("reading snapshot"))?;
    let mut hash = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        file.read_exact(&mut buf[..want])
            .map_err(io("reading snapshot"))?;
        hash.update(&buf[..want]);
        out.write_all(&buf[..want])
            .map_err(io("writing snapshot"))?;
        left -= want as u64;
    }
    out.write_all(&hash.finalize())
        .map_err(io("writing snapshot"))?;
    out.flush().map_err(io("writing snapshot"))?;
    Ok(size + DIGEST_LEN as u64)
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Number of key revisions restored.
    pub revisions: u64,
    /// The store revision the snapshot was taken at.
    pub revision: i64,
}

/// Creates a new store in `data_dir` from the snapshot file at `snapshot`: ferry's or
/// etcd's (`etcdctl snapshot save`), or — with `skip_hash_check`, as `etcdctl snapshot
/// restore --skip-hash-check` — an etcd backend file copied from a data dir, which carries no
/// digest.
///
/// The whole file is checked before anything is kept; on any error the data dir is left as
/// it was. The data dir must not hold a store. The restored store gets new cluster and
/// member ids, as a restored etcd member does.
pub fn restore(
    snapshot: &Path,
    data_dir: &Path,
    skip_hash_check: bool,
) -> Result<Restored, StoreError> {
    let bad = |reason: String| StoreError::BadSnapshot {
        path: snapshot.to_path_buf(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(snapshot)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let has_digest = bytes.len() % SECTOR == DIGEST_LEN;
    let body = if has_digest {
        let (body, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
        if !skip_hash_check && Sha256::digest(body).as_slice() != digest {
            return Err(bad(
                "sha256 digest does not match: the file is truncated or corrupt".into(),
            ));
        }
        body
    } else if skip_hash_check {
        &bytes[..]
    } else {
        return Err(bad(
            "no sha256 digest at the end (a database copied from a data dir? \
             --skip-hash-check restores one)"
                .into(),
        ));
    };
    if !bolt_read::looks_like_bolt(body) {
        return Err(bad(
            "neither an etcd snapshot nor a ferry snapshot (no bbolt database)".into(),
        ));
    }
    let file = bolt_read::BoltFile::open(body).map_err(bad)?;
    if data_dir.join(backend::DB_FILE).exists() {
        return Err(StoreError::DataDirNotEmpty(data_dir.to_path_buf()));
    }
    let created_dir = !data_dir.exists();
    let db = backend::open(data_dir)?;
    let outcome = import::import(&file, &db)
        .map_err(bad)
        .and_then(|restored| backend::initialise(&db).map(|()| restored));
    if outcome.is_err() {
        drop(db);
        // Nothing of a refused snapshot stays behind.
        let _ = std::fs::remove_file(data_dir.join(backend::DB_FILE));
        if created_dir {
            let _ = std::fs::remove_dir(data_dir);
        }
    }
    outcome
}

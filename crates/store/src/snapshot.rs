//! Point-in-time snapshots of the whole store, and restoring a new data dir from one.
//!
//! A snapshot is every row of every backend table read in one read transaction (so it is
//! consistent), framed as records, followed by the SHA-256 of everything before it — the
//! trailer `etcdctl snapshot save` and etcd's restore expect at the end of a snapshot stream.

use std::io::{Read, Write};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::mvcc::backend::{self, AUTH, KV, LEASE, META};

const MAGIC: &[u8] = b"ferry-snapshot-v1\n";
const TABLE_END: u8 = 0;
const PAGE: u64 = 512;
const TABLE_KV: u8 = 1;
const TABLE_META: u8 = 2;
const TABLE_LEASE: u8 = 3;
/// Users and roles (`auth` table).
const TABLE_AUTH: u8 = 4;
/// Length of the SHA-256 trailer.
pub const DIGEST_LEN: usize = 32;

/// Writes a consistent snapshot of `db` to `out`, returning how many bytes were written.
pub fn write(db: &Database, out: &mut impl Write) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(StoreError::backend)?;
    let mut hashed = HashingWriter {
        inner: out,
        hash: Sha256::new(),
        written: 0,
    };
    let io = |e: std::io::Error| StoreError::Io {
        what: "writing snapshot".into(),
        source: e,
    };
    hashed.write_all(MAGIC).map_err(io)?;
    let kv = txn.open_table(KV).map_err(StoreError::backend)?;
    for row in kv.iter().map_err(StoreError::backend)? {
        let (k, v) = row.map_err(StoreError::backend)?;
        record(&mut hashed, TABLE_KV, k.value(), v.value()).map_err(io)?;
    }
    let meta = txn.open_table(META).map_err(StoreError::backend)?;
    for row in meta.iter().map_err(StoreError::backend)? {
        let (k, v) = row.map_err(StoreError::backend)?;
        record(
            &mut hashed,
            TABLE_META,
            k.value().as_bytes(),
            &v.value().to_be_bytes(),
        )
        .map_err(io)?;
    }
    let lease = txn.open_table(LEASE).map_err(StoreError::backend)?;
    for row in lease.iter().map_err(StoreError::backend)? {
        let (k, v) = row.map_err(StoreError::backend)?;
        record(
            &mut hashed,
            TABLE_LEASE,
            &k.value().to_be_bytes(),
            &v.value().to_be_bytes(),
        )
        .map_err(io)?;
    }
    let auth = txn.open_table(AUTH).map_err(StoreError::backend)?;
    for row in auth.iter().map_err(StoreError::backend)? {
        let (k, v) = row.map_err(StoreError::backend)?;
        record(&mut hashed, TABLE_AUTH, k.value().as_bytes(), v.value()).map_err(io)?;
    }
    hashed.write_all(&[TABLE_END]).map_err(io)?;
    // etcdctl recognises the digest by the stream's length: a whole number of 512-byte pages
    // (bolt's page size) plus 32 bytes.
    let pad = (PAGE - hashed.written % PAGE) % PAGE;
    hashed.write_all(&vec![0u8; pad as usize]).map_err(io)?;
    let digest = hashed.hash.finalize();
    let total = hashed.written + DIGEST_LEN as u64;
    out_write(hashed.inner, &digest).map_err(io)?;
    Ok(total)
}

fn out_write(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

fn record(out: &mut impl Write, table: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[table])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Number of key revisions restored.
    pub revisions: u64,
    /// The store revision the snapshot was taken at.
    pub revision: i64,
}

/// Creates a new store in `data_dir` from the snapshot file at `snapshot`.
///
/// The digest is verified before anything is written; the data dir must not hold a store.
/// The restored store gets a new member id, as a restored etcd member does.
pub fn restore(snapshot: &Path, data_dir: &Path) -> Result<Restored, StoreError> {
    let bad = |reason: String| StoreError::BadSnapshot {
        path: snapshot.to_path_buf(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(snapshot)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() < MAGIC.len() + 1 + DIGEST_LEN || !bytes.starts_with(MAGIC) {
        return Err(bad("not a ferry store snapshot".into()));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad(
            "sha256 digest does not match: the file is truncated or corrupt".into(),
        ));
    }
    let records = parse(&body[MAGIC.len()..]).map_err(bad)?;
    if data_dir.join(backend::DB_FILE).exists() {
        return Err(StoreError::DataDirNotEmpty(data_dir.to_path_buf()));
    }
    let db = backend::open(data_dir)?;
    let txn = db.begin_write().map_err(StoreError::backend)?;
    let mut restored = Restored {
        revisions: 0,
        revision: 0,
    };
    {
        let mut kv = txn.open_table(KV).map_err(StoreError::backend)?;
        let mut meta = txn.open_table(META).map_err(StoreError::backend)?;
        let mut lease = txn.open_table(LEASE).map_err(StoreError::backend)?;
        let mut auth = txn.open_table(AUTH).map_err(StoreError::backend)?;
        for (table, key, value) in records {
            match table {
                TABLE_KV => {
                    kv.insert(key, value).map_err(StoreError::backend)?;
                    restored.revisions += 1;
                }
                TABLE_META => {
                    let name = std::str::from_utf8(key).map_err(|e| bad(e.to_string()))?;
                    let n = int(value).map_err(bad)?;
                    if name == backend::META_CURRENT_REV {
                        restored.revision = n;
                    }
                    if name != backend::META_MEMBER_ID {
                        meta.insert(name, n).map_err(StoreError::backend)?;
                    }
                }
                TABLE_AUTH => {
                    let name = std::str::from_utf8(key).map_err(|e| bad(e.to_string()))?;
                    auth.insert(name, value).map_err(StoreError::backend)?;
                }
                _ => {
                    lease
                        .insert(int(key).map_err(bad)?, int(value).map_err(bad)?)
                        .map_err(StoreError::backend)?;
                }
            }
        }
    }
    txn.commit().map_err(StoreError::backend)?;
    backend::initialise(&db)?;
    Ok(restored)
}

type Record<'a> = (u8, &'a [u8], &'a [u8]);

fn parse(mut body: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut out = Vec::new();
    loop {
        let (&table, rest) = body.split_first().ok_or("missing end record")?;
        body = rest;
        match table {
            TABLE_END if body.iter().all(|&b| b == 0) => return Ok(out),
            TABLE_END => return Err("data after the end record".into()),
            TABLE_KV | TABLE_META | TABLE_LEASE | TABLE_AUTH => {
                let key = field(&mut body)?;
                let value = field(&mut body)?;
                out.push((table, key, value));
            }
            other => return Err(format!("unknown record type {other}")),
        }
    }
}

fn field<'a>(body: &mut &'a [u8]) -> Result<&'a [u8], String> {
    if body.len() < 4 {
        return Err("truncated record".into());
    }
    let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if body.len() < 4 + len {
        return Err("truncated record".into());
    }
    let value = &body[4..4 + len];
    *body = &body[4 + len..];
    Ok(value)
}

fn int(bytes: &[u8]) -> Result<i64, String> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| "bad integer field".to_string())?;
    Ok(i64::from_be_bytes(arr))
}

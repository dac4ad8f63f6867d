//! A batch's redo record: the rows it inserted into and removed from redb's tables, in order.
//! Replaying it onto the state before the batch gives exactly the state after it.

use redb::Table;

use crate::error::StoreError;

const KV_PUT: u8 = 1;
const KV_DEL: u8 = 2;
const META_PUT: u8 = 3;
const META_DEL: u8 = 4;
const LEASE_PUT: u8 = 5;
const LEASE_DEL: u8 = 6;

/// The operations of one batch, encoded as they are made.
#[derive(Debug, Default)]
pub struct Redo {
    buf: Vec<u8>,
}

impl Redo {
    /// Forgets the last batch (keeps the allocation).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The encoded operations.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn bytes_field(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(b);
    }

    /// `kv[rev] = value`.
    pub fn kv_put(&mut self, rev: &[u8], value: &[u8]) {
        self.buf.push(KV_PUT);
        self.bytes_field(rev);
        self.bytes_field(value);
    }

    /// `kv[rev]` removed.
    pub fn kv_del(&mut self, rev: &[u8]) {
        self.buf.push(KV_DEL);
        self.bytes_field(rev);
    }

    /// `meta[name] = value`.
    pub fn meta_put(&mut self, name: &str, value: i64) {
        self.buf.push(META_PUT);
        self.bytes_field(name.as_bytes());
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// `meta[name]` removed.
    pub fn meta_del(&mut self, name: &str) {
        self.buf.push(META_DEL);
        self.bytes_field(name.as_bytes());
    }

    /// `lease[id] = ttl`.
    pub fn lease_put(&mut self, id: i64, ttl: i64) {
        self.buf.push(LEASE_PUT);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&ttl.to_le_bytes());
    }

    /// `lease[id]` removed.
    pub fn lease_del(&mut self, id: i64) {
        self.buf.push(LEASE_DEL);
        self.buf.extend_from_slice(&id.to_le_bytes());
    }
}

/// Reads a redo record back.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

fn truncated() -> StoreError {
    StoreError::Corrupt("write-ahead log: a redo record is cut short".into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(truncated)?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        self.take(u32::from_le_bytes(b) as usize)
    }

    fn name(&mut self) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| StoreError::Corrupt("write-ahead log: a meta name is not UTF-8".into()))
    }
}

/// Applies a redo record to the tables of one redb transaction.
pub fn apply(
    record: &[u8],
    kv: &mut Table<&'static [u8], &'static [u8]>,
    meta: &mut Table<&'static str, i64>,
    lease: &mut Table<i64, i64>,
) -> Result<(), StoreError> {
    let mut r = Reader { buf: record, at: 0 };
    while r.at < record.len() {
        let op = r.take(1)?[0];
        match op {
            KV_PUT => {
                let rev = r.bytes()?;
                let value = r.bytes()?;
                kv.insert(rev, value).map_err(StoreError::backend)?;
            }
            KV_DEL => {
                kv.remove(r.bytes()?).map_err(StoreError::backend)?;
            }
            META_PUT => {
                let name = r.name()?;
                let value = r.i64()?;
                meta.insert(name, value).map_err(StoreError::backend)?;
            }
            META_DEL => {
                meta.remove(r.name()?).map_err(StoreError::backend)?;
            }
            LEASE_PUT => {
                let id = r.i64()?;
                let ttl = r.i64()?;
                lease.insert(id, ttl).map_err(StoreError::backend)?;
            }
            LEASE_DEL => {
                lease.remove(r.i64()?).map_err(StoreError::backend)?;
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log: unknown redo operation {other}"
                )))
            }
        }
    }
    Ok(())
}

//! Rows that are durable in the write-ahead log but not yet written to redb, and how readers
//! see them: the counterpart of etcd's read buffer in front of its backend transaction.
//!
//! Why: even a non-durable redb commit cost a lone client about a tenth of each put. The
//! writer now puts a batch's rows here and in its redo record, syncs the log and replies;
//! redb receives many batches at once later ([`Unflushed::clear`] follows that commit).
//!
//! How a reader stays consistent: rows leave only after the redb commit that holds them
//! ([`Unflushed::clear_through`]). A reader that looks its revisions up here first and opens
//! its redb snapshot afterwards finds each row in one or the other. A reader that must look
//! rows up after opening its snapshot holds [`Unflushed::hold`] meanwhile, which keeps
//! rows from leaving. Compaction removes rows from redb at the flush that follows it, and
//! readers open their snapshot under the index's read lock, which compaction takes first.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::proto::PbKeyValue;
use parking_lot::{RwLock, RwLockReadGuard};
use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::backend::{decode_kv, load, KV};
use super::revision::Revision;
use crate::error::StoreError;

/// An encoded `KeyValue` row, shared between the buffer and its readers.
pub type Row = Arc<[u8]>;

/// The rows applied since the last flush to redb, by revision.
#[derive(Default)]
pub struct Unflushed {
    rows: RwLock<BTreeMap<Revision, Row>>,
    /// Read-held by readers that look rows up after opening their redb snapshot.
    clearing: RwLock<()>,
}

impl Unflushed {
    /// Adds the row written at `rev` (the writer only).
    pub fn insert(&self, rev: Revision, row: Row) {
        self.rows.write().insert(rev, row);
    }

    /// The row written at `rev`, if it has not been flushed yet.
    pub fn get(&self, rev: Revision) -> Option<Row> {
        self.rows.read().get(&rev).cloned()
    }

    /// The unflushed rows among `revs`, with one lock.
    pub fn get_many(&self, revs: impl Iterator<Item = Revision>) -> Vec<(Revision, Row)> {
        let rows = self.rows.read();
        if rows.is_empty() {
            return Vec::new();
        }
        revs.filter_map(|rev| rows.get(&rev).map(|row| (rev, row.clone())))
            .collect()
    }

    /// The unflushed rows with a main revision in `from..=to`, in revision order.
    pub fn range(&self, from: i64, to: i64) -> Vec<(Revision, Row)> {
        let rows = self.rows.read();
        rows.range(Revision::new(from, 0)..Revision::new(to.saturating_add(1), 0))
            .map(|(rev, row)| (*rev, row.clone()))
            .collect()
    }

    /// Keeps every row here until the guard is dropped.
    pub fn hold(&self) -> RwLockReadGuard<'_, ()> {
        self.clearing.read()
    }

    /// Forgets rows above main revision `rev` (a batch that failed to commit).
    pub fn truncate_above(&self, rev: i64) {
        let mut rows = self.rows.write();
        let _dropped = rows.split_off(&Revision::new(rev.saturating_add(1), 0));
    }

    /// Forgets the rows up to main revision `rev`, committed to redb. Unless `wait`, gives up
    /// (returning false) while a reader holds the rows; the next flush clears them.
    pub fn clear_through(&self, rev: i64, wait: bool) -> bool {
        let _no_reader = if wait {
            self.clearing.write()
        } else {
            match self.clearing.try_write() {
                Some(guard) => guard,
                None => return false,
            }
        };
        let mut rows = self.rows.write();
        let kept = rows.split_off(&Revision::new(rev.saturating_add(1), 0));
        let flushed = std::mem::replace(&mut *rows, kept);
        drop(rows);
        // Freed outside the lock.
        drop(flushed);
        true
    }

    /// Number of unflushed rows.
    pub fn len(&self) -> usize {
        self.rows.read().len()
    }

    /// Whether every row is in redb.
    pub fn is_empty(&self) -> bool {
        self.rows.read().is_empty()
    }
}

/// The writer's reads of stored values while it applies a batch: unflushed rows first, then
/// a redb snapshot opened on first need (the writer is the only one that flushes, so the
/// snapshot holds every row that is not unflushed).
pub struct WriterRows<'a> {
    unflushed: &'a Unflushed,
    db: &'a Database,
    table: OnceCell<ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl<'a> WriterRows<'a> {
    /// Reads of `db` behind `unflushed`.
    pub fn new(unflushed: &'a Unflushed, db: &'a Database) -> Self {
        Self {
            unflushed,
            db,
            table: OnceCell::new(),
        }
    }

    /// The value written at `rev`.
    pub fn load(&self, rev: Revision) -> Result<PbKeyValue, StoreError> {
        if let Some(row) = self.unflushed.get(rev) {
            return decode_kv(&row);
        }
        let table = match self.table.get() {
            Some(table) => table,
            None => {
                let txn = self.db.begin_read().map_err(StoreError::backend)?;
                let table = txn.open_table(KV).map_err(StoreError::backend)?;
                self.table.get_or_init(|| table)
            }
        };
        load(table, rev)
    }

    /// Records the row written at `rev`.
    pub fn insert(&self, rev: Revision, row: Row) {
        self.unflushed.insert(rev, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b: u8) -> Row {
        Arc::from(vec![b].into_boxed_slice())
    }

    #[test]
    fn ranges_and_truncation_follow_revision_order() {
        let buffer = Unflushed::default();
        for main in 1..=5 {
            buffer.insert(Revision::new(main, 0), row(main as u8));
            buffer.insert(Revision::new(main, 1), row(main as u8 + 100));
        }
        let mains: Vec<i64> = buffer.range(2, 3).iter().map(|(r, _)| r.main).collect();
        assert_eq!(mains, vec![2, 2, 3, 3]);
        buffer.truncate_above(3);
        assert_eq!(buffer.len(), 6);
        assert!(buffer.get(Revision::new(4, 0)).is_none());
        let found = buffer.get_many([Revision::new(1, 0), Revision::new(9, 1)].into_iter());
        assert_eq!(found.len(), 1);
        assert_eq!(&*found[0].1, &[1u8][..]);
        {
            let _reading = buffer.hold();
            assert!(!buffer.clear_through(2, false), "cleared under a reader");
            assert_eq!(buffer.len(), 6);
        }
        assert!(buffer.clear_through(2, false));
        assert_eq!(buffer.len(), 2, "rows above the flushed revision stay");
        assert!(buffer.clear_through(3, true));
        assert!(buffer.is_empty());
    }
}

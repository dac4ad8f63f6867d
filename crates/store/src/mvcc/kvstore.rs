//! The MVCC key-value store: concurrent readers, one writer at a time with group commit.
//!
//! Write requests queue for the writer, which one waiting request at a time runs (see
//! `write_queue`): it applies every request waiting in the queue (one revision per request)
//! into the unflushed rows and one redo record, and makes it durable with one log append and
//! fdatasync before acknowledging any of them. redb receives the rows of many batches in one
//! transaction later (a flush). Readers never wait for the writer: they read at the last
//! published revision, which moves only after a batch is durable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use etcd_client::proto::{
    PbDeleteRequest, PbDeleteResponse, PbKeyValue, PbPutRequest, PbPutResponse, PbRangeRequest,
    PbRangeResponse, PbTxnRequest, PbTxnResponse,
};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase};
use tokio::sync::oneshot;

use super::apply::Applier;
use super::backend::{self, KV, LEASE, META};
use super::fanout::Fanout;
use super::key_index::TreeIndex;
use super::range::{self, resolve_revision};
use super::revision::Revision;
use super::unflushed::{Row, Unflushed, WriterRows};
use super::watchable::{ChangeBatch, Event};
use super::write_queue::{BatchWriter, Queued, WriteQueue};
use crate::error::StoreError;
use crate::lease::Lessor;

/// How many queued requests one commit may carry.
const MAX_BATCH: usize = 1024;
/// Log bytes after which the writer checkpoints (a durable redb commit, old segments go).
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Time after which it checkpoints anyway. A checkpoint writes every page redb buffered
/// since the last one and holds the writes meanwhile, so this bounds how long a write can
/// wait behind one: at 1,000 puts/s, 7 ms each second rather than 75 ms every 30 s (etcd's
/// `check perf`: slowest request 16 ms against 92; docs/BENCHMARKS.md, issue 22).
const CHECKPOINT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long writes must have stopped before the idle checkpoint runs (etcd commits its
/// backend every 100 ms): idle time pays for it, not a waiting client.
pub const CHECKPOINT_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Redo bytes after which the writer flushes the unflushed rows into redb without waiting
/// for a checkpoint (bounds their memory under sustained load).
const FLUSH_BYTES: usize = 1024 * 1024;
/// Unflushed rows past which a flush waits for readers holding them rather than leaving
/// them for the next flush.
const MAX_UNFLUSHED_ROWS: usize = 100_000;

/// Size of a log segment.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Limits the store enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most operations in one transaction branch.
    pub max_txn_ops: usize,
    /// Backend size at which the NOSPACE alarm is raised.
    pub quota_backend_bytes: u64,
    /// Committed batches the change feed buffers for each subscriber; a subscriber further
    /// behind than this catches up from history instead.
    pub feed_capacity: usize,
}

/// A write the writer applies.
pub enum WriteRequest {
    /// A Put.
    Put(PbPutRequest),
    /// A DeleteRange.
    Delete(PbDeleteRequest),
    /// A Txn (read-only ones make no revision and no commit).
    Txn(PbTxnRequest),
    /// Compact at this revision.
    Compact(i64),
    /// Reclaim free space in the backend file.
    Defragment,
    /// Raise (true) or clear the NOSPACE alarm for a member id (0: every member).
    SetNoSpace {
        /// The member the alarm is for.
        member: u64,
        /// Raise or clear.
        on: bool,
    },
    /// Grant a lease (`id` 0 picks one).
    LeaseGrant {
        /// Requested id.
        id: i64,
        /// Requested TTL in seconds.
        ttl: i64,
    },
    /// Revoke a lease, deleting its keys.
    LeaseRevoke(i64),
    /// Write every acknowledged batch into redb (before a reader of whole tables).
    Flush,
    /// Make every acknowledged batch durable in redb and remove the log segments that held
    /// them (sent once writes have stopped, see `server::idle_checkpoint`).
    Checkpoint,
}

/// What a write returns.
pub enum WriteResponse {
    /// The Put's response.
    Put(PbPutResponse),
    /// The DeleteRange's response.
    Delete(PbDeleteResponse),
    /// The Txn's response.
    Txn(PbTxnResponse),
    /// The lease granted.
    LeaseGranted {
        /// Its id.
        id: i64,
        /// Its TTL (raised to the minimum if needed).
        ttl: i64,
    },
    /// Done, nothing to return.
    Done,
}

type Reply = oneshot::Sender<Result<WriteResponse, StoreError>>;

/// State shared by readers, the writer and the servers.
pub struct Shared {
    pub(crate) db: RwLock<Database>,
    pub(crate) db_path: PathBuf,
    pub(crate) index: RwLock<TreeIndex>,
    /// Last revision whose changes are durable and visible.
    pub(crate) current_rev: AtomicI64,
    pub(crate) compact_rev: AtomicI64,
    pub(crate) applied_index: AtomicI64,
    pub(crate) nospace: AtomicBool,
    /// The member ids NOSPACE is raised for (any at all refuses puts).
    pub(crate) nospace_members: Mutex<Vec<u64>>,
    /// How long each durable backend commit (a checkpoint, with its fsync) took.
    pub(crate) commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// How long each write-ahead log append (with its fdatasync) took.
    pub(crate) wal_fsync_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Log bytes not yet checkpointed into the backend file (counted against the quota).
    pub(crate) wal_pending: AtomicU64,
    /// The backend file's size, as of the last checkpoint (it only grows at durable commits).
    pub(crate) db_file_bytes: AtomicU64,
    pub(crate) poisoned: Mutex<Option<String>>,
    /// Rows acknowledged but not yet in redb.
    pub(crate) unflushed: Unflushed,
    pub(crate) cluster_id: u64,
    pub(crate) member_id: u64,
    pub(crate) limits: Limits,
    pub(crate) lessor: Mutex<Lessor>,
}

/// Handle to an open store; cheap to clone.
#[derive(Clone)]
pub struct MvccStore {
    shared: Arc<Shared>,
    writes: Arc<WriteQueue<Writer>>,
    events: tokio::sync::broadcast::Sender<Arc<ChangeBatch>>,
    fanout: Arc<Fanout>,
}

impl MvccStore {
    /// Opens the store in `data_dir`, recovering its history.
    pub fn open(data_dir: &Path, limits: Limits) -> Result<Self, StoreError> {
        let db = backend::open(data_dir)?;
        backend::initialise(&db)?;
        let wal = replay_log(&db, &data_dir.join(crate::wal::WAL_DIR))?;
        let recovered = backend::recover(&db)?;
        let mut lessor =
            Lessor::restore(recovered.leases.iter().copied(), std::time::Instant::now());
        for (key, lease) in &recovered.leased {
            lessor.attach(*lease, key);
        }
        let shared = Arc::new(Shared {
            db: RwLock::new(db),
            db_path: data_dir.join(backend::DB_FILE),
            index: RwLock::new(recovered.index),
            current_rev: AtomicI64::new(recovered.current_rev.max(1)),
            compact_rev: AtomicI64::new(recovered.compact_rev),
            applied_index: AtomicI64::new(recovered.applied_index),
            nospace: AtomicBool::new(!recovered.nospace.is_empty()),
            nospace_members: Mutex::new(recovered.nospace.clone()),
            // etcd's buckets: 1 ms to about 8 s, doubling.
            commit_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14),
            ),
            wal_fsync_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14),
            ),
            wal_pending: AtomicU64::new(0),
            db_file_bytes: AtomicU64::new(file_bytes(&data_dir.join(backend::DB_FILE))),
            poisoned: Mutex::new(None),
            unflushed: Unflushed::default(),
            cluster_id: recovered.cluster_id,
            member_id: recovered.member_id,
            limits,
            lessor: Mutex::new(lessor),
        });
        let (events, _) = tokio::sync::broadcast::channel(shared.limits.feed_capacity.max(1));
        let fanout = Arc::new(Fanout::new(
            shared.limits.feed_capacity,
            shared.current_rev.load(Ordering::Acquire),
        ));
        let writer = Writer {
            shared: shared.clone(),
            events: events.clone(),
            fanout: fanout.clone(),
            wal,
            redo: crate::wal::Redo::default(),
            pending: Vec::new(),
            pending_seq: 0,
            pending_rev: 0,
            last_checkpoint: std::time::Instant::now(),
        };
        let writes = Arc::new(WriteQueue::new(writer, MAX_BATCH));
        Ok(Self {
            shared,
            writes,
            events,
            fanout,
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Log bytes appended since the last checkpoint (0: redb holds every batch durably).
    pub fn uncheckpointed_log_bytes(&self) -> u64 {
        self.shared.wal_pending.load(Ordering::Acquire)
    }

    /// The last durable revision.
    pub fn current_revision(&self) -> i64 {
        self.shared.current_rev.load(Ordering::Acquire)
    }

    /// The revision the store was last compacted at.
    pub fn compact_revision(&self) -> i64 {
        self.shared.compact_rev.load(Ordering::Acquire)
    }

    /// Where watch streams register the ranges they watch, to be handed only the commits
    /// that touch them.
    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    /// Subscribes to the events of every commit from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<ChangeBatch>> {
        self.events.subscribe()
    }

    /// The histogram of durable backend commit durations (checkpoints; seconds).
    pub fn commit_durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.shared.commit_seconds.clone()
    }

    /// The histogram of write-ahead log append-and-fdatasync durations (seconds).
    pub fn wal_fsync_durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.shared.wal_fsync_seconds.clone()
    }

    /// Runs `f` with the backend database (auth records live in their own table beside the
    /// key-value history).
    pub fn with_database<R>(&self, f: impl FnOnce(&Database) -> R) -> R {
        f(&self.shared.db.read())
    }

    /// Writes every batch acknowledged so far into redb, for readers of whole tables (a
    /// snapshot, a hash) that read redb alone.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(WriteRequest::Flush).await.map(|_| ())
    }

    /// A read transaction of the backend, which holds acknowledged batches only (the writer
    /// writes a batch into redb after its log record is synced), up to the last flush: call
    /// [`MvccStore::flush`] first to include every batch acknowledged before.
    pub fn begin_read_durable(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.begin_read()
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.shared
            .db
            .read()
            .begin_read()
            .map_err(StoreError::backend)
    }

    /// Serves a Range at the last durable revision (or the one requested).
    pub fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse, StoreError> {
        let (txn, plan, current, unflushed) = {
            let index = self.shared.index.read();
            let current = self.current_revision();
            let at = resolve_revision(req.revision, current, self.compact_revision())?;
            let plan = range::plan(&index, req, at);
            // Unflushed rows first, then the snapshot (see `unflushed`); the snapshot starts
            // while the index lock keeps compaction out, so every value the plan names is
            // still in it. Recent writes need no snapshot at all.
            let unflushed: HashMap<Revision, Row> = self
                .shared
                .unflushed
                .get_many(plan.revisions())
                .into_iter()
                .collect();
            let txn = if unflushed.len() < plan.len() {
                Some(self.begin_read()?)
            } else {
                None
            };
            (txn, plan, current, unflushed)
        };
        let table = match &txn {
            Some(txn) => Some(txn.open_table(KV).map_err(StoreError::backend)?),
            None => None,
        };
        range::finish(req, plan, current, |rev| {
            match (unflushed.get(&rev), &table) {
                (Some(row), _) => backend::decode_kv(row),
                (None, Some(table)) => backend::load(table, rev),
                (None, None) => Err(StoreError::Corrupt(format!(
                    "no value stored at revision {rev:?}"
                ))),
            }
        })
    }

    /// Every change with a revision in `from..=to`, in revision order, for watchers catching
    /// up. `prev` adds each key's previous value. Fails with `Compacted` when `from` is below
    /// the compact revision.
    pub fn history(&self, from: i64, to: i64, prev: bool) -> Result<Vec<Event>, StoreError> {
        let index = self.shared.index.read();
        if from < self.compact_revision() {
            return Err(StoreError::Compacted);
        }
        // Previous values are looked up after the snapshot opens: keep unflushed rows.
        let _unflushed_kept = self.shared.unflushed.hold();
        let mut rows: std::collections::BTreeMap<Revision, PbKeyValue> =
            std::collections::BTreeMap::new();
        for (rev, row) in self.shared.unflushed.range(from, to) {
            rows.insert(rev, backend::decode_kv(&row)?);
        }
        let txn = self.begin_read()?;
        let table = txn.open_table(KV).map_err(StoreError::backend)?;
        let start = Revision::new(from, 0).to_bytes();
        let end = Revision::new(to.saturating_add(1), 0).to_bytes();
        for row in table
            .range(start.as_slice()..end.as_slice())
            .map_err(StoreError::backend)?
        {
            let (rev, value) = row.map_err(StoreError::backend)?;
            let rev = Revision::from_bytes(rev.value())
                .ok_or_else(|| StoreError::Corrupt("kv table key is not a revision".into()))?;
            if let std::collections::btree_map::Entry::Vacant(slot) = rows.entry(rev) {
                slot.insert(backend::decode_kv(value.value())?);
            }
        }
        let load = |rev: Revision| match self.shared.unflushed.get(rev) {
            Some(row) => backend::decode_kv(&row),
            None => backend::load(&table, rev),
        };
        let mut events = Vec::with_capacity(rows.len());
        for kv in rows.into_values() {
            let prev = if prev {
                index
                    .get(&kv.key, kv.mod_revision - 1)
                    .map(|c| load(c.rev))
                    .transpose()?
            } else {
                None
            };
            events.push(Event { kv, prev });
        }
        Ok(events)
    }

    /// Queues a write and waits until it is durable.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteResponse, StoreError> {
        self.writes
            .write(req)
            .await
            .unwrap_or(Err(StoreError::Stopped))
    }

    /// The backend file's size in bytes.
    pub fn db_size(&self) -> u64 {
        std::fs::metadata(&self.shared.db_path)
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

struct Writer {
    shared: Arc<Shared>,
    events: tokio::sync::broadcast::Sender<Arc<ChangeBatch>>,
    fanout: Arc<Fanout>,
    wal: crate::wal::Wal,
    redo: crate::wal::Redo,
    /// The redo records of the batches logged since the last flush, in order.
    pending: Vec<u8>,
    /// The log sequence number of the last of them.
    pending_seq: u64,
    /// The revision after the last of them.
    pending_rev: i64,
    last_checkpoint: std::time::Instant,
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Replays the log's batches after the backend's durable one, makes them durable, and
/// starts a fresh log after them.
fn replay_log(db: &Database, dir: &Path) -> Result<crate::wal::Wal, StoreError> {
    let durable = {
        let txn = db.begin_read().map_err(StoreError::backend)?;
        let meta = txn.open_table(META).map_err(StoreError::backend)?;
        meta.get(backend::META_WAL_SEQ)
            .map_err(StoreError::backend)?
            .map(|v| v.value())
            .unwrap_or(0)
    };
    let replayed = crate::wal::replay(dir, durable.max(0) as u64, |seq, record| {
        let mut txn = db.begin_write().map_err(StoreError::backend)?;
        txn.set_durability(redb::Durability::None)
            .map_err(StoreError::backend)?;
        {
            let mut kv = txn.open_table(KV).map_err(StoreError::backend)?;
            let mut meta = txn.open_table(META).map_err(StoreError::backend)?;
            let mut lease = txn.open_table(LEASE).map_err(StoreError::backend)?;
            crate::wal::apply_redo(record, &mut kv, &mut meta, &mut lease)?;
            meta.insert(backend::META_WAL_SEQ, seq as i64)
                .map_err(StoreError::backend)?;
        }
        txn.commit().map_err(StoreError::backend)
    })?;
    if replayed.batches > 0 {
        tracing::info!(batches = replayed.batches, "write-ahead log replayed");
    }
    // Durable before the old segments go.
    db.begin_write()
        .map_err(StoreError::backend)?
        .commit()
        .map_err(StoreError::backend)?;
    crate::wal::Wal::create(dir, replayed.next_seq, SEGMENT_BYTES).map_err(|source| {
        StoreError::Io {
            what: format!("starting the write-ahead log in {}", dir.display()),
            source,
        }
    })
}

impl BatchWriter for Writer {
    type Request = WriteRequest;
    type Response = Result<WriteResponse, StoreError>;

    fn write_batch(&mut self, batch: Vec<Queued<WriteRequest, Self::Response>>) {
        let batch: Vec<(WriteRequest, Reply)> =
            batch.into_iter().map(|q| (q.request, q.reply)).collect();
        if let Some(reason) = self.shared.poisoned.lock().clone() {
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Poisoned(reason.clone())));
            }
            return;
        }
        if batch
            .iter()
            .any(|(r, _)| matches!(r, WriteRequest::Defragment))
        {
            self.run_singly(batch);
        } else {
            self.commit_batch(batch);
        }
    }
}

impl Writer {
    /// Defragmentation needs the database to itself; the rest of its batch commits around it.
    fn run_singly(&mut self, batch: Vec<(WriteRequest, Reply)>) {
        let mut rest = Vec::new();
        for (req, reply) in batch {
            if matches!(req, WriteRequest::Defragment) {
                if !rest.is_empty() {
                    self.commit_batch(std::mem::take(&mut rest));
                }
                let result = self
                    .flush(true, true)
                    .and_then(|_| self.defragment())
                    .and_then(|_| self.log_checkpointed());
                let _ = reply.send(result.map(|_| WriteResponse::Done));
            } else {
                rest.push((req, reply));
            }
        }
        if !rest.is_empty() {
            self.commit_batch(rest);
        }
    }

    fn defragment(&self) -> Result<(), StoreError> {
        let mut db = self.shared.db.write();
        for _ in 0..200 {
            match db.compact() {
                Ok(_) => return Ok(()),
                Err(redb::CompactionError::TransactionInProgress) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => return Err(StoreError::backend(e)),
            }
        }
        Err(StoreError::Backend(
            "defragment: reads kept the database busy for 2 s; try again".into(),
        ))
    }

    /// The log's segments are covered by a durable backend commit: they go.
    fn log_checkpointed(&mut self) -> Result<(), StoreError> {
        self.wal.checkpointed().map_err(|source| StoreError::Io {
            what: "removing checkpointed write-ahead log segments".into(),
            source,
        })?;
        self.shared.wal_pending.store(0, Ordering::Release);
        self.shared
            .db_file_bytes
            .store(file_bytes(&self.shared.db_path), Ordering::Release);
        self.last_checkpoint = std::time::Instant::now();
        Ok(())
    }

    /// Writes the batches logged since the last flush into redb in one transaction (durable
    /// or not), then lets their rows leave the unflushed buffer (`wait`: even if a reader
    /// holds them for now). `durable` with nothing to write still commits durably: earlier
    /// non-durable flushes become durable with it.
    fn flush(&mut self, durable: bool, wait: bool) -> Result<(), StoreError> {
        if self.pending.is_empty() && !durable {
            return Ok(());
        }
        let started = std::time::Instant::now();
        {
            let db = self.shared.db.read();
            let mut txn = db.begin_write().map_err(StoreError::backend)?;
            if !durable {
                txn.set_durability(redb::Durability::None)
                    .map_err(StoreError::backend)?;
            }
            if !self.pending.is_empty() {
                let mut kv = txn.open_table(KV).map_err(StoreError::backend)?;
                let mut meta = txn.open_table(META).map_err(StoreError::backend)?;
                let mut lease = txn.open_table(LEASE).map_err(StoreError::backend)?;
                crate::wal::apply_redo(&self.pending, &mut kv, &mut meta, &mut lease)?;
                meta.insert(backend::META_WAL_SEQ, self.pending_seq as i64)
                    .map_err(StoreError::backend)?;
            }
            txn.commit().map_err(StoreError::backend)?;
        }
        if durable {
            self.shared
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if !self.pending.is_empty() {
            let wait = wait || self.shared.unflushed.len() > MAX_UNFLUSHED_ROWS;
            self.shared.unflushed.clear_through(self.pending_rev, wait);
        }
        self.pending.clear();
        if self.pending.capacity() > FLUSH_BYTES {
            self.pending.shrink_to(FLUSH_BYTES);
        }
        Ok(())
    }

    /// A durable flush, then the log's old segments go.
    fn checkpoint(&mut self, wait: bool) -> Result<(), StoreError> {
        self.flush(true, wait)?;
        self.log_checkpointed()
    }

    /// Appends the batch's redo record to the log and syncs it.
    fn log_batch(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.wal
            .append(self.redo.bytes())
            .map_err(|source| StoreError::Io {
                what: "appending to the write-ahead log".into(),
                source,
            })?;
        self.shared
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.shared
            .wal_pending
            .store(self.wal.since_checkpoint(), Ordering::Release);
        Ok(())
    }

    fn commit_batch(&mut self, batch: Vec<(WriteRequest, Reply)>) {
        let published = self.shared.current_rev.load(Ordering::Acquire);
        let mut touched = Vec::new();
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        self.redo.clear();
        let seq = self.wal.next_seq();
        // Read before applying: a watcher asking for previous values that registers later
        // gets them from history (see `ChangeBatch::has_prevs`).
        let read_prevs = self.fanout.wants_prevs();
        let outcome = self
            .apply_batch(
                &batch,
                published,
                read_prevs,
                &mut touched,
                &mut events,
                &mut results,
            )
            .and_then(|applied| {
                if let Some((new_rev, requests)) = applied {
                    self.log_batch()?;
                    self.pending.extend_from_slice(self.redo.bytes());
                    self.pending_seq = seq;
                    self.pending_rev = new_rev;
                    self.shared
                        .applied_index
                        .fetch_add(requests, Ordering::AcqRel);
                }
                Ok(applied.map_or(published, |(new_rev, _)| new_rev))
            });
        // Compaction removes rows from redb at the next flush: make it now, so that no
        // unflushed row outlives its compaction. A flush request wants its answer after it.
        let compacts = batch
            .iter()
            .any(|(r, _)| matches!(r, WriteRequest::Compact(_)));
        let checkpoint_now = batch
            .iter()
            .any(|(r, _)| matches!(r, WriteRequest::Checkpoint));
        let flush_now = compacts || batch.iter().any(|(r, _)| matches!(r, WriteRequest::Flush));
        match outcome {
            Ok(new_rev) => {
                self.shared.current_rev.store(new_rev, Ordering::Release);
                if !events.is_empty() {
                    let batch = Arc::new(ChangeBatch::with_prevs(events, read_prevs));
                    self.fanout.route(&batch);
                    let _ = self.events.send(batch);
                }
                let pending = self.wal.since_checkpoint() > 0;
                let checkpoint_due = self.wal.since_checkpoint() >= CHECKPOINT_BYTES
                    || (pending && self.last_checkpoint.elapsed() >= CHECKPOINT_AFTER);
                if let Err(e) = self.write_back(checkpoint_now, flush_now, compacts) {
                    for result in &mut results {
                        *result = Err(StoreError::Poisoned(e.to_string()));
                    }
                }
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                let flush_due = self.pending.len() >= FLUSH_BYTES;
                // A failure has poisoned the store; these replies are already sent.
                let _ = self.write_back(checkpoint_due && !checkpoint_now, flush_due, false);
            }
            Err(e) => {
                self.shared
                    .index
                    .write()
                    .truncate_above(&touched, published);
                self.shared.unflushed.truncate_above(published);
                self.poison("store commit failed", &e);
                let reason = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Poisoned(reason.clone())));
                }
            }
        }
    }

    /// A checkpoint, else a flush, as asked (`wait` as for [`Writer::flush`]); a failure
    /// poisons the store.
    fn write_back(&mut self, checkpoint: bool, flush: bool, wait: bool) -> Result<(), StoreError> {
        let (result, what) = if checkpoint {
            (self.checkpoint(wait), "store checkpoint failed")
        } else if flush {
            (self.flush(false, wait), "store flush failed")
        } else {
            return Ok(());
        };
        if let Err(e) = &result {
            self.poison(what, e);
        }
        result
    }

    /// Refuses every later write: what is in memory may no longer reach the disk.
    fn poison(&self, what: &str, error: &StoreError) {
        let reason = error.to_string();
        tracing::error!(error = %reason, "{what}; refusing further writes");
        *self.shared.poisoned.lock() = Some(reason);
    }

    /// Applies the batch into the unflushed rows and `self.redo`; returns the new revision
    /// and the number of requests applied, or `None` when nothing changed (reads, failed
    /// checks: nothing to log).
    fn apply_batch(
        &mut self,
        batch: &[(WriteRequest, Reply)],
        published: i64,
        read_prevs: bool,
        touched: &mut Vec<Vec<u8>>,
        events: &mut Vec<Event>,
        results: &mut Vec<Result<WriteResponse, StoreError>>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let shared = &*self.shared;
        let redo = &mut self.redo;
        let db = shared.db.read();
        let rows = WriterRows::new(&shared.unflushed, &db);
        let mut rev = published;
        let mut applied = 0i64;
        let mut meta_changed = false;
        let mut lessor = shared.lessor.lock();
        let mut db_size = None;
        for (req, _) in batch {
            if let Err(e) = check_quota(shared, req, &mut db_size, redo) {
                meta_changed = true;
                results.push(Err(e));
                continue;
            }
            let mut applier = Applier {
                rows: &rows,
                index: &shared.index,
                base: rev,
                compacted: shared.compact_rev.load(Ordering::Acquire),
                sub: 0,
                touched,
                events,
                lessor: &mut lessor,
                redo,
                read_prevs,
            };
            let result = match req {
                WriteRequest::Put(p) => applier.put(p).map(WriteResponse::Put),
                WriteRequest::Delete(d) => applier.delete(d).map(WriteResponse::Delete),
                WriteRequest::Txn(t) => applier.txn(t).map(WriteResponse::Txn),
                WriteRequest::Compact(at) => {
                    compact(shared, applier.redo, *at, rev).map(|_| WriteResponse::Done)
                }
                WriteRequest::SetNoSpace { member, on } => {
                    set_nospace(shared, applier.redo, *member, *on).map(|_| WriteResponse::Done)
                }
                WriteRequest::LeaseGrant { id, ttl } => applier
                    .grant(*id, *ttl)
                    .map(|(id, ttl)| WriteResponse::LeaseGranted { id, ttl }),
                WriteRequest::LeaseRevoke(id) => applier.revoke(*id).map(|_| WriteResponse::Done),
                WriteRequest::Defragment | WriteRequest::Flush | WriteRequest::Checkpoint => {
                    Ok(WriteResponse::Done)
                }
            };
            meta_changed |= result.is_ok()
                && matches!(
                    req,
                    WriteRequest::LeaseGrant { .. } | WriteRequest::LeaseRevoke(_)
                );
            if applier.sub > 0 {
                rev += 1;
            }
            meta_changed |= matches!(
                req,
                WriteRequest::Compact(_) | WriteRequest::SetNoSpace { .. }
            );
            if result.is_ok() {
                applied += 1;
            }
            results.push(result);
        }
        if rev == published && !meta_changed {
            return Ok(None);
        }
        let index = shared.applied_index.load(Ordering::Acquire) + applied;
        redo.meta_put(backend::META_CURRENT_REV, rev);
        redo.meta_put(backend::META_APPLIED_INDEX, index);
        Ok(Some((rev, applied)))
    }
}

/// etcd's quota: a write that would grow the backend past the quota raises NOSPACE, and
/// while NOSPACE is raised every put fails.
///
/// The backend file grows at checkpoints, so the log bytes not yet checkpointed count too;
/// the size is read once per batch (`size`), not once per request.
fn check_quota(
    shared: &Shared,
    req: &WriteRequest,
    size: &mut Option<u64>,
    redo: &mut crate::wal::Redo,
) -> Result<(), StoreError> {
    let cost = match req {
        WriteRequest::Put(p) => p.key.len() + p.value.len(),
        WriteRequest::LeaseGrant { .. } => 64,
        WriteRequest::Txn(t) if !super::request_check::is_read_only(t) => {
            prost::Message::encoded_len(t)
        }
        _ => return Ok(()),
    };
    if shared.nospace.load(Ordering::Acquire) {
        return Err(StoreError::NoSpace);
    }
    let size = *size.get_or_insert_with(|| {
        shared.db_file_bytes.load(Ordering::Acquire) + shared.wal_pending.load(Ordering::Acquire)
    });
    if size + cost as u64 > shared.limits.quota_backend_bytes {
        set_nospace(shared, redo, shared.member_id, true)?;
        return Err(StoreError::NoSpace);
    }
    Ok(())
}

fn set_nospace(
    shared: &Shared,
    redo: &mut crate::wal::Redo,
    member: u64,
    on: bool,
) -> Result<(), StoreError> {
    if member == shared.member_id {
        redo.meta_put(backend::META_ALARM_NOSPACE, on as i64);
    } else {
        let key = format!("{}{member}", backend::META_ALARM_NOSPACE_FOR);
        if on {
            redo.meta_put(&key, 1);
        } else {
            redo.meta_del(&key);
        }
    }
    let mut members = shared.nospace_members.lock();
    members.retain(|m| *m != member);
    if on {
        members.push(member);
        members.sort_unstable();
    }
    shared.nospace.store(!members.is_empty(), Ordering::Release);
    Ok(())
}

fn compact(
    shared: &Shared,
    redo: &mut crate::wal::Redo,
    at: i64,
    current: i64,
) -> Result<(), StoreError> {
    if at <= shared.compact_rev.load(Ordering::Acquire) {
        return Err(StoreError::Compacted);
    }
    if at > current {
        return Err(StoreError::FutureRev);
    }
    let obsolete = {
        let mut index = shared.index.write();
        shared.compact_rev.store(at, Ordering::Release);
        index.compact(at)
    };
    for rev in obsolete {
        redo.kv_del(&Revision::to_bytes(rev));
    }
    redo.meta_put(backend::META_COMPACT_REV, at);
    Ok(())
}

//! The appending side: the current segment, its rotation, and the spare segment a
//! background thread fills with zeros ahead of time (`spare`).
//!
//! Why zeros: `fdatasync` after writing into blocks that already hold data flushes the data
//! alone, while writing into a hole (or preallocated-but-unwritten extents) also commits the
//! file system's metadata; on this kind of machine that halves the cost of an
//! acknowledgement. A new store's first segment is sparse (creating a zero-filled one would
//! cost every start a full segment of writes); once it has taken some writes, a zero-filled
//! spare is prepared and the log moves to it as soon as it is ready.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use super::{frame, spare};

/// A segment's header: magic, version, first sequence number, CRC-32 of the rest.
pub const SEGMENT_HEADER: u64 = 32;
const SEGMENT_MAGIC: &[u8; 8] = b"FERRYWAL";
const VERSION: u32 = 1;
/// The spare segment's name while it is being prepared or waits to be used.
const SPARE: &str = "spare.tmp";
/// Bytes written to a sparse segment before a zero-filled spare is prepared.
const SPARE_AFTER: u64 = 256 * 1024;

/// The name of the segment whose first frame is `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The header of a segment starting at `seq`.
pub fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first sequence number a segment header names, if it is one.
pub fn parse_segment_header(h: &[u8]) -> Option<u64> {
    if h.len() < SEGMENT_HEADER as usize || &h[..8] != SEGMENT_MAGIC {
        return None;
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&h[28..32]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&h[8..12]);
    if crc32fast::hash(&h[..28]) != u32::from_le_bytes(crc)
        || u32::from_le_bytes(version) != VERSION
    {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    Some(u64::from_le_bytes(seq))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The log, open for appending.
pub struct Wal {
    dir: PathBuf,
    file: File,
    offset: u64,
    capacity: u64,
    zero_filled: bool,
    next_seq: u64,
    segment_bytes: u64,
    since_checkpoint: u64,
    current: PathBuf,
    spare: Option<mpsc::Receiver<io::Result<PathBuf>>>,
    ready_spare: Option<PathBuf>,
    /// Set when this log is dropped: a spare still being prepared stops writing (a log
    /// opened again in the same directory may take a new spare under the same name).
    closed: Arc<AtomicBool>,
    frame: Vec<u8>,
}

impl Wal {
    /// Starts a new log in `dir` whose next frame is `next_seq`, deleting whatever segments
    /// are there (the caller replayed them and made their batches durable).
    pub fn create(dir: &Path, next_seq: u64, segment_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let current = dir.join(segment_name(next_seq));
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if (name.ends_with(".wal") || name == SPARE) && path != current {
                std::fs::remove_file(&path)?;
            }
        }
        let file = Self::new_segment(&current, next_seq, segment_bytes)?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            offset: SEGMENT_HEADER,
            capacity: segment_bytes,
            zero_filled: false,
            next_seq,
            segment_bytes,
            since_checkpoint: 0,
            current,
            spare: None,
            ready_spare: None,
            closed: Arc::new(AtomicBool::new(false)),
            frame: Vec::new(),
        })
    }

    /// A sparse segment of `size` bytes with its header, synced.
    fn new_segment(path: &Path, seq: u64, size: u64) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        file.write_all_at(&segment_header(seq), 0)?;
        file.sync_all()?;
        Ok(file)
    }

    /// The sequence number the next batch gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes appended since the last checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// Appends `payload` as the next batch and syncs it: when this returns, the batch
    /// survives a crash.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        let seq = self.next_seq;
        self.frame.clear();
        frame::encode(seq, payload, &mut self.frame);
        let need = self.frame.len() as u64;
        let full = self.offset + need > self.capacity;
        if full || (!self.zero_filled && self.poll_spare()) {
            self.rotate(need, full)?;
        }
        self.file.write_all_at(&self.frame, self.offset)?;
        self.file.sync_data()?;
        self.offset += need;
        self.next_seq += 1;
        self.since_checkpoint += need;
        if !self.zero_filled
            && self.spare.is_none()
            && self.ready_spare.is_none()
            && self.offset >= SPARE_AFTER
        {
            self.prepare_spare();
        }
        Ok(seq)
    }

    /// Whether a zero-filled spare is ready.
    fn poll_spare(&mut self) -> bool {
        if self.ready_spare.is_some() {
            return true;
        }
        let Some(rx) = &self.spare else {
            return false;
        };
        match rx.try_recv() {
            Ok(Ok(path)) => {
                self.ready_spare = Some(path);
                self.spare = None;
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "preparing a write-ahead log segment failed; appending to sparse segments");
                self.spare = None;
                false
            }
            Err(mpsc::TryRecvError::Empty) => false,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.spare = None;
                false
            }
        }
    }

    fn prepare_spare(&mut self) {
        let (tx, rx) = mpsc::channel();
        let path = self.dir.join(SPARE);
        let size = self.segment_bytes;
        let closed = self.closed.clone();
        let spawned = std::thread::Builder::new()
            .name("ferry-wal-prepare".into())
            .spawn(move || {
                let result = spare::zero_fill(&path, size, &closed).map(|()| path);
                let _ = tx.send(result);
            });
        if spawned.is_ok() {
            self.spare = Some(rx);
        }
    }

    /// Moves to a new segment: the zero-filled spare when there is one (waiting for it when
    /// the current segment is `full` and one is being prepared), else a sparse one.
    fn rotate(&mut self, need: u64, full: bool) -> io::Result<()> {
        let fits_spare = SEGMENT_HEADER + need <= self.segment_bytes;
        if full && fits_spare && self.ready_spare.is_none() {
            if let Some(rx) = self.spare.take() {
                if let Ok(Ok(path)) = rx.recv() {
                    self.ready_spare = Some(path);
                }
            }
        }
        let next = self.dir.join(segment_name(self.next_seq));
        let spare = if fits_spare {
            self.ready_spare.take()
        } else {
            None
        };
        let (file, capacity, zero_filled) = match spare {
            Some(spare) => {
                std::fs::rename(&spare, &next)?;
                let file = OpenOptions::new().read(true).write(true).open(&next)?;
                file.write_all_at(&segment_header(self.next_seq), 0)?;
                file.sync_data()?;
                (file, self.segment_bytes, true)
            }
            None => {
                let size = self.segment_bytes.max(SEGMENT_HEADER + need);
                (Self::new_segment(&next, self.next_seq, size)?, size, false)
            }
        };
        sync_dir(&self.dir)?;
        self.file = file;
        self.current = next;
        self.offset = SEGMENT_HEADER;
        self.capacity = capacity;
        self.zero_filled = zero_filled;
        if self.spare.is_none() && self.ready_spare.is_none() {
            self.prepare_spare();
        }
        Ok(())
    }

    /// Every batch so far is durable in redb: the segments before the current one go.
    pub fn checkpointed(&mut self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_segment = path.extension().is_some_and(|e| e == "wal");
            if is_segment && path != self.current {
                std::fs::remove_file(&path)?;
            }
        }
        self.since_checkpoint = 0;
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

//! The appending side: the current segment, its rotation, and the spare segment it moves to
//! next — a checkpointed segment reused, or one a background thread fills with zeros ahead
//! of time (`spare`).
//!
//! Why zeros: `fdatasync` after writing into blocks that already hold data flushes the data
//! alone, while writing into a hole (or preallocated-but-unwritten extents) also commits the
//! file system's metadata; on this kind of machine that halves the cost of an
//! acknowledgement. A new store's first segment is sparse (creating a zero-filled one would
//! cost every start a full segment of writes); once it has taken some writes, a zero-filled
//! spare is prepared and the log moves to it as soon as it is ready.
//!
//! Why reuse: a segment the log has left is, once checkpointed, a file whose blocks are all
//! written — exactly what a spare is — so it becomes the next spare instead of being deleted
//! and zero-filled again, which halves what the log writes to the disk. Its old frames stay
//! behind the new ones; its header says it was reused, and replay stops at the first frame
//! that is older than the segment (`replay`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use super::{frame, spare};

/// A segment's header: magic, version, flags, first sequence number, CRC-32 of the rest.
pub const SEGMENT_HEADER: u64 = 32;
const SEGMENT_MAGIC: &[u8; 8] = b"FERRYWAL";
const VERSION: u32 = 1;
/// Header flag: the file held an older, checkpointed segment before this one, so that
/// segment's frames may follow this one's.
const FLAG_REUSED: u32 = 1;
/// The spare segment's name while it is being prepared or waits to be used.
const SPARE: &str = "spare.tmp";
/// Bytes written to a sparse segment before a zero-filled spare is prepared.
const SPARE_AFTER: u64 = 256 * 1024;

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The sequence number of its first frame.
    pub first: u64,
    /// The file is a reused segment: frames of the older one may follow this one's.
    pub reused: bool,
}

/// The name of the segment whose first frame is `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The first sequence number a segment's file name stands for.
pub fn seq_of_name(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// The header of a segment starting at `seq`.
pub fn segment_header(seq: u64, reused: bool) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let flags = if reused { FLAG_REUSED } else { 0 };
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment's header says, if it is one this version understands.
pub fn parse_segment_header(h: &[u8]) -> Option<SegmentHeader> {
    if h.len() < SEGMENT_HEADER as usize || &h[..8] != SEGMENT_MAGIC {
        return None;
    }
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[at..at + 4]);
        u32::from_le_bytes(b)
    };
    if crc32fast::hash(&h[..28]) != word(28) || word(8) != VERSION || word(12) & !FLAG_REUSED != 0 {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    Some(SegmentHeader {
        first: u64::from_le_bytes(seq),
        reused: word(12) & FLAG_REUSED != 0,
    })
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
    /// Every block of the current segment is written (a zero-filled or reused spare), so an
    /// append's `fdatasync` flushes data alone; a sparse segment is not.
    whole: bool,
    next_seq: u64,
    segment_bytes: u64,
    since_checkpoint: u64,
    current: PathBuf,
    spare: Option<mpsc::Receiver<io::Result<PathBuf>>>,
    ready_spare: Option<ReadySpare>,
    /// Segments left behind whose blocks are all written: reused once checkpointed.
    reusable: Vec<PathBuf>,
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
            whole: false,
            next_seq,
            segment_bytes,
            since_checkpoint: 0,
            current,
            spare: None,
            ready_spare: None,
            reusable: Vec::new(),
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
        file.write_all_at(&segment_header(seq, false), 0)?;
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
        if full || (!self.whole && self.poll_spare()) {
            self.rotate(need, full)?;
        }
        self.file.write_all_at(&self.frame, self.offset)?;
        self.file.sync_data()?;
        self.offset += need;
        self.next_seq += 1;
        self.since_checkpoint += need;
        // A sparse segment wants a zero-filled one soon. A whole one waits for the checkpoint
        // to hand it the segment before it, unless it is half full first.
        let wants_spare = if self.whole {
            self.offset >= self.capacity / 2
        } else {
            self.offset >= SPARE_AFTER
        };
        if wants_spare && self.spare.is_none() && self.ready_spare.is_none() {
            self.prepare_spare();
        }
        Ok(seq)
    }

    /// Whether a spare is ready.
    fn poll_spare(&mut self) -> bool {
        if self.ready_spare.is_some() {
            return true;
        }
        let Some(rx) = &self.spare else {
            return false;
        };
        match rx.try_recv() {
            Ok(Ok(path)) => {
                self.ready_spare = Some(ReadySpare::zero_filled(path));
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

    /// Moves to a new segment: the spare when there is one (waiting for a zero fill when the
    /// current segment is `full` and one is being prepared), else a sparse one.
    fn rotate(&mut self, need: u64, full: bool) -> io::Result<()> {
        let fits_spare = SEGMENT_HEADER + need <= self.segment_bytes;
        if full && fits_spare && self.ready_spare.is_none() {
            if let Some(rx) = self.spare.take() {
                if let Ok(Ok(path)) = rx.recv() {
                    self.ready_spare = Some(ReadySpare::zero_filled(path));
                }
            }
        }
        let next = self.dir.join(segment_name(self.next_seq));
        let spare = if fits_spare {
            self.ready_spare.take()
        } else {
            None
        };
        let (file, capacity, whole) = match spare {
            Some(spare) => {
                // The header is durable before the name: a crash between the two leaves
                // either the spare or a segment that says where it starts.
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&spare.path)?;
                file.write_all_at(&segment_header(self.next_seq, spare.reused), 0)?;
                file.sync_data()?;
                std::fs::rename(&spare.path, &next)?;
                (file, self.segment_bytes, true)
            }
            None => {
                let size = self.segment_bytes.max(SEGMENT_HEADER + need);
                (Self::new_segment(&next, self.next_seq, size)?, size, false)
            }
        };
        sync_dir(&self.dir)?;
        let left = std::mem::replace(&mut self.current, next);
        if self.whole && self.capacity == self.segment_bytes {
            self.reusable.push(left);
        }
        self.file = file;
        self.offset = SEGMENT_HEADER;
        self.capacity = capacity;
        self.whole = whole;
        if self.spare.is_none() && self.ready_spare.is_none() && self.reusable.is_empty() {
            self.prepare_spare();
        }
        Ok(())
    }

    /// Every batch so far is durable in redb: the segments before the current one go, one
    /// of them kept as the next spare when none is ready or being prepared.
    ///
    /// No directory sync: if a crash undoes a rename or a removal here, the segment is back
    /// with batches that are all durable, and replay does not read it.
    pub fn checkpointed(&mut self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_segment = path.extension().is_some_and(|e| e == "wal");
            if !is_segment || path == self.current {
                continue;
            }
            if self.spare.is_none() && self.ready_spare.is_none() && self.reusable.contains(&path) {
                let spare = self.dir.join(SPARE);
                std::fs::rename(&path, &spare)?;
                self.ready_spare = Some(ReadySpare {
                    path: spare,
                    reused: true,
                });
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        self.reusable.clear();
        self.since_checkpoint = 0;
        Ok(())
    }
}

/// A spare segment ready to be moved to.
struct ReadySpare {
    path: PathBuf,
    /// It is a checkpointed segment: its old frames are still in it.
    reused: bool,
}

impl ReadySpare {
    /// The file a zero fill prepared.
    fn zero_filled(path: PathBuf) -> Self {
        Self {
            path,
            reused: false,
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u64) -> Vec<u8> {
        // Sizes vary so that a reused segment's old frames never line up with its new ones.
        let mut p = seq.to_le_bytes().to_vec();
        p.resize(900 + (seq as usize * 37) % 700, (seq % 251) as u8);
        p
    }

    /// The batches replay gives back after `durable`, checked against what was appended.
    fn replayed_after(dir: &Path, durable: u64) -> io::Result<u64> {
        let out = crate::wal::replay(dir, durable, |seq, got| {
            assert_eq!(got, payload(seq).as_slice(), "batch {seq}");
            Ok(())
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
        assert!(out.torn.is_none());
        Ok(out.next_seq)
    }

    #[test]
    fn a_checkpointed_segment_becomes_the_next_one() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let size = 64 * 1024;
        let mut wal = Wal::create(dir.path(), 1, size)?;
        let mut durable = 0;
        let mut reused = 0;
        for _ in 0..400 {
            let before = wal.current.clone();
            let seq = wal.append(&payload(wal.next_seq()))?;
            if wal.current != before {
                if crate::wal::is_reused(&wal.current)? {
                    reused += 1;
                    let bytes = std::fs::read(&wal.current)?;
                    assert!(
                        bytes[wal.offset as usize..].iter().any(|&b| b != 0),
                        "a reused segment keeps its old frames after its own"
                    );
                }
                // What is not durable yet replays whole, across the segments it spans.
                assert_eq!(replayed_after(dir.path(), durable)?, seq + 1);
            }
            if seq % 20 == 0 {
                wal.checkpointed()?;
                durable = seq;
                let segments = crate::wal::segments(dir.path())?;
                assert_eq!(segments, vec![wal.current.clone()]);
            }
        }
        assert!(reused >= 3, "{reused} reused segments");
        assert_eq!(replayed_after(dir.path(), durable)?, wal.next_seq());
        Ok(())
    }

    #[test]
    fn without_checkpoints_the_log_zero_fills_its_spares() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut wal = Wal::create(dir.path(), 1, 64 * 1024)?;
        for _ in 0..300 {
            wal.append(&payload(wal.next_seq()))?;
            assert!(!crate::wal::is_reused(&wal.current)?);
        }
        assert!(crate::wal::segments(dir.path())?.len() >= 4);
        assert_eq!(replayed_after(dir.path(), 0)?, wal.next_seq());
        Ok(())
    }
}

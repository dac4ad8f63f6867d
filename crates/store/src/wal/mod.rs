//! The write-ahead log in front of redb.
//!
//! A batch of writes is acknowledged after one sequential append and one `fdatasync`, as etcd
//! does with its WAL, instead of after a redb commit (B-tree pages scattered over the file,
//! then its header, then a sync). The writer applies each batch to the in-memory unflushed
//! rows (`mvcc::unflushed`) and its redo record, appends the record to the log, syncs it, and
//! only then publishes the revision and replies. redb receives the redo records of many
//! batches in one transaction later (a flush), through the same code replay uses.
//!
//! Durability: every flush's redb transaction also stores the log sequence number of its last
//! batch (`meta.wal_seq`). redb's durable state is always "every batch up to some D" (its
//! commits are atomic, and a durable commit carries every non-durable one before it), so on
//! start the batches after D are replayed from the log, and nothing acknowledged is lost on
//! kill -9 or power loss. A checkpoint is a durable flush; the segments it covers are then
//! deleted. What the log holds are physical redo operations (the rows a batch inserted and
//! removed), not requests: replaying a request is not deterministic (a lease granted with id
//! 0 gets a random id).
//!
//! Format: segment files `<first seq, 16 hex digits>.wal`, each a 32-byte header
//! ([`segment`]) followed by frames ([`frame`]), one batch each, each written with one write
//! and synced before the next is written. A checkpointed segment is reused as the next one
//! (its header says so): its own frames end at the first that is older than the segment, or
//! at bytes that do not start the next batch. A damaged frame at the very end of the log is a
//! write that was never acknowledged (torn by a crash): it is set aside and the store starts.
//! Damage anywhere else, or a complete frame after a damaged one (the damaged one must have
//! been synced, so acknowledged), refuses the start with the file and offset.

mod frame;
mod redo;
mod replay;
mod segment;
mod spare;

pub(crate) use redo::{apply as apply_redo, Redo};
pub(crate) use replay::replay;
pub(crate) use segment::Wal;

/// The directory of the log inside the data dir.
pub const WAL_DIR: &str = "wal";

/// The log's segment files in `dir`, oldest first (for inspection and tests).
pub fn segments(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wal") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The intact frames of a segment file: sequence number and byte range of each, up to the
/// first one that is not intact or, in a reused segment, older than the segment (for
/// inspection and tests).
pub fn frames(segment: &std::path::Path) -> std::io::Result<Vec<(u64, std::ops::Range<usize>)>> {
    let buf = std::fs::read(segment)?;
    let mut out = Vec::new();
    let Some(header) = segment::parse_segment_header(&buf) else {
        return Ok(out);
    };
    let mut at = segment::SEGMENT_HEADER as usize;
    while let frame::Parsed::Frame { seq, next, .. } = frame::parse(&buf, at) {
        if header.reused && seq < header.first {
            break;
        }
        out.push((seq, at..next));
        at = next;
    }
    Ok(out)
}

/// Whether a segment file is a reused one: frames of the older segment it held may follow
/// its own (for inspection and tests).
pub fn is_reused(segment: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut header = [0u8; segment::SEGMENT_HEADER as usize];
    std::fs::File::open(segment)?.read_exact(&mut header)?;
    Ok(segment::parse_segment_header(&header).is_some_and(|h| h.reused))
}

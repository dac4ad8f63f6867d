//! Reading the log back at start: the batches after redb's durable one, in order, with the
//! rules that tell a torn last write (never acknowledged: set aside) from damage to
//! acknowledged data (refuse to start).

use std::path::{Path, PathBuf};

use super::frame::{self, Parsed};
use super::segment::{parse_segment_header, SEGMENT_HEADER};
use crate::error::StoreError;

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Batches applied.
    pub batches: u64,
    /// The sequence number the next batch gets.
    pub next_seq: u64,
    /// Where a torn last write was set aside.
    pub torn: Option<PathBuf>,
}

fn refuse(path: &Path, offset: usize, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "write-ahead log {} at byte {offset}: {what}; acknowledged writes may be damaged, \
         so the store does not start (restore from a snapshot, or move the data dir aside)",
        path.display()
    ))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Hands every batch after `durable` to `apply`, in order. `dir` may not exist (a store
/// from before the log, or a new one).
pub fn replay(
    dir: &Path,
    durable: u64,
    mut apply: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<Replayed, StoreError> {
    let mut segments = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
            let path = entry
                .map_err(io(format!("reading {}", dir.display())))?
                .path();
            if path.extension().is_some_and(|e| e == "wal") {
                segments.push(path);
            }
        }
    }
    segments.sort();
    let mut out = Replayed {
        next_seq: durable + 1,
        ..Replayed::default()
    };
    let mut expected: Option<u64> = None;
    let last = segments.len().saturating_sub(1);
    for (i, path) in segments.iter().enumerate() {
        let buf = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
        let Some(first) = parse_segment_header(&buf) else {
            return Err(refuse(path, 0, "not a segment header"));
        };
        if let Some(e) = expected {
            if first != e {
                return Err(refuse(
                    path,
                    0,
                    format!("starts at batch {first}, expected {e}"),
                ));
            }
        }
        let mut at = SEGMENT_HEADER as usize;
        loop {
            match frame::parse(&buf, at) {
                Parsed::Frame { seq, payload, next } => {
                    let want = expected.unwrap_or(first);
                    if seq != want {
                        return Err(refuse(
                            path,
                            at,
                            format!("batch {seq} where {want} was expected"),
                        ));
                    }
                    if seq > durable {
                        if seq != out.next_seq {
                            return Err(refuse(
                                path,
                                at,
                                format!(
                                    "batch {seq} follows durable batch {durable}: batches between are missing"
                                ),
                            ));
                        }
                        apply(seq, payload)?;
                        out.batches += 1;
                        out.next_seq = seq + 1;
                    }
                    expected = Some(seq + 1);
                    at = next;
                }
                Parsed::End => break,
                Parsed::Damaged(what) => {
                    if i != last {
                        return Err(refuse(path, at, what));
                    }
                    // A complete frame after the damage proves the damaged one had been
                    // synced (frames are written one at a time, each after the previous
                    // one's sync): acknowledged data is damaged.
                    let intact_after = (at + 1..buf.len().saturating_sub(frame::HEADER))
                        .any(|p| matches!(frame::parse(&buf, p), Parsed::Frame { .. }));
                    if intact_after {
                        return Err(refuse(
                            path,
                            at,
                            format!("{what}, followed by intact batches"),
                        ));
                    }
                    let end = buf.len() - buf.iter().rev().take_while(|&&b| b == 0).count();
                    let aside =
                        dir.join(format!("torn-{:016x}-{at}.bin", expected.unwrap_or(first)));
                    std::fs::write(&aside, &buf[at..end.max(at)])
                        .map_err(io(format!("writing {}", aside.display())))?;
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        bytes = end.saturating_sub(at),
                        set_aside = %aside.display(),
                        "the write-ahead log ends with a torn write (a batch that was never acknowledged); it is set aside"
                    );
                    out.torn = Some(aside);
                    break;
                }
            }
        }
    }
    Ok(out)
}

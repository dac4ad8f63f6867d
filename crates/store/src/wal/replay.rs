//! Reading the log back at start: the batches after redb's durable one, in order, with the
//! rules that tell a torn last write (never acknowledged: set aside) from damage to
//! acknowledged data (refuse to start).

use std::path::{Path, PathBuf};

use super::frame::{self, Parsed};
use super::segment::{parse_segment_header, seq_of_name, SEGMENT_HEADER};
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
                let Some(first) = seq_of_name(&path) else {
                    return Err(refuse(&path, 0, "not a segment's name (16 hex digits)"));
                };
                segments.push((first, path));
            }
        }
    }
    segments.sort();
    // A segment followed by one that starts at or before the first batch to replay holds
    // durable batches only: it is not read (a checkpoint's removals are not synced, so such
    // segments may come back after a crash, with gaps between them).
    let from = segments
        .iter()
        .rposition(|(first, _)| *first <= durable.saturating_add(1))
        .unwrap_or(0);
    let segments = &segments[from..];
    let mut out = Replayed {
        next_seq: durable + 1,
        ..Replayed::default()
    };
    let mut expected: Option<u64> = None;
    let last = segments.len().saturating_sub(1);
    for (i, (named, path)) in segments.iter().enumerate() {
        let buf = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
        let header = match parse_segment_header(&buf) {
            Some(header) => header,
            // A rotation an older version of ferry did not finish (the name was durable
            // before the header): no batch was ever written to it.
            None if i == last && buf.iter().all(|&b| b == 0) => break,
            None => return Err(refuse(path, 0, "not a segment header")),
        };
        if header.first != *named {
            return Err(refuse(
                path,
                0,
                format!("the header says it starts at batch {}", header.first),
            ));
        }
        let first = header.first;
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
            let want = expected.unwrap_or(first);
            match frame::parse(&buf, at) {
                // What follows is the older segment's this file held before.
                Parsed::Frame { seq, .. } if header.reused && seq < first => break,
                Parsed::Frame { seq, payload, next } => {
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
                    // A complete frame of this segment after the damage proves the damaged
                    // one had been synced (frames are written one at a time, each after the
                    // previous one's sync): acknowledged data is damaged.
                    let intact_after = (at + 1..buf.len().saturating_sub(frame::HEADER)).any(|p| {
                        matches!(frame::parse(&buf, p),
                            Parsed::Frame { seq, .. } if !header.reused || seq >= first)
                    });
                    if intact_after {
                        return Err(refuse(
                            path,
                            at,
                            format!("{what}, followed by intact batches"),
                        ));
                    }
                    // The length the next batch's frame claims, if one starts here.
                    let torn_len = frame::header_at(&buf, at)
                        .filter(|&(seq, _)| seq == want)
                        .map(|(_, len)| len);
                    if header.reused && torn_len.is_none() {
                        // Not the start of the batch that comes next: the older segment's
                        // bytes, cut where this one's frames end.
                        break;
                    }
                    if i != last {
                        return Err(refuse(path, at, what));
                    }
                    let end = match torn_len {
                        Some(len) if header.reused => {
                            (at + frame::HEADER).saturating_add(len).min(buf.len())
                        }
                        _ => buf.len() - buf.iter().rev().take_while(|&&b| b == 0).count(),
                    };
                    let aside = dir.join(format!("torn-{want:016x}-{at}.bin"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::{segment_header, segment_name};

    /// A segment file's bytes: its header, then `frames`.
    fn segment(first: u64, reused: bool, frames: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = segment_header(first, reused).to_vec();
        for (seq, payload) in frames {
            frame::encode(*seq, payload, &mut out);
        }
        out
    }

    fn frame_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode(seq, payload, &mut out);
        out
    }

    /// Batches by sequence number, with their payloads.
    type Batches = Vec<(u64, Vec<u8>)>;

    /// Replays `dir` after `durable`: the batches applied, and what replay said.
    fn run(dir: &Path, durable: u64) -> Result<(Batches, Replayed), StoreError> {
        let mut applied = Vec::new();
        let out = replay(dir, durable, |seq, payload| {
            applied.push((seq, payload.to_vec()));
            Ok(())
        })?;
        Ok((applied, out))
    }

    fn write(dir: &Path, first: u64, bytes: &[u8]) {
        std::fs::write(dir.join(segment_name(first)), bytes).expect("writing a test segment");
    }

    #[test]
    fn a_reused_segment_ends_where_the_older_frames_begin() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = segment(10, true, &[(10, b"ten"), (11, b"eleven")]);
        // The older segment's frames, whole (same sizes) or cut mid-frame.
        bytes.extend(frame_bytes(5, b"five!!"));
        bytes.extend(&frame_bytes(6, b"six, longer payload")[7..]);
        bytes.extend(frame_bytes(7, b"seven"));
        write(dir.path(), 10, &bytes);
        let (applied, out) = run(dir.path(), 9)?;
        assert_eq!(
            applied,
            vec![(10, b"ten".to_vec()), (11, b"eleven".to_vec())]
        );
        assert_eq!((out.next_seq, out.torn.is_none()), (12, true));

        // Cut mid-frame right after this segment's own frames: nothing set aside either.
        let mut bytes = segment(10, true, &[(10, b"ten")]);
        bytes.extend(&frame_bytes(4, b"an older frame's tail")[9..]);
        bytes.extend(frame_bytes(5, b"five"));
        write(dir.path(), 10, &bytes);
        let (applied, out) = run(dir.path(), 9)?;
        assert_eq!(applied.len(), 1);
        assert!(out.torn.is_none());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        Ok(())
    }

    #[test]
    fn a_torn_write_in_a_reused_segment_is_set_aside_alone() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = segment(10, true, &[(10, b"ten")]);
        let torn = frame_bytes(11, b"the batch the crash cut short");
        bytes.extend(&torn[..frame::HEADER + 5]);
        bytes.extend(&frame_bytes(3, b"an older frame, cut at its start")[frame::HEADER + 5..]);
        bytes.extend(frame_bytes(4, b"older"));
        write(dir.path(), 10, &bytes);
        let (applied, out) = run(dir.path(), 9)?;
        assert_eq!(applied, vec![(10, b"ten".to_vec())]);
        let aside = out.torn.expect("the torn write is set aside");
        let kept = std::fs::read(&aside).expect("reading the torn write");
        assert_eq!(
            kept.len(),
            torn.len(),
            "the torn frame alone, not the older bytes"
        );
        assert_eq!(kept[..frame::HEADER + 5], torn[..frame::HEADER + 5]);
        Ok(())
    }

    #[test]
    fn damage_in_a_reused_segment_before_its_own_frames_refuses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = segment(10, true, &[(10, b"ten")]);
        let mut damaged = frame_bytes(11, b"eleven");
        damaged[frame::HEADER + 2] ^= 0xff;
        bytes.extend(damaged);
        bytes.extend(frame_bytes(12, b"twelve"));
        write(dir.path(), 10, &bytes);
        let err = run(dir.path(), 9).expect_err("damaged acknowledged batch");
        assert!(
            err.to_string().contains("followed by intact batches"),
            "{err}"
        );

        // A damaged magic: the bytes no longer start a frame, but batch 12 after them does.
        let mut bytes = segment(10, true, &[(10, b"ten")]);
        let mut damaged = frame_bytes(11, b"eleven");
        damaged[0] ^= 0xff;
        bytes.extend(damaged);
        bytes.extend(frame_bytes(12, b"twelve"));
        write(dir.path(), 10, &bytes);
        assert!(run(dir.path(), 9).is_err());
    }

    #[test]
    fn segments_holding_durable_batches_only_are_not_read() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        // Batches 4 to 6 were removed by a checkpoint whose removal of 1 to 3 a crash undid.
        write(
            dir.path(),
            1,
            &segment(1, false, &[(1, b"1"), (2, b"2"), (3, b"3")]),
        );
        write(
            dir.path(),
            7,
            &segment(7, false, &[(7, b"7"), (8, b"8"), (9, b"9")]),
        );
        let (applied, out) = run(dir.path(), 8)?;
        assert_eq!(applied, vec![(9, b"9".to_vec())]);
        assert_eq!(out.next_seq, 10);
        let err = run(dir.path(), 2).expect_err("batches 3 to 6 are needed");
        assert!(err.to_string().contains("expected"), "{err}");
        Ok(())
    }

    #[test]
    fn a_segment_whose_header_and_name_disagree_refuses() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 7, &segment(3, false, &[(3, b"3")]));
        let err = run(dir.path(), 0).expect_err("name and header disagree");
        assert!(
            err.to_string().contains("header says it starts at batch 3"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(segment_name(7))).expect("remove");
        std::fs::write(dir.path().join("notes.wal"), b"x").expect("write");
        let err = run(dir.path(), 0).expect_err("not a segment name");
        assert!(err.to_string().contains("notes.wal"), "{err}");
    }

    #[test]
    fn a_last_segment_without_its_header_is_empty() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 1, &segment(1, false, &[(1, b"1"), (2, b"2")]));
        write(dir.path(), 3, &vec![0u8; 4096]);
        let (applied, out) = run(dir.path(), 0)?;
        assert_eq!(applied.len(), 2);
        assert_eq!(out.next_seq, 3);
        Ok(())
    }
}

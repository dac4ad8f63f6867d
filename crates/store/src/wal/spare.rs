//! The spare segment: a file of zeros, written ahead of time on a thread of its own so that
//! the log's appends overwrite written blocks (see `segment`).
//!
//! Why in paced pieces, each written back before the next: sixteen MiB of dirty pages
//! reaching the disk in one burst at a final sync hold up every other sync on the file
//! system meanwhile — the log's own `fdatasync`, and the controller's SQLite commit beside it
//! — for tens of milliseconds (the rollout bench saw it as one slow round at a fixed point of
//! a new store). Written back a piece at a time with `sync_file_range`, which starts and
//! waits for the data's writeback without a journal commit, the disk is never busy with this
//! file for longer than one piece takes, and the final sync commits only the allocation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bytes written and written back at a time: about half a millisecond of this disk's time,
/// so a sync that arrives meanwhile waits no longer than that.
const PIECE: usize = 256 * 1024;
/// The pause after each piece, during which other syncs have the disk to themselves; a
/// 16 MiB spare takes about 0.7 s, far less than a segment takes to fill at 1,000 agents.
const PAUSE: Duration = Duration::from_millis(10);

/// Creates `path` as `size` bytes of zeros, durable (data, length and allocation) when this
/// returns; stops with `Interrupted` once `closed` is set.
pub fn zero_fill(path: &Path, size: u64, closed: &AtomicBool) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; PIECE];
    let mut at = 0;
    while at < size {
        if closed.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the log was closed while its spare segment was being prepared",
            ));
        }
        let n = zeros.len().min((size - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        write_back(&file, at, n)?;
        at += n as u64;
        std::thread::sleep(PAUSE);
    }
    file.sync_all()
}

/// Writes the dirty pages of `len` bytes at `offset` to the disk and waits for them, without
/// committing the file system's journal (that is left to the final `fsync`).
fn write_back(file: &File, offset: u64, len: usize) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: a plain system call on the descriptor of `file`, which outlives the call; it
    // reads and writes no memory of this process.
    let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_all_zeros_of_its_size() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("spare.tmp");
        std::fs::write(&path, vec![7u8; 3 * PIECE])?;
        let size = 2 * PIECE as u64 + 4096;
        zero_fill(&path, size, &AtomicBool::new(false))?;
        let bytes = std::fs::read(&path)?;
        assert_eq!(bytes.len() as u64, size);
        assert!(bytes.iter().all(|&b| b == 0));
        Ok(())
    }

    #[test]
    fn a_closed_log_stops_its_spare() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("spare.tmp");
        let refused = zero_fill(&path, 4 * PIECE as u64, &AtomicBool::new(true));
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(io::ErrorKind::Interrupted)
        );
        assert_eq!(std::fs::metadata(&path)?.len(), 0, "nothing written");
        Ok(())
    }
}

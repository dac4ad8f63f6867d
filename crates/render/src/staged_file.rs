//! A rendered file written next to its destination, to be renamed over it atomically.
//!
//! The directory is opened once and every later step names the file relative to it: a
//! staging through full paths walks the whole path three times (the create and both ends of
//! the rename), and a thousand agents in one process stage a file each at every change
//! (docs/BENCHMARKS.md, issue 22). The mode is set with `fchmod` after the create, as the
//! umask or a default ACL of the directory may have cleared some of its bits.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// How many random names are tried before staging gives up (each clash is a file another
/// writer created in the same instant).
const NAME_ATTEMPTS: usize = 16;

/// Random characters in a staged file's name, after `.<destination's name>`.
const RANDOM_CHARS: usize = 6;

/// A file staged in the destination's directory; removed when dropped unless it was renamed
/// over its destination or kept.
pub(crate) struct StagedFile {
    dir: OwnedFd,
    /// Its name in `dir`.
    name: OsString,
    /// Its full path, for messages and check commands.
    path: PathBuf,
    file: Option<File>,
    removed_on_drop: bool,
}

impl StagedFile {
    /// Writes `contents` to a new file beside `dest` with `mode` and, when given, the owner.
    pub(crate) fn create(
        dest: &Path,
        contents: &[u8],
        mode: u32,
        (uid, gid): (Option<u32>, Option<u32>),
    ) -> std::io::Result<Self> {
        let dir_path = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            dir_path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let base = dest.file_name().unwrap_or(dest.as_os_str());
        let (name, fd) = create_named(&dir, base.as_bytes())?;
        let mut staged = Self {
            path: dir_path.join(&name),
            dir,
            name,
            file: Some(File::from(fd)),
            removed_on_drop: true,
        };
        let file = staged.file.as_mut().ok_or_else(closed)?;
        file.write_all(contents)?;
        rustix::fs::fchmod(&*file, Mode::from_raw_mode(mode))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&*file, uid, gid)?;
        }
        Ok(staged)
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it over `dest`, whose directory it was staged in.
    pub(crate) fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        let base = dest.file_name().unwrap_or(dest.as_os_str());
        // Closed first: nothing is written through it any more.
        drop(self.file.take());
        rustix::fs::renameat(&self.dir, &self.name, &self.dir, base)?;
        self.removed_on_drop = false;
        Ok(())
    }

    /// Leaves it where it is (confd's `keep_stage_file`).
    pub(crate) fn keep(mut self) {
        self.removed_on_drop = false;
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if self.removed_on_drop {
            // A leftover is only litter; nothing is wrong with the destination.
            let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::other("the staged file was already closed")
}

/// Creates `.<base><random>` in `dir`, exclusively, readable by its owner alone until its
/// mode is set; another name on a clash.
fn create_named(dir: &OwnedFd, base: &[u8]) -> std::io::Result<(OsString, OwnedFd)> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let mut name = Vec::with_capacity(1 + base.len() + RANDOM_CHARS);
        name.push(b'.');
        name.extend_from_slice(base);
        name.extend(std::iter::repeat_with(|| fastrand::alphanumeric() as u8).take(RANDOM_CHARS));
        let name = OsString::from(std::ffi::OsStr::from_bytes(&name));
        match rustix::fs::openat(dir, &name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok((name, fd)),
            Err(rustix::io::Errno::EXIST) => last = Some(rustix::io::Errno::EXIST),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or(rustix::io::Errno::EXIST).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_persisted_file_replaces_its_destination_with_its_mode() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("app.conf");
        std::fs::write(&dest, "old")?;
        let staged = StagedFile::create(&dest, b"new", 0o640, (None, None))?;
        assert!(staged.path().starts_with(dir.path()));
        assert_eq!(std::fs::read_to_string(staged.path())?, "new");
        staged.persist(&dest)?;
        assert_eq!(std::fs::read_to_string(&dest)?, "new");
        assert_eq!(
            std::fs::metadata(&dest)?.permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(names_in(dir.path()), vec!["app.conf"]);
        Ok(())
    }

    #[test]
    fn a_mode_the_umask_would_clear_is_still_set() -> std::io::Result<()> {
        // World-writable and set-group-id bits are ones a umask commonly clears; the staged
        // file must carry them anyway.
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("shared.conf");
        StagedFile::create(&dest, b"x", 0o2666, (None, None))?.persist(&dest)?;
        assert_eq!(
            std::fs::metadata(&dest)?.permissions().mode() & 0o7777,
            0o2666
        );
        Ok(())
    }

    #[test]
    fn a_dropped_file_is_removed_and_a_kept_one_stays() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("app.conf");
        drop(StagedFile::create(&dest, b"a", 0o644, (None, None))?);
        assert!(names_in(dir.path()).is_empty(), "dropped: removed");
        let kept = StagedFile::create(&dest, b"b", 0o644, (None, None))?;
        let path = kept.path().to_path_buf();
        kept.keep();
        assert_eq!(std::fs::read_to_string(&path)?, "b");
        assert!(!dest.exists(), "kept, not installed");
        Ok(())
    }

    #[test]
    fn a_missing_directory_is_not_found() {
        let dir = tempfile::tempdir().ok();
        let dest = dir
            .as_ref()
            .map(|d| d.path().join("missing/app.conf"))
            .unwrap_or_default();
        let err = StagedFile::create(&dest, b"a", 0o644, (None, None)).err();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound),
            "a missing directory"
        );
    }
}

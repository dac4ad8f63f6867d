//! confd's staged write: render next to `dest`, and only if the content or mode differs,
//! check the staged file, rename it over `dest` atomically, then reload.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::functions::PreparedTemplate;
use crate::last_install::LastInstall;
use crate::resource::TemplateResource;
use crate::snapshot::KvSnapshot;

/// What rendering one resource did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `dest` already had this content and mode.
    Unchanged,
    /// `dest` was replaced (and the reload command ran).
    Updated,
    /// `check_only`: the rendered file passed `check_cmd` (and was discarded).
    Checked,
    /// Dry run: what would change.
    WouldUpdate {
        /// A unified-style listing of changed lines.
        diff: String,
    },
}

/// Why a resource was not rendered; `dest` is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The template failed to parse or execute.
    #[error("{0}")]
    Template(String),
    /// `check_cmd` rejected the staged file.
    #[error("check_cmd {command:?} failed ({status}): {output}")]
    Check {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// `reload_cmd` failed after `dest` was replaced.
    #[error("reload_cmd {command:?} failed ({status}): {output}")]
    Reload {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RenderError {
    let path = path.to_path_buf();
    move |source| RenderError::Io { path, source }
}

fn diff(old: &str, new: &str) -> String {
    let mut out = String::new();
    for line in old.lines().filter(|l| !new.lines().any(|n| n == *l)) {
        out.push_str(&format!("-{line}\n"));
    }
    for line in new.lines().filter(|l| !old.lines().any(|o| o == *l)) {
        out.push_str(&format!("+{line}\n"));
    }
    out
}

/// How a render behaves (confd's `-noop`, `-sync-only`, `-keep-stage-file`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Show what would change; write nothing, run nothing.
    pub noop: bool,
    /// Install without running `check_cmd` or `reload_cmd`.
    pub sync_only: bool,
    /// Keep the staged file after a failed check (for debugging).
    pub keep_stage_file: bool,
    /// Render and run `check_cmd` on the staged file, even when `dest` already has the
    /// content, then discard it: install nothing, reload nothing ([`Outcome::Checked`]).
    pub check_only: bool,
    /// DNS server for `lookupSRV` (default: /etc/resolv.conf's first).
    pub nameserver: Option<std::net::SocketAddr>,
}

/// Looks a name up in an `/etc/passwd`-style file (`name:x:id:…`).
fn id_by_name(file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse().ok())
}

/// The uid and gid a resource asks for: names win over numbers, as in confd forks.
pub fn ownership(resource: &TemplateResource) -> Result<(Option<u32>, Option<u32>), RenderError> {
    let uid = match &resource.owner {
        Some(name) => Some(
            id_by_name("/etc/passwd", name)
                .ok_or_else(|| RenderError::Template(format!("owner {name:?}: no such user")))?,
        ),
        None => resource.uid,
    };
    let gid = match &resource.group {
        Some(name) => Some(
            id_by_name("/etc/group", name)
                .ok_or_else(|| RenderError::Template(format!("group {name:?}: no such group")))?,
        ),
        None => resource.gid,
    };
    Ok((uid, gid))
}

/// Renders `resource` (templates under `templates_dir`) from `snapshot`.
pub async fn render_resource(
    resource: &TemplateResource,
    templates_dir: &Path,
    snapshot: Arc<KvSnapshot>,
    options: RenderOptions,
) -> Result<Outcome, RenderError> {
    ownership(resource)?;
    let mut cache = TemplateCache::default();
    let rendered = render_text(
        resource,
        templates_dir,
        snapshot,
        options.nameserver,
        &mut cache,
    )?;
    install(resource, rendered, options, None).await
}

/// The last template parsed, kept by a caller that renders the same resource again.
#[derive(Default)]
pub struct TemplateCache {
    cached: Option<CachedTemplate>,
    pinned: bool,
}

impl TemplateCache {
    /// A cache for a template file that its owner wrote once and nothing changes afterwards
    /// (the agent's copy of its template): read at the first render, never looked at again.
    pub fn pinned() -> Self {
        Self {
            cached: None,
            pinned: true,
        }
    }
}

struct CachedTemplate {
    template: PreparedTemplate,
    text: String,
    stamp: FileStamp,
    /// Whether the file had been left alone for [`SETTLED`] when `text` was read: only then
    /// does an equal stamp mean equal text.
    trusted: bool,
}

/// What identifies one version of a file without reading it: a file replaced (renamed over)
/// gets a new inode, one rewritten in place a new size or change time. A change time is only
/// as fine as the kernel's clock tick, so a stamp vouches for the text only once the file
/// has been left alone for longer than that when it is taken (git's "racily clean" rule).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    inode: (u64, u64),
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// How long a file must have been left alone before its stamp is trusted.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<(Self, bool)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        let changed_at = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(m.ctime()).unwrap_or(0),
                u32::try_from(m.ctime_nsec()).unwrap_or(0),
            );
        let settled = changed_at.elapsed().is_ok_and(|since| since > SETTLED);
        let stamp = Self {
            path: path.to_path_buf(),
            inode: (m.dev(), m.ino()),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        };
        Ok((stamp, settled))
    }
}

/// `resource`'s template (under `templates_dir`) run over `snapshot`. The parse in `cache`
/// is reused while the template's text is unchanged; a file left alone since it was read is
/// not read again (one `stat` per render: a thousand agents in one process re-read it at
/// every change).
pub fn render_text(
    resource: &TemplateResource,
    templates_dir: &Path,
    snapshot: Arc<KvSnapshot>,
    nameserver: Option<std::net::SocketAddr>,
    cache: &mut TemplateCache,
) -> Result<String, RenderError> {
    let execute = |cached: &CachedTemplate| {
        cached
            .template
            .execute_to_string(snapshot)
            .map_err(|e| RenderError::Template(e.to_string()))
    };
    if let Some(c) = &cache.cached {
        if cache.pinned && c.template.uses(nameserver) {
            return execute(c);
        }
    }
    let src = templates_dir.join(&resource.src);
    // Taken before the read: a write after it gives another stamp at the next render.
    let (stamp, settled) = FileStamp::of(&src).map_err(io(&src))?;
    let cached = match cache.cached.take() {
        Some(c) if c.trusted && c.stamp == stamp && c.template.uses(nameserver) => c,
        previous => {
            let text = std::fs::read_to_string(&src).map_err(io(&src))?;
            let template = match previous {
                Some(c) if c.text == text && c.template.uses(nameserver) => c.template,
                // Named by its file name, as confd names it (and the same for every agent of
                // a process, which then share one parse).
                _ => PreparedTemplate::parse(&template_name(&src), &text, nameserver)
                    .map_err(|e| RenderError::Template(e.to_string()))?,
            };
            CachedTemplate {
                template,
                text,
                stamp,
                trusted: settled,
            }
        }
    };
    execute(cache.cached.insert(cached))
}

/// The name a template file's parse goes by: its file name, as confd's `filepath.Base`.
fn template_name(src: &Path) -> String {
    src.file_name().map_or_else(
        || src.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// What staging the rendered file found.
enum Staged {
    /// `dest` already holds it.
    Unchanged,
    /// Dry run: the difference.
    Diff(String),
    /// Written next to `dest`, to be checked and renamed over it.
    File(tempfile::NamedTempFile),
}

/// Compares `rendered` with `dest` and, when they differ, writes it next to `dest` with the
/// resource's mode and owner (blocking file work, run off the async workers). `known_new`:
/// the caller knows `dest` to hold something else (see [`LastInstall`]), so it is not read
/// back unless a dry run needs its text.
fn stage(
    dest: &Path,
    rendered: &str,
    mode: u32,
    (uid, gid): (Option<u32>, Option<u32>),
    force: bool,
    noop: bool,
    known_new: bool,
) -> Result<Staged, RenderError> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    // One open of `dest` and its handle for the rest: every path lookup walks the whole path.
    let opened = if known_new && !noop {
        None
    } else {
        std::fs::File::open(dest).ok()
    };
    let (current, meta) = match opened {
        Some(file) => {
            let meta = file.metadata().ok();
            let current = meta.as_ref().and_then(|m| read_whole(file, m.len()));
            (current, meta)
        }
        None => (None, None),
    };
    let current_mode = meta.as_ref().map(|m| m.permissions().mode() & 0o7777);
    let owner_ok = meta
        .as_ref()
        .is_some_and(|m| uid.is_none_or(|u| u == m.uid()) && gid.is_none_or(|g| g == m.gid()));
    if current.as_deref() == Some(rendered) && current_mode == Some(mode) && owner_ok && !force {
        return Ok(Staged::Unchanged);
    }
    if noop {
        return Ok(Staged::Diff(diff(
            current.as_deref().unwrap_or(""),
            rendered,
        )));
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let base = dest.file_name().and_then(|n| n.to_str()).unwrap_or("dest");
    let mut staged = tempfile::Builder::new()
        .prefix(&format!(".{base}"))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    let path = staged.path().to_path_buf();
    let file = staged.as_file_mut();
    file.write_all(rendered.as_bytes()).map_err(io(&path))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&path))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&*file, uid, gid).map_err(io(&path))?;
    }
    Ok(Staged::File(staged))
}

/// The text of `file`, `len` bytes long by its metadata, in one read: `read_to_string` asks
/// for the length and position again and reads once more to find the end, three system calls
/// of the dozen a render's file work costs. A write racing the read is seen at the next
/// render, as with any read.
fn read_whole(file: std::fs::File, len: u64) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
    file.take(len).read_to_end(&mut bytes).ok()?;
    String::from_utf8(bytes).ok()
}

/// Runs blocking file work off the async workers (see `file_worker`).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RenderError> + Send + 'static,
) -> Result<T, RenderError> {
    crate::file_worker::run(work).await
}

/// Installs `rendered` as `resource.dest` the confd way: only if content, mode or owner
/// differ; staged next to it, checked, renamed over it atomically, then reloaded. `last`:
/// what the caller installed there before, when it keeps track (see [`LastInstall`]).
pub async fn install(
    resource: &TemplateResource,
    rendered: String,
    options: RenderOptions,
    last: Option<&LastInstall>,
) -> Result<Outcome, RenderError> {
    let owner = ownership(resource)?;
    let mode = resource.file_mode().unwrap_or(0o644);
    let dest = resource.dest.clone();
    let (force, noop) = (options.check_only, options.noop);
    let checked = resource.check_cmd.is_some() && !options.sync_only;
    let known_new = last.is_some_and(|l| l.known_to_differ(&rendered, mode, owner));
    // What `dest` holds after an install or a compare that found it equal.
    let installed = last.map(|l| (l, rendered.clone()));
    let remember = |installed: Option<(&LastInstall, String)>| {
        if let Some((last, text)) = installed {
            last.remember(text, mode, owner);
        }
    };
    if !checked && !force && !noop {
        // Nothing runs between staging and the rename: one trip to the blocking pool.
        let updated = blocking(move || {
            match stage(&dest, &rendered, mode, owner, false, false, known_new)? {
                Staged::File(file) => persist(file, &dest).map(|()| true),
                Staged::Unchanged | Staged::Diff(_) => Ok(false),
            }
        })
        .await?;
        remember(installed);
        if !updated {
            return Ok(Outcome::Unchanged);
        }
        reload(resource, options).await?;
        return Ok(Outcome::Updated);
    }
    let staged =
        match blocking(move || stage(&dest, &rendered, mode, owner, force, noop, known_new)).await?
        {
            Staged::Unchanged => {
                remember(installed);
                return Ok(Outcome::Unchanged);
            }
            Staged::Diff(diff) => return Ok(Outcome::WouldUpdate { diff }),
            Staged::File(file) => file,
        };
    if let (Some(check), false) = (&resource.check_cmd, options.sync_only) {
        let command = check.replace("{{.src}}", &staged.path().display().to_string());
        if let Err((status, output)) = crate::command::run(&command).await {
            if options.keep_stage_file {
                let _ = staged.keep();
            }
            // Otherwise dropping the staged file removes it; dest stays as it was.
            return Err(RenderError::Check {
                command,
                status,
                output,
            });
        }
    }
    if options.check_only {
        return Ok(Outcome::Checked);
    }
    let dest = resource.dest.clone();
    blocking(move || persist(staged, &dest)).await?;
    remember(installed);
    reload(resource, options).await?;
    Ok(Outcome::Updated)
}

/// Renames the staged file over `dest`.
fn persist(staged: tempfile::NamedTempFile, dest: &Path) -> Result<(), RenderError> {
    staged.persist(dest).map_err(|e| RenderError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Runs the resource's `reload_cmd` after `dest` was replaced (not with `sync_only`).
async fn reload(resource: &TemplateResource, options: RenderOptions) -> Result<(), RenderError> {
    if let (Some(reload), false) = (&resource.reload_cmd, options.sync_only) {
        if let Err((status, output)) = crate::command::run(reload).await {
            return Err(RenderError::Reload {
                command: reload.clone(),
                status,
                output,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pairs: &[(&str, &str)]) -> Arc<KvSnapshot> {
        Arc::new(KvSnapshot {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            revision: 1,
        })
    }

    /// A temporary directory, its template file `t.tmpl` (not written yet) and a resource
    /// rendering it.
    fn template_in_temp_dir(
    ) -> Result<(tempfile::TempDir, PathBuf, TemplateResource), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("t.tmpl");
        let resource: TemplateResource = serde_json::from_value(serde_json::json!({
            "src": "t.tmpl",
            "dest": dir.path().join("out"),
        }))?;
        Ok((dir, src, resource))
    }

    /// Renders `resource` from `dir` over the pairs it is given, keeping parses in `cache`.
    fn renderer<'a>(
        resource: &'a TemplateResource,
        dir: &'a Path,
        cache: &'a mut TemplateCache,
    ) -> impl FnMut(&[(&str, &str)]) -> Result<String, RenderError> + 'a {
        move |pairs| render_text(resource, dir, snapshot(pairs), None, cache)
    }

    /// A parse kept in the cache renders each new snapshot (nothing of an earlier one stays
    /// visible), and a template file that changed is parsed again.
    #[test]
    fn a_cached_template_renders_each_snapshot_and_follows_its_file(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (dir, src, resource) = template_in_temp_dir()?;
        let mut cache = TemplateCache::default();
        let mut render = renderer(&resource, dir.path(), &mut cache);
        std::fs::write(&src, r#"a={{getv "/a"}}"#)?;
        assert_eq!(render(&[("/a", "1")])?, "a=1");
        assert_eq!(render(&[("/a", "2")])?, "a=2");
        let missing = render(&[("/b", "3")]);
        assert!(
            matches!(&missing, Err(RenderError::Template(m)) if m.contains("key does not exist: /a")),
            "{missing:?}"
        );
        std::fs::write(&src, r#"b={{getv "/a"}}"#)?;
        assert_eq!(render(&[("/a", "4")])?, "b=4");
        std::fs::write(&src, "{{getv")?;
        assert!(matches!(
            render(&[("/a", "5")]),
            Err(RenderError::Template(_))
        ));
        std::fs::write(&src, r#"c={{getv "/a"}}"#)?;
        assert_eq!(render(&[("/a", "6")])?, "c=6");
        Ok(())
    }

    /// A pinned cache reads its template once: later changes to the file, even its removal,
    /// do not reach the renders (the agent owns its copy and never changes it).
    #[test]
    fn a_pinned_template_is_read_once() -> Result<(), Box<dyn std::error::Error>> {
        let (dir, src, resource) = template_in_temp_dir()?;
        let mut cache = TemplateCache::pinned();
        let mut render = renderer(&resource, dir.path(), &mut cache);
        let first = render(&[("/a", "1")]);
        assert!(
            matches!(&first, Err(RenderError::Io { path, .. }) if *path == src),
            "{first:?}"
        );
        std::fs::write(&src, r#"a={{getv "/a"}}"#)?;
        assert_eq!(render(&[("/a", "1")])?, "a=1");
        std::fs::write(&src, r#"b={{getv "/a"}}"#)?;
        assert_eq!(render(&[("/a", "2")])?, "a=2");
        std::fs::remove_file(&src)?;
        assert_eq!(render(&[("/a", "3")])?, "a=3");
        Ok(())
    }

    #[test]
    fn a_template_left_alone_is_still_followed_when_rewritten_or_replaced(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (dir, src, resource) = template_in_temp_dir()?;
        let mut cache = TemplateCache::default();
        let mut render = renderer(&resource, dir.path(), &mut cache);
        std::fs::write(&src, r#"a={{getv "/a"}}"#)?;
        // Older than the settling time when read: later renders trust its stamp.
        std::thread::sleep(SETTLED + std::time::Duration::from_millis(200));
        assert_eq!(render(&[("/a", "1")])?, "a=1");
        assert_eq!(render(&[("/a", "2")])?, "a=2");
        // Rewritten in place with text of the same length.
        std::fs::write(&src, r#"b={{getv "/a"}}"#)?;
        assert_eq!(render(&[("/a", "3")])?, "b=3");
        // Replaced by a rename, as editors and configuration tools do.
        std::thread::sleep(SETTLED + std::time::Duration::from_millis(200));
        assert_eq!(render(&[("/a", "4")])?, "b=4");
        let staged = dir.path().join("t.tmpl.new");
        std::fs::write(&staged, r#"c={{getv "/a"}}"#)?;
        std::fs::rename(&staged, &src)?;
        assert_eq!(render(&[("/a", "5")])?, "c=5");
        Ok(())
    }

    /// What `dest` holds is compared in full: text of the same length that differs, a file
    /// longer or shorter than the render, and one with the same text but another mode are
    /// all replaced; only the same text and mode are left alone.
    #[test]
    fn staging_replaces_any_difference_and_leaves_the_same_file_alone(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("nginx.conf");
        let rendered = "server_name v2.example.com;\n";
        let stage_it = || stage(&dest, rendered, 0o644, (None, None), false, false, false);
        for (current, why) in [
            ("server_name v1.example.com;\n", "same length, other text"),
            (
                "server_name v2.example.com;\n# more\n",
                "the render and more",
            ),
            ("server_name v2.example.com;", "shorter"),
            ("", "empty"),
        ] {
            std::fs::write(&dest, current)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
            assert!(matches!(stage_it()?, Staged::File(_)), "{why}");
        }
        std::fs::write(&dest, rendered)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
        assert!(matches!(stage_it()?, Staged::File(_)), "other mode");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
        assert!(matches!(stage_it()?, Staged::Unchanged), "the same file");
        std::fs::remove_file(&dest)?;
        assert!(matches!(stage_it()?, Staged::File(_)), "missing");
        Ok(())
    }

    /// With what it installed before remembered, a render equal to it is still compared with
    /// `dest` on disk (an edit made meanwhile is undone), a new one is installed without
    /// reading `dest` back, and one that only changes the mode changes the mode.
    #[tokio::test]
    async fn a_remembered_install_keeps_the_outcomes_of_a_full_compare(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("nginx.conf");
        let mut resource = TemplateResource::parse(
            Path::new("nginx.toml"),
            &format!(
                "[template]\nsrc = \"unused.tmpl\"\ndest = {:?}\nmode = \"0644\"\n",
                dest.display().to_string()
            ),
        )?;
        let last = LastInstall::default();
        let install_text = |resource: &TemplateResource, text: &str| {
            let resource = resource.clone();
            let text = text.to_string();
            let last = &last;
            async move { install(&resource, text, RenderOptions::default(), Some(last)).await }
        };
        let mode = |path: &Path| -> std::io::Result<u32> {
            Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
        };
        // Nothing remembered: the first install compares, as without a memory.
        std::fs::write(&dest, "a\n")?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
        assert_eq!(install_text(&resource, "a\n").await?, Outcome::Unchanged);
        assert_eq!(install_text(&resource, "b\n").await?, Outcome::Updated);
        assert_eq!(std::fs::read_to_string(&dest)?, "b\n");
        assert_eq!(install_text(&resource, "b\n").await?, Outcome::Unchanged);
        // Edited behind the renderer's back, then the same render again: put back.
        std::fs::write(&dest, "edited\n")?;
        assert_eq!(install_text(&resource, "b\n").await?, Outcome::Updated);
        assert_eq!(std::fs::read_to_string(&dest)?, "b\n");
        // Removed behind its back, then a new render: installed.
        std::fs::remove_file(&dest)?;
        assert_eq!(install_text(&resource, "c\n").await?, Outcome::Updated);
        assert_eq!(std::fs::read_to_string(&dest)?, "c\n");
        // The same text with another mode.
        resource.mode = Some("0600".into());
        assert_eq!(install_text(&resource, "c\n").await?, Outcome::Updated);
        assert_eq!(mode(&dest)?, 0o600);
        assert_eq!(install_text(&resource, "c\n").await?, Outcome::Unchanged);
        // Set behind its back to exactly the next render: installed once more (where a
        // full compare would leave it), with the same text and mode.
        std::fs::write(&dest, "d\n")?;
        assert_eq!(install_text(&resource, "d\n").await?, Outcome::Updated);
        assert_eq!(std::fs::read_to_string(&dest)?, "d\n");
        assert_eq!(mode(&dest)?, 0o600);
        assert_eq!(install_text(&resource, "d\n").await?, Outcome::Unchanged);
        // A new render does not read `dest` back: a FIFO there would block a reader until
        // a writer came.
        std::fs::remove_file(&dest)?;
        let fifo = std::process::Command::new("mkfifo").arg(&dest).status()?;
        assert!(fifo.success(), "mkfifo {}", dest.display());
        let new = install_text(&resource, "e\n");
        let installed = tokio::time::timeout(std::time::Duration::from_secs(10), new).await;
        assert!(
            matches!(installed, Ok(Ok(Outcome::Updated))),
            "a new render read dest back (or failed): {installed:?}"
        );
        assert_eq!(std::fs::read_to_string(&dest)?, "e\n");
        Ok(())
    }
}

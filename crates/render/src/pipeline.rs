//! confd's staged write: render next to `dest`, and only if the content or mode differs,
//! check the staged file, rename it over `dest` atomically, then reload.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::functions::template_for;
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

async fn shell(command: &str) -> Result<(), (String, String)> {
    match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .output()
        .await
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err((out.status.to_string(), text.trim().to_string()))
        }
        Err(e) => Err(("not started".into(), e.to_string())),
    }
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
    use std::os::unix::fs::MetadataExt;
    let noop = options.noop;
    let (uid, gid) = ownership(resource)?;
    let src = templates_dir.join(&resource.src);
    let text = std::fs::read_to_string(&src).map_err(io(&src))?;
    let name = src.display().to_string();
    let rendered = template_for(&name, &text, snapshot, options.nameserver)
        .and_then(|t| t.execute_to_string())
        .map_err(|e| RenderError::Template(e.to_string()))?;
    let mode = resource.file_mode().unwrap_or(0o644);
    let current = std::fs::read_to_string(&resource.dest).ok();
    let meta = std::fs::metadata(&resource.dest).ok();
    let current_mode = meta.as_ref().map(|m| m.permissions().mode() & 0o7777);
    let owner_ok = meta
        .as_ref()
        .is_some_and(|m| uid.is_none_or(|u| u == m.uid()) && gid.is_none_or(|g| g == m.gid()));
    if current.as_deref() == Some(rendered.as_str())
        && current_mode == Some(mode)
        && owner_ok
        && !options.check_only
    {
        return Ok(Outcome::Unchanged);
    }
    if noop {
        return Ok(Outcome::WouldUpdate {
            diff: diff(current.as_deref().unwrap_or(""), &rendered),
        });
    }
    let dir = resource.dest.parent().unwrap_or(Path::new("."));
    let base = resource
        .dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("dest");
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{base}"))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    std::fs::write(staged.path(), &rendered).map_err(io(staged.path()))?;
    std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(mode))
        .map_err(io(staged.path()))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(staged.path(), uid, gid).map_err(io(staged.path()))?;
    }
    if let (Some(check), false) = (&resource.check_cmd, options.sync_only) {
        let command = check.replace("{{.src}}", &staged.path().display().to_string());
        if let Err((status, output)) = shell(&command).await {
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
    staged
        .persist(&resource.dest)
        .map_err(|e| RenderError::Io {
            path: resource.dest.clone(),
            source: e.error,
        })?;
    if let (Some(reload), false) = (&resource.reload_cmd, options.sync_only) {
        if let Err((status, output)) = shell(reload).await {
            return Err(RenderError::Reload {
                command: reload.clone(),
                status,
                output,
            });
        }
    }
    Ok(Outcome::Updated)
}

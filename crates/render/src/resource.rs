//! confd template resources: `conf.d/*.toml` files with a `[template]` table.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Known keys of a `[template]` table (confd's, plus ferry's `owner`, `group`, `wait`).
const KNOWN: [&str; 13] = [
    "src",
    "dest",
    "keys",
    "prefix",
    "mode",
    "uid",
    "gid",
    "owner",
    "group",
    "check_cmd",
    "reload_cmd",
    "wait",
    "backend",
];

/// One template resource, as confd reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TemplateResource {
    /// Template file, relative to `<confdir>/templates`.
    pub src: String,
    /// File to write.
    pub dest: PathBuf,
    /// Keys (prefixes) to read.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Prefix prepended to every key (and stripped in templates).
    #[serde(default)]
    pub prefix: String,
    /// File mode, octal string as in confd (`"0644"`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Owner gid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// Owner by user name (resolved through /etc/passwd).
    #[serde(default)]
    pub owner: Option<String>,
    /// Group by name (resolved through /etc/group).
    #[serde(default)]
    pub group: Option<String>,
    /// Command checking the staged file; `{{.src}}` is its path.
    #[serde(default)]
    pub check_cmd: Option<String>,
    /// Command run after `dest` changed.
    #[serde(default)]
    pub reload_cmd: Option<String>,
    /// Watch mode quiet period, `"min:max"` (e.g. `"100ms:2s"`).
    #[serde(default)]
    pub wait: Option<String>,
    /// The file it came from.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Deserialize)]
struct ResourceFile {
    template: toml::Table,
}

/// Why the conf dir could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid template resource.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl TemplateResource {
    /// Parses one resource file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ResourceError> {
        let invalid = |reason: String| ResourceError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: ResourceFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for key in file.template.keys() {
            if !KNOWN.contains(&key.as_str()) {
                tracing::warn!(file = %path.display(), key = %key, "unknown key in [template] is ignored");
            }
        }
        let mut resource: TemplateResource = toml::Value::Table(file.template)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        if let Some(mode) = &resource.mode {
            u32::from_str_radix(mode.trim_start_matches("0o"), 8)
                .map_err(|_| invalid(format!("mode {mode:?} is not an octal file mode")))?;
        }
        if resource.src.is_empty() {
            return Err(invalid("src must not be empty".into()));
        }
        resource.file = path.to_path_buf();
        Ok(resource)
    }

    /// The file mode, if set.
    pub fn file_mode(&self) -> Option<u32> {
        self.mode
            .as_ref()
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).ok())
    }
}

/// Loads every `<confdir>/conf.d/*.toml`, in file name order.
pub fn load_confdir(confdir: &Path) -> Result<Vec<TemplateResource>, ResourceError> {
    let dir = confdir.join("conf.d");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ResourceError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(io(f))?;
            TemplateResource::parse(f, &text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_confd_resources_and_refuses_bad_modes() {
        let text = r#"
[template]
src = "nginx.tmpl"
dest = "/etc/nginx/conf.d/app.conf"
keys = ["/services/apache"]
mode = "0644"
check_cmd = "nginx -t -c {{.src}}"
reload_cmd = "nginx -s reload"
typo_key = 1
"#;
        let r = TemplateResource::parse(Path::new("app.toml"), text).expect("valid resource");
        assert_eq!(r.keys, ["/services/apache"]);
        assert_eq!(r.file_mode(), Some(0o644));
        let bad = text.replace("0644", "rw-r--r--");
        let err = TemplateResource::parse(Path::new("app.toml"), &bad).expect_err("bad mode");
        assert!(err.to_string().contains("not an octal file mode"), "{err}");
        let err =
            TemplateResource::parse(Path::new("x.toml"), "[other]\n").expect_err("no [template]");
        assert!(err.to_string().starts_with("x.toml: "), "{err}");
    }
}

//! Each resource's last render, as JSON (`--status-file`) and Prometheus metrics.

use std::collections::BTreeMap;
use std::path::Path;

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::pipeline::Outcome;
use crate::resource::TemplateResource;

type Labels = Vec<(String, String)>;

/// One resource's last render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceStatus {
    /// The resource file.
    pub resource: String,
    /// Its destination.
    pub dest: String,
    /// Store revision of the keys rendered (0 if they could not be read).
    pub revision: i64,
    /// Whether the render succeeded.
    pub ok: bool,
    /// `updated`, `unchanged`, `would-update` or `error`.
    pub result: String,
    /// The error, if any.
    pub message: String,
    /// When (RFC 3339, UTC).
    pub time: String,
}

/// Every resource's last render.
pub struct StatusBoard {
    last: Mutex<BTreeMap<String, ResourceStatus>>,
    registry: Mutex<Registry>,
    success: Family<Labels, Gauge>,
    timestamp: Family<Labels, Gauge>,
    revision: Family<Labels, Gauge>,
    renders: Family<Labels, Counter>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        let board = Self {
            last: Mutex::new(BTreeMap::new()),
            registry: Mutex::new(Registry::default()),
            success: Family::default(),
            timestamp: Family::default(),
            revision: Family::default(),
            renders: Family::default(),
        };
        {
            let mut r = board.registry.lock();
            r.register(
                "ferry_render_last_render_success",
                "1 if the resource's last render succeeded",
                board.success.clone(),
            );
            r.register(
                "ferry_render_last_render_timestamp_seconds",
                "When the resource was last rendered",
                board.timestamp.clone(),
            );
            r.register(
                "ferry_render_last_render_revision",
                "Store revision of the resource's last render",
                board.revision.clone(),
            );
            r.register(
                "ferry_render_renders",
                "Renders per resource and result",
                board.renders.clone(),
            );
        }
        board
    }
}

impl StatusBoard {
    /// Records a render result.
    pub fn record(
        &self,
        resource: &TemplateResource,
        revision: i64,
        result: &Result<Outcome, String>,
    ) {
        let name = resource.file.display().to_string();
        let dest = resource.dest.display().to_string();
        let (ok, kind, message) = match result {
            Ok(Outcome::Updated) => (true, "updated", String::new()),
            Ok(Outcome::Unchanged) => (true, "unchanged", String::new()),
            Ok(Outcome::WouldUpdate { .. }) => (true, "would-update", String::new()),
            Ok(Outcome::Checked) => (true, "checked", String::new()),
            Err(e) => (false, "error", e.clone()),
        };
        let now = std::time::SystemTime::now();
        let labels = vec![
            ("resource".to_string(), name.clone()),
            ("dest".to_string(), dest.clone()),
        ];
        self.success.get_or_create(&labels).set(ok as i64);
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.timestamp.get_or_create(&labels).set(secs);
        self.revision.get_or_create(&labels).set(revision);
        self.renders
            .get_or_create(&vec![
                ("resource".to_string(), name.clone()),
                ("result".to_string(), kind.to_string()),
            ])
            .inc();
        self.last.lock().insert(
            name.clone(),
            ResourceStatus {
                resource: name,
                dest,
                revision,
                ok,
                result: kind.into(),
                message,
                time: humantime::format_rfc3339_millis(now).to_string(),
            },
        );
    }

    /// Every resource's last render, by resource file.
    pub fn snapshot(&self) -> Vec<ResourceStatus> {
        self.last.lock().values().cloned().collect()
    }

    /// The metrics in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock());
        out
    }

    /// Writes the JSON status to `path` atomically (a reader never sees half a file).
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.snapshot()).map_err(std::io::Error::other)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(tmp.path(), json)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

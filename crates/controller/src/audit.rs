//! The audit log: one JSON line per change and per refused request, with who (the token's
//! name), what (environment, configuration, version), from where (the peer address) and the
//! outcome. Lines go to the `--audit-log` file when one is set (appended, flushed per line)
//! and always to the log under the `ferry::audit` target.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

/// One audited event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent<'a> {
    /// `create`, `update`, `delete`, `rollback`, `refused` (authentication or
    /// authorisation), `tokens_reloaded`, `tokens_rejected`.
    pub action: &'a str,
    /// The token's name, when the request had a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'a str>,
    /// Environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<&'a str>,
    /// Configuration id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// Version the change produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SocketAddr>,
    /// HTTP status of the answer, for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why, for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    /// An event with only its action set.
    pub fn new(action: &'a str) -> Self {
        Self {
            action,
            identity: None,
            env: None,
            id: None,
            version: None,
            source: None,
            status: None,
            reason: None,
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
}

/// Where audit lines go.
#[derive(Default)]
pub struct Audit {
    file: Option<parking_lot::Mutex<std::fs::File>>,
}

impl Audit {
    /// Audit lines to the log only.
    pub fn to_log() -> Self {
        Self::default()
    }

    /// Audit lines appended to `path` (created with mode 0600) and to the log.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Some(parking_lot::Mutex::new(file)),
        })
    }

    /// Records one event.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let line = Line {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event,
        };
        let Ok(json) = serde_json::to_string(&line) else {
            return;
        };
        tracing::info!(target: "ferry::audit", "{json}");
        if let Some(file) = &self.file {
            let mut file = file.lock();
            if let Err(e) = writeln!(file, "{json}").and_then(|_| file.flush()) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
    }
}

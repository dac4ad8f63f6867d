//! Reloading the token file without a restart: on SIGHUP, and when its contents change
//! (checked every second, which also catches an editor's rename-over). A file that does not
//! parse is refused, logged and audited; the tokens in force stay.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::ApiState;
use crate::audit::AuditEvent;
use crate::auth::Tokens;

/// Watches `path` for as long as the task runs.
pub async fn watch(path: PathBuf, state: Arc<ApiState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the token file is still reloaded when it changes");
            None
        }
    };
    let mut seen = std::fs::read(&path).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = std::fs::read(&path).ok();
        if !forced && now == seen {
            continue;
        }
        seen = now.clone();
        let parsed = match now {
            Some(bytes) => Tokens::parse(&String::from_utf8_lossy(&bytes))
                .map_err(|e| format!("{}: {e}", path.display())),
            None => Err(format!("{}: cannot be read", path.display())),
        };
        match parsed {
            Ok(tokens) => {
                let count = tokens.len();
                *state.tokens.write() = tokens;
                tracing::info!(file = %path.display(), tokens = count, "token file reloaded");
                state.audit.record(&AuditEvent::new("tokens_reloaded"));
            }
            Err(reason) => {
                tracing::error!(%reason, "token file refused; the tokens in force are kept");
                state.audit.record(&AuditEvent {
                    reason: Some(&reason),
                    ..AuditEvent::new("tokens_rejected")
                });
            }
        }
    }
}

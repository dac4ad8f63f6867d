//! Automatic compaction with etcd's two modes.

use std::collections::VecDeque;
use std::time::Duration;

use crate::mvcc::kvstore::{MvccStore, WriteRequest};

/// `--auto-compaction-mode` with its `--auto-compaction-retention`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last `retention`: the store samples its revision every tenth of
    /// the retention and compacts to the revision it had one retention ago.
    Periodic(Duration),
    /// Keep the last `n` revisions (checked every second).
    Revision(i64),
}

impl AutoCompaction {
    /// Parses etcd's flag pair; a retention of zero turns compaction off (`Ok(None)`).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<Self>, String> {
        match mode {
            "periodic" => {
                // A bare number is hours (etcd's historical unit).
                let d = match retention.parse::<u64>() {
                    Ok(hours) => hours
                        .checked_mul(3600)
                        .map(Duration::from_secs)
                        .filter(|d| *d <= ferry_client::duration::MAX)
                        .ok_or_else(|| {
                            format!("--auto-compaction-retention {retention:?} hours is too long")
                        })?,
                    Err(_) => ferry_client::duration::parse(retention)
                        .map_err(|e| format!("--auto-compaction-retention {retention:?}: {e}"))?,
                };
                Ok((!d.is_zero()).then_some(Self::Periodic(d)))
            }
            "revision" => {
                let n: i64 = retention.parse().map_err(|_| {
                    format!("--auto-compaction-retention {retention:?} must be a number of revisions in revision mode")
                })?;
                if n < 0 {
                    return Err("--auto-compaction-retention must not be negative".into());
                }
                Ok((n > 0).then_some(Self::Revision(n)))
            }
            other => Err(format!(
                "--auto-compaction-mode {other:?} is not one of periodic, revision"
            )),
        }
    }
}

/// Runs the policy forever.
pub(crate) async fn run(store: MvccStore, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Periodic(retention) => {
            let tick = (retention / 10).max(Duration::from_millis(100));
            let mut samples = VecDeque::new();
            let mut timer = tokio::time::interval(tick);
            loop {
                timer.tick().await;
                samples.push_back(store.current_revision());
                if samples.len() > 10 {
                    if let Some(rev) = samples.pop_front() {
                        compact(&store, rev).await;
                    }
                }
            }
        }
        AutoCompaction::Revision(keep) => {
            let mut timer = tokio::time::interval(Duration::from_secs(1));
            loop {
                timer.tick().await;
                compact(&store, store.current_revision() - keep).await;
            }
        }
    }
}

async fn compact(store: &MvccStore, rev: i64) {
    if rev <= store.compact_revision() {
        return;
    }
    match store.write(WriteRequest::Compact(rev)).await {
        Ok(_) => tracing::info!(revision = rev, "auto-compacted"),
        Err(e) => tracing::warn!(revision = rev, error = %e, "auto-compaction failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_flag_values() {
        assert_eq!(
            AutoCompaction::parse("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "1h30m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(5400))))
        );
        assert_eq!(AutoCompaction::parse("periodic", "0"), Ok(None));
        assert_eq!(
            AutoCompaction::parse("revision", "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        assert!(AutoCompaction::parse("revision", "1h").is_err());
        assert!(AutoCompaction::parse("hourly", "1").is_err());
        assert!(AutoCompaction::parse("periodic", "5x").is_err());
    }
}

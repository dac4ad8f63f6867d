//! The interval and watch modes: keep resources rendered as their keys change.
//!
//! Watch mode renders a resource from a fresh snapshot, then watches its keys from the
//! snapshot's revision + 1. The first change starts a quiet period: changes keep arriving
//! until none has come for `min` (or `max` has passed since the first), then the resource is
//! rendered once. A lost or compacted watch simply renders from a new snapshot again, so no
//! change is ever missed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, WatchOptions};

use crate::pipeline::{render_resource, Outcome, RenderOptions};
use crate::resource::TemplateResource;
use crate::snapshot::KvSnapshot;

/// A quiet period: render once no change came for `min`, or `max` after the first change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Quiet time that ends a burst.
    pub min: Duration,
    /// Longest a burst may delay a render.
    pub max: Duration,
}

impl Wait {
    /// Parses `"min:max"` (`"100ms:2s"`), or one duration for both.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (min, max) = text.split_once(':').unwrap_or((text, text));
        let parse = |s: &str| {
            parse_duration(s.trim())
                .ok_or_else(|| format!("wait {text:?}: {s:?} is not a duration like 100ms or 2s"))
        };
        let (min, max) = (parse(min)?, parse(max)?);
        if max < min {
            return Err(format!("wait {text:?}: max is shorter than min"));
        }
        Ok(Self { min, max })
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    ferry_client::duration::parse(s).ok()
}

/// Where a resource's render status is reported.
pub type Report = Arc<dyn Fn(&TemplateResource, i64, Result<Outcome, String>) + Send + Sync>;

/// What every render of a run shares.
#[derive(Clone)]
pub struct Job {
    /// The store connection.
    pub client: Client,
    /// The global key prefix (`-prefix`): when set, it replaces every resource's `prefix`.
    pub prefix: String,
    /// `<confdir>/templates`.
    pub templates: PathBuf,
    /// `-noop`, `-sync-only`, `-keep-stage-file`.
    pub options: RenderOptions,
    /// Where results go.
    pub report: Report,
}

impl Job {
    /// The prefix a resource's keys are read under: as in confd, a global `-prefix`
    /// replaces the resource's own `prefix` rather than joining it.
    fn full_prefix(&self, resource: &TemplateResource) -> String {
        if self.prefix.is_empty() {
            resource.prefix.clone()
        } else {
            self.prefix.clone()
        }
    }

    /// Renders `resource` now from a fresh snapshot; returns the snapshot's revision.
    pub async fn render_once(&mut self, resource: &TemplateResource) -> Option<i64> {
        let prefix = self.full_prefix(resource);
        match KvSnapshot::read(&mut self.client, &prefix, &resource.keys).await {
            Ok(snapshot) => {
                let revision = snapshot.revision;
                let result =
                    render_resource(resource, &self.templates, Arc::new(snapshot), self.options)
                        .await;
                (self.report)(resource, revision, result.map_err(|e| e.to_string()));
                Some(revision)
            }
            Err(e) => {
                (self.report)(resource, 0, Err(format!("reading keys: {e}")));
                None
            }
        }
    }
}

/// Renders `resource` every `interval`, forever.
pub async fn interval_mode(mut job: Job, resource: TemplateResource, interval: Duration) {
    loop {
        job.render_once(&resource).await;
        tokio::time::sleep(interval).await;
    }
}

/// Renders `resource` whenever its keys change, with the quiet period `wait`, forever.
pub async fn watch_mode(mut job: Job, resource: TemplateResource, wait: Wait) {
    let full_prefix = job.full_prefix(&resource);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(revision) = job.render_once(&resource).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        // One stream, one watch per key prefix, all from just after the snapshot.
        let mut keys = resource
            .keys
            .iter()
            .map(|k| crate::gopath::join(&["/", &full_prefix, k]));
        let Some(first) = keys.next() else {
            tracing::warn!(
                resource = %resource.src,
                "keys is empty: in watch mode it is rendered once and never again"
            );
            std::future::pending::<()>().await;
            return;
        };
        let options = |key: &str| {
            (
                key.to_string(),
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            )
        };
        let (key, opts) = options(&first);
        let watched = match job.client.watch(key, Some(opts)).await {
            Ok(mut stream) => {
                let mut ok = true;
                for key in keys {
                    let (key, opts) = options(&key);
                    if stream.watch(key, Some(opts)).await.is_err() {
                        ok = false;
                    }
                }
                if ok {
                    wait_for_burst(&mut stream, wait).await
                } else {
                    WatchEnd::Lost
                }
            }
            Err(_) => WatchEnd::Lost,
        };
        // A watch that keeps failing (the store down, a watch the server cancels at once)
        // must not turn into a busy loop of renders.
        if watched == WatchEnd::Lost {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum WatchEnd {
    /// A burst of changes has ended: render now.
    Changed,
    /// The watch failed, was cancelled or ended: render (the state is unknown) and watch again.
    Lost,
}

/// Waits for the first change, then for the burst to end (quiet period `wait.min`, at most
/// `wait.max` after the first change).
async fn wait_for_burst(stream: &mut etcd_client::WatchStream, wait: Wait) -> WatchEnd {
    let mut first_change = None;
    loop {
        let timeout = match first_change {
            None => Duration::from_secs(3600),
            Some(started) => {
                let since: Duration = tokio::time::Instant::now() - started;
                wait.min.min(wait.max.saturating_sub(since))
            }
        };
        match tokio::time::timeout(timeout, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.canceled() => return WatchEnd::Lost,
            Ok(Ok(Some(resp))) if !resp.events().is_empty() => {
                first_change.get_or_insert_with(tokio::time::Instant::now);
            }
            Ok(Ok(Some(_))) => {}
            Ok(_) if first_change.is_some() => return WatchEnd::Changed,
            Ok(_) => return WatchEnd::Lost,
            Err(_) if first_change.is_some() => return WatchEnd::Changed,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quiet_periods() {
        assert_eq!(
            Wait::parse("100ms:2s"),
            Ok(Wait {
                min: Duration::from_millis(100),
                max: Duration::from_secs(2)
            })
        );
        assert_eq!(Wait::parse("1s").map(|w| w.max), Ok(Duration::from_secs(1)));
        assert!(Wait::parse("2s:1s").is_err());
        assert!(Wait::parse("soon").is_err());
    }
}

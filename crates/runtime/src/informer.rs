//! The informer: list a prefix at revision R, watch from R+1, keep the cache, feed handlers.
//!
//! On connection loss it resumes from the last revision it saw, after a jittered backoff. If
//! that revision was compacted it relists and replaces the cache at once, delivering a
//! delete (with the last known state) for every key that vanished and an update for every
//! key that changed: no event is skipped by jumping to the compact revision.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::cache::{Cache, Object};
use crate::metrics::{labels, Metrics};

/// A change delivered to handlers.
#[derive(Debug)]
pub enum Event<T> {
    /// A key appeared (or was present when the handler subscribed).
    Added(Object<T>),
    /// A key changed; `resync` marks a periodic replay where nothing changed.
    Updated {
        /// The state before.
        old: Object<T>,
        /// The state now.
        new: Object<T>,
        /// Whether this is a resync of an unchanged object.
        resync: bool,
    },
    /// A key was deleted; this is its last known state.
    Deleted(Object<T>),
}

impl<T> Clone for Event<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Added(o) => Self::Added(o.clone()),
            Self::Updated { old, new, resync } => Self::Updated {
                old: old.clone(),
                new: new.clone(),
                resync: *resync,
            },
            Self::Deleted(o) => Self::Deleted(o.clone()),
        }
    }
}

impl<T> Event<T> {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Added(o) | Self::Deleted(o) => &o.key,
            Self::Updated { new, .. } => &new.key,
        }
    }
}

/// What an informer watches and how it retries.
#[derive(Debug, Clone)]
pub struct InformerConfig {
    /// The key prefix.
    pub prefix: String,
    /// A name for logs and metrics.
    pub name: String,
    /// First reconnection delay.
    pub min_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
    /// A watch that stayed up this long resets the backoff.
    pub healthy_after: Duration,
    /// Replay the cache to handlers this often (off by default).
    pub resync_period: Option<Duration>,
}

impl InformerConfig {
    /// Watches `prefix` with client-go-like defaults (100 ms → 30 s backoff, reset after
    /// 5 s of a working watch).
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            name: prefix.clone(),
            prefix,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            // A member failure every few minutes must not find the backoff still grown from
            // the last one: five healthy seconds are enough to start again from the minimum.
            healthy_after: Duration::from_secs(5),
            resync_period: None,
        }
    }
}

struct Shared<T> {
    cache: Cache<T>,
    handlers: Mutex<Vec<mpsc::UnboundedSender<Event<T>>>>,
    synced: watch::Sender<bool>,
    metrics: Option<Arc<Metrics>>,
    name: String,
}

impl<T> Shared<T> {
    /// Sends to every handler, dropping handlers that have gone away.
    fn emit(handlers: &mut Vec<mpsc::UnboundedSender<Event<T>>>, event: Event<T>) {
        handlers.retain(|h| h.send(event.clone()).is_ok());
    }
}

/// A running informer over one prefix, decoding values as JSON `T`.
///
/// ```no_run
/// # async fn demo(client: etcd_client::Client) {
/// use ferry_runtime::{Event, Informer, InformerConfig};
/// #[derive(serde::Deserialize)]
/// struct Network { cidr: String }
/// let informer: Informer<Network> = Informer::start(client, InformerConfig::new("/registry/networks/"));
/// informer.add_handler(|event| match event {
///     Event::Added(o) => println!("new {} {}", o.key, o.value.cidr),
///     Event::Updated { new, resync: false, .. } => println!("changed {}", new.key),
///     Event::Updated { .. } => {} // periodic resync of an unchanged object
///     Event::Deleted(o) => println!("gone {} (was {})", o.key, o.value.cidr),
/// });
/// informer.wait_for_sync().await;
/// println!("{} networks", informer.cache().len());
/// # }
/// ```
pub struct Informer<T> {
    shared: Arc<Shared<T>>,
    task: JoinHandle<()>,
}

impl<T> Drop for Informer<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Informer<T> {
    /// Starts listing and watching.
    pub fn start(client: Client, config: InformerConfig) -> Self {
        Self::start_with_metrics(client, config, None)
    }

    /// Starts, reporting decode errors and relists to `metrics`.
    pub fn start_with_metrics(
        client: Client,
        config: InformerConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            cache: Cache::new(),
            handlers: Mutex::new(Vec::new()),
            synced: watch::channel(false).0,
            metrics,
            name: config.name.clone(),
        });
        let task = tokio::spawn(run(client, config, shared.clone()));
        Self { shared, task }
    }

    /// The cache this informer keeps.
    pub fn cache(&self) -> Cache<T> {
        self.shared.cache.clone()
    }

    /// A new handler: receives every object present now as `Added`, then every change, in
    /// order. Each handler has its own channel, so a slow handler delays only itself.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event<T>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut handlers = self.shared.handlers.lock();
        for obj in self.shared.cache.list() {
            let _ = tx.send(Event::Added(obj));
        }
        handlers.push(tx);
        rx
    }

    /// Runs `handler` for every event on its own task.
    pub fn add_handler(
        &self,
        mut handler: impl FnMut(Event<T>) + Send + 'static,
    ) -> JoinHandle<()> {
        let mut rx = self.subscribe();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                handler(event);
            }
        })
    }

    /// Whether the first list has completed.
    pub fn has_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits for the first list.
    pub async fn wait_for_sync(&self) {
        let mut rx = self.shared.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

fn decode<T: DeserializeOwned>(shared: &Shared<T>, kv: &KeyValue) -> Option<Object<T>> {
    match Object::from_kv(kv) {
        Ok(object) => Some(object),
        Err(e) => {
            let key = String::from_utf8_lossy(kv.key());
            tracing::warn!(informer = %shared.name, key = %key, error = %e, "skipping a value that does not decode");
            if let Some(m) = &shared.metrics {
                m.informer_decode_errors
                    .get_or_create(&labels(&[("informer", &shared.name)]))
                    .inc();
            }
            None
        }
    }
}

/// Lists the prefix and replaces the cache; returns the list revision.
async fn relist<T: DeserializeOwned>(
    client: &mut Client,
    config: &InformerConfig,
    shared: &Shared<T>,
) -> Result<i64, etcd_client::Error> {
    let resp = client
        .get(
            config.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let fresh: Vec<Object<T>> = resp
        .kvs()
        .iter()
        .filter_map(|kv| decode(shared, kv))
        .collect();
    let mut handlers = shared.handlers.lock();
    for change in shared.cache.replace(fresh) {
        let event = match change {
            (Some(old), None) => Event::Deleted(old),
            (None, Some(new)) => Event::Added(new),
            (Some(old), Some(new)) => Event::Updated {
                old,
                new,
                resync: false,
            },
            (None, None) => continue,
        };
        Shared::emit(&mut handlers, event);
    }
    drop(handlers);
    shared.cache.set_revision(revision);
    Ok(revision)
}

enum WatchEnd {
    Compacted,
    Failed(String),
}

async fn run<T: DeserializeOwned + Send + Sync + 'static>(
    mut client: Client,
    config: InformerConfig,
    shared: Arc<Shared<T>>,
) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff, config.healthy_after);
    let mut revision: Option<i64> = None;
    let mut resync = config
        .resync_period
        .map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
    loop {
        let from = match revision {
            Some(r) => r,
            None => match relist(&mut client, &config, &shared).await {
                Ok(r) => {
                    // send_replace stores the value even while nobody is waiting yet.
                    shared.synced.send_replace(true);
                    r
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(informer = %config.name, error = %e, ?delay, "list failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
        };
        let mut seen = from;
        let end = watch_from(
            &mut client,
            &config,
            &shared,
            &mut backoff,
            &mut seen,
            resync.as_mut(),
        )
        .await;
        revision = Some(seen);
        match end {
            WatchEnd::Compacted => {
                tracing::info!(informer = %config.name, "watch history compacted; relisting");
                if let Some(m) = &shared.metrics {
                    m.informer_relists
                        .get_or_create(&labels(&[("informer", &config.name)]))
                        .inc();
                }
                revision = None;
            }
            WatchEnd::Failed(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(informer = %config.name, %reason, ?delay, "watch lost; resuming");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn watch_from<T: DeserializeOwned + Send + Sync + 'static>(
    client: &mut Client,
    config: &InformerConfig,
    shared: &Shared<T>,
    backoff: &mut Backoff,
    revision: &mut i64,
    mut resync: Option<&mut tokio::time::Interval>,
) -> WatchEnd {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1)
        .with_progress_notify();
    let mut stream = match client.watch(config.prefix.as_str(), Some(options)).await {
        Ok(s) => s,
        Err(e) => return WatchEnd::Failed(e.to_string()),
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = async {
                match resync.as_deref_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                let mut handlers = shared.handlers.lock();
                for obj in shared.cache.list() {
                    Shared::emit(&mut handlers, Event::Updated { old: obj.clone(), new: obj, resync: true });
                }
                continue;
            }
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => return WatchEnd::Failed("watch stream ended".into()),
            Err(e) => return WatchEnd::Failed(e.to_string()),
        };
        if resp.canceled() {
            return if resp.compact_revision() != 0 {
                WatchEnd::Compacted
            } else {
                WatchEnd::Failed(format!("watch cancelled: {}", resp.cancel_reason()))
            };
        }
        backoff.connected();
        if resp.created() {
            continue;
        }
        if resp.events().is_empty() {
            // A progress notification: everything up to the header revision was delivered.
            if let Some(h) = resp.header() {
                *revision = (*revision).max(h.revision());
                shared.cache.set_revision(*revision);
            }
            continue;
        }
        let mut handlers = shared.handlers.lock();
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *revision = (*revision).max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let out = match event.event_type() {
                EventType::Put => {
                    let Some(new) = decode(shared, kv) else {
                        continue;
                    };
                    match shared.cache.upsert(new.clone()) {
                        None => Event::Added(new),
                        Some(old) => Event::Updated {
                            old,
                            new,
                            resync: false,
                        },
                    }
                }
                EventType::Delete => match shared.cache.remove(&key) {
                    Some(old) => Event::Deleted(old),
                    None => continue,
                },
            };
            Shared::emit(&mut handlers, out);
        }
        drop(handlers);
        shared.cache.set_revision(*revision);
    }
}

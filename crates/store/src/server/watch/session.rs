//! One client's watch stream: its watches, its place in the change feed, its responses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use etcd_client::proto::{PbWatchRequest, PbWatchRequestUnion, PbWatchResponse};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use super::response::{self, EncodedWatchResponse, MAX_REVISIONS_PER_RESPONSE};
use super::{Selection, Watcher};
use crate::auth::{AuthError, Caller, PermType};
use crate::mvcc::fanout::Subscription;
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::watchable::{ChangeBatch, Event};
use crate::server::Context;
use crate::StoreError;

// WatchCreateRequest.FilterType values.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
/// Revisions replayed per history read, so one catch-up never holds the index for long.
const HISTORY_CHUNK: i64 = 4096;

/// What the session hands the transport at once: one dispatch's responses, in order.
pub(super) type Outgoing = Vec<Result<EncodedWatchResponse, Status>>;

/// One client stream.
pub(super) struct Session {
    ctx: Context,
    /// Who opened the stream (checked when each watch is created, as etcd does).
    caller: Result<Caller, AuthError>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    out: mpsc::Sender<Outgoing>,
    /// The commits that touch this stream's watchers.
    feed: Subscription,
    /// Every event up to this revision has been handed to the watchers that want it.
    synced: i64,
    /// This stream's watchers as last counted in the store-wide gauge.
    counted: i64,
    /// A number for each selection the stream's watchers have (see [`Watcher::group`]).
    groups: HashMap<Selection, usize>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx
            .metrics
            .watchers
            .fetch_sub(self.counted, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The client has gone away; the session ends.
struct Gone;

impl Session {
    pub(super) fn new(
        ctx: Context,
        caller: Result<Caller, AuthError>,
        out: mpsc::Sender<Outgoing>,
    ) -> Self {
        let feed = ctx.store.fanout().join();
        Self {
            caller,
            ctx,
            watchers: BTreeMap::new(),
            next_id: 0,
            out,
            synced: feed.routed(),
            feed,
            counted: 0,
            groups: HashMap::new(),
        }
    }

    pub(super) async fn run<R>(mut self, mut requests: R)
    where
        R: Stream<Item = Result<PbWatchRequest, Status>> + Unpin + Send + 'static,
    {
        let overflowed = self.feed.overflow_signal();
        let interval = self.ctx.config.watch_progress_notify_interval;
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let step = tokio::select! {
                req = requests.next() => match req {
                    Some(Ok(req)) => {
                        // Catch up with every commit already acknowledged before acting on the
                        // request, so "now" (a new watch's start, a progress revision) is at
                        // least every revision the client has seen acknowledged.
                        match self.sync().await {
                            Ok(()) => self.handle(req).await,
                            Err(gone) => Err(gone),
                        }
                    }
                    Some(Err(_)) | None => Err(Gone),
                },
                batch = self.feed.recv() => match batch {
                    Some(batch) => self.dispatch_waiting(batch).await,
                    None => Err(Gone),
                },
                // Too slow for the live feed: replay what was missed from history.
                () = overflowed.wait() => self.sync().await,
                _ = progress.tick() => self.notify_progress().await,
            };
            self.count_watchers();
            if step.is_err() {
                return;
            }
        }
    }

    /// Adds a watcher, numbering its selection.
    fn register(&mut self, id: i64, mut watcher: Watcher) {
        // Numbers of selections no watcher has any more are dropped now and then.
        if self.groups.len() > 2 * self.watchers.len() + 16 {
            self.groups.clear();
            let numbered: Vec<(i64, Selection)> = self
                .watchers
                .iter()
                .map(|(id, w)| (*id, w.selection()))
                .collect();
            for (id, selection) in numbered {
                let group = self.group_of(selection);
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.group = group;
                }
            }
        }
        watcher.group = self.group_of(watcher.selection());
        self.watchers.insert(id, watcher);
    }

    fn group_of(&mut self, selection: Selection) -> usize {
        let next = self.groups.len();
        *self.groups.entry(selection).or_insert(next)
    }

    /// Brings the store-wide watcher gauge in line with this stream's watchers.
    fn count_watchers(&mut self) {
        let now = self.watchers.len() as i64;
        if now != self.counted {
            self.ctx
                .metrics
                .watchers
                .fetch_add(now - self.counted, std::sync::atomic::Ordering::Relaxed);
            self.counted = now;
        }
    }

    /// Dispatches every batch routed to this stream so far (replaying from history what an
    /// overflow dropped); afterwards every commit routed before the call has been handled,
    /// those that touch no watcher of this stream included.
    async fn sync(&mut self) -> Result<(), Gone> {
        let routed = self.feed.routed();
        while let Some(batch) = self.feed.try_recv() {
            self.dispatch_waiting(batch).await?;
        }
        if self.feed.take_overflow() {
            self.catch_up().await?;
        }
        self.synced = self.synced.max(routed);
        Ok(())
    }

    /// Dispatches `first` together with the batches queued behind it (a stream that fell
    /// behind sends each watcher one response for many commits, as etcd does), up to one
    /// response's worth of revisions.
    async fn dispatch_waiting(&mut self, first: Arc<ChangeBatch>) -> Result<(), Gone> {
        let from = first.first().map_or(0, |e| e.kv.mod_revision);
        let mut batches = vec![first];
        loop {
            let upto = batches
                .last()
                .and_then(|b| b.last())
                .map_or(from, |e| e.kv.mod_revision);
            if upto - from >= MAX_REVISIONS_PER_RESPONSE as i64 {
                break;
            }
            match self.feed.try_recv() {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
        // A batch dropped before any of these was routed: history has them all. So it has
        // the previous values of a batch applied before this stream's first watcher asking
        // for them was counted.
        let prevs_missing =
            batches.iter().any(|b| !b.has_prevs()) && self.watchers.values().any(|w| w.prev_kv);
        if self.feed.take_overflow() || prevs_missing {
            return self.catch_up().await;
        }
        self.dispatch(&batches).await
    }

    async fn send(&self, resp: PbWatchResponse) -> Result<(), Gone> {
        self.send_all(vec![Ok(EncodedWatchResponse::from(&resp))])
            .await
    }

    async fn send_all(&self, responses: Outgoing) -> Result<(), Gone> {
        if responses.is_empty() {
            return Ok(());
        }
        self.out.send(responses).await.map_err(|_| Gone)
    }

    /// Ends the stream with `error`.
    async fn fail(&self, error: StoreError) -> Gone {
        let _ = self.out.send(vec![Err(error.into())]).await;
        Gone
    }

    fn header(&self, revision: i64) -> Option<etcd_client::proto::PbResponseHeader> {
        self.ctx.header(revision)
    }

    async fn handle(&mut self, req: PbWatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(create)) => {
                let mut key = create.key;
                if key.is_empty() {
                    key = vec![0];
                }
                let range = KeyRange::new(&key, &create.range_end);
                let current = self.ctx.store.current_revision();
                let refuse = |reason: &str| PbWatchResponse {
                    header: self.header(current),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..Default::default()
                };
                let allowed = self.caller.clone().and_then(|caller| {
                    self.ctx
                        .allow(&caller, PermType::Read, &key, &create.range_end)
                });
                if let Err(e) = allowed {
                    // etcd reports the gRPC error's text, as Go prints it.
                    let reason = format!("rpc error: code = {:?} desc = {e}", e.code());
                    return self.send(refuse(&reason)).await;
                }
                if let KeyRange::Span {
                    start,
                    end: Some(end),
                } = &range
                {
                    if start >= end {
                        return self.send(refuse("mvcc: watcher range is empty")).await;
                    }
                }
                let id = if create.watch_id == 0 {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id += 1;
                    self.next_id - 1
                } else if self.watchers.contains_key(&create.watch_id) {
                    return self
                        .send(refuse(
                            "mvcc: duplicate watch ID provided on the WatchStream",
                        ))
                        .await;
                } else {
                    create.watch_id
                };
                // Routed from now on; what was routed before is handled by the sync, so
                // "now" below leaves no revision between history and the live feed.
                self.feed.add(&range, create.prev_kv);
                self.sync().await?;
                let start = if create.start_revision == 0 {
                    self.synced + 1
                } else {
                    create.start_revision
                };
                let watcher = Watcher {
                    range: range.clone(),
                    start,
                    no_put: create.filters.contains(&FILTER_NOPUT),
                    no_delete: create.filters.contains(&FILTER_NODELETE),
                    prev_kv: create.prev_kv,
                    progress_notify: create.progress_notify,
                    fragment: create.fragment,
                    busy: false,
                    group: 0,
                };
                self.send(PbWatchResponse {
                    header: self.header(current),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await?;
                // A watcher cancelled during replay (history compacted) is not registered.
                if start > self.synced || self.replay(id, &watcher, start).await? {
                    self.register(id, watcher);
                } else {
                    self.feed.remove(&range, watcher.prev_kv);
                }
                Ok(())
            }
            Some(PbWatchRequestUnion::CancelRequest(cancel)) => {
                if let Some(watcher) = self.watchers.remove(&cancel.watch_id) {
                    self.feed.remove(&watcher.range, watcher.prev_kv);
                    self.send(PbWatchResponse {
                        header: self.header(self.ctx.store.current_revision()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // Everything up to `synced` has been sent on this stream.
                self.send(PbWatchResponse {
                    header: self.header(self.synced),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }
}

impl Session {
    /// Sends `watcher` its history from `from` up to `synced`; `false` if it was compacted
    /// away (the watcher has then been cancelled).
    async fn replay(&self, id: i64, watcher: &Watcher, from: i64) -> Result<bool, Gone> {
        let mut next = from;
        while next <= self.synced {
            let to = (next.saturating_add(HISTORY_CHUNK - 1)).min(self.synced);
            match self.history(next, to, watcher.prev_kv).await {
                Ok(events) => {
                    let batch = [Arc::new(ChangeBatch::new(events))];
                    let head = response::encode_header(self.header(to));
                    let limit = self.ctx.config.max_request_bytes;
                    let responses =
                        response::for_watcher(watcher, id, &batch, next - 1, &head, limit);
                    self.send_all(responses.into_iter().map(Ok).collect())
                        .await?;
                }
                Err(StoreError::Compacted) => {
                    self.send_compacted(id).await?;
                    return Ok(false);
                }
                Err(e) => return Err(self.fail(e).await),
            }
            next = to + 1;
        }
        Ok(true)
    }

    async fn history(&self, from: i64, to: i64, prev: bool) -> Result<Vec<Event>, StoreError> {
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || store.history(from, to, prev))
            .await
            .map_err(|e| StoreError::Backend(format!("history read: {e}")))?
    }

    async fn send_compacted(&self, id: i64) -> Result<(), Gone> {
        // Like etcd, a store that was never compacted reports compact revision -1 (what a
        // watch from a negative start revision sees).
        let compacted = match self.ctx.store.compact_revision() {
            0 => -1,
            rev => rev,
        };
        self.send(PbWatchResponse {
            header: self.header(self.ctx.store.current_revision()),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..Default::default()
        })
        .await
    }

    /// Hands committed batches (whole revisions, in order) to every watcher that wants part
    /// of them.
    async fn dispatch(&mut self, batches: &[Arc<ChangeBatch>]) -> Result<(), Gone> {
        let Some(last) = batches
            .iter()
            .rev()
            .find_map(|b| b.last())
            .map(|e| e.kv.mod_revision)
        else {
            return Ok(());
        };
        if last <= self.synced {
            return Ok(());
        }
        let head = response::encode_header(self.ctx.header(last));
        let limit = self.ctx.config.max_request_bytes;
        let mut outgoing = Vec::new();
        let mut busy = Vec::new();
        // Watchers alike in what they select share one computation (the common case: many
        // watches of one prefix on a stream); only their ids differ.
        let mut alike: Vec<Option<Vec<EncodedWatchResponse>>> =
            (0..self.groups.len()).map(|_| None).collect();
        for (id, watcher) in &self.watchers {
            let shared = watcher.start <= self.synced + 1;
            let known = shared
                .then(|| alike.get(watcher.group).and_then(Option::as_ref))
                .flatten();
            let responses = match known {
                Some(template) => template.iter().map(|r| r.for_watch(*id)).collect(),
                None => {
                    let responses =
                        response::for_watcher(watcher, *id, batches, self.synced, &head, limit);
                    if let (true, Some(slot)) = (shared, alike.get_mut(watcher.group)) {
                        *slot = Some(responses.clone());
                    }
                    responses
                }
            };
            if !responses.is_empty() {
                busy.push(*id);
            }
            outgoing.extend(responses.into_iter().map(Ok));
        }
        drop(alike);
        for id in busy {
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.busy = true;
            }
        }
        self.synced = last;
        self.send_all(outgoing).await
    }

    /// After falling behind the feed: replay everything since `synced` from history.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let to = self.feed.routed();
        let prev = self.watchers.values().any(|w| w.prev_kv);
        let mut next = self.synced + 1;
        while next <= to {
            let end = (next.saturating_add(HISTORY_CHUNK - 1)).min(to);
            match self.history(next, end, prev).await {
                Ok(events) => {
                    self.dispatch(&[Arc::new(ChangeBatch::new(events))]).await?;
                    self.synced = end;
                }
                Err(StoreError::Compacted) => {
                    tracing::warn!(
                        watchers = self.watchers.len(),
                        "a slow watch stream fell behind compaction; cancelling its watches"
                    );
                    let ids: Vec<i64> = self.watchers.keys().copied().collect();
                    for id in ids {
                        self.send_compacted(id).await?;
                    }
                    for watcher in std::mem::take(&mut self.watchers).into_values() {
                        self.feed.remove(&watcher.range, watcher.prev_kv);
                    }
                    self.synced = to;
                    return Ok(());
                }
                Err(e) => return Err(self.fail(e).await),
            }
            next = end + 1;
        }
        Ok(())
    }

    /// Periodic progress: watchers that asked for it and had no events learn the revision.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        self.sync().await?;
        let mut outgoing = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if watcher.progress_notify && !watcher.busy {
                let resp = PbWatchResponse {
                    header: self.ctx.header(self.synced),
                    watch_id: *id,
                    ..Default::default()
                };
                outgoing.push(Ok(EncodedWatchResponse::from(&resp)));
            }
            watcher.busy = false;
        }
        self.send_all(outgoing).await
    }
}

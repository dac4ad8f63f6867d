//! etcd's Watch service: many watches on one bidirectional stream.
//!
//! Each stream is one task holding one subscription to the store's change feed. A new watch
//! first replays history from the backend up to the revision the stream has processed, then
//! takes live events from the feed; because the subscription exists before the history is
//! read, no revision falls between the two. A stream that falls behind the feed (a slow
//! client) re-subscribes and replays what it missed from history; if that history has been
//! compacted, its watches are cancelled with the compact revision. Writers never wait.

use std::collections::BTreeMap;
use std::pin::Pin;

use etcd_client::proto::{PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::auth::{AuthError, Caller, PermType};
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::watchable::Event;
use crate::StoreError;

// WatchCreateRequest.FilterType and mvccpb.Event.EventType values.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
const EVENT_PUT: i32 = 0;
const EVENT_DELETE: i32 = 1;
/// Revisions replayed per history read, so one catch-up never holds the index for long.
const HISTORY_CHUNK: i64 = 4096;

pub(crate) struct WatchService {
    ctx: Context,
}

impl WatchService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl etcd_client::proto::PbWatchService for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.ctx.try_caller(&request);
        Ok(Response::new(open(
            self.ctx.clone(),
            caller,
            request.into_inner(),
        )))
    }
}

/// Serves one watch stream: `requests` from a client (gRPC, or the JSON gateway) that is
/// `caller`; the responses, in order.
pub(crate) fn open<R>(ctx: Context, caller: Result<Caller, AuthError>, requests: R) -> WatchStream
where
    R: Stream<Item = Result<PbWatchRequest, Status>> + Unpin + Send + 'static,
{
    let (out, rx) = mpsc::channel(128);
    let session = Session {
        caller,
        ctx,
        watchers: BTreeMap::new(),
        next_id: 0,
        out,
        synced: 0,
        counted: 0,
    };
    tokio::spawn(session.run(requests));
    Box::pin(ReceiverStream::new(rx))
}

struct Watcher {
    range: KeyRange,
    /// Events below this revision are not for this watcher.
    start: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events were sent since the last progress tick.
    busy: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        event.kv.mod_revision >= self.start
            && self.range.contains(&event.kv.key)
            && if event.is_delete() {
                !self.no_delete
            } else {
                !self.no_put
            }
    }

    fn to_pb(&self, event: &Event) -> PbEvent {
        PbEvent {
            r#type: if event.is_delete() {
                EVENT_DELETE
            } else {
                EVENT_PUT
            },
            kv: Some(event.kv.clone()),
            prev_kv: if self.prev_kv {
                event.prev.clone()
            } else {
                None
            },
        }
    }
}

/// One client stream.
struct Session {
    ctx: Context,
    /// Who opened the stream (checked when each watch is created, as etcd does).
    caller: Result<Caller, AuthError>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    out: mpsc::Sender<Result<PbWatchResponse, Status>>,
    /// Every event up to this revision has been handed to the watchers that want it.
    synced: i64,
    /// This stream's watchers as last counted in the store-wide gauge.
    counted: i64,
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
    async fn run<R>(mut self, mut requests: R)
    where
        R: Stream<Item = Result<PbWatchRequest, Status>> + Unpin + Send + 'static,
    {
        let mut feed = self.ctx.store.subscribe();
        self.synced = self.ctx.store.current_revision();
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
                        match self.drain(&mut feed).await {
                            Ok(()) => self.handle(req).await,
                            Err(gone) => Err(gone),
                        }
                    }
                    Some(Err(_)) | None => Err(Gone),
                },
                batch = feed.recv() => match batch {
                    Ok(events) => self.dispatch(&events).await,
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the live feed: resubscribe and replay what was missed.
                        feed = self.ctx.store.subscribe();
                        self.catch_up().await
                    }
                    Err(RecvError::Closed) => Err(Gone),
                },
                _ = progress.tick() => self.notify_progress().await,
            };
            self.count_watchers();
            if step.is_err() {
                return;
            }
        }
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

    /// Dispatches every batch already in the feed.
    async fn drain(
        &mut self,
        feed: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Vec<Event>>>,
    ) -> Result<(), Gone> {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            match feed.try_recv() {
                Ok(events) => self.dispatch(&events).await?,
                Err(TryRecvError::Lagged(_)) => {
                    *feed = self.ctx.store.subscribe();
                    self.catch_up().await?;
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Closed) => return Err(Gone),
            }
        }
    }

    async fn send(&self, resp: PbWatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
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
                let start = if create.start_revision == 0 {
                    self.synced + 1
                } else {
                    create.start_revision
                };
                let watcher = Watcher {
                    range,
                    start,
                    no_put: create.filters.contains(&FILTER_NOPUT),
                    no_delete: create.filters.contains(&FILTER_NODELETE),
                    prev_kv: create.prev_kv,
                    progress_notify: create.progress_notify,
                    fragment: create.fragment,
                    busy: false,
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
                    self.watchers.insert(id, watcher);
                }
                Ok(())
            }
            Some(PbWatchRequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
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
                    let wanted: Vec<PbEvent> = events
                        .iter()
                        .filter(|e| watcher.wants(e))
                        .map(|e| watcher.to_pb(e))
                        .collect();
                    self.send_events(id, watcher, wanted, to).await?;
                }
                Err(StoreError::Compacted) => {
                    self.send_compacted(id).await?;
                    return Ok(false);
                }
                Err(e) => {
                    let _ = self.out.send(Err(e.into())).await;
                    return Err(Gone);
                }
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

    /// Hands one committed batch (whole revisions) to every watcher that wants part of it.
    async fn dispatch(&mut self, events: &[Event]) -> Result<(), Gone> {
        let Some(last) = events.last().map(|e| e.kv.mod_revision) else {
            return Ok(());
        };
        if last <= self.synced {
            return Ok(());
        }
        let fresh: Vec<&Event> = events
            .iter()
            .filter(|e| e.kv.mod_revision > self.synced)
            .collect();
        for (id, watcher) in &mut self.watchers {
            let wanted: Vec<PbEvent> = fresh
                .iter()
                .filter(|e| watcher.wants(e))
                .map(|e| watcher.to_pb(e))
                .collect();
            if !wanted.is_empty() {
                watcher.busy = true;
                send_events(&self.ctx, &self.out, *id, watcher, wanted, last).await?;
            }
        }
        self.synced = last;
        Ok(())
    }

    async fn send_events(
        &self,
        id: i64,
        watcher: &Watcher,
        events: Vec<PbEvent>,
        revision: i64,
    ) -> Result<(), Gone> {
        send_events(&self.ctx, &self.out, id, watcher, events, revision).await
    }

    /// After falling behind the feed: replay everything since `synced` from history.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let to = self.ctx.store.current_revision();
        let prev = self.watchers.values().any(|w| w.prev_kv);
        let mut next = self.synced + 1;
        while next <= to {
            let end = (next.saturating_add(HISTORY_CHUNK - 1)).min(to);
            match self.history(next, end, prev).await {
                Ok(events) => {
                    self.dispatch(&events).await?;
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
                    self.watchers.clear();
                    self.synced = to;
                    return Ok(());
                }
                Err(e) => {
                    let _ = self.out.send(Err(e.into())).await;
                    return Err(Gone);
                }
            }
            next = end + 1;
        }
        Ok(())
    }

    /// Periodic progress: watchers that asked for it and had no events learn the revision.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        for (id, watcher) in &mut self.watchers {
            if watcher.progress_notify && !watcher.busy {
                let resp = PbWatchResponse {
                    header: self.ctx.header(self.synced),
                    watch_id: *id,
                    ..Default::default()
                };
                self.out.send(Ok(resp)).await.map_err(|_| Gone)?;
            }
            watcher.busy = false;
        }
        Ok(())
    }
}

/// Most revisions in one response, as etcd's watchBatchMaxRevs.
const MAX_REVISIONS_PER_RESPONSE: usize = 1000;

/// Sends events in responses of whole revisions (a revision is never split, so every
/// response is atomic), each at most `max_request_bytes` and 1,000 revisions unless one
/// revision alone is larger; such a revision is fragmented when the watcher allows it.
async fn send_events(
    ctx: &Context,
    out: &mpsc::Sender<Result<PbWatchResponse, Status>>,
    id: i64,
    watcher: &Watcher,
    events: Vec<PbEvent>,
    revision: i64,
) -> Result<(), Gone> {
    let limit = ctx.config.max_request_bytes;
    let send = |events: Vec<PbEvent>, fragment: bool| {
        let resp = PbWatchResponse {
            header: ctx.header(revision),
            watch_id: id,
            fragment,
            events,
            ..Default::default()
        };
        async move { out.send(Ok(resp)).await.map_err(|_| Gone) }
    };
    let mut batch: Vec<PbEvent> = Vec::new();
    let mut batch_size = 0;
    let mut batch_revisions = 0;
    let mut events = events.into_iter().peekable();
    while let Some(first) = events.next() {
        let rev = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let mut group = vec![first];
        while let Some(next) =
            events.next_if(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) == rev)
        {
            group.push(next);
        }
        let size: usize = group.iter().map(prost::Message::encoded_len).sum();
        let full = batch_size + size > limit || batch_revisions == MAX_REVISIONS_PER_RESPONSE;
        if !batch.is_empty() && full {
            send(std::mem::take(&mut batch), false).await?;
            batch_size = 0;
            batch_revisions = 0;
        }
        if size > limit && watcher.fragment {
            send_fragments(group, limit, &send).await?;
            continue;
        }
        batch.extend(group);
        batch_size += size;
        batch_revisions += 1;
    }
    if !batch.is_empty() {
        send(batch, false).await?;
    }
    Ok(())
}

/// One revision too large for a response, split as etcd does: every part but the last has
/// `fragment` set, and the client joins them.
async fn send_fragments<F, Fut>(events: Vec<PbEvent>, limit: usize, send: &F) -> Result<(), Gone>
where
    F: Fn(Vec<PbEvent>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(), Gone>>,
{
    let mut chunk = Vec::new();
    let mut chunk_size = 0;
    for event in events {
        let len = prost::Message::encoded_len(&event);
        if !chunk.is_empty() && chunk_size + len > limit {
            send(std::mem::take(&mut chunk), true).await?;
            chunk_size = 0;
        }
        chunk_size += len;
        chunk.push(event);
    }
    send(chunk, false).await
}

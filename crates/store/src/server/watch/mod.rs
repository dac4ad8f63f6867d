//! etcd's Watch service: many watches on one bidirectional stream.
//!
//! Each stream is one task registered with the store's fanout (`mvcc::fanout`) for the key
//! ranges its watchers select; the writer hands it only the commits that touch one of them.
//! A new watch registers its range first, then handles every commit routed so far, so the
//! revision it starts from leaves nothing between its history (replayed from the backend)
//! and the commits routed to it afterwards. A stream whose inbox fills up (a slow client)
//! has later commits dropped and replays what it missed from history; if that history has
//! been compacted, its watches are cancelled with the compact revision. Writers never wait.
//!
//! A commit's events are encoded once, by the first stream that sends them; every watcher's
//! response is made of slices of that encoding. A stream that finds several commits waiting
//! sends each watcher one response for all of them.

mod response;
mod session;

use std::pin::Pin;

use etcd_client::proto::PbWatchRequest;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use response::EncodedWatchResponse;

use super::Context;
use crate::auth::{AuthError, Caller};
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::watchable::Event;

pub(crate) struct WatchService {
    ctx: Context,
}

impl WatchService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl crate::proto::etcdserverpb::watch_server::Watch for WatchService {
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
    // Each item is one dispatch (a response per watcher that wanted something), so a few
    // suffice; a stream that cannot send waits here, and commits merge in the meantime.
    let (out, rx) = mpsc::channel(16);
    tokio::spawn(session::Session::new(ctx, caller, out).run(requests));
    Box::pin(ReceiverStream::new(rx).flat_map(futures::stream::iter))
}

/// Watchers with equal selections get the same responses from the same revision on.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Selection {
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
}

/// One watch of a stream.
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
    /// The stream's number for this watcher's selection (alike watchers share it).
    group: usize,
}

impl Watcher {
    /// What decides the responses this watcher gets from a revision on (all but its id).
    fn selection(&self) -> Selection {
        Selection {
            range: self.range.clone(),
            no_put: self.no_put,
            no_delete: self.no_delete,
            prev_kv: self.prev_kv,
            fragment: self.fragment,
        }
    }

    fn wants(&self, event: &Event) -> bool {
        event.kv.mod_revision >= self.start
            && self.range.contains(&event.kv.key)
            && if event.is_delete() {
                !self.no_delete
            } else {
                !self.no_put
            }
    }
}

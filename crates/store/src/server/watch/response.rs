//! Watch responses as bytes: the events of a commit are encoded once (see
//! [`ChangeBatch::encoded`]) and each watcher's response is its header plus slices of them.

use std::sync::Arc;

use etcd_client::proto::{PbResponseHeader, PbWatchResponse};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use smallvec::SmallVec;

use super::Watcher;
use crate::mvcc::watchable::ChangeBatch;

/// Most revisions in one response, as etcd's watchBatchMaxRevs.
pub(super) const MAX_REVISIONS_PER_RESPONSE: usize = 1000;

/// An encoded `etcdserverpb.WatchResponse`, written to the wire as it is.
#[derive(Debug, Default, Clone)]
pub struct EncodedWatchResponse {
    /// `header`, shared by every response of one dispatch (or a whole control message).
    head: Bytes,
    /// `watch_id` and `fragment` (at most 11 + 2 bytes), then unused space.
    fields: [u8; 16],
    fields_len: usize,
    fragment: bool,
    /// `events` fields: slices of batches' encodings.
    events: SmallVec<[Bytes; 2]>,
}

impl EncodedWatchResponse {
    fn new(head: Bytes, id: i64, fragment: bool, events: SmallVec<[Bytes; 2]>) -> Self {
        let mut fields = [0; 16];
        let mut free = &mut fields[..];
        if id != 0 {
            encoding::int64::encode(2, &id, &mut free);
        }
        if fragment {
            encoding::bool::encode(7, &true, &mut free);
        }
        let fields_len = 16 - free.len();
        Self {
            head,
            fields,
            fields_len,
            fragment,
            events,
        }
    }

    /// The same response for watch `id` (events are shared, not copied).
    pub(super) fn for_watch(&self, id: i64) -> Self {
        Self::new(self.head.clone(), id, self.fragment, self.events.clone())
    }
}

impl From<&PbWatchResponse> for EncodedWatchResponse {
    fn from(response: &PbWatchResponse) -> Self {
        Self {
            head: Bytes::from(response.encode_to_vec()),
            ..Default::default()
        }
    }
}

impl Message for EncodedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        buf.put_slice(&self.fields[..self.fields_len]);
        for events in &self.events {
            buf.put_slice(events);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Never decoded: the server only sends these.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.head.len() + self.fields_len + self.events.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// `WatchResponse.header` for `header`, encoded once for all of one dispatch's responses.
pub(super) fn encode_header(header: Option<PbResponseHeader>) -> Bytes {
    let mut buf = Vec::new();
    if let Some(header) = header {
        encoding::message::encode(1, &header, &mut buf);
    }
    Bytes::from(buf)
}

/// Events of one or more batches gathered into one watcher's responses.
struct Pending<'a> {
    head: &'a Bytes,
    id: i64,
    /// (batch, byte range) runs; neighbouring events of one batch share a run.
    runs: SmallVec<[(usize, std::ops::Range<usize>); 2]>,
    size: usize,
    revisions: usize,
}

impl<'a> Pending<'a> {
    fn push(&mut self, batch: usize, span: std::ops::Range<usize>) {
        self.size += span.len();
        if let Some((last, run)) = self.runs.last_mut() {
            if *last == batch && run.end == span.start {
                run.end = span.end;
                return;
            }
        }
        self.runs.push((batch, span));
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The response of what was gathered, which is then cleared.
    fn take(
        &mut self,
        batches: &[Arc<ChangeBatch>],
        prev_kv: bool,
        fragment: bool,
    ) -> EncodedWatchResponse {
        let events = self
            .runs
            .drain(..)
            .map(|(batch, span)| batches[batch].encoded(prev_kv).slice(span))
            .collect();
        self.size = 0;
        self.revisions = 0;
        EncodedWatchResponse::new(self.head.clone(), self.id, fragment, events)
    }
}

/// The responses that carry to watcher `id` the events of `batches` it wants after revision
/// `after`: whole revisions (so every response is atomic), each response at most `limit`
/// bytes of events and 1,000 revisions unless one revision alone is larger; such a revision
/// is fragmented when the watcher allows it.
pub(super) fn for_watcher(
    watcher: &Watcher,
    id: i64,
    batches: &[Arc<ChangeBatch>],
    after: i64,
    head: &Bytes,
    limit: usize,
) -> Vec<EncodedWatchResponse> {
    let mut out = Vec::new();
    let mut pending = Pending {
        head,
        id,
        runs: SmallVec::new(),
        size: 0,
        revisions: 0,
    };
    let mut wanted: SmallVec<[usize; 8]> = SmallVec::new();
    for (b, batch) in batches.iter().enumerate() {
        let mut i = 0;
        while i < batch.len() {
            let rev = batch[i].kv.mod_revision;
            let mut end = i;
            wanted.clear();
            while end < batch.len() && batch[end].kv.mod_revision == rev {
                if rev > after && watcher.wants(&batch[end]) {
                    wanted.push(end);
                }
                end += 1;
            }
            i = end;
            if wanted.is_empty() {
                continue;
            }
            let encoded = batch.encoded(watcher.prev_kv);
            let size: usize = wanted.iter().map(|&k| encoded.span(k).len()).sum();
            let full =
                pending.size + size > limit || pending.revisions == MAX_REVISIONS_PER_RESPONSE;
            if !pending.is_empty() && full {
                out.push(pending.take(batches, watcher.prev_kv, false));
            }
            if size > limit && watcher.fragment {
                // One revision too large for a response, split as etcd does: every part but
                // the last has `fragment` set, and the client joins them.
                for &k in &wanted {
                    let span = encoded.span(k);
                    if !pending.is_empty() && pending.size + span.len() > limit {
                        out.push(pending.take(batches, watcher.prev_kv, true));
                    }
                    pending.push(b, span);
                }
                out.push(pending.take(batches, watcher.prev_kv, false));
                continue;
            }
            for &k in &wanted {
                pending.push(b, encoded.span(k));
            }
            pending.revisions += 1;
        }
    }
    if !pending.is_empty() {
        out.push(pending.take(batches, watcher.prev_kv, false));
    }
    out
}

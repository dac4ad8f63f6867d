//! Changes the writer publishes after each commit, for watchers.

use std::ops::Deref;
use std::sync::OnceLock;

use etcd_client::proto::PbKeyValue;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{self, WireType};

/// `WatchResponse.events`.
const RESPONSE_EVENTS_FIELD: u32 = 11;
/// `mvccpb.Event.type` of a delete (a put is 0, which proto3 leaves out).
const EVENT_DELETE: i32 = 1;

/// One change of one key: a put, or a delete when `kv.version == 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The key as written (a tombstone for a delete: key and mod_revision only).
    pub kv: PbKeyValue,
    /// The key's value before the change, if it existed.
    pub prev: Option<PbKeyValue>,
}

impl Event {
    /// Whether the change deleted the key.
    pub fn is_delete(&self) -> bool {
        self.kv.version == 0
    }

    /// The length of this event as an `mvccpb.Event` message.
    fn message_len(&self, with_prev: bool) -> usize {
        let kind = if self.is_delete() {
            encoding::int32::encoded_len(1, &EVENT_DELETE)
        } else {
            0
        };
        let prev = match (&self.prev, with_prev) {
            (Some(prev), true) => encoding::message::encoded_len(3, prev),
            _ => 0,
        };
        kind + encoding::message::encoded_len(2, &self.kv) + prev
    }

    /// Appends this event as one `WatchResponse.events` field, byte for byte what prost
    /// writes for the same `mvccpb.Event`, without copying the key or value first.
    fn encode_response_field(&self, with_prev: bool, buf: &mut impl BufMut) {
        encoding::encode_key(RESPONSE_EVENTS_FIELD, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.message_len(with_prev) as u64, buf);
        if self.is_delete() {
            encoding::int32::encode(1, &EVENT_DELETE, buf);
        }
        encoding::message::encode(2, &self.kv, buf);
        if let (Some(prev), true) = (&self.prev, with_prev) {
            encoding::message::encode(3, prev, buf);
        }
    }
}

/// The events of one commit (whole revisions, in order), as the change feed hands them to
/// every subscriber. Their wire form is made once, by the first watch stream that needs it,
/// and shared by every other stream and watcher.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    events: Vec<Event>,
    /// Whether each event's `prev` was read (the writer reads them only while a watcher
    /// asks for previous values).
    prevs: bool,
    /// Without and with each event's previous value.
    encoded: [OnceLock<EncodedEvents>; 2],
}

impl ChangeBatch {
    /// A batch of `events`, in revision order, whose `prev` fields are filled in.
    pub fn new(events: Vec<Event>) -> Self {
        Self::with_prevs(events, true)
    }

    /// A batch of `events` whose `prev` fields are filled in only if `prevs`.
    pub fn with_prevs(events: Vec<Event>, prevs: bool) -> Self {
        Self {
            events,
            prevs,
            encoded: Default::default(),
        }
    }

    /// Whether the events' previous values were read: a watcher asking for them must read
    /// them from history otherwise.
    pub fn has_prevs(&self) -> bool {
        self.prevs
    }

    /// The events as `WatchResponse.events` fields, with or without previous values.
    pub fn encoded(&self, with_prev: bool) -> &EncodedEvents {
        self.encoded[usize::from(with_prev)]
            .get_or_init(|| EncodedEvents::new(&self.events, with_prev))
    }
}

impl Deref for ChangeBatch {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.events
    }
}

/// A batch's events as consecutive `WatchResponse.events` fields; any run of them is a
/// valid piece of a response.
#[derive(Debug)]
pub struct EncodedEvents {
    bytes: Bytes,
    /// Where each event's field ends in `bytes`.
    ends: Vec<usize>,
}

impl EncodedEvents {
    fn new(events: &[Event], with_prev: bool) -> Self {
        let total: usize = events
            .iter()
            .map(|e| {
                let len = e.message_len(with_prev);
                1 + encoding::encoded_len_varint(len as u64) + len
            })
            .sum();
        let mut bytes = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(events.len());
        for event in events {
            event.encode_response_field(with_prev, &mut bytes);
            ends.push(bytes.len());
        }
        Self {
            bytes: Bytes::from(bytes),
            ends,
        }
    }

    /// The byte range of event `index`.
    pub fn span(&self, index: usize) -> std::ops::Range<usize> {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        start..self.ends[index]
    }

    /// The bytes of `range` (shared, not copied).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Bytes {
        self.bytes.slice(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{PbEvent, PbWatchResponse};
    use prost::Message;

    fn kv(key: &str, value: &str, rev: i64, version: i64) -> PbKeyValue {
        PbKeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: 2,
            mod_revision: rev,
            version,
            lease: 7,
        }
    }

    #[test]
    fn encoded_events_are_what_prost_writes_for_the_same_response() {
        let events = vec![
            Event {
                kv: kv("a", "1", 5, 1),
                prev: None,
            },
            Event {
                kv: kv("b", &"x".repeat(300), 5, 3),
                prev: Some(kv("b", "old", 4, 2)),
            },
            Event {
                kv: PbKeyValue {
                    key: b"c".to_vec(),
                    mod_revision: 6,
                    ..Default::default()
                },
                prev: Some(kv("c", "gone", 3, 1)),
            },
            Event {
                kv: PbKeyValue::default(),
                prev: None,
            },
        ];
        let batch = ChangeBatch::new(events.clone());
        for with_prev in [false, true] {
            let expected = PbWatchResponse {
                events: events
                    .iter()
                    .map(|e| PbEvent {
                        r#type: if e.is_delete() { EVENT_DELETE } else { 0 },
                        kv: Some(e.kv.clone()),
                        prev_kv: e.prev.clone().filter(|_| with_prev),
                    })
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec();
            let encoded = batch.encoded(with_prev);
            assert_eq!(encoded.slice(0..encoded.bytes.len()), expected);
            let second = encoded.span(1);
            let alone = PbWatchResponse::decode(encoded.slice(second)).unwrap();
            assert_eq!(alone.events.len(), 1);
            assert_eq!(alone.events[0].kv.as_ref().unwrap().key, b"b");
            assert_eq!(alone.events[0].prev_kv.is_some(), with_prev);
        }
    }
}

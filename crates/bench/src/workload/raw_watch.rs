//! A watch stream read without decoding every field of every event: the receiver of the
//! `watch` benchmark sees two million events a second, and etcd-client's full decode (an
//! allocation per key and value) made the load generator, not the server, the limit. Both
//! servers are read the same way; requests are encoded with etcd-client's own messages.

use bytes::{Buf, Bytes};
use etcd_client::proto::PbWatchRequest;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::Status;

const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

/// One open watch stream.
pub(crate) struct RawWatchStream {
    requests: mpsc::Sender<PbWatchRequest>,
    responses: tonic::Streaming<RawWatchResponse>,
}

impl RawWatchStream {
    /// Opens a stream on `channel` with a first watch of `prefix`, sending `token` (an auth
    /// token) if given.
    pub(crate) async fn open(
        channel: etcd_client::Channel,
        token: Option<&str>,
        prefix: &str,
    ) -> Result<Self, Status> {
        let (requests, rx) = mpsc::channel(16);
        // Queued before the call: etcd (grpc-go) sends a stream's response headers with its
        // first response, and the call returns only once they have arrived.
        requests
            .send(prefix_watch(prefix))
            .await
            .map_err(|_| Status::internal("watch requests closed"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = MetadataValue::try_from(token)
                .map_err(|e| Status::invalid_argument(format!("auth token: {e}")))?;
            request.metadata_mut().insert("token", value);
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("watch stream: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(WATCH_PATH);
        let responses = grpc.streaming(request, path, RawCodec).await?.into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    /// Asks for a watch of every key under `prefix`.
    pub(crate) async fn watch_prefix(&self, prefix: &str) -> Result<(), Status> {
        self.requests
            .send(prefix_watch(prefix))
            .await
            .map_err(|_| Status::unavailable("watch stream closed"))
    }

    /// The next response, `None` once the server ends the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<RawWatchResponse>, Status> {
        self.responses.message().await
    }
}

/// A request for a watch of every key under `prefix`.
fn prefix_watch(prefix: &str) -> PbWatchRequest {
    PbWatchRequest::from(
        etcd_client::WatchOptions::new()
            .with_key(prefix)
            .with_prefix(),
    )
}

/// A `WatchResponse` as received.
pub(crate) struct RawWatchResponse(Bytes);

/// `WatchResponse` fields read here.
const RESPONSE_CREATED: u32 = 3;
const RESPONSE_CANCELED: u32 = 4;
const RESPONSE_EVENTS: u32 = 11;
/// `mvccpb.Event` fields.
const EVENT_TYPE: u32 = 1;
const EVENT_KV: u32 = 2;
/// `mvccpb.KeyValue.value`.
const KV_VALUE: u32 = 5;
/// `mvccpb.Event.EventType.DELETE`.
const DELETE: u64 = 1;

impl RawWatchResponse {
    /// Whether the response confirms a watch's creation.
    pub(crate) fn created(&self) -> Result<bool, Status> {
        self.flag(RESPONSE_CREATED)
    }

    /// Whether the server cancelled the watch.
    pub(crate) fn canceled(&self) -> Result<bool, Status> {
        self.flag(RESPONSE_CANCELED)
    }

    /// The boolean field `wanted` (false when absent, as proto3 leaves it out).
    fn flag(&self, wanted: u32) -> Result<bool, Status> {
        let mut on = false;
        fields(&self.0, |field, value| {
            if let (true, Field::Varint(v)) = (field == wanted, value) {
                on = v != 0;
            }
            Ok(())
        })?;
        Ok(on)
    }

    /// Calls `put` with the value of every put event, in order.
    pub(crate) fn for_each_put(&self, mut put: impl FnMut(&[u8])) -> Result<(), Status> {
        fields(&self.0, |field, value| {
            let (RESPONSE_EVENTS, Field::Bytes(event)) = (field, value) else {
                return Ok(());
            };
            let mut kind = 0;
            let mut kv: &[u8] = &[];
            fields(event, |field, value| {
                match (field, value) {
                    (EVENT_TYPE, Field::Varint(v)) => kind = v,
                    (EVENT_KV, Field::Bytes(b)) => kv = b,
                    _ => {}
                }
                Ok(())
            })?;
            if kind != DELETE {
                let mut stored: &[u8] = &[];
                fields(kv, |field, value| {
                    if let (KV_VALUE, Field::Bytes(b)) = (field, value) {
                        stored = b;
                    }
                    Ok(())
                })?;
                put(stored);
            }
            Ok(())
        })
    }
}

/// One field's value: a varint, or the bytes of a length-delimited field.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Calls `each` with every field of the protobuf message `bytes`.
fn fields<'a>(
    mut bytes: &'a [u8],
    mut each: impl FnMut(u32, Field<'a>) -> Result<(), Status>,
) -> Result<(), Status> {
    let malformed = |e: prost::DecodeError| Status::internal(format!("watch response: {e}"));
    while bytes.has_remaining() {
        let (field, wire) = decode_key(&mut bytes).map_err(malformed)?;
        let value = match wire {
            WireType::Varint => Field::Varint(decode_varint(&mut bytes).map_err(malformed)?),
            WireType::LengthDelimited => {
                let len = decode_varint(&mut bytes).map_err(malformed)? as usize;
                if len > bytes.len() {
                    return Err(Status::internal("watch response: a field overruns it"));
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                Field::Bytes(value)
            }
            WireType::SixtyFourBit if bytes.len() >= 8 => {
                bytes.advance(8);
                Field::Other
            }
            WireType::ThirtyTwoBit if bytes.len() >= 4 => {
                bytes.advance(4);
                Field::Other
            }
            other => {
                return Err(Status::internal(format!(
                    "watch response: unexpected wire type {other:?}"
                )))
            }
        };
        each(field, value)?;
    }
    Ok(())
}

/// Encodes requests with prost, hands responses over as bytes.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = PbWatchRequest;
    type Decode = RawWatchResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = PbWatchRequest;
    type Error = Status;

    fn encode(&mut self, item: PbWatchRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a watch request: {e}")))
    }
}

impl Decoder for RawCodec {
    type Item = RawWatchResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RawWatchResponse>, Status> {
        Ok(Some(RawWatchResponse(src.copy_to_bytes(src.remaining()))))
    }
}

#[cfg(test)]
mod tests {
    use etcd_client::proto::PbKeyValue;
    use prost::encoding::{encode_key, encode_varint, message};

    use super::*;

    /// An `mvccpb.Event` of `kind` for `key` = `value`.
    fn event(kind: u64, key: &str, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if kind != 0 {
            encode_key(EVENT_TYPE, WireType::Varint, &mut out);
            encode_varint(kind, &mut out);
        }
        let kv = PbKeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision: 7,
            create_revision: 3,
            version: 2,
            ..Default::default()
        };
        message::encode(EVENT_KV, &kv, &mut out);
        out
    }

    fn response(created: bool, canceled: bool, events: &[Vec<u8>]) -> RawWatchResponse {
        let mut out = Vec::new();
        // A header and a watch id first, as servers send them.
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(2, &mut out);
        out.extend([0x18, 0x05]);
        encode_key(2, WireType::Varint, &mut out);
        encode_varint(42, &mut out);
        for (field, on) in [(RESPONSE_CREATED, created), (RESPONSE_CANCELED, canceled)] {
            if on {
                encode_key(field, WireType::Varint, &mut out);
                encode_varint(1, &mut out);
            }
        }
        for e in events {
            encode_key(RESPONSE_EVENTS, WireType::LengthDelimited, &mut out);
            encode_varint(e.len() as u64, &mut out);
            out.extend_from_slice(e);
        }
        RawWatchResponse(Bytes::from(out))
    }

    #[test]
    fn put_values_are_read_in_order_and_deletes_skipped() -> Result<(), Status> {
        let r = response(
            false,
            false,
            &[
                event(0, "w/a", "one"),
                event(DELETE, "w/b", ""),
                event(0, "w/c", "three"),
            ],
        );
        let mut seen = Vec::new();
        r.for_each_put(|v| seen.push(String::from_utf8_lossy(v).into_owned()))?;
        assert_eq!(seen, ["one", "three"]);
        assert!(!r.created()? && !r.canceled()?);
        Ok(())
    }

    #[test]
    fn creation_and_cancellation_are_read() -> Result<(), Status> {
        let created = response(true, false, &[]);
        assert!(created.created()? && !created.canceled()?);
        let refused = response(true, true, &[]);
        assert!(refused.created()? && refused.canceled()?);
        Ok(())
    }

    #[test]
    fn a_truncated_response_is_an_error_not_a_panic() {
        let whole = response(false, false, &[event(0, "w/a", "one")]).0;
        for cut in 1..whole.len() {
            let part = RawWatchResponse(whole.slice(..cut));
            let _ = part.for_each_put(|_| {});
        }
        let cut = RawWatchResponse(whole.slice(..whole.len() - 2));
        assert!(cut.for_each_put(|_| {}).is_err());
    }
}

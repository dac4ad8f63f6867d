//! The KV service's unary calls (Range, Put, DeleteRange, Txn) framed and unframed here, in
//! front of tonic's router.
//!
//! tonic serves a unary call through its generic machinery: the router, a streaming decoder
//! for the one request message, and a streaming encoder for the one answer. In a rollout
//! every agent's status write takes that path, and the profile of a thousand agents had
//! about 4 % of the machine's CPU in it (docs/BENCHMARKS.md, issue 22). Here a call reads its
//! one length-prefixed message, decodes it with prost, runs the same [`KvService`] handler
//! tonic would, and answers with the message and `grpc-status: 0` as trailers, or a
//! trailers-only refusal. Refusals of bad framing carry tonic's codes and words, so a client
//! sees no difference. Anything else (another method, a compressed or HTTP/1.1 call) goes to
//! tonic as before.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use etcd_client::proto::PbKvService;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

use super::kv::KvService;

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The calls answered here.
#[derive(Clone, Copy)]
enum Call {
    Range,
    Put,
    DeleteRange,
    Txn,
}

impl Call {
    fn of(path: &str) -> Option<Self> {
        match path.strip_prefix("/etcdserverpb.KV/")? {
            "Range" => Some(Self::Range),
            "Put" => Some(Self::Put),
            "DeleteRange" => Some(Self::DeleteRange),
            "Txn" => Some(Self::Txn),
            _ => None,
        }
    }
}

/// `inner` (tonic's router) with the KV service's unary calls answered directly.
#[derive(Clone)]
pub(super) struct UnaryKv<S> {
    inner: S,
    kv: Arc<KvService>,
    /// The largest request message taken, as tonic's `max_decoding_message_size`.
    max_message: usize,
}

impl<S> UnaryKv<S> {
    pub(super) fn new(inner: S, kv: KvService, max_message: usize) -> Self {
        Self {
            inner,
            kv: Arc::new(kv),
            max_message,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for UnaryKv<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = Call::of(request.uri().path());
        // A compressed call gets tonic's own answer (this server takes no compression).
        let plain = request.version() == http::Version::HTTP_2
            && request
                .headers()
                .get("grpc-encoding")
                .is_none_or(|e| e == "identity");
        match call {
            Some(call) if plain => {
                let (kv, max_message) = (self.kv.clone(), self.max_message);
                futures::future::Either::Right(Box::pin(async move {
                    Ok(answer(&kv, call, request, max_message).await)
                }))
            }
            _ => futures::future::Either::Left(self.inner.call(request)),
        }
    }
}

async fn answer(
    kv: &KvService,
    call: Call,
    request: http::Request<Body>,
    max_message: usize,
) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let answered = match read_message(body, max_message).await {
        Ok(message) => match call {
            Call::Range => handle(parts, message, |r| kv.range(r)).await,
            Call::Put => handle(parts, message, |r| kv.put(r)).await,
            Call::DeleteRange => handle(parts, message, |r| kv.delete_range(r)).await,
            Call::Txn => handle(parts, message, |r| kv.txn(r)).await,
        },
        Err(refused) => Err(refused),
    };
    match answered {
        Ok((headers, message)) => {
            let mut response = http::Response::new(Body::new(OneMessage {
                message: Some(message),
                trailers: Some(ok_trailers()),
            }));
            *response.headers_mut() = headers;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// Decodes the request, runs `handler`, and encodes its answer with gRPC's prefix; the
/// answer's metadata become the response's headers.
async fn handle<Req, Resp, F, Fut>(
    parts: http::request::Parts,
    message: Bytes,
    handler: F,
) -> Result<(HeaderMap, Bytes), Status>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let decoded = Req::decode(message).map_err(|e| Status::internal(e.to_string()))?;
    let request = tonic::Request::from_http(http::Request::from_parts(parts, decoded));
    let (metadata, answer, _) = handler(request).await?.into_parts();
    let len = answer.encoded_len();
    let framed_len = u32::try_from(len)
        .map_err(|_| Status::resource_exhausted("the answer is larger than gRPC can frame"))?;
    let mut framed = BytesMut::with_capacity(PREFIX + len);
    framed.put_u8(0);
    framed.put_u32(framed_len);
    answer
        .encode(&mut framed)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok((metadata.into_headers(), framed.freeze()))
}

/// The request's one message, without its prefix: refused as tonic refuses it when the
/// framing is wrong, too large, or missing. What follows the message is read and dropped
/// (tonic reads the body to its end too).
async fn read_message(mut body: Body, max_message: usize) -> Result<Bytes, Status> {
    let mut buffered = BytesMut::new();
    let mut message: Option<Bytes> = None;
    let mut wanted: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            // A client that gave up: as tonic, the end of the request.
            Err(status) if status.code() == tonic::Code::Cancelled => break,
            Err(status) => return Err(status),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if message.is_some() {
            continue;
        }
        if buffered.is_empty() && data.len() >= PREFIX {
            // The usual case, one frame holding the whole message: no copy.
            let len = prefix_len(&data[..PREFIX], max_message)?;
            if data.len() >= PREFIX + len {
                message = Some(data.slice(PREFIX..PREFIX + len));
                continue;
            }
        }
        buffered.extend_from_slice(&data);
        if wanted.is_none() && buffered.len() >= PREFIX {
            wanted = Some(prefix_len(&buffered[..PREFIX], max_message)?);
        }
        if let Some(len) = wanted {
            if buffered.len() >= PREFIX + len {
                buffered.advance(PREFIX);
                message = Some(buffered.split_to(len).freeze());
            }
        }
    }
    match message {
        Some(message) => Ok(message),
        None if buffered.is_empty() => Err(Status::internal("Missing request message.")),
        None => Err(Status::internal("Unexpected EOF decoding stream.")),
    }
}

/// The message length a prefix announces, if this server takes it.
fn prefix_len(prefix: &[u8], max_message: usize) -> Result<usize, Status> {
    let mut prefix = prefix;
    match prefix.get_u8() {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ))
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1), while sending request"
            )))
        }
    }
    let len = prefix.get_u32() as usize;
    if len > max_message {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max_message} bytes"
        )));
    }
    Ok(len)
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// A response body of one data frame, then trailers.
struct OneMessage {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let next = match self.message.take() {
            Some(message) => Some(Frame::data(message)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(next.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

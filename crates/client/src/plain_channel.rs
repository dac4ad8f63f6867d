//! One endpoint without TLS: gRPC straight over one HTTP/2 connection (`h2`), the channel of
//! every single-endpoint client (an agent, a controller, `ferry up`'s own components).
//!
//! tonic's channel sends through hyper, whose HTTP/2 client starts two tasks for every
//! request (one that writes the body once the stream is open, one that waits for the
//! answer), writes the headers and the body in two system calls, and hands each request to
//! a `Buffer` task first. Here a call queues its headers and body together (h2 holds a body
//! until its stream opens), waits for the answer in the caller's own task, and starts a task
//! only for a body that goes on streaming (a watch, a lease's keep-alives). The profile of a
//! thousand agents had 15 % of the machine's CPU in hyper's client (docs/BENCHMARKS.md,
//! issue 22). What tonic's endpoint does for the other channels is done here too: connect
//! within the dial timeout and again after the connection is lost, `TCP_NODELAY`, the
//! request timeout, and keep-alive pings while a request or stream is open.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's HTTP/2 client windows (what tonic's channel uses): a watch's burst of events is
/// not held back by flow control.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// How the channel reaches its endpoint.
#[derive(Debug, Clone)]
pub(crate) struct PlainEndpoint {
    /// `host:port`.
    pub address: String,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
}

impl PlainEndpoint {
    /// `address` (`host:port`) with `config`'s timeouts and keep-alive.
    pub(crate) fn new(address: String, config: &crate::ConnectConfig) -> Self {
        Self {
            address,
            dial_timeout: config.dial_timeout,
            request_timeout: config.request_timeout,
            keepalive_time: config.keepalive_time,
            keepalive_timeout: config.keepalive_timeout,
        }
    }
}

/// The channel (cheap to clone: clones share the connection).
#[derive(Clone)]
pub(crate) struct PlainChannel {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: PlainEndpoint,
    authority: http::uri::Authority,
    live: parking_lot::Mutex<Option<Connection>>,
    /// Held while connecting, so that callers waiting for a connection share one.
    connecting: tokio::sync::Mutex<()>,
}

/// A connection and what its driver task reports.
#[derive(Clone)]
struct Connection {
    send: h2::client::SendRequest<Bytes>,
    /// Set when the driver ended (closed by either side, or a ping went unanswered).
    closed: Arc<AtomicBool>,
    /// Requests and streams in progress: pings are sent only while there are some.
    open: Arc<AtomicUsize>,
    /// Calls waiting for their answer's headers (see [`crate::batching`]).
    waiting: Arc<AtomicUsize>,
}

impl PlainChannel {
    /// A channel that connects on first use.
    pub(crate) fn new(endpoint: PlainEndpoint) -> Result<Self, http::uri::InvalidUri> {
        let authority = endpoint.address.parse()?;
        Ok(Self {
            shared: Arc::new(Shared {
                endpoint,
                authority,
                live: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// As etcd-client takes a channel of its own making.
    pub(crate) fn into_etcd_channel(self) -> etcd_client::Channel {
        etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(self))
    }
}

impl Shared {
    fn current(&self) -> Option<Connection> {
        self.live
            .lock()
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<Connection, tonic::Status> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let c = self.connect().await?;
        *self.live.lock() = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self) -> Result<Connection, tonic::Status> {
        let e = &self.endpoint;
        let failed = |reason: String| {
            tonic::Status::unavailable(format!("connect error: {}: {reason}", e.address))
        };
        let tcp = tokio::time::timeout(
            e.dial_timeout,
            tokio::net::TcpStream::connect(e.address.as_str()),
        )
        .await
        .map_err(|_| failed(format!("no connection within {:?}", e.dial_timeout)))?
        .map_err(|err| failed(err.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|err| failed(err.to_string()))?;
        let (send, mut driver) = tokio::time::timeout(
            e.dial_timeout,
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, Bytes>(tcp),
        )
        .await
        .map_err(|_| failed(format!("no HTTP/2 handshake within {:?}", e.dial_timeout)))?
        .map_err(|err| failed(err.to_string()))?;
        let closed = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let pings = driver.ping_pong();
        let keepalive = keep_alive(pings, open.clone(), e.keepalive_time, e.keepalive_timeout);
        let (address, ended) = (e.address.clone(), closed.clone());
        let calls = waiting.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = crate::batching::drive(&mut driver, &calls) => {
                    if let Err(err) = result {
                        tracing::debug!(%address, error = %err, "connection closed");
                    }
                }
                () = keepalive => {
                    tracing::warn!(%address, "no answer to a keep-alive ping; closing the connection");
                }
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Connection {
            send,
            closed,
            open,
            waiting,
        })
    }
}

/// Returns when a ping sent while requests are open goes unanswered for `timeout`.
async fn keep_alive(
    pings: Option<h2::PingPong>,
    open: Arc<AtomicUsize>,
    every: Duration,
    timeout: Duration,
) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        if open.load(Ordering::Acquire) == 0 {
            continue;
        }
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failing on its own is reported by its driver.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Counts one in its counter (requests and streams open, or calls waiting) for its lifetime.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The status a failed exchange reports: a lost connection is `Unavailable` (as tonic
/// reports it), the rest as tonic maps HTTP/2 errors.
fn status(err: h2::Error) -> BoxError {
    if err.is_io() || err.is_go_away() {
        Box::new(tonic::Status::unavailable(format!(
            "connection lost: {err}"
        )))
    } else {
        Box::new(err)
    }
}

impl tower::Service<http::Request<Body>> for PlainChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let connection = shared.connection().await?;
            let guard = OpenGuard::new(&connection.open);
            let waiting = OpenGuard::new(&connection.waiting);
            let lost = |err: h2::Error| {
                connection.closed.store(true, Ordering::Release);
                status(err)
            };
            let mut send = connection.send.clone().ready().await.map_err(lost)?;
            let (mut parts, body) = request.into_parts();
            let mut uri = http::uri::Parts::from(parts.uri);
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(shared.authority.clone());
            parts.uri = http::Uri::from_parts(uri)?;
            let (response, mut stream) = send
                .send_request(http::Request::from_parts(parts, ()), false)
                .map_err(status)?;
            let mut body = body;
            // What the body has ready now leaves with the headers (a unary call's message);
            // a body still streaming goes on from a task of its own.
            let ended =
                std::future::poll_fn(|cx| Poll::Ready(send_ready(&mut body, &mut stream, cx)))
                    .await?;
            if !ended {
                tokio::spawn(pipe(body, stream));
            }
            let timeout = shared.endpoint.request_timeout;
            let response = tokio::time::timeout(timeout, response)
                .await
                .map_err(|_| {
                    tonic::Status::cancelled(format!("Timeout expired after {timeout:?}"))
                })?
                .map_err(status)?;
            drop(waiting);
            let (parts, recv) = response.into_parts();
            let body = ResponseBody {
                recv,
                data_done: false,
                _open: guard,
            };
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// Sends the rest of a streaming body, until it ends or the server resets the stream.
async fn pipe(mut body: Body, mut stream: h2::SendStream<Bytes>) {
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(reset) = stream.poll_reset(cx) {
            return Poll::Ready(reset.map(|_| ()).map_err(BoxError::from));
        }
        match send_ready(&mut body, &mut stream, cx) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    })
    .await;
    if let Err(err) = result {
        tracing::debug!(error = %err, "a request stream ended early");
        stream.send_reset(h2::Reason::CANCEL);
    }
}

/// Sends every frame `body` has ready; `Ok(true)` once there is nothing more to send: the
/// body ended, or the stream no longer takes data (a server may answer and close a call
/// before the request's end has reached it, as etcd does). An error of the body itself is
/// returned, and the caller resets the stream.
fn send_ready(
    body: &mut Body,
    stream: &mut h2::SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Result<bool, BoxError> {
    loop {
        let frame = match http_body::Body::poll_frame(Pin::new(&mut *body), cx) {
            Poll::Pending => return Ok(false),
            Poll::Ready(None) => {
                send_failed(stream.send_data(Bytes::new(), true));
                return Ok(true);
            }
            Poll::Ready(Some(frame)) => frame.map_err(BoxError::from)?,
        };
        let end = http_body::Body::is_end_stream(body);
        let written = match frame.into_data() {
            Ok(data) => stream.send_data(data, end),
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    send_failed(stream.send_trailers(trailers));
                    return Ok(true);
                }
                Err(_) => Ok(()),
            },
        };
        if end || send_failed(written) {
            return Ok(true);
        }
    }
}

/// Whether sending on the stream failed, which ends it (the answer, or the
/// connection's error, reaches the caller through the response).
fn send_failed(written: Result<(), h2::Error>) -> bool {
    match written {
        Ok(()) => false,
        Err(err) => {
            tracing::debug!(error = %err, "the rest of a request was not sent");
            true
        }
    }
}

/// A response's body: its data, then its trailers (where gRPC puts the status).
struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
    _open: OpenGuard,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // Read: the server may send as much again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(status(err)))),
                Poll::Ready(None) => self.data_done = true,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(trailers))) => {
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(status(err)))),
        }
    }
}

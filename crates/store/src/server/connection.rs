//! Serving client connections (plain TCP or TLS), with the responses a batch answers written
//! together.
//!
//! hyper runs each HTTP/2 stream's handler as a task, and a connection's task writes what its
//! streams have ready. tokio runs a task woken by the task it is running next (its LIFO
//! slot), so when a batch of writes was answered, each handler's response woke its
//! connection, which wrote and flushed that one response: about one `writev` (and one TCP
//! segment, paid on both sides of loopback) per response, although a batch answers several
//! requests of each connection at once (docs/BENCHMARKS.md, issue 22).
//!
//! Here a connection with more than one request in progress, once woken, first yields to
//! every task already runnable (`ferry_client::batching::drive`), so the handlers answered by
//! the same batch have all queued their responses when it writes. A connection with one
//! request in progress at most (a lone client) is never held back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::grpc_metrics::GrpcMetrics;
use futures::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection serves: the gRPC routes and etcd's HTTP endpoints, counted.
pub(super) type ClientService = GrpcMetrics<super::unary_kv::UnaryKv<tonic::service::Routes>>;

/// Accepts clients on `listener` (over TLS with `tls`) until `stopped`, then waits for their
/// connections to close (each is asked to, gracefully). Dropping this future closes every
/// connection at once.
pub(super) async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: ClientService,
    keepalive: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let each = stopped.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small responses (a put's header, a watch event) must leave at once: with
                    // Nagle's algorithm they wait for the client's delayed ACK, adding ~40 ms
                    // (etcd's Go server sets TCP_NODELAY too).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "setting TCP_NODELAY on a client connection");
                    }
                    let (service, stopped) = (service.clone(), each.clone());
                    connections.spawn(match tls.clone() {
                        None => {
                            let info = stream.connect_info();
                            serve(stream, info, service, keepalive, stopped).boxed()
                        }
                        Some(acceptor) => {
                            serve_tls(stream, acceptor, service, keepalive, stopped).boxed()
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: try again shortly rather than spin.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = until_stopped(&mut stopped) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Completes the TLS handshake (on this connection's own task, so a slow or silent client
/// holds up no one), then serves it with its peer's certificates for authentication.
async fn serve_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    service: ClientService,
    keepalive: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let peer = stream.peer_addr().ok();
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    // A store that stops does not wait for a handshake to finish.
    let accepted = tokio::select! {
        accepted = handshake => accepted,
        () = until_stopped(&mut stopped) => return,
    };
    match accepted {
        Ok(Ok(tls)) => {
            let info = tls.connect_info();
            serve(tls, info, service, keepalive, stopped).await
        }
        Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake refused"),
        Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
    }
}

/// Serves `stream` until the client closes it, or gracefully once `stopped`; every request
/// carries `info` (the peer's address, and its certificates over TLS) as tonic's own server
/// would give it.
async fn serve<S, I>(
    stream: S,
    info: I,
    service: ClientService,
    keepalive: Duration,
    mut stopped: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: Clone + Send + Sync + 'static,
{
    let in_progress = Arc::new(AtomicUsize::new(0));
    let counted = Counted {
        service,
        info,
        in_progress: in_progress.clone(),
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(keepalive));
    builder.http1().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(counted));
    tokio::pin!(conn);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = ferry_client::batching::drive(&mut conn, &in_progress) => break result,
            () = until_stopped(&mut stopped), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended");
    }
}

/// The connection's service, counting its requests in progress (from arrival to the
/// response's headers) and giving each the connection's `info`.
#[derive(Clone)]
struct Counted<I> {
    service: ClientService,
    info: I,
    in_progress: Arc<AtomicUsize>,
}

impl<I: Clone + Send + Sync + 'static> tower::Service<http::Request<hyper::body::Incoming>>
    for Counted<I>
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.service, cx)
    }

    fn call(&mut self, mut request: http::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        let started = InProgress(self.in_progress.clone());
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()));
        let response = self.service.call(request.map(tonic::body::Body::new));
        Box::pin(async move {
            let _started = started;
            let Some(deadline) = deadline else {
                return response.await;
            };
            // The client's deadline, as etcd's gRPC server keeps it: the handler is dropped
            // (a lock waiter withdraws) and the client told why.
            match tokio::time::timeout(deadline, response).await {
                Ok(answered) => answered,
                Err(_) => Ok(deadline_passed().into_http()),
            }
        })
    }
}

/// What etcd 3.4 answers a call whose deadline passed while it waited: its handlers return
/// the context's error unmapped ("let gRPC server convert" it), and the gRPC server it is
/// built with sends an unmapped error as UNKNOWN with the error's text.
fn deadline_passed() -> tonic::Status {
    tonic::Status::unknown("context deadline exceeded")
}

/// A `grpc-timeout` header's duration: up to eight digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). Anything else is ignored, as if no deadline had been sent.
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// One request in progress; dropped when its response's headers are ready (or it is
/// abandoned).
struct InProgress(Arc<AtomicUsize>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns once the store is stopping (or its stop signal is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_are_read_as_grpc_writes_them() {
        assert_eq!(grpc_timeout(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"5M"), Some(Duration::from_secs(300)));
        assert_eq!(
            grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"-1S",
            b"1.5S",
            b"10x",
            b"10",
        ] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

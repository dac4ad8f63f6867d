//! Retries on a cluster, as etcd's Go client does them: a read that failed because its member
//! was unavailable (killed, or mid-election: "leader changed", "no leader") is sent again,
//! to whichever member the balancer picks; any request that failed before it was sent (the
//! connection could not be made) is sent again; a write that may have reached a member is
//! never repeated. Streams (watch, keep-alive) are not retried here: their owners resume them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// Unary calls that only read: safe to send again whatever happened to the first attempt.
const READS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Auth/AuthStatus",
];

/// Unary calls that change something: sent again only when the first attempt never left.
const WRITES: &[&str] = &[
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
];

/// Delays between attempts: together longer than an etcd election with default timings.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(300),
    Duration::from_millis(600),
    Duration::from_millis(1000),
];

/// A channel that retries as described above.
#[derive(Clone)]
pub(crate) struct Retrying {
    inner: tonic::transport::Channel,
}

impl Retrying {
    pub(crate) fn new(inner: tonic::transport::Channel) -> Self {
        Self { inner }
    }
}

/// Whether an error from the channel means the request never reached a server.
fn never_sent(error: &tower::BoxError) -> bool {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let text = text.to_lowercase();
    text.contains("connect error") || text.contains("connection refused")
}

/// gRPC's UNAVAILABLE in a trailers-only answer: the member could not serve it.
fn unavailable(response: &Response) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

fn rebuild(parts: &http::request::Parts, body: &Bytes) -> Request {
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
        body.clone(),
    )));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

impl Service<Request> for Retrying {
    type Response = Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let path = request.uri().path().to_string();
        let read = READS.contains(&path.as_str());
        let write = WRITES.contains(&path.as_str());
        // The channel that was polled ready takes the first attempt; clones take the rest.
        let ready = self.inner.clone();
        let mut first = std::mem::replace(&mut self.inner, ready);
        if !read && !write {
            return Box::pin(async move { first.call(request).await.map_err(Into::into) });
        }
        let mut channel = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let mut attempt = first.call(rebuild(&parts, &body)).await.map_err(Into::into);
            for delay in BACKOFF {
                let again = match &attempt {
                    Ok(response) => read && unavailable(response),
                    Err(error) => read || never_sent(error),
                };
                if !again {
                    break;
                }
                tokio::time::sleep(delay).await;
                attempt = match channel.ready().await {
                    Ok(ready) => ready.call(rebuild(&parts, &body)).await.map_err(Into::into),
                    Err(e) => Err(e.into()),
                };
            }
            attempt
        })
    }
}

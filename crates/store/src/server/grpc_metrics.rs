//! `grpc_server_started_total` and `grpc_server_handled_total` (go-grpc-prometheus's names
//! and labels), counted by a tower layer around every gRPC service. A call is handled when
//! its response starts: a refusal then carries its code in the response headers; a stream's
//! later errors count as `OK`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::metrics::{GrpcCall, GrpcHandled, StoreMetrics};

/// Adds [`GrpcMetrics`] to a service.
#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer(pub Arc<StoreMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// Counts the calls to `inner`.
#[derive(Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<StoreMetrics>,
}

/// The streaming kind of an etcd RPC.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("v3electionpb.Election", "Observe")
        | ("etcdserverpb.KV", "RangeStream") => "server_stream",
        _ => "unary",
    }
}

/// Go's name of a gRPC status code.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let call = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|_| is_grpc)
            .map(|(service, method)| GrpcCall {
                grpc_type: grpc_type(service, method),
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
            });
        if let Some(call) = &call {
            self.metrics.grpc_started.get_or_create(call).inc();
        }
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(call) = call {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name);
                metrics
                    .grpc_handled
                    .get_or_create(&GrpcHandled {
                        grpc_type: call.grpc_type,
                        grpc_service: call.grpc_service,
                        grpc_method: call.grpc_method,
                        grpc_code: code,
                    })
                    .inc();
            }
            Ok(response)
        })
    }
}

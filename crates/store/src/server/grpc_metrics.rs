//! `grpc_server_started_total` and `grpc_server_handled_total` (go-grpc-prometheus's names
//! and labels), counted by a tower layer around every gRPC service. A call is handled when
//! its response starts: a refusal then carries its code in the response headers; a stream's
//! later errors count as `OK`.
//!
//! As go-grpc-prometheus does for etcd, every served method's counters exist from the start
//! (at zero, for every code), and a path that names no served method is not counted: a
//! client cannot add label values. The counters are looked up once, by path, so a call
//! costs no allocation and no lookup in the metric families.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;

use super::metrics::{GrpcCall, GrpcHandled, StoreMetrics};

/// Every RPC the store serves, by service.
const SERVED: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &[
            "Range",
            "RangeStream",
            "Put",
            "DeleteRange",
            "Txn",
            "Compact",
        ],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
];

/// gRPC's status codes by number, with Go's names.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The index in [`CODES`] of a `grpc-status` header's value (an unknown one is `Unknown`).
fn code_index(status: &str) -> usize {
    status
        .parse::<usize>()
        .ok()
        .filter(|i| *i < CODES.len())
        .unwrap_or(2)
}

/// One method's counters: started, and handled by code.
struct MethodCounters {
    started: Counter,
    handled: [Counter; CODES.len()],
}

/// The counters of every served method, by request path (`/etcdserverpb.KV/Put`).
pub(crate) struct GrpcCounters(HashMap<String, Arc<MethodCounters>>);

impl GrpcCounters {
    /// Creates every served method's counters in `metrics`' families.
    pub(crate) fn new(metrics: &StoreMetrics) -> Self {
        let mut by_path = HashMap::new();
        for (service, methods) in SERVED {
            for method in *methods {
                let grpc_type = grpc_type(service, method);
                let started = metrics
                    .grpc_started
                    .get_or_create(&GrpcCall {
                        grpc_type,
                        grpc_service: service.to_string(),
                        grpc_method: method.to_string(),
                    })
                    .clone();
                let handled = CODES.map(|code| {
                    metrics
                        .grpc_handled
                        .get_or_create(&GrpcHandled {
                            grpc_type,
                            grpc_service: service.to_string(),
                            grpc_method: method.to_string(),
                            grpc_code: code,
                        })
                        .clone()
                });
                by_path.insert(
                    format!("/{service}/{method}"),
                    Arc::new(MethodCounters { started, handled }),
                );
            }
        }
        Self(by_path)
    }
}

/// Adds [`GrpcMetrics`] to a service.
#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer(pub Arc<GrpcCounters>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            counters: self.0.clone(),
        }
    }
}

/// Counts the calls to `inner`.
#[derive(Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
    counters: Arc<GrpcCounters>,
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
        let counters = is_grpc
            .then(|| self.counters.0.get(request.uri().path()).cloned())
            .flatten();
        if let Some(c) = &counters {
            c.started.inc();
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(c) = counters {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or(0, code_index);
                c.handled[code].inc();
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_in_the_stores_own_protos_is_counted() {
        for proto in [
            include_str!("../../proto/auth.proto"),
            include_str!("../../proto/watch.proto"),
            include_str!("../../proto/v3lock.proto"),
            include_str!("../../proto/v3election.proto"),
        ] {
            for line in proto.lines() {
                let Some(rpc) = line.trim().strip_prefix("rpc ") else {
                    continue;
                };
                let name = rpc.split('(').next().unwrap_or_default().trim();
                assert!(
                    SERVED.iter().any(|(_, methods)| methods.contains(&name)),
                    "{name} is not in SERVED"
                );
            }
        }
    }

    #[test]
    fn codes_are_named_as_go_names_them() {
        assert_eq!(CODES[code_index("0")], "OK");
        assert_eq!(CODES[code_index("5")], "NotFound");
        assert_eq!(CODES[code_index("16")], "Unauthenticated");
        assert_eq!(CODES[code_index("17")], "Unknown");
        assert_eq!(CODES[code_index("x")], "Unknown");
    }
}

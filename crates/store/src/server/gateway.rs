//! etcd's JSON gateway (grpc-gateway's mapping) on the client port: `POST /v3/...` (and
//! `/v3beta/...`) with a request message as JSON, answered with the response message as
//! JSON, or `{"error","code","message"}` with the HTTP status of the gRPC code. The JSON is
//! read and written through descriptors of etcd's messages (`proto/gateway.proto` and the
//! Auth, Lock and Election protos): proto field names, 64-bit integers as strings, bytes as
//! base64, enums by name, zero values left out. Each call goes to the same service code as
//! gRPC, with the `Authorization` header as the token.

use std::future::Future;
use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use tonic::metadata::MetadataValue;

use super::Context;

/// The descriptors of every message the gateway reads or writes (built into the binary).
static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/gateway_descriptors.bin")).as_ref(),
    )
    .ok()
});

/// The HTTP status grpc-gateway answers for a gRPC code.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// etcd 3.5's unary error body.
fn error(status: &tonic::Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    json(http_status(status.code()), body.to_string())
}

/// The request message `name` read from a JSON body (empty: every field at its default),
/// as the service's own type.
fn decode<Req: prost::Message + Default>(name: &str, body: &[u8]) -> Result<Req, tonic::Status> {
    let descriptor = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(name))
        .ok_or_else(|| tonic::Status::internal(format!("no descriptor for {name}")))?;
    let text = std::str::from_utf8(body)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .trim();
    let message = if text.is_empty() || text == "null" {
        DynamicMessage::new(descriptor)
    } else {
        let mut de = serde_json::Deserializer::from_str(text);
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        DynamicMessage::deserialize_with_options(descriptor, &mut de, &options)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
    };
    Req::decode(prost::Message::encode_to_vec(&message).as_slice())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

/// A response message as etcd's gateway writes it.
fn encode<Resp: prost::Message>(name: &str, response: &Resp) -> Result<String, tonic::Status> {
    let descriptor = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(name))
        .ok_or_else(|| tonic::Status::internal(format!("no descriptor for {name}")))?;
    let message = DynamicMessage::decode(descriptor, response.encode_to_vec().as_slice())
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut ser, &options)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    String::from_utf8(out).map_err(|e| tonic::Status::internal(e.to_string()))
}

/// The gRPC request a gateway call becomes: the token from `Authorization` or
/// `Grpc-Metadata-Token`.
fn request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = headers
        .get("grpc-metadata-token")
        .or_else(|| headers.get(axum::http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| MetadataValue::try_from(v).ok());
    if let Some(token) = token {
        request.metadata_mut().insert("token", token);
    }
    request
}

/// One unary call: JSON in, the service, JSON out.
async fn unary<Req, Resp, F, Fut>(
    input: &str,
    output: &str,
    headers: HeaderMap,
    body: Bytes,
    call: F,
) -> Response
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let message = match decode::<Req>(input, &body) {
        Ok(m) => m,
        Err(status) => return error(&status),
    };
    match call(request(message, &headers)).await {
        Ok(response) => match encode(output, response.get_ref()) {
            Ok(text) => json(StatusCode::OK, text),
            Err(status) => error(&status),
        },
        Err(status) => error(&status),
    }
}

/// A streamed answer: each message as `{"result":…}` and a newline, flushed at once; a
/// failure ends it with `{"error":{…}}`.
fn streamed<S, M>(output: &'static str, mut messages: S) -> Response
where
    S: futures::Stream<Item = Result<M, tonic::Status>> + Unpin + Send + 'static,
    M: prost::Message + 'static,
{
    use futures::StreamExt;
    let chunks = async_stream_lines(move |tx| async move {
        while let Some(item) = messages.next().await {
            let line = match item.and_then(|m| encode(output, &m)) {
                Ok(text) => format!("{{\"result\":{text}}}\n"),
                Err(status) => {
                    let http = http_status(status.code());
                    let body = serde_json::json!({"error": {
                        "grpc_code": status.code() as i32,
                        "http_code": http.as_u16(),
                        "message": status.message(),
                        "http_status": http.canonical_reason().unwrap_or(""),
                    }});
                    let _ = tx.send(Ok(body.to_string())).await;
                    return;
                }
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

/// Lines produced by `produce` into a channel, as a body stream.
fn async_stream_lines<F, Fut>(
    produce: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<String, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<String, std::convert::Infallible>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The JSON objects of a client-streaming body (several may follow one another), each as
/// the request message `input`.
fn requests<Req: prost::Message + Default>(
    input: &str,
    body: &[u8],
) -> Result<Vec<Req>, tonic::Status> {
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        match value {
            Ok(value) => out.push(decode::<Req>(input, value.to_string().as_bytes())?),
            // Later objects that do not parse end the requests, as etcd's gateway does.
            Err(e) if out.is_empty() => return Err(tonic::Status::unknown(e.to_string())),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The streaming routes: Watch and LeaseKeepAlive (the body's objects are the client's
/// messages), Snapshot and Observe.
fn stream_routes(api: Router, ctx: &Context) -> Router {
    use crate::proto::v3electionpb::election_server::Election;
    use etcd_client::proto::{PbMaintenanceService, PbSnapshotRequest};
    let watch_ctx = ctx.clone();
    let keep_alive_ctx = ctx.clone();
    let snapshot_ctx = ctx.clone();
    let observe_ctx = ctx.clone();
    api.route(
        "/watch",
        post(move |headers: HeaderMap, body: Bytes| {
            let ctx = watch_ctx.clone();
            async move {
                let list = match requests::<etcd_client::proto::PbWatchRequest>(
                    "gateway.WatchRequest",
                    &body,
                ) {
                    Ok(list) => list,
                    Err(status) => return error(&status),
                };
                let caller = ctx.try_caller(&request((), &headers));
                // The watch runs on after the body ends, as etcd's does.
                let incoming = futures::StreamExt::chain(
                    futures::stream::iter(list.into_iter().map(Ok)),
                    futures::stream::pending(),
                );
                let responses = super::watch::open(ctx, caller, Box::pin(incoming));
                streamed("gateway.WatchResponse", responses)
            }
        }),
    )
    .route(
        "/lease/keepalive",
        post(move |headers: HeaderMap, body: Bytes| {
            let ctx = keep_alive_ctx.clone();
            async move {
                let list = match requests::<etcd_client::proto::PbLeaseKeepAliveRequest>(
                    "gateway.LeaseKeepAliveRequest",
                    &body,
                ) {
                    Ok(list) => list,
                    Err(status) => return error(&status),
                };
                let caller = match ctx.caller(&request((), &headers)) {
                    Ok(caller) => caller,
                    Err(status) => return error(&status),
                };
                let incoming = futures::stream::iter(list.into_iter().map(Ok));
                match super::lease::keep_alive(ctx, caller, incoming) {
                    Ok(responses) => streamed("gateway.LeaseKeepAliveResponse", responses),
                    Err(status) => error(&status),
                }
            }
        }),
    )
    .route(
        "/maintenance/snapshot",
        post(move |headers: HeaderMap, _body: Bytes| {
            let service = super::maintenance::MaintenanceService::new(snapshot_ctx.clone());
            async move {
                let call = request(PbSnapshotRequest {}, &headers);
                match PbMaintenanceService::snapshot(&service, call).await {
                    Ok(response) => streamed("gateway.SnapshotResponse", response.into_inner()),
                    Err(status) => error(&status),
                }
            }
        }),
    )
    .route(
        "/election/observe",
        post(move |headers: HeaderMap, body: Bytes| {
            let service = super::election::ElectionService::new(observe_ctx.clone());
            async move {
                let message = match decode::<crate::proto::v3electionpb::LeaderRequest>(
                    "v3electionpb.LeaderRequest",
                    &body,
                ) {
                    Ok(m) => m,
                    Err(status) => return error(&status),
                };
                match Election::observe(&service, request(message, &headers)).await {
                    Ok(response) => streamed("v3electionpb.LeaderResponse", response.into_inner()),
                    Err(status) => error(&status),
                }
            }
        }),
    )
}

/// A route for one unary method: `$service` is built from the context per call.
macro_rules! unary_route {
    ($router:expr, $ctx:expr, $path:expr, $service:path, $trait:path, $method:ident, $input:expr, $output:expr) => {{
        let ctx = $ctx.clone();
        $router.route(
            $path,
            post(move |headers: HeaderMap, body: Bytes| {
                let service = <$service>::new(ctx.clone());
                async move {
                    unary($input, $output, headers, body, |request| async move {
                        <$service as $trait>::$method(&service, request).await
                    })
                    .await
                }
            }),
        )
    }};
}

/// The `/v3/...` routes (also served under `/v3beta/`, as etcd rewrites it).
pub(crate) fn routes(ctx: Context) -> Router {
    use super::auth::AuthService;
    use super::cluster::ClusterService;
    use super::election::ElectionService;
    use super::kv::KvService;
    use super::lease::LeaseService;
    use super::lock::LockService;
    use super::maintenance::MaintenanceService;
    use crate::proto::etcdserverpb::auth_server::Auth;
    use crate::proto::v3electionpb::election_server::Election;
    use crate::proto::v3lockpb::lock_server::Lock;
    use etcd_client::proto::{PbClusterService, PbKvService, PbLeaseService, PbMaintenanceService};
    let api = Router::new();
    let api = unary_route!(
        api,
        ctx,
        "/kv/range",
        KvService,
        PbKvService,
        range,
        "gateway.RangeRequest",
        "gateway.RangeResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/put",
        KvService,
        PbKvService,
        put,
        "gateway.PutRequest",
        "gateway.PutResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/deleterange",
        KvService,
        PbKvService,
        delete_range,
        "gateway.DeleteRangeRequest",
        "gateway.DeleteRangeResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/txn",
        KvService,
        PbKvService,
        txn,
        "gateway.TxnRequest",
        "gateway.TxnResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/compaction",
        KvService,
        PbKvService,
        compact,
        "gateway.CompactionRequest",
        "gateway.CompactionResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/lease/grant",
        LeaseService,
        PbLeaseService,
        lease_grant,
        "gateway.LeaseGrantRequest",
        "gateway.LeaseGrantResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/lease/revoke",
        LeaseService,
        PbLeaseService,
        lease_revoke,
        "gateway.LeaseRevokeRequest",
        "gateway.LeaseRevokeResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/lease/revoke",
        LeaseService,
        PbLeaseService,
        lease_revoke,
        "gateway.LeaseRevokeRequest",
        "gateway.LeaseRevokeResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/lease/timetolive",
        LeaseService,
        PbLeaseService,
        lease_time_to_live,
        "gateway.LeaseTimeToLiveRequest",
        "gateway.LeaseTimeToLiveResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/lease/timetolive",
        LeaseService,
        PbLeaseService,
        lease_time_to_live,
        "gateway.LeaseTimeToLiveRequest",
        "gateway.LeaseTimeToLiveResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/lease/leases",
        LeaseService,
        PbLeaseService,
        lease_leases,
        "gateway.LeaseLeasesRequest",
        "gateway.LeaseLeasesResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/kv/lease/leases",
        LeaseService,
        PbLeaseService,
        lease_leases,
        "gateway.LeaseLeasesRequest",
        "gateway.LeaseLeasesResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/cluster/member/add",
        ClusterService,
        PbClusterService,
        member_add,
        "gateway.MemberAddRequest",
        "gateway.MemberAddResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/cluster/member/remove",
        ClusterService,
        PbClusterService,
        member_remove,
        "gateway.MemberRemoveRequest",
        "gateway.MemberRemoveResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/cluster/member/update",
        ClusterService,
        PbClusterService,
        member_update,
        "gateway.MemberUpdateRequest",
        "gateway.MemberUpdateResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/cluster/member/list",
        ClusterService,
        PbClusterService,
        member_list,
        "gateway.MemberListRequest",
        "gateway.MemberListResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/cluster/member/promote",
        ClusterService,
        PbClusterService,
        member_promote,
        "gateway.MemberPromoteRequest",
        "gateway.MemberPromoteResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/maintenance/alarm",
        MaintenanceService,
        PbMaintenanceService,
        alarm,
        "gateway.AlarmRequest",
        "gateway.AlarmResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/maintenance/status",
        MaintenanceService,
        PbMaintenanceService,
        status,
        "gateway.StatusRequest",
        "gateway.StatusResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/maintenance/defragment",
        MaintenanceService,
        PbMaintenanceService,
        defragment,
        "gateway.DefragmentRequest",
        "gateway.DefragmentResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/maintenance/hash",
        MaintenanceService,
        PbMaintenanceService,
        hash,
        "gateway.HashRequest",
        "gateway.HashResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/maintenance/hashkv",
        MaintenanceService,
        PbMaintenanceService,
        hash_kv,
        "gateway.HashKVRequest",
        "gateway.HashKVResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/maintenance/transfer-leadership",
        MaintenanceService,
        PbMaintenanceService,
        move_leader,
        "gateway.MoveLeaderRequest",
        "gateway.MoveLeaderResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/enable",
        AuthService,
        Auth,
        auth_enable,
        "etcdserverpb.AuthEnableRequest",
        "etcdserverpb.AuthEnableResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/disable",
        AuthService,
        Auth,
        auth_disable,
        "etcdserverpb.AuthDisableRequest",
        "etcdserverpb.AuthDisableResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/status",
        AuthService,
        Auth,
        auth_status,
        "etcdserverpb.AuthStatusRequest",
        "etcdserverpb.AuthStatusResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/authenticate",
        AuthService,
        Auth,
        authenticate,
        "etcdserverpb.AuthenticateRequest",
        "etcdserverpb.AuthenticateResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/add",
        AuthService,
        Auth,
        user_add,
        "etcdserverpb.AuthUserAddRequest",
        "etcdserverpb.AuthUserAddResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/get",
        AuthService,
        Auth,
        user_get,
        "etcdserverpb.AuthUserGetRequest",
        "etcdserverpb.AuthUserGetResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/list",
        AuthService,
        Auth,
        user_list,
        "etcdserverpb.AuthUserListRequest",
        "etcdserverpb.AuthUserListResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/delete",
        AuthService,
        Auth,
        user_delete,
        "etcdserverpb.AuthUserDeleteRequest",
        "etcdserverpb.AuthUserDeleteResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/changepw",
        AuthService,
        Auth,
        user_change_password,
        "etcdserverpb.AuthUserChangePasswordRequest",
        "etcdserverpb.AuthUserChangePasswordResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/grant",
        AuthService,
        Auth,
        user_grant_role,
        "etcdserverpb.AuthUserGrantRoleRequest",
        "etcdserverpb.AuthUserGrantRoleResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/user/revoke",
        AuthService,
        Auth,
        user_revoke_role,
        "etcdserverpb.AuthUserRevokeRoleRequest",
        "etcdserverpb.AuthUserRevokeRoleResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/role/add",
        AuthService,
        Auth,
        role_add,
        "etcdserverpb.AuthRoleAddRequest",
        "etcdserverpb.AuthRoleAddResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/role/get",
        AuthService,
        Auth,
        role_get,
        "etcdserverpb.AuthRoleGetRequest",
        "etcdserverpb.AuthRoleGetResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/role/list",
        AuthService,
        Auth,
        role_list,
        "etcdserverpb.AuthRoleListRequest",
        "etcdserverpb.AuthRoleListResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/role/delete",
        AuthService,
        Auth,
        role_delete,
        "etcdserverpb.AuthRoleDeleteRequest",
        "etcdserverpb.AuthRoleDeleteResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/role/grant",
        AuthService,
        Auth,
        role_grant_permission,
        "etcdserverpb.AuthRoleGrantPermissionRequest",
        "etcdserverpb.AuthRoleGrantPermissionResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/auth/role/revoke",
        AuthService,
        Auth,
        role_revoke_permission,
        "etcdserverpb.AuthRoleRevokePermissionRequest",
        "etcdserverpb.AuthRoleRevokePermissionResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/lock/lock",
        LockService,
        Lock,
        lock,
        "v3lockpb.LockRequest",
        "v3lockpb.LockResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/lock/unlock",
        LockService,
        Lock,
        unlock,
        "v3lockpb.UnlockRequest",
        "v3lockpb.UnlockResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/election/campaign",
        ElectionService,
        Election,
        campaign,
        "v3electionpb.CampaignRequest",
        "v3electionpb.CampaignResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/election/proclaim",
        ElectionService,
        Election,
        proclaim,
        "v3electionpb.ProclaimRequest",
        "v3electionpb.ProclaimResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/election/leader",
        ElectionService,
        Election,
        leader,
        "v3electionpb.LeaderRequest",
        "v3electionpb.LeaderResponse"
    );
    let api = unary_route!(
        api,
        ctx,
        "/election/resign",
        ElectionService,
        Election,
        resign,
        "v3electionpb.ResignRequest",
        "v3electionpb.ResignResponse"
    );
    let api = stream_routes(api, &ctx);
    Router::new().nest("/v3", api.clone()).nest("/v3beta", api)
}

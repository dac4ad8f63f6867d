//! etcd's Lease service, and the loop that revokes expired leases.

use std::pin::Pin;
use std::time::{Duration, Instant};

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::auth::PermType;
use crate::mvcc::kvstore::{MvccStore, WriteRequest, WriteResponse};

/// How often the store looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);

pub(crate) struct LeaseService {
    ctx: Context,
}

impl LeaseService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

pub(crate) type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_signed_in(&caller)?;
        let req = request.into_inner();
        match self
            .ctx
            .store
            .write(WriteRequest::LeaseGrant {
                id: req.id,
                ttl: req.ttl,
            })
            .await?
        {
            WriteResponse::LeaseGranted { id, ttl } => {
                self.ctx.metrics.leases_granted.inc();
                Ok(Response::new(PbLeaseGrantResponse {
                    header: self.ctx.header(self.ctx.store.current_revision()),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            _ => Err(Status::internal(
                "store returned a response of the wrong type",
            )),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_signed_in(&caller)?;
        let id = request.into_inner().id;
        self.ctx.allow_lease_keys(&caller, id, PermType::Write)?;
        self.ctx.store.write(WriteRequest::LeaseRevoke(id)).await?;
        self.ctx.metrics.leases_revoked.inc();
        Ok(Response::new(PbLeaseRevokeResponse {
            header: self.ctx.header(self.ctx.store.current_revision()),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let caller = self.ctx.caller(&request)?;
        Ok(Response::new(keep_alive(
            self.ctx.clone(),
            caller,
            request.into_inner(),
        )?))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_signed_in(&caller)?;
        let req = request.into_inner();
        if req.keys {
            self.ctx.allow_lease_keys(&caller, req.id, PermType::Read)?;
        }
        let found = self
            .ctx
            .store
            .shared()
            .lessor
            .lock()
            .time_to_live(req.id, Instant::now());
        let header = self.ctx.header(self.ctx.store.current_revision());
        // A missing lease is not an error: etcd answers TTL -1.
        let resp = match found {
            Some(t) => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: if req.keys { t.keys } else { vec![] },
            },
            None => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_signed_in(&caller)?;
        let ids = self.ctx.store.shared().lessor.lock().ids();
        for id in &ids {
            self.ctx.allow_lease_keys(&caller, *id, PermType::Read)?;
        }
        Ok(Response::new(PbLeaseLeasesResponse {
            header: self.ctx.header(self.ctx.store.current_revision()),
            leases: ids.into_iter().map(|id| PbLeaseStatus { id }).collect(),
        }))
    }
}

/// Answers each keep-alive in `requests` from `caller` (gRPC, or the JSON gateway).
pub(crate) fn keep_alive<R>(
    ctx: Context,
    caller: crate::auth::Caller,
    requests: R,
) -> Result<KeepAliveStream, Status>
where
    R: Stream<Item = Result<PbLeaseKeepAliveRequest, Status>> + Send + 'static,
{
    ctx.allow_signed_in(&caller)?;
    let stream = requests.map(move |req| {
        let id = req?.id;
        ctx.allow_lease_keys(&caller, id, PermType::Write)?;
        // An unknown or expired lease answers TTL 0, as etcd does.
        let ttl = ctx
            .store
            .shared()
            .lessor
            .lock()
            .renew(id, Instant::now())
            .unwrap_or(0);
        Ok(PbLeaseKeepAliveResponse {
            header: ctx.header(ctx.store.current_revision()),
            id,
            ttl,
        })
    });
    Ok(Box::pin(stream))
}

/// Revokes leases whose deadline passed, forever: their keys are deleted and watchers see the
/// deletes.
pub(crate) async fn revoke_expired(
    store: MvccStore,
    metrics: std::sync::Arc<super::metrics::StoreMetrics>,
) {
    let mut timer = tokio::time::interval(EXPIRY_CHECK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let expired = store.shared().lessor.lock().take_expired(Instant::now());
        // Submitted together so that many expiries share one commit.
        for chunk in expired.chunks(1024) {
            let revocations = chunk.iter().map(|&id| {
                let store = store.clone();
                async move { (id, store.write(WriteRequest::LeaseRevoke(id)).await) }
            });
            for (id, result) in futures::future::join_all(revocations).await {
                match result {
                    Ok(_) => {
                        metrics.leases_revoked.inc();
                        tracing::debug!(lease = id, "revoked expired lease")
                    }
                    Err(crate::StoreError::LeaseNotFound) => {}
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; will retry");
                        store.shared().lessor.lock().retry_expired(id);
                    }
                }
            }
        }
    }
}

//! etcd's Lock service (`v3lockpb.Lock`): a lock is the oldest key under `<name>/`.

use etcd_client::proto::{PbDeleteRequest, PbRangeRequest};
use tonic::{Request, Response, Status};

use super::queue::{self, unknown, WithdrawOnDrop};
use super::Context;
use crate::auth::PermType;
use crate::mvcc::kvstore::{WriteRequest, WriteResponse};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub(crate) struct LockService {
    ctx: Context,
}

impl LockService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        let ctx = &self.ctx;
        let lease = queue::session_lease(ctx, &caller, req.lease).await?;
        queue::allow_place(ctx, &caller, &req.name, lease)?;
        let place = queue::take_place(ctx, &req.name, lease, b"").await?;
        if place
            .holder
            .as_ref()
            .is_none_or(|h| h.create_revision == place.rev)
        {
            return Ok(Response::new(LockResponse {
                header: place.header,
                key: place.key,
            }));
        }
        // A client that gives up waiting leaves the queue: its key is deleted.
        let guard = WithdrawOnDrop::new(ctx, &place.key, None);
        queue::wait_for_predecessors(ctx, &queue::prefix_of(&req.name), place.rev).await?;
        let own = queue::range(
            ctx,
            &PbRangeRequest {
                key: place.key.clone(),
                ..Default::default()
            },
        )?;
        guard.disarm();
        if own.kvs.is_empty() {
            // The lease ran out (or the key was deleted) while waiting.
            return Err(unknown("mutex: session is expired"));
        }
        Ok(Response::new(LockResponse {
            header: own.header,
            key: place.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.ctx.allow(&caller, PermType::Write, &req.key, &[])?;
        match self
            .ctx
            .store
            .write(WriteRequest::Delete(PbDeleteRequest {
                key: req.key,
                ..Default::default()
            }))
            .await
            .map_err(unknown)?
        {
            WriteResponse::Delete(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(UnlockResponse {
                    header: resp.header,
                }))
            }
            _ => Err(Status::internal(
                "the store answered a delete with something else",
            )),
        }
    }
}

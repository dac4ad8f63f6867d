//! etcd's Election service (`v3electionpb.Election`): the leader of `<name>` is the oldest
//! key under `<name>/`; candidates queue behind it as for a lock.

use std::pin::Pin;

use etcd_client::proto::{
    PbDeleteRequest, PbKeyValue, PbRangeRequest, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::queue::{self, unknown, WithdrawOnDrop};
use super::Context;
use crate::auth::{Caller, PermType};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

pub(crate) struct ElectionService {
    ctx: Context,
}

impl ElectionService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Proclaim and Resign compare and write the leader's key.
    fn allow_leader_key(&self, caller: &Caller, leader: &LeaderKey) -> Result<(), Status> {
        self.ctx.allow(caller, PermType::Read, &leader.key, &[])?;
        self.ctx.allow(caller, PermType::Write, &leader.key, &[])?;
        Ok(())
    }

    /// Leader and Observe read the election's keys.
    fn allow_observe(&self, caller: &Caller, name: &[u8]) -> Result<(), Status> {
        let prefix = queue::prefix_of(name);
        self.ctx
            .allow(caller, PermType::Read, &prefix, &queue::prefix_end(&prefix))?;
        Ok(())
    }
}

fn missing_leader() -> Status {
    unknown("\"leader\" field must be provided")
}

/// Puts `value` on the leader key if it still has its create revision.
async fn proclaim(
    ctx: &Context,
    leader: &LeaderKey,
    value: &[u8],
) -> Result<Option<etcd_client::proto::PbResponseHeader>, Status> {
    let resp = queue::txn(
        ctx,
        PbTxnRequest {
            compare: vec![queue::created_at(&leader.key, leader.rev)],
            success: vec![queue::put_op(&leader.key, value, leader.lease)],
            failure: Vec::new(),
        },
    )
    .await?;
    if !resp.succeeded {
        return Err(unknown("election: not leader"));
    }
    Ok(resp.header)
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        let ctx = &self.ctx;
        let lease = queue::session_lease(ctx, &caller, req.lease).await?;
        queue::allow_place(ctx, &caller, &req.name, lease)?;
        let place = queue::take_place(ctx, &req.name, lease, &req.value).await?;
        let leader = LeaderKey {
            name: req.name.clone(),
            key: place.key.clone(),
            rev: place.rev,
            lease,
        };
        // Campaigning again with the same lease keeps the place and updates the value.
        if place
            .existing
            .as_ref()
            .is_some_and(|kv| kv.value != req.value)
        {
            if let Err(e) = proclaim(ctx, &leader, &req.value).await {
                queue::withdraw(ctx, leader.key.clone(), Some(leader.rev));
                return Err(e);
            }
        }
        let leads = place
            .holder
            .as_ref()
            .is_none_or(|h| h.create_revision == place.rev);
        if !leads {
            // Only a client that gives up (the request is dropped) leaves the queue.
            let guard = WithdrawOnDrop::new(ctx, &leader.key, Some(leader.rev));
            let waited =
                queue::wait_for_predecessors(ctx, &queue::prefix_of(&req.name), place.rev).await;
            guard.disarm();
            waited?;
        }
        Ok(Response::new(CampaignResponse {
            header: place.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        let mut leader = req.leader.ok_or_else(missing_leader)?;
        self.allow_leader_key(&caller, &leader)?;
        leader.lease = queue::session_lease(&self.ctx, &caller, leader.lease).await?;
        let header = proclaim(&self.ctx, &leader, &req.value).await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.allow_observe(&caller, &req.name)?;
        let resp = queue::range(
            &self.ctx,
            &queue::oldest_request(&queue::prefix_of(&req.name)),
        )?;
        let kv = resp
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| unknown("election: no leader"))?;
        Ok(Response::new(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.allow_observe(&caller, &req.name)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            observe(ctx, queue::prefix_of(&req.name), tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(missing_leader)?;
        self.allow_leader_key(&caller, &leader)?;
        // Not leading (any more) is not an error: nothing is deleted.
        let resp = queue::txn(
            &self.ctx,
            PbTxnRequest {
                compare: vec![queue::created_at(&leader.key, leader.rev)],
                success: vec![PbTxnRequestOp {
                    request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
                        key: leader.key,
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            },
        )
        .await?;
        Ok(Response::new(ResignResponse {
            header: resp.header,
        }))
    }
}

/// Sends the leader of `prefix`, then every change of its value, and moves on to the next
/// leader when it goes. Ends (with OK, as etcd) when the store fails or the client leaves.
async fn observe(
    ctx: Context,
    prefix: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    let end = queue::prefix_end(&prefix);
    let in_prefix = |key: &[u8]| key >= prefix.as_slice() && key < end.as_slice();
    loop {
        let mut feed = ctx.store.subscribe();
        let Ok(oldest) = queue::range(&ctx, &queue::oldest_request(&prefix)) else {
            return;
        };
        let mut seen = oldest.header.as_ref().map_or(0, |h| h.revision);
        let leader: PbKeyValue = match oldest.kvs.into_iter().next() {
            Some(kv) => kv,
            // Nobody leads: the first key put under the prefix does.
            None => loop {
                match tokio::select! {
                    r = feed.recv() => r,
                    () = tx.closed() => return,
                } {
                    Ok(batch) => {
                        if let Some(put) = batch.iter().find(|e| {
                            !e.is_delete() && e.kv.mod_revision > seen && in_prefix(&e.kv.key)
                        }) {
                            seen = put.kv.mod_revision;
                            break put.kv.clone();
                        }
                    }
                    Err(RecvError::Lagged(_)) => break PbKeyValue::default(),
                    Err(RecvError::Closed) => return,
                }
            },
        };
        if leader.key.is_empty() {
            continue;
        }
        if tx
            .send(Ok(LeaderResponse {
                header: ctx.header(seen.max(leader.mod_revision)),
                kv: Some(leader.clone()),
            }))
            .await
            .is_err()
        {
            return;
        }
        // Follow that leader's key until it is deleted.
        'following: loop {
            match tokio::select! {
                r = feed.recv() => r,
                () = tx.closed() => return,
            } {
                Ok(batch) => {
                    for event in batch.iter() {
                        if event.kv.key != leader.key || event.kv.mod_revision <= seen {
                            continue;
                        }
                        if event.is_delete() {
                            break 'following;
                        }
                        seen = event.kv.mod_revision;
                        let update = LeaderResponse {
                            header: ctx.header(seen),
                            kv: Some(event.kv.clone()),
                        };
                        if tx.send(Ok(update)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Behind the feed: read the key again.
                    feed = ctx.store.subscribe();
                    let Ok(now) = queue::range(
                        &ctx,
                        &PbRangeRequest {
                            key: leader.key.clone(),
                            ..Default::default()
                        },
                    ) else {
                        return;
                    };
                    match now.kvs.into_iter().next() {
                        Some(kv) if kv.create_revision == leader.create_revision => {
                            if kv.mod_revision > seen {
                                seen = kv.mod_revision;
                                let update = LeaderResponse {
                                    header: ctx.header(seen),
                                    kv: Some(kv),
                                };
                                if tx.send(Ok(update)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        _ => break 'following,
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

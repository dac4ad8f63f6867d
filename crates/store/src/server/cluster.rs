//! etcd's Cluster service for a single member.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Context;
use crate::StoreError;

pub(crate) struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        Err(StoreError::MembershipUnsupported.into())
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        Err(StoreError::MembershipUnsupported.into())
    }

    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        Err(StoreError::MembershipUnsupported.into())
    }

    async fn member_list(
        &self,
        _request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let member = PbMember {
            id: self.ctx.store.shared().member_id,
            name: self.ctx.config.name.clone(),
            peer_ur_ls: self.ctx.config.advertise_peer_urls.clone(),
            client_ur_ls: self.ctx.client_urls.to_vec(),
            is_learner: false,
        };
        Ok(Response::new(PbMemberListResponse {
            // etcd answers membership calls from the cluster state, which has no revision.
            header: self.ctx.header(0),
            members: vec![member],
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        Err(StoreError::MembershipUnsupported.into())
    }
}

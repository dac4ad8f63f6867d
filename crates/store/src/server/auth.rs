//! etcd's Auth service: users, roles, permissions, `auth enable|disable|status`, and
//! Authenticate. Every call but Authenticate is for administrators (the root role) once
//! authentication is on; passwords are hashed off the async workers (bcrypt is slow by
//! design).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Context;
use crate::auth::{AuthError, AuthStore, Caller};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;

pub(crate) struct AuthService {
    ctx: Context,
}

impl AuthService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Runs `op` with the auth store and the caller off the async workers.
    async fn run<T: Send + 'static>(
        &self,
        caller: Caller,
        op: impl FnOnce(&AuthStore, &Caller) -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, Status> {
        let auth: Arc<AuthStore> = self.ctx.auth.clone();
        tokio::task::spawn_blocking(move || op(&auth, &caller))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::from)
    }

    fn header(&self) -> Option<etcd_client::proto::PbResponseHeader> {
        self.ctx.header(self.ctx.store.current_revision())
    }
}

/// A password's bcrypt hash: the one a 3.5 client sent (`hashedPassword`), or made here.
fn password_hash(auth: &AuthStore, password: &str, hashed: &str) -> Result<Vec<u8>, AuthError> {
    if hashed.is_empty() {
        auth.hash_password(password)
    } else {
        Ok(hashed.as_bytes().to_vec())
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.run(caller, |auth, caller| auth.enable(caller)).await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.run(caller, |auth, caller| auth.disable(caller))
            .await?;
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let (enabled, revision) = self.run(caller, |auth, caller| auth.status(caller)).await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision: u64::try_from(revision).unwrap_or(0),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let token = self
            .run(Caller::Anyone, move |auth, _| {
                auth.authenticate(&req.name, &req.password)
            })
            .await?;
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        self.run(caller, move |auth, caller| {
            // Refused callers must not cost a hash.
            auth.check_admin(caller)?;
            let hash = if no_password {
                None
            } else {
                Some(password_hash(auth, &req.password, &req.hashed_password)?)
            };
            auth.user_add(caller, &req.name, hash)
        })
        .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let name = request.into_inner().name;
        let roles = self
            .run(caller, move |auth, caller| auth.user_get(caller, &name))
            .await?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let users = self
            .run(caller, |auth, caller| auth.user_list(caller))
            .await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let name = request.into_inner().name;
        self.run(caller, move |auth, caller| auth.user_delete(caller, &name))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.run(caller, move |auth, caller| {
            auth.check_admin(caller)?;
            let hash = password_hash(auth, &req.password, &req.hashed_password)?;
            auth.user_change_password(caller, &req.name, hash)
        })
        .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.run(caller, move |auth, caller| {
            auth.user_grant_role(caller, &req.user, &req.role)
        })
        .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.run(caller, move |auth, caller| {
            auth.user_revoke_role(caller, &req.name, &req.role)
        })
        .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let name = request.into_inner().name;
        self.run(caller, move |auth, caller| auth.role_add(caller, &name))
            .await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let role = request.into_inner().role;
        let perm = self
            .run(caller, move |auth, caller| auth.role_get(caller, &role))
            .await?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let roles = self
            .run(caller, |auth, caller| auth.role_list(caller))
            .await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let role = request.into_inner().role;
        self.run(caller, move |auth, caller| auth.role_delete(caller, &role))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.run(caller, move |auth, caller| {
            auth.role_grant_permission(caller, &req.name, req.perm)
        })
        .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.run(caller, move |auth, caller| {
            auth.role_revoke_permission(caller, &req.role, &req.key, &req.range_end)
        })
        .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}

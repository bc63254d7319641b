//! The Auth service: users, roles and permissions with etcd's semantics and errors. Changes go
//! through the log ([`crate::store::auth`]), decided when applied; passwords are hashed here
//! first. Authenticate answers a token any member accepts ([`crate::service::access`]). With auth
//! enabled, every call but Authenticate needs root, as in etcd.

use tonic::{Request, Response, Status};

use super::pb::authpb;
use super::{Grpc, rpc, status};
use crate::service::access::Caller;
use crate::store::auth::{AuthOp, PermKind, Permission};

impl Grpc {
    /// Applies an auth change for `caller` ([`crate::service::auth`]); the answer's header.
    async fn auth_change(
        &self,
        caller: &Caller,
        op: AuthOp,
    ) -> Result<Option<rpc::ResponseHeader>, Status> {
        let revision = self.state.auth_change(caller, op).await?;
        Ok(self.header(revision))
    }
}

fn perm_kind(t: i32) -> Result<PermKind, Status> {
    match authpb::permission::Type::try_from(t) {
        Ok(authpb::permission::Type::Read) => Ok(PermKind::Read),
        Ok(authpb::permission::Type::Write) => Ok(PermKind::Write),
        Ok(authpb::permission::Type::Readwrite) => Ok(PermKind::ReadWrite),
        Err(_) => Err(Status::invalid_argument(
            "etcdserver: invalid permission type",
        )),
    }
}

fn perm_type(k: PermKind) -> i32 {
    match k {
        PermKind::Read => authpb::permission::Type::Read as i32,
        PermKind::Write => authpb::permission::Type::Write as i32,
        PermKind::ReadWrite => authpb::permission::Type::Readwrite as i32,
    }
}

#[tonic::async_trait]
impl rpc::auth_server::Auth for Grpc {
    async fn auth_enable(
        &self,
        request: Request<rpc::AuthEnableRequest>,
    ) -> Result<Response<rpc::AuthEnableResponse>, Status> {
        let caller = self.caller(&request).await?;
        let header = self.header(self.state.auth_enable(&caller).await?);
        Ok(Response::new(rpc::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<rpc::AuthDisableRequest>,
    ) -> Result<Response<rpc::AuthDisableResponse>, Status> {
        let caller = self.caller(&request).await?;
        let header = self.auth_change(&caller, AuthOp::Disable).await?;
        Ok(Response::new(rpc::AuthDisableResponse { header }))
    }

    /// etcd 3.5's rule: with auth enabled, root only (its answer names the cluster, the
    /// member and the auth revision); anyone while auth is off.
    async fn auth_status(
        &self,
        request: Request<rpc::AuthStatusRequest>,
    ) -> Result<Response<rpc::AuthStatusResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (enabled, auth_revision) = self.state.auth_status(&caller).await?;
        Ok(Response::new(rpc::AuthStatusResponse {
            header: self.current_header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<rpc::AuthenticateRequest>,
    ) -> Result<Response<rpc::AuthenticateResponse>, Status> {
        let from = Self::remote(&request).map(|r| r.addr.ip());
        let r = request.into_inner();
        let token = self.state.authenticate(&r.name, &r.password, from).await?;
        Ok(Response::new(rpc::AuthenticateResponse {
            header: self.current_header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<rpc::AuthUserAddRequest>,
    ) -> Result<Response<rpc::AuthUserAddResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password_hash = match no_password {
            true => None,
            false => Some(self.state.hash_password(&caller, r.password).await?),
        };
        let header = self
            .auth_change(
                &caller,
                AuthOp::UserAdd {
                    name: r.name,
                    password_hash,
                },
            )
            .await?;
        Ok(Response::new(rpc::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<rpc::AuthUserGetRequest>,
    ) -> Result<Response<rpc::AuthUserGetResponse>, Status> {
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        let user = self.state.auth_user(&caller, &name).await?;
        Ok(Response::new(rpc::AuthUserGetResponse {
            header: self.current_header(),
            roles: user.roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<rpc::AuthUserListRequest>,
    ) -> Result<Response<rpc::AuthUserListResponse>, Status> {
        let caller = self.caller(&request).await?;
        let users = self.state.auth_users(&caller).await?;
        Ok(Response::new(rpc::AuthUserListResponse {
            header: self.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<rpc::AuthUserDeleteRequest>,
    ) -> Result<Response<rpc::AuthUserDeleteResponse>, Status> {
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self
            .auth_change(&caller, AuthOp::UserDelete { name })
            .await?;
        Ok(Response::new(rpc::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<rpc::AuthUserChangePasswordRequest>,
    ) -> Result<Response<rpc::AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let password_hash = self.state.hash_password(&caller, r.password).await?;
        let header = self
            .auth_change(
                &caller,
                AuthOp::UserChangePassword {
                    name: r.name,
                    password_hash,
                },
            )
            .await?;
        Ok(Response::new(rpc::AuthUserChangePasswordResponse {
            header,
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<rpc::AuthUserGrantRoleRequest>,
    ) -> Result<Response<rpc::AuthUserGrantRoleResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let header = self
            .auth_change(
                &caller,
                AuthOp::UserGrantRole {
                    user: r.user,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(rpc::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<rpc::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<rpc::AuthUserRevokeRoleResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let header = self
            .auth_change(
                &caller,
                AuthOp::UserRevokeRole {
                    user: r.name,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(rpc::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<rpc::AuthRoleAddRequest>,
    ) -> Result<Response<rpc::AuthRoleAddResponse>, Status> {
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self.auth_change(&caller, AuthOp::RoleAdd { name }).await?;
        Ok(Response::new(rpc::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<rpc::AuthRoleGetRequest>,
    ) -> Result<Response<rpc::AuthRoleGetResponse>, Status> {
        let caller = self.caller(&request).await?;
        let name = request.into_inner().role;
        let role = self.state.auth_role(&caller, &name).await?;
        let perm = role
            .perms
            .iter()
            .map(|p| authpb::Permission {
                perm_type: perm_type(p.kind),
                key: p.key.clone(),
                range_end: p.range_end.clone(),
            })
            .collect();
        Ok(Response::new(rpc::AuthRoleGetResponse {
            header: self.current_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<rpc::AuthRoleListRequest>,
    ) -> Result<Response<rpc::AuthRoleListResponse>, Status> {
        let caller = self.caller(&request).await?;
        let roles = self.state.auth_roles(&caller).await?;
        Ok(Response::new(rpc::AuthRoleListResponse {
            header: self.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<rpc::AuthRoleDeleteRequest>,
    ) -> Result<Response<rpc::AuthRoleDeleteResponse>, Status> {
        let caller = self.caller(&request).await?;
        let name = request.into_inner().role;
        let header = self
            .auth_change(&caller, AuthOp::RoleDelete { name })
            .await?;
        Ok(Response::new(rpc::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<rpc::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<rpc::AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let perm = r.perm.ok_or_else(|| {
            status::auth_refusal(crate::store::auth::AuthRefusal::PermissionNotGiven)
        })?;
        let perm = Permission {
            kind: perm_kind(perm.perm_type)?,
            key: perm.key,
            range_end: perm.range_end,
        };
        let header = self
            .auth_change(&caller, AuthOp::RoleGrantPermission { role: r.name, perm })
            .await?;
        Ok(Response::new(rpc::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<rpc::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<rpc::AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let header = self
            .auth_change(
                &caller,
                AuthOp::RoleRevokePermission {
                    role: r.role,
                    key: r.key,
                    range_end: r.range_end,
                },
            )
            .await?;
        Ok(Response::new(rpc::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

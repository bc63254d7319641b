//! The Auth service: users, roles and permissions with etcd's semantics and errors. Changes go
//! through the log ([`crate::store::auth`]), decided when applied; passwords are hashed here
//! first. Authenticate answers a token any member accepts ([`crate::service::access`]). With auth
//! enabled, every call but Authenticate needs root, as in etcd.

use tonic::{Request, Response, Status};

use super::pb::authpb;
use super::{Grpc, rpc, status};
use crate::service::access::{Caller, password};
use crate::store::Op;
use crate::store::auth::{AuthOp, PermKind, Permission};

impl Grpc {
    /// Proposes an auth change for `caller`, bound to the auth revision its root check was
    /// made at (refused when applied if users or roles changed since, as key writes are);
    /// etcd's error if it was refused at apply.
    async fn auth_change(
        &self,
        caller: &Caller,
        op: AuthOp,
    ) -> Result<Option<rpc::ResponseHeader>, Status> {
        self.state.node.check_running()?;
        let op = caller.guard(Op::Auth(Box::new(op)));
        let result = self.state.node.propose(op).await?;
        if let Some(r) = result.refused {
            return Err(r.into());
        }
        Ok(self.header(result.revision))
    }

    /// Auth management needs root once auth is enabled.
    async fn auth_admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.caller(request).await?;
        caller.admin().map_err(status::denied)?;
        Ok(caller)
    }

    /// A view of the auth state after a read barrier, so lists and gets see every change
    /// acknowledged before the call.
    async fn auth_view(&self) -> Result<std::sync::Arc<crate::store::auth::AuthView>, Status> {
        self.state.node.check_running()?;
        self.state.node.read_index().await?;
        self.state.access.view().map_err(status::denied)
    }
}

/// Hashes a password off the async threads.
async fn hash(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::internal)
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
        let caller = self.auth_admin(&request).await?;
        // The secret that signs this cluster's tokens, drawn by the member that enables auth.
        let mut secret = Vec::with_capacity(32);
        for _ in 0..4 {
            let n =
                crate::raft::storage::random_id().map_err(|e| Status::internal(e.to_string()))?;
            secret.extend_from_slice(&n.to_be_bytes());
        }
        let header = self.auth_change(&caller, AuthOp::Enable { secret }).await?;
        Ok(Response::new(rpc::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<rpc::AuthDisableRequest>,
    ) -> Result<Response<rpc::AuthDisableResponse>, Status> {
        let caller = self.auth_admin(&request).await?;
        let header = self.auth_change(&caller, AuthOp::Disable).await?;
        Ok(Response::new(rpc::AuthDisableResponse { header }))
    }

    /// etcd 3.5's rule: with auth enabled, root only (its answer names the cluster, the
    /// member and the auth revision); anyone while auth is off.
    async fn auth_status(
        &self,
        request: Request<rpc::AuthStatusRequest>,
    ) -> Result<Response<rpc::AuthStatusResponse>, Status> {
        self.auth_admin(&request).await?;
        let view = self.auth_view().await?;
        Ok(Response::new(rpc::AuthStatusResponse {
            header: self.current_header(),
            enabled: view.state.enabled,
            auth_revision: view.state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<rpc::AuthenticateRequest>,
    ) -> Result<Response<rpc::AuthenticateResponse>, Status> {
        let from = Self::remote(&request).map(|r| r.addr.ip());
        let r = request.into_inner();
        self.state.node.check_running()?;
        let token = self
            .state
            .access
            .authenticate(&r.name, &r.password, from)
            .await
            .map_err(status::denied)?;
        Ok(Response::new(rpc::AuthenticateResponse {
            header: self.current_header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<rpc::AuthUserAddRequest>,
    ) -> Result<Response<rpc::AuthUserAddResponse>, Status> {
        let caller = self.auth_admin(&request).await?;
        let r = request.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password_hash = match no_password {
            true => None,
            false => Some(hash(r.password).await?),
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
        // A user may read its own record; others' need root (etcd's rule).
        if caller.name() != Some(name.as_str()) {
            caller.admin().map_err(status::denied)?;
        }
        let view = self.auth_view().await?;
        let user = view
            .users
            .get(&name)
            .ok_or_else(|| status::auth_refusal(crate::store::auth::AuthRefusal::UserNotFound))?;
        Ok(Response::new(rpc::AuthUserGetResponse {
            header: self.current_header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<rpc::AuthUserListRequest>,
    ) -> Result<Response<rpc::AuthUserListResponse>, Status> {
        let caller = self.auth_admin(&request).await?;
        let view = self.auth_view().await?;
        // A read: refused if users or roles changed since its check (etcd's rule).
        caller
            .still_current(&self.state.access)
            .map_err(status::denied)?;
        Ok(Response::new(rpc::AuthUserListResponse {
            header: self.current_header(),
            users: view.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<rpc::AuthUserDeleteRequest>,
    ) -> Result<Response<rpc::AuthUserDeleteResponse>, Status> {
        let caller = self.auth_admin(&request).await?;
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
        let caller = self.auth_admin(&request).await?;
        let r = request.into_inner();
        let password_hash = hash(r.password).await?;
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
        let caller = self.auth_admin(&request).await?;
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
        let caller = self.auth_admin(&request).await?;
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
        let caller = self.auth_admin(&request).await?;
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
        let view = self.auth_view().await?;
        // A user may read the roles it holds; others' need root (etcd's rule).
        let holds = caller
            .name()
            .and_then(|u| view.users.get(u))
            .is_some_and(|u| u.roles.contains(&name));
        if !holds {
            caller.admin().map_err(status::denied)?;
        }
        let role = view
            .roles
            .get(&name)
            .ok_or_else(|| status::auth_refusal(crate::store::auth::AuthRefusal::RoleNotFound))?;
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
        let caller = self.auth_admin(&request).await?;
        let view = self.auth_view().await?;
        // A read: refused if users or roles changed since its check (etcd's rule).
        caller
            .still_current(&self.state.access)
            .map_err(status::denied)?;
        Ok(Response::new(rpc::AuthRoleListResponse {
            header: self.current_header(),
            roles: view.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<rpc::AuthRoleDeleteRequest>,
    ) -> Result<Response<rpc::AuthRoleDeleteResponse>, Status> {
        let caller = self.auth_admin(&request).await?;
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
        let caller = self.auth_admin(&request).await?;
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
        let caller = self.auth_admin(&request).await?;
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

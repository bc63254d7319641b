//! The Auth service, until metcd has users and roles: auth is off, so `AuthStatus` answers
//! disabled, `AuthDisable` succeeds, the user and role lists are empty, and every other call
//! answers etcd's "authentication is not enabled" (what etcd answers to `Authenticate` when
//! auth is off; etcd would also let users and roles be added before auth is enabled).

use tonic::{Request, Response, Status};

use super::rpc;
use super::{Grpc, status};

/// The service impl: the calls given in full, then the ones that answer "not enabled" (the
/// attribute must see every method, so the macro writes the whole impl).
macro_rules! auth_off {
    ({ $($given:tt)* } $($method:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl rpc::auth_server::Auth for Grpc {
            $($given)*
            $(
                async fn $method(
                    &self,
                    _: Request<rpc::$req>,
                ) -> Result<Response<rpc::$resp>, Status> {
                    Err(status::auth_not_enabled())
                }
            )*
        }
    };
}

auth_off! {
{
    async fn auth_status(
        &self,
        _: Request<rpc::AuthStatusRequest>,
    ) -> Result<Response<rpc::AuthStatusResponse>, Status> {
        Ok(Response::new(rpc::AuthStatusResponse {
            header: self.current_header(),
            enabled: false,
            auth_revision: 0,
        }))
    }

    // No user or role can exist yet: the lists are empty, as etcd's before any is added.
    async fn user_list(
        &self,
        _: Request<rpc::AuthUserListRequest>,
    ) -> Result<Response<rpc::AuthUserListResponse>, Status> {
        Ok(Response::new(rpc::AuthUserListResponse {
            header: self.current_header(),
            users: Vec::new(),
        }))
    }

    async fn role_list(
        &self,
        _: Request<rpc::AuthRoleListRequest>,
    ) -> Result<Response<rpc::AuthRoleListResponse>, Status> {
        Ok(Response::new(rpc::AuthRoleListResponse {
            header: self.current_header(),
            roles: Vec::new(),
        }))
    }

    async fn auth_disable(
        &self,
        _: Request<rpc::AuthDisableRequest>,
    ) -> Result<Response<rpc::AuthDisableResponse>, Status> {
        Ok(Response::new(rpc::AuthDisableResponse {
            header: self.current_header(),
        }))
    }

}
        auth_enable(AuthEnableRequest) -> AuthEnableResponse;
        authenticate(AuthenticateRequest) -> AuthenticateResponse;
        user_add(AuthUserAddRequest) -> AuthUserAddResponse;
        user_get(AuthUserGetRequest) -> AuthUserGetResponse;
        user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
        user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
        user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
        user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
        role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
        role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
        role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
        role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
        role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

//! Auth management: users, roles and permissions. Every change is for root, goes through the
//! log and is decided when applied (refused then if users or roles changed since its check);
//! passwords are hashed here first, and only once the caller is known to be root (a hash
//! costs ~19 MiB and tens of ms). Reads wait for a read barrier, so they see every change
//! acknowledged before them. A user may read its own record and the roles it holds.

use std::net::IpAddr;
use std::sync::Arc;

use super::Service;
use super::access::{Caller, password};
use super::error::Error;
use crate::store::Op;
use crate::store::auth::{AuthOp, AuthRefusal, AuthView, Role, User};

impl Service {
    /// Applies an auth change for root; answers the store revision after it.
    pub async fn auth_change(&self, caller: &Caller, op: AuthOp) -> Result<u64, Error> {
        self.node.check_running()?;
        caller.admin()?;
        let done = self
            .node
            .propose(caller.guard(Op::Auth(Box::new(op))))
            .await?;
        if let Some(refused) = done.refused {
            return Err(refused.into());
        }
        Ok(done.revision)
    }

    /// Turns auth on, with a new secret (drawn here) to sign the cluster's tokens.
    pub async fn auth_enable(&self, caller: &Caller) -> Result<u64, Error> {
        caller.admin()?;
        let mut secret = Vec::with_capacity(32);
        for _ in 0..4 {
            let n =
                crate::raft::storage::random_id().map_err(|e| Error::Internal(e.to_string()))?;
            secret.extend_from_slice(&n.to_be_bytes());
        }
        self.auth_change(caller, AuthOp::Enable { secret }).await
    }

    /// A password's hash for a user change (root only, checked before the costly hash).
    pub async fn hash_password(&self, caller: &Caller, password: String) -> Result<String, Error> {
        caller.admin()?;
        tokio::task::spawn_blocking(move || password::hash(&password))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::Internal)
    }

    /// Checks a password and issues a token (etcd's Authenticate).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<String, Error> {
        self.node.check_running()?;
        Ok(self.access.authenticate(user, password, from).await?)
    }

    /// The auth state after a read barrier.
    async fn auth_view(&self) -> Result<Arc<AuthView>, Error> {
        self.node.check_running()?;
        self.node.read_index().await?;
        Ok(self.access.view()?)
    }

    /// Whether auth is enabled and the auth revision (root, once auth is enabled).
    pub async fn auth_status(&self, caller: &Caller) -> Result<(bool, u64), Error> {
        caller.admin()?;
        let view = self.auth_view().await?;
        Ok((view.state.enabled, view.state.revision))
    }

    /// Every user's name (root).
    pub async fn auth_users(&self, caller: &Caller) -> Result<Vec<String>, Error> {
        caller.admin()?;
        let view = self.auth_view().await?;
        caller.still_current(&self.access)?;
        Ok(view.users.keys().cloned().collect())
    }

    /// Every role's name (root).
    pub async fn auth_roles(&self, caller: &Caller) -> Result<Vec<String>, Error> {
        caller.admin()?;
        let view = self.auth_view().await?;
        caller.still_current(&self.access)?;
        Ok(view.roles.keys().cloned().collect())
    }

    /// User `name` (the user itself, or root).
    pub async fn auth_user(&self, caller: &Caller, name: &str) -> Result<User, Error> {
        if caller.name() != Some(name) {
            caller.admin()?;
        }
        let view = self.auth_view().await?;
        let user = view.users.get(name).ok_or(AuthRefusal::UserNotFound);
        Ok(user.map_err(Error::AuthRefused)?.clone())
    }

    /// Role `name` (a user that holds it, or root).
    pub async fn auth_role(&self, caller: &Caller, name: &str) -> Result<Role, Error> {
        let view = self.auth_view().await?;
        let holds = caller
            .name()
            .and_then(|u| view.users.get(u))
            .is_some_and(|u| u.roles.iter().any(|r| r == name));
        if !holds {
            caller.admin()?;
        }
        let role = view.roles.get(name).ok_or(AuthRefusal::RoleNotFound);
        Ok(role.map_err(Error::AuthRefused)?.clone())
    }
}

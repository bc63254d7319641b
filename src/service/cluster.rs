//! Members, leadership and alarms: listing is for any user; every change is for root, and
//! travels to the leader with the caller, where auth checks it again when applied.

use super::Service;
use super::access::Caller;
use super::error::Error;
use crate::peer::client as peer_client;
use crate::raft::member_auth::MemberRequest;
use crate::raft::members::{MemberChange, MemberStatus};
use crate::raft::{NodeStatus, StateHash};
use crate::store::Op;

impl Service {
    /// The members, the leader and this member's raft state (listing members: any user).
    pub async fn member_list(&self) -> Result<NodeStatus, Error> {
        self.node.check_running()?;
        Ok(self.node.status().await?)
    }

    /// This member's full status (root: it shows the member's internals).
    pub async fn member_status(&self, caller: &Caller) -> Result<NodeStatus, Error> {
        caller.admin()?;
        Ok(self.node.status().await?)
    }

    /// The digest of the state machine at the applied index (root).
    pub async fn state_hash(&self, caller: &Caller) -> Result<StateHash, Error> {
        caller.admin()?;
        Ok(self.node.state_hash().await?)
    }

    /// The id for a member added without one: above every current and removed member's.
    pub fn next_member_id(&self) -> u64 {
        let m = self.admin.membership.read();
        let highest = m.members.keys().chain(&m.removed).max().copied();
        highest.unwrap_or(0) + 1
    }

    /// Adds, removes or promotes a member (on the leader), answering the members after it.
    pub async fn change_members(
        &self,
        caller: &Caller,
        change: MemberChange,
    ) -> Result<Vec<MemberStatus>, Error> {
        self.node.check_running()?;
        caller.admin()?;
        let request = MemberRequest {
            change,
            by: caller.principal(),
        };
        Ok(peer_client::execute(&self.admin, request, 0).await?)
    }

    /// Moves leadership to member `to` and answers once it leads.
    pub async fn transfer_leader(&self, caller: &Caller, to: u64) -> Result<(), Error> {
        self.node.check_running()?;
        caller.admin()?;
        Ok(self.node.transfer_leader(to).await?)
    }

    /// The members whose NOSPACE alarm is raised (any user).
    pub fn alarms(&self) -> Result<Vec<u64>, Error> {
        self.node.check_running()?;
        Ok(self.engine.alarms()?)
    }

    /// Raises or clears `member`'s NOSPACE alarm (root), through the log; answers whether
    /// that changed it.
    pub async fn set_alarm(
        &self,
        caller: &Caller,
        member: u64,
        active: bool,
    ) -> Result<bool, Error> {
        self.node.check_running()?;
        caller.admin()?;
        let was = self.engine.alarms()?.contains(&member);
        let op = Op::Alarm { member, active };
        let done = self.node.propose(caller.guard(op)).await?;
        if let Some(refused) = done.refused {
            return Err(refused.into());
        }
        Ok(was != active)
    }

    /// Clears every raised alarm (root); answers the members whose alarm was raised.
    pub async fn disarm_all(&self, caller: &Caller) -> Result<Vec<u64>, Error> {
        caller.admin()?;
        let raised = self.alarms()?;
        for member in &raised {
            self.set_alarm(caller, *member, false).await?;
        }
        Ok(raised)
    }

    /// A maintenance call that changes nothing here (defragment) or reads the whole store
    /// (a backup), or a member update: root.
    pub fn maintenance(&self, caller: &Caller) -> Result<(), Error> {
        self.node.check_running()?;
        Ok(caller.admin()?)
    }
}

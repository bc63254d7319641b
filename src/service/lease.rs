//! Leases: grant, keepalive, revoke, time-to-live and list, with their rules (etcd's TTL
//! bounds, lease ids, the quota on grants, write permission on every key a revocation
//! deletes, read permission on every key a time-to-live lists).

use super::Service;
use super::access::Caller;
use super::error::{Error, Invalid};
use super::kv::Barrier;
use crate::store::auth::Need;
use crate::store::lease::{LeaseView, MAX_TTL};
use crate::store::{Op, Refusal};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub id: u64,
    /// The TTL granted (at least the member's minimum).
    pub ttl: u64,
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    Renewed {
        ttl: u64,
        revision: u64,
    },
    /// No such lease (expired or revoked).
    NotFound {
        revision: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub revision: u64,
    /// Keys the revocation deleted.
    pub deleted: u64,
}

/// A lease as read, with the store revision of the state read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRead {
    pub revision: u64,
    /// `None`: no such lease.
    pub lease: Option<LeaseView>,
}

/// A lease id drawn at random: a positive int64, as etcd's.
fn new_lease_id() -> Result<u64, Error> {
    let drawn = crate::raft::storage::random_id()
        .map_err(|e| Error::Internal(format!("cannot draw a lease id: {e}")))?;
    Ok((drawn >> 1).max(1))
}

impl Service {
    /// The shortest TTL granted: 1.5 election timeouts, in whole seconds (etcd's minimum).
    pub fn min_ttl(&self) -> u64 {
        let election_ms =
            self.settings.tick.as_millis() as u64 * self.settings.election_ticks as u64;
        (election_ms * 3 / 2).div_ceil(1000).max(1)
    }

    /// Grants a lease of `ttl` seconds with id `id` (0: one drawn at random).
    pub async fn lease_grant(&self, caller: &Caller, ttl: u64, id: u64) -> Result<Granted, Error> {
        self.node.check_running()?;
        if ttl > MAX_TTL {
            return Err(Invalid::LeaseTtl(ttl).into());
        }
        let ttl = ttl.max(self.min_ttl());
        let id = match id {
            0 => new_lease_id()?,
            id if id > i64::MAX as u64 => {
                return Err(Invalid::Other(format!("lease id {id} exceeds {}", i64::MAX)).into());
            }
            id => id,
        };
        self.check_quota().await?;
        let done = self
            .node
            .propose(caller.guard(Op::LeaseGrant { id, ttl }))
            .await?;
        if let Some(refused) = done.refused {
            return Err(refused.into());
        }
        Ok(Granted {
            id,
            ttl,
            revision: done.revision,
        })
    }

    /// Renews lease `id` to its granted TTL.
    pub async fn lease_keep_alive(&self, caller: &Caller, id: u64) -> Result<KeepAlive, Error> {
        self.node.check_running()?;
        let done = self
            .node
            .propose(caller.guard(Op::LeaseKeepAlive { id }))
            .await?;
        match done.refused {
            None => Ok(KeepAlive::Renewed {
                ttl: done.ttl,
                revision: done.revision,
            }),
            Some(Refusal::LeaseNotFound(_)) => Ok(KeepAlive::NotFound {
                revision: done.revision,
            }),
            Some(refused) => Err(refused.into()),
        }
    }

    /// Revokes lease `id`, deleting its keys: the caller must be allowed to write each.
    pub async fn lease_revoke(&self, caller: &Caller, id: u64) -> Result<Revoked, Error> {
        self.node.check_running()?;
        caller.may_revoke(&self.engine, id)?;
        let done = self
            .node
            .propose(caller.guard(Op::LeaseRevoke { id }))
            .await?;
        if let Some(refused) = done.refused {
            return Err(refused.into());
        }
        Ok(Revoked {
            revision: done.revision,
            deleted: done.deleted,
        })
    }

    /// Lease `id` with its remaining time; with `keys`, the keys attached to it, which the
    /// caller must be allowed to read (etcd's rule for TimeToLive with keys).
    pub async fn lease_time_to_live(
        &self,
        caller: &Caller,
        id: u64,
        keys: bool,
        barrier: Barrier,
    ) -> Result<LeaseRead, Error> {
        self.node.check_running()?;
        self.barrier(barrier).await?;
        let read = self.engine.lease(id)?;
        let mut lease = read.value;
        if let Some(lease) = &mut lease {
            if keys {
                for key in &lease.keys {
                    caller.may(Need::Read, key, &[])?;
                }
            } else {
                lease.keys.clear();
            }
        }
        Ok(LeaseRead {
            revision: read.revision,
            lease,
        })
    }

    /// Every lease: (id, granted TTL, remaining ms), and the store revision read.
    pub async fn lease_list(&self, barrier: Barrier) -> Result<(u64, Vec<(u64, u64, u64)>), Error> {
        self.node.check_running()?;
        self.barrier(barrier).await?;
        let read = self.engine.leases()?;
        Ok((read.revision, read.value))
    }
}

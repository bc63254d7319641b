//! etcd's Election service, on the same queue of keys as a lock ([`super::lock`]):
//!
//! - Campaign `name` puts `name/<lease in hex>` = value (the caller's lease) unless it exists
//!   (then proclaims the new value on it), and waits until it is the key with the lowest
//!   create revision: the leader. It answers the leader key (name, key, create revision,
//!   lease), which Proclaim and Resign take back.
//! - Proclaim puts a new value on the leader key, only while that key exists with the same
//!   create revision; otherwise "election: not leader".
//! - Resign deletes the leader key under the same compare (a no-op if it is gone).
//! - Leader reads the key with the lowest create revision ("election: no leader" if none).
//! - Observe yields the leader's key-value now and at each change: each value the leader
//!   proclaims, then the next leader once its key is deleted.
//!
//! A campaign given up by its client deletes its key (etcd resigns it).

use std::collections::VecDeque;
use std::sync::Arc;

use super::Service;
use super::access::Caller;
use super::error::{Coordination, Error};
use super::kv::{Barrier, RangeRequest};
use super::lock::{Abandon, queue_key, queue_of};
use super::watch::Follow;
use crate::store::KeyValue;
use crate::store::range::KeyRange;
use crate::store::txn::{CmpResult, Compare, Target, Txn, TxnOp};
use crate::store::watch::{Event, EventKind};

/// What proves leadership (etcd's `LeaderKey`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: Vec<u8>,
    pub key: Vec<u8>,
    /// The key's create revision.
    pub rev: u64,
    pub lease: u64,
}

impl LeaderKey {
    /// The compare that holds while this key leads (or waits) as when it was made.
    fn still_ours(&self) -> Compare {
        Compare {
            range: KeyRange::key(self.key.clone()),
            target: Target::Create(self.rev),
            result: CmpResult::Equal,
        }
    }
}

impl Service {
    /// Campaigns in election `name` with `value` for `lease` (0: a new lease); answers once
    /// the caller leads, with its leader key and the revision of the campaign's write.
    pub async fn campaign(
        self: &Arc<Self>,
        caller: &Caller,
        name: &[u8],
        lease: u64,
        value: Vec<u8>,
    ) -> Result<(LeaderKey, u64), Error> {
        self.node.check_running()?;
        let lease = self.session_lease(caller, lease).await?;
        let (prefix, range) = queue_of(name);
        let key = queue_key(&prefix, lease);
        let q = self
            .enqueue(caller, &range, key, value.clone(), lease)
            .await?;
        let abandon = Abandon::new(self, caller, &q.key);
        let leader = LeaderKey {
            name: name.to_vec(),
            key: q.key.clone(),
            rev: q.rev,
            lease,
        };
        if q.existing.as_ref().is_some_and(|v| *v != value) {
            self.proclaim(caller, &leader, value).await?;
        }
        self.wait_turn(caller, &range, &q).await?;
        abandon.disarm();
        Ok((leader, q.revision))
    }

    /// Sets the leader's value, if `leader` still holds its key; answers the revision.
    pub async fn proclaim(
        &self,
        caller: &Caller,
        leader: &LeaderKey,
        value: Vec<u8>,
    ) -> Result<u64, Error> {
        let txn = Txn {
            compare: vec![leader.still_ours()],
            success: vec![TxnOp::put(leader.key.clone(), value, leader.lease)],
            failure: Vec::new(),
        };
        let done = self.txn(caller, txn).await?;
        if !done.result.succeeded {
            return Err(Coordination::NotLeader.into());
        }
        Ok(done.revision)
    }

    /// Gives up leadership: deletes the leader key if it is still the same one.
    pub async fn resign(&self, caller: &Caller, leader: &LeaderKey) -> Result<u64, Error> {
        let txn = Txn {
            compare: vec![leader.still_ours()],
            success: vec![TxnOp::delete(KeyRange::key(leader.key.clone()))],
            failure: Vec::new(),
        };
        Ok(self.txn(caller, txn).await?.revision)
    }

    /// The leader of election `name` (a linearizable read): its key-value and the revision.
    pub async fn leader(&self, caller: &Caller, name: &[u8]) -> Result<(KeyValue, u64), Error> {
        match self.first_in_queue(caller, name).await? {
            (Some(kv), revision) => Ok((kv, revision)),
            (None, _) => Err(Coordination::NoLeader.into()),
        }
    }

    async fn first_in_queue(
        &self,
        caller: &Caller,
        name: &[u8],
    ) -> Result<(Option<KeyValue>, u64), Error> {
        let read = self
            .range(
                caller,
                RangeRequest {
                    range: queue_of(name).1,
                    revision: None,
                    limit: None,
                    count_all: false,
                    barrier: Barrier::Linearizable,
                },
            )
            .await?;
        let first = read.kvs.into_iter().min_by_key(|kv| kv.create_revision);
        Ok((first, read.revision))
    }

    /// An observer of election `name`.
    pub fn observe(self: &Arc<Self>, caller: &Caller, name: &[u8]) -> Result<Observer, Error> {
        self.node.check_running()?;
        // Refused now, not at the first read, if the caller may not read the queue.
        caller.may_range(crate::store::auth::Need::Read, &queue_of(name).1)?;
        Ok(Observer {
            service: self.clone(),
            caller: caller.clone(),
            name: name.to_vec(),
            leader: None,
            pending: VecDeque::new(),
        })
    }
}

/// Follows an election's leader (see the module doc).
pub struct Observer {
    service: Arc<Service>,
    caller: Caller,
    name: Vec<u8>,
    /// Following the current leader's key.
    leader: Option<Follow>,
    /// Events on the leader's key read but not yet handled.
    pending: VecDeque<Event>,
}

impl Observer {
    /// The leader's key-value at its next change (the first call: the leader now, or the
    /// first one elected), with the revision it reflects.
    pub async fn next(&mut self) -> Result<(KeyValue, u64), Error> {
        loop {
            if let Some(follow) = &mut self.leader {
                if self.pending.is_empty() {
                    self.pending.extend(follow.next().await?);
                }
                if let Some(e) = self.pending.pop_front() {
                    if e.kind == EventKind::Put {
                        let revision = e.kv.mod_revision;
                        return Ok((e.kv, revision));
                    }
                    // The leader's key is gone: look for the next one.
                    self.leader = None;
                    self.pending.clear();
                }
                continue;
            }
            let svc = self.service.clone();
            let (first, revision) = svc.first_in_queue(&self.caller, &self.name).await?;
            let (kv, revision) = match first {
                Some(kv) => (kv, revision),
                // Nobody campaigns: the first key put under the prefix leads.
                None => {
                    let range = queue_of(&self.name).1;
                    let mut all = svc.follow(&self.caller, range, revision + 1)?;
                    loop {
                        let put = all
                            .next()
                            .await?
                            .into_iter()
                            .find(|e| e.kind == EventKind::Put);
                        if let Some(e) = put {
                            let revision = e.kv.mod_revision;
                            break (e.kv, revision);
                        }
                    }
                }
            };
            self.leader =
                Some(svc.follow(&self.caller, KeyRange::key(kv.key.clone()), revision + 1)?);
            return Ok((kv, revision));
        }
    }
}

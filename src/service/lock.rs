//! etcd's Lock service, built as etcd builds it: on keys, leases, revisions and watches, so a
//! lock is nothing but keys any client can read, and the store's rules (auth, quota, the log)
//! apply to it unchanged.
//!
//! - Lock `name` puts `name/<lease in hex>` (empty value, the caller's lease) unless that key
//!   exists; the key with the lowest create revision under `name/` holds the lock, the others
//!   wait in create order. A waiter waits for the key just before its own to be deleted, then
//!   looks again.
//! - The key lives as long as its lease: a holder whose lease ends loses the lock, and the
//!   next waiter gets it. A waiter whose own key is deleted while it waits is told
//!   "mutex: session is expired" (etcd 3.5's answer; 3.4 answers that it holds a lock whose
//!   key is gone).
//! - Unlock deletes the key. A Lock call given up by its client (or failing) deletes its key
//!   too, so it does not hold a lock nobody will release.
//!
//! Fencing: a holder's writes should compare the lock key's create revision (etcd's
//! `IsOwner`): once the key is gone, such a write fails, so two holders never both write.

use std::sync::Arc;

use super::Service;
use super::access::Caller;
use super::error::{Coordination, Error};
use super::kv::{Barrier, DeleteRequest, RangeRequest};
use crate::store::KeyValue;
use crate::store::range::KeyRange;
use crate::store::txn::{CmpResult, Compare, Target, Txn, TxnOp, TxnResponse};
use crate::store::watch::EventKind;

/// The TTL of the lease made for a call that names none (etcd's session default).
pub const SESSION_TTL: u64 = 60;

/// A key put in a queue (a lock's or an election's).
#[derive(Clone, Debug)]
pub struct Queued {
    pub key: Vec<u8>,
    /// The key's create revision: its place in the queue.
    pub rev: u64,
    /// The lease it is attached to.
    pub lease: u64,
    /// The revision of the transaction that queued it.
    pub revision: u64,
    /// The key existed already (the same lease queued it before) with this value.
    pub existing: Option<Vec<u8>>,
    /// Every key under the prefix, as the transaction saw them.
    pub queue: Vec<KeyValue>,
}

/// A lock held: its key and the revision the answer reflects.
#[derive(Clone, Debug)]
pub struct Held {
    pub key: Vec<u8>,
    /// The lease the key is attached to (made for the call if it named none).
    pub lease: u64,
    pub revision: u64,
}

/// Deletes a queued key when dropped armed: a call given up (its client went away) or failed
/// leaves no key behind to block the queue until its lease ends.
pub struct Abandon {
    service: Arc<Service>,
    caller: Caller,
    key: Option<Vec<u8>>,
}

impl Abandon {
    pub fn new(service: &Arc<Service>, caller: &Caller, key: &[u8]) -> Self {
        Abandon {
            service: service.clone(),
            caller: caller.clone(),
            key: Some(key.to_vec()),
        }
    }

    /// The call succeeded: the key stays.
    pub fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let (service, caller) = (self.service.clone(), self.caller.clone());
        // Dropped inside a request's task: the runtime is there.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let req = DeleteRequest {
                    range: KeyRange::key(key.clone()),
                    prev_kv: false,
                    cond: None,
                };
                if let Err(e) = service.delete(&caller, req).await {
                    tracing::warn!(error = %e, "could not delete an abandoned lock or campaign key");
                }
            });
        }
    }
}

/// The queue of `name`: every key under `name/`.
pub fn queue_of(name: &[u8]) -> (Vec<u8>, KeyRange) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let range = KeyRange::prefix(prefix.clone());
    (prefix, range)
}

/// The key the lease `lease` queues under `prefix` (etcd: the prefix, then the lease in hex).
pub fn queue_key(prefix: &[u8], lease: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

impl Service {
    /// The lease a call's keys are attached to: the one it names, or (none named) a new one of
    /// [`SESSION_TTL`] seconds, as etcd's server makes.
    pub async fn session_lease(&self, caller: &Caller, lease: u64) -> Result<u64, Error> {
        match lease {
            0 => Ok(self.lease_grant(caller, SESSION_TTL, 0).await?.id),
            id => Ok(id),
        }
    }

    /// Puts `key` = `value` with `lease` unless it exists, and reads the queue under `range`,
    /// in one transaction.
    pub async fn enqueue(
        &self,
        caller: &Caller,
        range: &KeyRange,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
    ) -> Result<Queued, Error> {
        let queue = TxnOp::Get {
            range: range.clone(),
            limit: 0,
            revision: 0,
        };
        let txn = Txn {
            compare: vec![Compare {
                range: KeyRange::key(key.clone()),
                target: Target::Create(0),
                result: CmpResult::Equal,
            }],
            success: vec![TxnOp::put(key.clone(), value, lease), queue.clone()],
            failure: vec![
                TxnOp::Get {
                    range: KeyRange::key(key.clone()),
                    limit: 0,
                    revision: 0,
                },
                queue,
            ],
        };
        let done = self.txn(caller, txn).await?;
        let mut responses = done.result.responses.into_iter();
        let (first, second) = (responses.next(), responses.next());
        let Some(TxnResponse::Get { kvs: queue, .. }) = second else {
            return Err(Error::Internal("the queue read is missing".into()));
        };
        let (rev, existing) = if done.result.succeeded {
            (done.revision, None)
        } else {
            match first {
                Some(TxnResponse::Get { kvs, .. }) if !kvs.is_empty() => {
                    (kvs[0].create_revision, Some(kvs[0].value.clone()))
                }
                _ => return Err(Error::Internal("the queued key vanished".into())),
            }
        };
        Ok(Queued {
            key,
            rev,
            lease,
            revision: done.revision,
            existing,
            queue,
        })
    }

    /// Waits until no key under `range` was created before `q.rev` (the caller is first in
    /// the queue); answers the revision at which that was seen. Fails if `q.key` itself is
    /// deleted meanwhile.
    pub async fn wait_turn(
        &self,
        caller: &Caller,
        range: &KeyRange,
        q: &Queued,
    ) -> Result<u64, Error> {
        let (mut queue, mut revision) = (q.queue.clone(), q.revision);
        loop {
            if !queue.iter().any(|kv| kv.key == q.key) {
                return Err(Coordination::SessionExpired.into());
            }
            let before = queue
                .iter()
                .filter(|kv| kv.create_revision < q.rev)
                .max_by_key(|kv| kv.create_revision);
            let Some(before) = before else {
                return Ok(revision);
            };
            // Woken by the deletion of the key just before ours, or of ours.
            let mut follow = self.follow(caller, range.clone(), revision + 1)?;
            'wait: loop {
                for e in follow.next().await? {
                    if e.kind == EventKind::Delete && (e.kv.key == before.key || e.kv.key == q.key)
                    {
                        break 'wait;
                    }
                }
            }
            let read = self
                .range(
                    caller,
                    RangeRequest {
                        range: range.clone(),
                        revision: None,
                        limit: None,
                        count_all: false,
                        barrier: Barrier::Linearizable,
                    },
                )
                .await?;
            (queue, revision) = (read.kvs, read.revision);
        }
    }

    /// Takes the lock `name` for `lease` (0: a new lease of [`SESSION_TTL`]), waiting for
    /// the holders queued before.
    pub async fn lock(
        self: &Arc<Self>,
        caller: &Caller,
        name: &[u8],
        lease: u64,
    ) -> Result<Held, Error> {
        self.node.check_running()?;
        let lease = self.session_lease(caller, lease).await?;
        let (prefix, range) = queue_of(name);
        let key = queue_key(&prefix, lease);
        let q = self.enqueue(caller, &range, key, Vec::new(), lease).await?;
        let abandon = Abandon::new(self, caller, &q.key);
        let revision = self.wait_turn(caller, &range, &q).await?;
        abandon.disarm();
        Ok(Held {
            key: q.key,
            lease,
            revision,
        })
    }

    /// Releases a lock (or leaves its queue): deletes `key`. Answers the revision after it.
    pub async fn unlock(&self, caller: &Caller, key: &[u8]) -> Result<u64, Error> {
        let req = DeleteRequest {
            range: KeyRange::key(key.to_vec()),
            prev_kv: false,
            cond: None,
        };
        match self.delete(caller, req).await? {
            super::kv::DeleteOutcome::Deleted { revision, .. } => Ok(revision),
            super::kv::DeleteOutcome::PreconditionFailed { .. } => Err(Error::Internal(
                "an unconditional delete was refused".into(),
            )),
        }
    }
}

//! Key operations: put, delete, range, txn and compact, each with all of its rules (see the
//! module list in [`super`]). A plain put or delete is proposed as its own op; one that asks
//! for the previous version (`prev_kv`, `ignore_value`, `ignore_lease`) goes in as a
//! one-operation transaction, so that version is read when the write is applied, in log order.

use std::time::Duration;

use super::Service;
use super::access::Caller;
use super::error::{Error, Invalid};
use crate::store::auth::Need;
use crate::store::range::KeyRange;
use crate::store::txn::{PutOptions, Txn, TxnOp, TxnResponse, TxnResult};
use crate::store::{Cond, KeyValue, Op, OpResult};

/// How fresh a read must be before it reads this member's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Barrier {
    /// A ReadIndex round: the read sees every write acknowledged before it began.
    Linearizable,
    /// This member's state as it is.
    Serializable,
    /// This member's state once it has applied this store revision (bounded wait).
    MinRevision(u64),
}

/// A put: `key` to `value`, attached to `lease` (0: none).
#[derive(Clone, Debug, Default)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: u64,
    /// Answer the version the put replaced.
    pub prev_kv: bool,
    /// Keep the key's value (etcd's `ignore_value`) or lease (`ignore_lease`).
    pub ignore_value: bool,
    pub ignore_lease: bool,
    /// Decided when applied: the put happens only if this holds.
    pub cond: Option<Cond>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Put {
        revision: u64,
        prev: Option<KeyValue>,
    },
    /// The precondition did not hold: the key's mod revision then (0: absent).
    PreconditionFailed { current: u64 },
}

/// A delete of every key in `range`.
#[derive(Clone, Debug)]
pub struct DeleteRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
    /// Single keys only: decided when applied.
    pub cond: Option<Cond>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted {
        revision: u64,
        deleted: u64,
        prev: Vec<KeyValue>,
    },
    PreconditionFailed {
        current: u64,
    },
}

/// A read of `range` as of `revision` (`None`: the current one).
#[derive(Clone, Debug)]
pub struct RangeRequest {
    pub range: KeyRange,
    pub revision: Option<u64>,
    /// Keys to return at most (`None`: all; `Some(0)`: none, for a count).
    pub limit: Option<usize>,
    /// Count every key in the range, beyond the limit (etcd's `count`); otherwise `count` is
    /// the number of keys returned.
    pub count_all: bool,
    pub barrier: Barrier,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeOutcome {
    /// The store revision of the state read.
    pub revision: u64,
    pub kvs: Vec<KeyValue>,
    pub count: u64,
}

/// A transaction applied: which branch ran and what its operations answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The store revision after it.
    pub revision: u64,
    /// Whether it wrote anything (then `revision` is its own, else the one it read at).
    pub changed: bool,
    pub result: TxnResult,
}

impl Service {
    /// Keys and range ends within `--max-key-bytes`, values within `--max-request-bytes`.
    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        self.check_key_len(key.len())
    }

    fn check_key_len(&self, len: usize) -> Result<(), Error> {
        let max = self.settings.max_key_bytes;
        if len > max {
            return Err(Error::TooLarge(format!(
                "key of {len} bytes exceeds --max-key-bytes {max}"
            )));
        }
        Ok(())
    }

    /// Waits until local state may be read under `barrier`.
    pub async fn barrier(&self, barrier: Barrier) -> Result<(), Error> {
        match barrier {
            Barrier::Linearizable => {
                self.node.read_index().await?;
            }
            Barrier::Serializable => {}
            Barrier::MinRevision(rev) => {
                self.node.wait_revision(rev).await?;
            }
        }
        Ok(())
    }

    /// Proposes `op` bound to the caller's auth revision; a refusal at apply is an error.
    async fn propose(&self, caller: &Caller, op: Op) -> Result<OpResult, Error> {
        let result = self.node.propose(caller.guard(op)).await?;
        match result.refused {
            Some(refused) => Err(refused.into()),
            None => Ok(result),
        }
    }

    pub async fn put(&self, caller: &Caller, req: PutRequest) -> Result<PutOutcome, Error> {
        self.node.check_running()?;
        if req.key.is_empty() {
            return Err(Invalid::EmptyKey.into());
        }
        self.check_key(&req.key)?;
        let max = self.settings.max_request_bytes;
        if req.value.len() > max {
            return Err(Error::TooLarge(format!(
                "value of {} bytes exceeds --max-request-bytes {max}",
                req.value.len()
            )));
        }
        caller.may_put(&self.engine, &req.key, req.lease)?;
        // A precondition or the previous version tells what the key holds: that is a read.
        if req.prev_kv || req.cond.is_some() {
            caller.may(Need::Read, &req.key, &[])?;
        }
        let as_txn = req.prev_kv || req.ignore_value || req.ignore_lease;
        if as_txn && req.cond.is_some() {
            return Err(Invalid::Other(
                "a precondition cannot be combined with prev_kv, ignore_value or ignore_lease"
                    .into(),
            )
            .into());
        }
        if !as_txn {
            self.check_quota().await?;
            let op = Op::Put {
                key: req.key,
                value: req.value,
                lease: req.lease,
                cond: req.cond,
            };
            let done = self.propose(caller, op).await?;
            return Ok(match done.conflict {
                Some(current) => PutOutcome::PreconditionFailed { current },
                None => PutOutcome::Put {
                    revision: done.revision,
                    prev: None,
                },
            });
        }
        let op = TxnOp::Put {
            key: req.key,
            value: req.value,
            lease: req.lease,
            options: PutOptions {
                prev_kv: req.prev_kv,
                ignore_value: req.ignore_value,
                ignore_lease: req.ignore_lease,
            },
        };
        let done = self.txn(caller, Txn::of(op)).await?;
        let prev = match done.result.responses.into_iter().next() {
            Some(TxnResponse::Put { prev }) => prev,
            _ => None,
        };
        Ok(PutOutcome::Put {
            revision: done.revision,
            prev,
        })
    }

    pub async fn delete(
        &self,
        caller: &Caller,
        req: DeleteRequest,
    ) -> Result<DeleteOutcome, Error> {
        self.node.check_running()?;
        let range = req.range;
        self.check_key_len(range.longest_bound())?;
        caller.may_range(Need::Write, &range)?;
        if req.prev_kv || req.cond.is_some() {
            caller.may_range(Need::Read, &range)?;
        }
        if req.prev_kv {
            if req.cond.is_some() {
                return Err(Invalid::Other(
                    "a precondition cannot be combined with prev_kv".into(),
                )
                .into());
            }
            let op = TxnOp::Delete {
                range,
                prev_kv: true,
            };
            let done = self.txn(caller, Txn::of(op)).await?;
            let (deleted, prev) = match done.result.responses.into_iter().next() {
                Some(TxnResponse::Delete { deleted, prev }) => (deleted, prev),
                _ => (0, Vec::new()),
            };
            return Ok(DeleteOutcome::Deleted {
                revision: done.revision,
                deleted,
                prev,
            });
        }
        let op = match (range.is_single_key(), req.cond) {
            (true, cond) => Op::Delete {
                key: range.start,
                cond,
            },
            (false, None) => {
                let (start, end) = range.bounds();
                Op::DeleteRange { start, end }
            }
            (false, Some(_)) => {
                return Err(Invalid::Other(
                    "a precondition is for a single key (use a transaction)".into(),
                )
                .into());
            }
        };
        let done = self.propose(caller, op).await?;
        Ok(match done.conflict {
            Some(current) => DeleteOutcome::PreconditionFailed { current },
            None => DeleteOutcome::Deleted {
                revision: done.revision,
                deleted: done.deleted,
                prev: Vec::new(),
            },
        })
    }

    /// Reads keys. A single key is a point read; `count` is then 0 or 1.
    pub async fn range(&self, caller: &Caller, req: RangeRequest) -> Result<RangeOutcome, Error> {
        self.node.check_running()?;
        caller.may_range(Need::Read, &req.range)?;
        self.barrier(req.barrier).await?;
        let at = req.revision.filter(|r| *r > 0);
        let limit = req.limit.unwrap_or(usize::MAX);
        let outcome = if req.range.is_single_key() {
            let read = self.engine.get(&req.range.start, at)?;
            let count = u64::from(read.value.is_some());
            RangeOutcome {
                revision: read.revision,
                kvs: read.value.into_iter().take(limit).collect(),
                count,
            }
        } else {
            let (start, end) = req.range.bounds();
            if req.count_all {
                let read = self
                    .engine
                    .range_counted(&start, end.as_deref(), limit, at)?;
                let (kvs, count) = read.value;
                RangeOutcome {
                    revision: read.revision,
                    kvs,
                    count,
                }
            } else {
                let read = self.engine.range(&start, end.as_deref(), limit, at)?;
                RangeOutcome {
                    revision: read.revision,
                    count: read.value.len() as u64,
                    kvs: read.value,
                }
            }
        };
        // A read is refused if users or roles changed while it ran (etcd's rule).
        caller.still_current(&self.access)?;
        Ok(outcome)
    }

    /// A transaction, through the log: its reads too, so it sees one state.
    pub async fn txn(&self, caller: &Caller, txn: Txn) -> Result<TxnOutcome, Error> {
        self.node.check_running()?;
        // The rules the entry will be applied by (see `store::txn::apply`): v0.1.0's while a
        // v0.1.0 member may apply it.
        let checked = if self.engine.v0_2_rules() {
            txn.check()
        } else {
            txn.check_v0_1()
        };
        checked.map_err(Invalid::Txn)?;
        // Every key and range bound, nested ones too (the whole request is bounded by the face).
        self.check_key_len(txn.sizes().0)?;
        caller.may_txn(&self.engine, &txn)?;
        if txn.writes() {
            self.check_quota().await?;
        }
        let done = self.propose(caller, Op::Txn(Box::new(txn))).await?;
        let result = done
            .txn
            .ok_or_else(|| Error::Internal("the transaction was not applied as one".into()))?;
        Ok(TxnOutcome {
            revision: done.revision,
            changed: done.changed,
            result: *result,
        })
    }

    /// Compacts history through `revision` on every member (root only: it drops history
    /// every user reads). With `physical`, answers once this member has removed it.
    /// Answers the store revision after it.
    pub async fn compact(
        &self,
        caller: &Caller,
        revision: u64,
        physical: bool,
    ) -> Result<u64, Error> {
        self.node.check_running()?;
        caller.admin()?;
        // etcd's first compactable revision is 0 on a store never compacted: compacting
        // through it removes nothing, and is not refused.
        if revision == 0 && self.engine.meta().compact_revision == 0 {
            self.barrier(Barrier::Linearizable).await?;
            return Ok(self.engine.revision());
        }
        let done = self.propose(caller, Op::Compact { revision }).await?;
        if physical {
            // The compacted history is removed in the background, step by step.
            let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
            while self.engine.compaction_pending() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(crate::raft::RequestError::Timeout.into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(done.revision)
    }
}

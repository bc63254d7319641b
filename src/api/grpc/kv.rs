//! The KV service: Range, Put, DeleteRange, Txn and Compact, with etcd's semantics, mapped
//! onto the service's operations ([`crate::service::kv`], which holds every rule); this file
//! translates etcd's requests and shapes the answers (sort, filters, limits, txn headers).
//!
//! - Range is linearizable (a ReadIndex round) unless `serializable`. Like etcd's, it counts
//!   every key in the range (`count`) before filters and limit; with a sort or a revision
//!   filter it reads the whole range, filters, sorts (stable: ties stay in key order), then
//!   cuts to `limit` and sets `more`.
//! - Put, DeleteRange and Txn are proposed through the log and answered once applied here
//!   (a put or delete asking for the previous version goes in as a one-operation
//!   transaction, so that version is read when the write is applied, in log order).
//! - Txn: compares on every target, the four results, ranges (`range_end`) in compares, and
//!   nested transactions; a range inside a transaction takes the same options as Range. All
//!   of a transaction, reads included, goes through the log.
//! - Compact: through the log; with `physical`, answered once this member has removed the
//!   compacted history.

use prost::Message;
use std::cmp::Ordering;
use tonic::{Request, Response, Status};

use super::pb::mvccpb;
use super::rpc::{self, compare, range_request, request_op, response_op};
use super::{Grpc, from_i64, status, to_i64};
use crate::service::kv::{
    Barrier, DeleteOutcome, DeleteRequest, PutOutcome, PutRequest, RangeRequest,
};
use crate::store::KeyValue;
use crate::store::range::KeyRange;
use crate::store::txn::{
    CmpResult, Compare, PutOptions, Target, Txn, TxnOp, TxnResponse, TxnResult,
};

pub(super) fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: to_i64(kv.create_revision),
        mod_revision: to_i64(kv.mod_revision),
        version: to_i64(kv.version),
        value: kv.value,
        lease: to_i64(kv.lease),
    }
}

/// What a Range asks for beyond the keys: applied to what the store returns.
#[derive(Clone, Copy)]
struct Shape {
    limit: u64,
    order: range_request::SortOrder,
    target: range_request::SortTarget,
    keys_only: bool,
    count_only: bool,
    min_mod: u64,
    max_mod: u64,
    min_create: u64,
    max_create: u64,
}

impl Shape {
    fn of(r: &rpc::RangeRequest) -> Result<Shape, Status> {
        let order =
            range_request::SortOrder::try_from(r.sort_order).map_err(|_| status::invalid_sort())?;
        let target = range_request::SortTarget::try_from(r.sort_target)
            .map_err(|_| status::invalid_sort())?;
        Ok(Shape {
            limit: from_i64(r.limit),
            order,
            target,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod: from_i64(r.min_mod_revision),
            max_mod: from_i64(r.max_mod_revision),
            min_create: from_i64(r.min_create_revision),
            max_create: from_i64(r.max_create_revision),
        })
    }

    fn filtered(&self) -> bool {
        self.min_mod + self.max_mod + self.min_create + self.max_create > 0
    }

    /// Sorting is asked for (etcd sorts ascending by default when the target is not the key).
    fn order(&self) -> range_request::SortOrder {
        use range_request::{SortOrder, SortTarget};
        match (self.order, self.target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        }
    }

    /// How many keys to read from the store: all of them when filtering or sorting, else one
    /// past the limit (to know `more`); 0 is no limit. As etcd: with sort order NONE and a
    /// target other than the key, only the keys read (the first ones, in key order) are
    /// sorted (ascending), then cut to the limit.
    fn read_limit(&self) -> u64 {
        if self.filtered() || self.order != range_request::SortOrder::None || self.limit == 0 {
            0
        } else {
            self.limit.saturating_add(1)
        }
    }

    /// Filters, sorts and cuts `kvs` (read with [`Shape::read_limit`]); `count` is the
    /// store's count of the whole range.
    fn answer(&self, mut kvs: Vec<KeyValue>, count: u64) -> (Vec<mvccpb::KeyValue>, bool, i64) {
        use range_request::{SortOrder, SortTarget};
        let keep = |kv: &KeyValue| {
            (self.min_mod == 0 || kv.mod_revision >= self.min_mod)
                && (self.max_mod == 0 || kv.mod_revision <= self.max_mod)
                && (self.min_create == 0 || kv.create_revision >= self.min_create)
                && (self.max_create == 0 || kv.create_revision <= self.max_create)
        };
        if self.filtered() {
            kvs.retain(keep);
        }
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match self.target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        match self.order() {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by(by),
            SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        }
        let mut more = false;
        if self.limit > 0 && kvs.len() as u64 > self.limit {
            kvs.truncate(self.limit as usize);
            more = true;
        }
        if self.count_only {
            return (Vec::new(), false, to_i64(count));
        }
        let kvs = kvs
            .into_iter()
            .map(|mut item| {
                if self.keys_only {
                    item.value = Vec::new();
                }
                kv(item)
            })
            .collect();
        (kvs, more, to_i64(count))
    }
}

fn compare(c: &rpc::Compare) -> Result<Compare, Status> {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target)
        .map_err(|_| Status::invalid_argument("etcdserver: unknown compare target"))?;
    let result = CompareResult::try_from(c.result)
        .map_err(|_| Status::invalid_argument("etcdserver: unknown compare result"))?;
    // A missing or mismatched operand compares as zero (or an empty value), as in etcd.
    let operand = match (target, &c.target_union) {
        (CompareTarget::Version, Some(TargetUnion::Version(n)))
        | (CompareTarget::Create, Some(TargetUnion::CreateRevision(n)))
        | (CompareTarget::Mod, Some(TargetUnion::ModRevision(n)))
        | (CompareTarget::Lease, Some(TargetUnion::Lease(n))) => *n,
        _ => 0,
    };
    let range = KeyRange::etcd(&c.key, &c.range_end);
    if operand < 0 {
        // etcd compares signed numbers. Versions, revisions and lease ids are never negative,
        // so a negative operand is below every value: `>` and `!=` always hold, `<` and `=`
        // never do. Said with the store's unsigned compare on a mod revision no key reaches.
        let always = matches!(result, CompareResult::Greater | CompareResult::NotEqual);
        return Ok(Compare {
            range,
            target: Target::Mod(u64::MAX),
            result: if always {
                CmpResult::NotEqual
            } else {
                CmpResult::Equal
            },
        });
    }
    let n = from_i64(operand);
    let target = match target {
        CompareTarget::Version => Target::Version(n),
        CompareTarget::Create => Target::Create(n),
        CompareTarget::Mod => Target::Mod(n),
        CompareTarget::Lease => Target::Lease(n),
        CompareTarget::Value => Target::Value(match &c.target_union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    let result = match result {
        CompareResult::Equal => CmpResult::Equal,
        CompareResult::NotEqual => CmpResult::NotEqual,
        CompareResult::Less => CmpResult::Less,
        CompareResult::Greater => CmpResult::Greater,
    };
    Ok(Compare {
        range,
        target,
        result,
    })
}

/// How each operation's answer is shaped, in the transaction's own nesting.
enum OpShape {
    Range(Shape),
    Write,
    Txn(TxnShape),
}

struct TxnShape {
    success: Vec<OpShape>,
    failure: Vec<OpShape>,
}

fn put_op(p: &rpc::PutRequest) -> Result<TxnOp, Status> {
    if p.key.is_empty() {
        return Err(status::empty_key());
    }
    Ok(TxnOp::Put {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: from_i64(p.lease),
        options: PutOptions {
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        },
    })
}

/// etcd's checks of a transaction request, in its order (checkTxnRequest): the longest list
/// within `budget` (a nested transaction gets what its parent's longest list leaves), keys
/// given in compares, then each operation in turn (its key; a put's options; a nested
/// transaction's own checks). Overlapping writes are checked after, by the service.
fn check_request(t: &rpc::TxnRequest, budget: usize) -> Result<(), Status> {
    let longest = t.compare.len().max(t.success.len()).max(t.failure.len());
    if longest > budget {
        return Err(status::too_many_ops());
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(status::empty_key());
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(status::empty_key());
            }
            Some(request_op::Request::RequestPut(p)) => {
                if p.key.is_empty() {
                    return Err(status::empty_key());
                }
                if p.ignore_value && !p.value.is_empty() {
                    return Err(status::value_provided());
                }
                if p.ignore_lease && p.lease != 0 {
                    return Err(status::lease_provided());
                }
            }
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(status::empty_key());
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                check_request(inner, budget - longest)?;
            }
            None => return Err(status::key_not_found()),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The store revision a read inside a transaction asks for. etcd refuses a revision below
/// its first one, which is -1 until the first compaction: so -1 reads the current state on
/// a store never compacted, and every other negative revision is compacted. Once compacted
/// (at 2 or later), revision 1 says so when applied, on the branch that runs, as etcd's.
fn txn_read_revision(revision: i64, compacted: u64) -> Result<u64, Status> {
    match revision {
        0.. => Ok(from_i64(revision)),
        -1 if compacted == 0 => Ok(0),
        _ if compacted >= 2 => Ok(1),
        _ => Err(status::compacted()),
    }
}

fn ops(list: &[rpc::RequestOp], compacted: u64) -> Result<(Vec<TxnOp>, Vec<OpShape>), Status> {
    let mut ops = Vec::with_capacity(list.len());
    let mut shapes = Vec::with_capacity(list.len());
    for op in list {
        let (op, shape) = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                if r.key.is_empty() {
                    return Err(status::empty_key());
                }
                let shape = Shape::of(r)?;
                let op = TxnOp::Get {
                    range: KeyRange::etcd(&r.key, &r.range_end),
                    limit: shape.read_limit(),
                    revision: txn_read_revision(r.revision, compacted)?,
                };
                (op, OpShape::Range(shape))
            }
            Some(request_op::Request::RequestPut(p)) => (put_op(p)?, OpShape::Write),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.key.is_empty() {
                    return Err(status::empty_key());
                }
                let op = TxnOp::Delete {
                    range: KeyRange::etcd(&d.key, &d.range_end),
                    prev_kv: d.prev_kv,
                };
                (op, OpShape::Write)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let (txn, shape) = txn(t, compacted)?;
                (TxnOp::Txn(Box::new(txn)), OpShape::Txn(shape))
            }
            None => {
                return Err(Status::invalid_argument(
                    "etcdserver: a transaction operation without a request",
                ));
            }
        };
        ops.push(op);
        shapes.push(shape);
    }
    Ok((ops, shapes))
}

fn txn(t: &rpc::TxnRequest, compacted: u64) -> Result<(Txn, TxnShape), Status> {
    let (success, success_shapes) = ops(&t.success, compacted)?;
    let (failure, failure_shapes) = ops(&t.failure, compacted)?;
    let txn = Txn {
        compare: t.compare.iter().map(compare).collect::<Result<_, _>>()?,
        success,
        failure,
    };
    let shape = TxnShape {
        success: success_shapes,
        failure: failure_shapes,
    };
    Ok((txn, shape))
}

impl Grpc {
    /// The answer to a transaction that ended at `revision` having started at `begin`.
    fn txn_response(
        &self,
        result: TxnResult,
        shape: &TxnShape,
        begin: u64,
        revision: u64,
    ) -> rpc::TxnResponse {
        let mut wrote = false;
        rpc::TxnResponse {
            header: self.header(revision),
            succeeded: result.succeeded,
            responses: inner_responses(result, shape, begin, &mut wrote),
        }
    }
}

/// The answers of a transaction's operations. Each carries only a revision in its header, as
/// etcd's: the transaction's revision as that operation left it (`begin` until its first
/// write, then one more), so a read before any write shows the revision it read.
fn inner_responses(
    result: TxnResult,
    shape: &TxnShape,
    begin: u64,
    wrote: &mut bool,
) -> Vec<rpc::ResponseOp> {
    let shapes = if result.succeeded {
        &shape.success
    } else {
        &shape.failure
    };
    let header = |wrote: bool| {
        Some(rpc::ResponseHeader {
            revision: to_i64(begin + u64::from(wrote)),
            ..Default::default()
        })
    };
    result
        .responses
        .into_iter()
        .zip(shapes)
        .map(|(r, s)| {
            let response = match (r, s) {
                (TxnResponse::Put { prev }, _) => {
                    *wrote = true;
                    response_op::Response::ResponsePut(rpc::PutResponse {
                        header: header(*wrote),
                        prev_kv: prev.map(kv),
                    })
                }
                (TxnResponse::Delete { deleted, prev }, _) => {
                    *wrote |= deleted > 0;
                    response_op::Response::ResponseDeleteRange(rpc::DeleteRangeResponse {
                        header: header(*wrote),
                        deleted: to_i64(deleted),
                        prev_kvs: prev.into_iter().map(kv).collect(),
                    })
                }
                (TxnResponse::Get { kvs, count, .. }, OpShape::Range(shape)) => {
                    let (kvs, more, count) = shape.answer(kvs, count);
                    response_op::Response::ResponseRange(rpc::RangeResponse {
                        header: header(*wrote),
                        kvs,
                        more,
                        count,
                    })
                }
                (TxnResponse::Txn(nested), OpShape::Txn(shape)) => {
                    let succeeded = nested.succeeded;
                    let responses = inner_responses(*nested, shape, begin, wrote);
                    response_op::Response::ResponseTxn(rpc::TxnResponse {
                        // etcd leaves a nested transaction's header empty.
                        header: Some(rpc::ResponseHeader::default()),
                        succeeded,
                        responses,
                    })
                }
                // Shapes are built from the same request as the operations.
                (TxnResponse::Get { .. } | TxnResponse::Txn(_), _) => {
                    response_op::Response::ResponseRange(rpc::RangeResponse::default())
                }
            };
            rpc::ResponseOp {
                response: Some(response),
            }
        })
        .collect()
}

#[tonic::async_trait]
impl rpc::kv_server::Kv for Grpc {
    async fn range(
        &self,
        request: Request<rpc::RangeRequest>,
    ) -> Result<Response<rpc::RangeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(status::empty_key());
        }
        let shape = Shape::of(&r)?;
        let limit = match shape.read_limit() {
            _ if shape.count_only => Some(0),
            0 => None,
            n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let req = RangeRequest {
            range: KeyRange::etcd(&r.key, &r.range_end),
            revision: (r.revision > 0).then(|| from_i64(r.revision)),
            limit,
            count_all: true,
            barrier: match r.serializable {
                true => Barrier::Serializable,
                false => Barrier::Linearizable,
            },
        };
        let read = self.state.range(&caller, req).await?;
        let (kvs, more, count) = shape.answer(read.kvs, read.count);
        Ok(Response::new(rpc::RangeResponse {
            header: self.header(read.revision),
            kvs,
            more,
            count,
        }))
    }

    async fn put(
        &self,
        request: Request<rpc::PutRequest>,
    ) -> Result<Response<rpc::PutResponse>, Status> {
        let caller = self.caller(&request).await?;
        let p = request.into_inner();
        let req = PutRequest {
            key: p.key,
            value: p.value,
            lease: from_i64(p.lease),
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
            cond: None,
        };
        match self.state.put(&caller, req).await? {
            PutOutcome::Put { revision, prev } => Ok(Response::new(rpc::PutResponse {
                header: self.header(revision),
                prev_kv: prev.map(kv),
            })),
            PutOutcome::PreconditionFailed { .. } => Err(Status::internal(
                "etcdserver: a put without a precondition failed one",
            )),
        }
    }

    async fn delete_range(
        &self,
        request: Request<rpc::DeleteRangeRequest>,
    ) -> Result<Response<rpc::DeleteRangeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let d = request.into_inner();
        if d.key.is_empty() {
            return Err(status::empty_key());
        }
        let req = DeleteRequest {
            range: KeyRange::etcd(&d.key, &d.range_end),
            prev_kv: d.prev_kv,
            cond: None,
        };
        match self.state.delete(&caller, req).await? {
            DeleteOutcome::Deleted {
                revision,
                deleted,
                prev,
            } => Ok(Response::new(rpc::DeleteRangeResponse {
                header: self.header(revision),
                deleted: to_i64(deleted),
                prev_kvs: prev.into_iter().map(kv).collect(),
            })),
            DeleteOutcome::PreconditionFailed { .. } => Err(Status::internal(
                "etcdserver: a delete without a precondition failed one",
            )),
        }
    }

    async fn txn(
        &self,
        request: Request<rpc::TxnRequest>,
    ) -> Result<Response<rpc::TxnResponse>, Status> {
        // A transaction is bounded as a whole, as etcd bounds every request.
        if request.get_ref().encoded_len() > self.state.settings.max_request_bytes {
            return Err(status::request_too_large());
        }
        check_request(request.get_ref(), crate::store::txn::MAX_OPS)?;
        let compacted = self.state.engine.meta().compact_revision;
        let (txn, shape) = txn(request.get_ref(), compacted)?;
        let caller = self.caller(&request).await?;
        let done = self.state.txn(&caller, txn).await?;
        let begin = done.revision - u64::from(done.changed);
        Ok(Response::new(self.txn_response(
            done.result,
            &shape,
            begin,
            done.revision,
        )))
    }

    async fn compact(
        &self,
        request: Request<rpc::CompactionRequest>,
    ) -> Result<Response<rpc::CompactionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let c = request.into_inner();
        let revision = self
            .state
            .compact(&caller, from_i64(c.revision), c.physical)
            .await?;
        Ok(Response::new(rpc::CompactionResponse {
            header: self.header(revision),
        }))
    }
}

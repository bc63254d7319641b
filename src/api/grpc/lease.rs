//! The Lease service: Grant, Revoke, KeepAlive (a stream), TimeToLive and Leases, over the
//! same replicated leases as `/_leases`. As in etcd: a keepalive or TimeToLive of an unknown
//! lease answers TTL 0 or -1 rather than an error, and remaining TTLs are whole seconds
//! rounded down.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::rpc;
use super::{Grpc, Outbound, from_i64, outbound, status, to_i64};
use crate::service::access::Caller;
use crate::api::leases::{MAX_TTL, min_ttl, new_lease_id};
use crate::store::auth::Need;
use crate::store::{Op, Refusal};

impl Grpc {
    /// A linearizable read barrier (leases are read from the applied state).
    async fn lease_barrier(&self) -> Result<(), Status> {
        self.state.node.check_running()?;
        self.state.node.read_index().await?;
        Ok(())
    }

    /// Renews lease `id` for `caller`: its granted TTL, or 0 if it does not exist.
    async fn renew(&self, caller: &Caller, id: u64) -> Result<(u64, u64), Status> {
        let op = caller.guard(Op::LeaseKeepAlive { id });
        let result = self.state.node.propose(op).await?;
        match result.refused {
            None => Ok((result.ttl, result.revision)),
            Some(Refusal::LeaseNotFound(_)) => Ok((0, result.revision)),
            Some(r) => Err(r.into()),
        }
    }
}

#[tonic::async_trait]
impl rpc::lease_server::Lease for Grpc {
    async fn lease_grant(
        &self,
        request: Request<rpc::LeaseGrantRequest>,
    ) -> Result<Response<rpc::LeaseGrantResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        self.state.node.check_running()?;
        if from_i64(r.ttl) > MAX_TTL {
            return Err(status::lease_ttl_too_large());
        }
        let ttl = from_i64(r.ttl).max(min_ttl(&self.state));
        let id = match r.id {
            0 => new_lease_id()?,
            id if id < 0 => {
                return Err(Status::invalid_argument(
                    "etcdserver: a lease id must be positive",
                ));
            }
            id => from_i64(id),
        };
        self.state.check_quota().await?;
        let result = self
            .state
            .node
            .propose(caller.guard(Op::LeaseGrant { id, ttl }))
            .await?;
        if let Some(r) = result.refused {
            return Err(r.into());
        }
        Ok(Response::new(rpc::LeaseGrantResponse {
            header: self.header(result.revision),
            id: to_i64(id),
            ttl: to_i64(ttl),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<rpc::LeaseRevokeRequest>,
    ) -> Result<Response<rpc::LeaseRevokeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = from_i64(request.into_inner().id);
        self.state.node.check_running()?;
        caller
            .may_revoke(&self.state.engine, id)
            .map_err(super::status::denied)?;
        let result = self
            .state
            .node
            .propose(caller.guard(Op::LeaseRevoke { id }))
            .await?;
        if let Some(r) = result.refused {
            return Err(r.into());
        }
        Ok(Response::new(rpc::LeaseRevokeResponse {
            header: self.header(result.revision),
        }))
    }

    type LeaseKeepAliveStream = Outbound<rpc::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<rpc::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut caller = self.caller(&request).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let mut closing = self.state.closing.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    () = crate::api::stopping(&mut closing) => return,
                };
                let answer = match next {
                    Some(Ok(req)) => {
                        // Each keepalive is a new request: the stream's credential must still
                        // stand (a stream opened while auth was off ends once it is on; a
                        // stale or expired token, a deleted user, a new password end it).
                        if let Err(denied) = caller.admit(&this.state.access) {
                            let _ = tx.send(Err(super::status::denied(denied))).await;
                            return;
                        }
                        let id = from_i64(req.id);
                        this.renew(&caller, id).await.map(|(ttl, revision)| {
                            rpc::LeaseKeepAliveResponse {
                                header: this.header(revision),
                                id: req.id,
                                ttl: to_i64(ttl),
                            }
                        })
                    }
                    // The client closed its side, or the stream broke.
                    Some(Err(_)) | None => return,
                };
                if tx.send(answer).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(outbound(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<rpc::LeaseTimeToLiveRequest>,
    ) -> Result<Response<rpc::LeaseTimeToLiveResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        self.lease_barrier().await?;
        let read = self.state.engine.lease(from_i64(r.id))?;
        // Listing the keys reads them (etcd's rule).
        if r.keys {
            for key in read.value.iter().flat_map(|l| &l.keys) {
                caller
                    .may(Need::Read, key, &[])
                    .map_err(super::status::denied)?;
            }
        }
        let answer = match read.value {
            Some(lease) => rpc::LeaseTimeToLiveResponse {
                header: self.header(read.revision),
                id: r.id,
                ttl: to_i64(lease.remaining_ms / 1000),
                granted_ttl: to_i64(lease.ttl),
                keys: if r.keys { lease.keys } else { Vec::new() },
            },
            None => rpc::LeaseTimeToLiveResponse {
                header: self.header(read.revision),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(answer))
    }

    async fn lease_leases(
        &self,
        request: Request<rpc::LeaseLeasesRequest>,
    ) -> Result<Response<rpc::LeaseLeasesResponse>, Status> {
        self.caller(&request).await?;
        self.lease_barrier().await?;
        let read = self.state.engine.leases()?;
        let leases = read
            .value
            .into_iter()
            .map(|(id, _, _)| rpc::LeaseStatus { id: to_i64(id) })
            .collect();
        Ok(Response::new(rpc::LeaseLeasesResponse {
            header: self.header(read.revision),
            leases,
        }))
    }
}

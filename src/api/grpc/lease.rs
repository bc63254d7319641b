//! The Lease service: Grant, Revoke, KeepAlive (a stream), TimeToLive and Leases, over the
//! same replicated leases as `/_leases`. As in etcd: a keepalive or TimeToLive of an unknown
//! lease answers TTL 0 or -1 rather than an error, and remaining TTLs are whole seconds
//! rounded down.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::rpc;
use super::{Grpc, Outbound, from_i64, outbound, to_i64};
use crate::service::kv::Barrier;
use crate::service::lease::KeepAlive;

#[tonic::async_trait]
impl rpc::lease_server::Lease for Grpc {
    async fn lease_grant(
        &self,
        request: Request<rpc::LeaseGrantRequest>,
    ) -> Result<Response<rpc::LeaseGrantResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        if r.id < 0 {
            return Err(Status::invalid_argument(
                "etcdserver: a lease id must be positive",
            ));
        }
        let granted = self
            .state
            .lease_grant(&caller, from_i64(r.ttl), from_i64(r.id))
            .await?;
        Ok(Response::new(rpc::LeaseGrantResponse {
            header: self.header(granted.revision),
            id: to_i64(granted.id),
            ttl: to_i64(granted.ttl),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<rpc::LeaseRevokeRequest>,
    ) -> Result<Response<rpc::LeaseRevokeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = from_i64(request.into_inner().id);
        let done = self.state.lease_revoke(&caller, id).await?;
        Ok(Response::new(rpc::LeaseRevokeResponse {
            header: self.header(done.revision),
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
                        let renewed = this.state.lease_keep_alive(&caller, id).await;
                        renewed.map_err(Status::from).map(|kept| {
                            let (ttl, revision) = match kept {
                                KeepAlive::Renewed { ttl, revision } => (ttl, revision),
                                KeepAlive::NotFound { revision } => (0, revision),
                            };
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
        let read = self
            .state
            .lease_time_to_live(&caller, from_i64(r.id), r.keys, Barrier::Linearizable)
            .await?;
        let answer = match read.lease {
            Some(lease) => rpc::LeaseTimeToLiveResponse {
                header: self.header(read.revision),
                id: r.id,
                ttl: to_i64(lease.remaining_ms / 1000),
                granted_ttl: to_i64(lease.ttl),
                keys: lease.keys,
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
        let (revision, leases) = self.state.lease_list(Barrier::Linearizable).await?;
        let leases = leases
            .into_iter()
            .map(|(id, _, _)| rpc::LeaseStatus { id: to_i64(id) })
            .collect();
        Ok(Response::new(rpc::LeaseLeasesResponse {
            header: self.header(revision),
            leases,
        }))
    }
}

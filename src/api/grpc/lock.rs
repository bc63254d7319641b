//! The Lock and Election services (etcd's v3lockpb and v3electionpb): translations of
//! [`crate::service::lock`] and [`crate::service::election`], which hold their rules.
//!
//! Errors carry etcd's messages with code UNKNOWN, every one: etcd serves these services
//! through an in-process client, whose errors reach grpc-go as plain Go errors
//! ("etcdserver: requested lease not found", "election: not leader", ...).

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::pb::{v3electionpb as epb, v3lockpb as lpb};
use super::{Grpc, Outbound, from_i64, kv::kv, outbound, to_i64};
use crate::service::election::LeaderKey;
use crate::service::error::Coordination;

/// etcd's form of an error from these services: its message, code UNKNOWN.
fn plain(e: impl Into<Status>) -> Status {
    Status::unknown(e.into().message().to_string())
}

#[tonic::async_trait]
impl lpb::lock_server::Lock for Grpc {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let r = request.into_inner();
        let held = self
            .state
            .lock(&caller, &r.name, from_i64(r.lease))
            .await
            .map_err(plain)?;
        Ok(Response::new(lpb::LockResponse {
            header: self.header(held.revision),
            key: held.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let revision = self
            .state
            .unlock(&caller, &request.into_inner().key)
            .await
            .map_err(plain)?;
        Ok(Response::new(lpb::UnlockResponse {
            header: self.header(revision),
        }))
    }
}

fn leader_key(k: Option<epb::LeaderKey>) -> Result<LeaderKey, Status> {
    let k =
        k.ok_or_else(|| Status::from(crate::service::Error::from(Coordination::MissingLeaderKey)))?;
    Ok(LeaderKey {
        name: k.name,
        key: k.key,
        rev: from_i64(k.rev),
        lease: from_i64(k.lease),
    })
}

#[tonic::async_trait]
impl epb::election_server::Election for Grpc {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let r = request.into_inner();
        let (leader, revision) = self
            .state
            .campaign(&caller, &r.name, from_i64(r.lease), r.value)
            .await
            .map_err(plain)?;
        Ok(Response::new(epb::CampaignResponse {
            header: self.header(revision),
            leader: Some(epb::LeaderKey {
                name: leader.name,
                key: leader.key,
                rev: to_i64(leader.rev),
                lease: to_i64(leader.lease),
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let r = request.into_inner();
        let leader = leader_key(r.leader).map_err(plain)?;
        let revision = self
            .state
            .proclaim(&caller, &leader, r.value)
            .await
            .map_err(plain)?;
        Ok(Response::new(epb::ProclaimResponse {
            header: self.header(revision),
        }))
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let (leader, revision) = self
            .state
            .leader(&caller, &request.into_inner().name)
            .await
            .map_err(plain)?;
        Ok(Response::new(epb::LeaderResponse {
            header: self.header(revision),
            kv: Some(kv(leader)),
        }))
    }

    type ObserveStream = Outbound<epb::LeaderResponse>;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let mut observer = self
            .state
            .observe(&caller, &request.into_inner().name)
            .map_err(plain)?;
        let (tx, rx) = mpsc::channel(16);
        let g = self.clone();
        tokio::spawn(async move {
            loop {
                let sent = tokio::select! {
                    next = observer.next() => match next {
                        Ok((leader, revision)) => tx.send(Ok(epb::LeaderResponse {
                            header: g.header(revision),
                            kv: Some(kv(leader)),
                        })).await,
                        Err(e) => {
                            let _ = tx.send(Err(plain(e))).await;
                            return;
                        }
                    },
                    () = tx.closed() => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(outbound(rx)))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let caller = self.caller(&request).await.map_err(plain)?;
        let leader = leader_key(request.into_inner().leader).map_err(plain)?;
        let revision = self.state.resign(&caller, &leader).await.map_err(plain)?;
        Ok(Response::new(epb::ResignResponse {
            header: self.header(revision),
        }))
    }
}

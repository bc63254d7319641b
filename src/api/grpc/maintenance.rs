//! The Maintenance service:
//! - Status: the etcd API version metcd implements ([`super::ETCD_API_VERSION`]; metcd's own
//!   version is in its log and `/_status`), the engine's size on disk, leader, raft commit
//!   and applied index, term, learner flag.
//! - Hash and HashKV: the digest of the state machine that `/_hash` gives (every key's
//!   versions from the compacted revision on, and the newest one at or below it), folded to
//!   32 bits; members that applied the same entries answer the same number. HashKV's
//!   revision is not honoured: the digest is of the applied state.
//! - Alarm: no alarm is raised yet; listing answers none, deactivating succeeds.
//! - Defragment: nothing to do on any engine (see the README's etcd compatibility section).
//! - MoveLeader: as `POST /_leader`.

use tonic::{Request, Response, Status};

use super::{Grpc, Outbound, rpc, status, to_i64};
use crate::metrics::dir_size;

impl Grpc {
    /// The state digest folded to etcd's 32-bit hash, with the revision it was taken at.
    async fn hash32(&self) -> Result<(u32, u64), Status> {
        let h = self.state.node.state_hash().await?;
        let full = u64::from_str_radix(&h.hash, 16)
            .map_err(|e| Status::internal(format!("etcdserver: bad state hash: {e}")))?;
        Ok(((full >> 32) as u32 ^ full as u32, h.revision))
    }
}

#[tonic::async_trait]
impl rpc::maintenance_server::Maintenance for Grpc {
    async fn alarm(
        &self,
        _request: Request<rpc::AlarmRequest>,
    ) -> Result<Response<rpc::AlarmResponse>, Status> {
        self.state.node.check_running()?;
        Ok(Response::new(rpc::AlarmResponse {
            header: self.current_header(),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<rpc::StatusRequest>,
    ) -> Result<Response<rpc::StatusResponse>, Status> {
        let s = self.state.node.status().await?;
        let engine_dir = self.state.settings.data_dir.join("engine");
        let db_size = tokio::task::spawn_blocking(move || dir_size(&engine_dir))
            .await
            .unwrap_or(0);
        let is_learner = s
            .members
            .iter()
            .any(|m| m.id == s.id && m.role == "learner");
        Ok(Response::new(rpc::StatusResponse {
            header: self.header(s.revision),
            version: super::ETCD_API_VERSION.into(),
            db_size: to_i64(db_size),
            leader: s.leader,
            raft_index: s.commit_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors: Vec::new(),
            db_size_in_use: to_i64(db_size),
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<rpc::DefragmentRequest>,
    ) -> Result<Response<rpc::DefragmentResponse>, Status> {
        self.state.node.check_running()?;
        Ok(Response::new(rpc::DefragmentResponse {
            header: self.current_header(),
        }))
    }

    async fn hash(
        &self,
        _request: Request<rpc::HashRequest>,
    ) -> Result<Response<rpc::HashResponse>, Status> {
        let (hash, revision) = self.hash32().await?;
        Ok(Response::new(rpc::HashResponse {
            header: self.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        _request: Request<rpc::HashKvRequest>,
    ) -> Result<Response<rpc::HashKvResponse>, Status> {
        let (hash, revision) = self.hash32().await?;
        Ok(Response::new(rpc::HashKvResponse {
            header: self.header(revision),
            hash,
            compact_revision: to_i64(self.state.engine.meta().compact_revision),
        }))
    }

    type SnapshotStream = Outbound<rpc::SnapshotResponse>;

    async fn snapshot(
        &self,
        _request: Request<rpc::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "etcdserver: snapshot is not served yet",
        ))
    }

    async fn move_leader(
        &self,
        request: Request<rpc::MoveLeaderRequest>,
    ) -> Result<Response<rpc::MoveLeaderResponse>, Status> {
        let to = request.into_inner().target_id;
        self.state.node.check_running()?;
        let known = self.state.admin.membership.read().url_of(to).is_some();
        if to == 0 || !known {
            return Err(status::bad_leader_transferee());
        }
        self.state.node.transfer_leader(to).await?;
        Ok(Response::new(rpc::MoveLeaderResponse {
            header: self.current_header(),
        }))
    }
}

//! The Maintenance service:
//! - Status: the etcd API version metcd implements ([`super::ETCD_API_VERSION`]), the
//!   engine's size on disk, leader, raft commit and applied index, term, learner flag; and in
//!   fields of metcd's own (1000-1002), this member's release, the cluster version and each
//!   member's release.
//! - Hash and HashKV: the digest of the state machine that `/_hash` gives (every key's
//!   versions from the compacted revision on, and the newest one at or below it), folded to
//!   32 bits; members that applied the same entries answer the same number. HashKV's
//!   revision is not honoured: the digest is of the applied state.
//! - Alarm: the NOSPACE alarms (raised past `--quota-backend-bytes`, replicated through the
//!   log): list, activate, deactivate (`etcdctl alarm disarm`). Status lists them as errors.
//! - Defragment: nothing to do on any engine (docs/api-grpc.md, "Differences from etcd").
//! - MoveLeader: as `POST /_leader`.

use std::io::{Read, Seek, Write};
use std::path::Path;

use tonic::{Request, Response, Status};

use super::{Grpc, Outbound, rpc, status, to_i64};
use crate::metrics::dir_size;
use crate::raft::members::AdminError;
use crate::service::Error;
use crate::service::access::Caller;
use crate::store::KvStore;

/// Bytes per Snapshot message.
const CHUNK: usize = 1 << 20;

/// Writes a backup to an unnamed temporary file in `dir`: the file, its length and the store
/// revision it holds. (An unnamed file disappears with its last handle, even on a crash.)
fn backup_file(kv: &KvStore, dir: &Path) -> crate::Result<(std::fs::File, u64, u64)> {
    let revision = kv.revision();
    let mut file = tempfile_in(dir)?;
    let len = {
        let mut out = std::io::BufWriter::with_capacity(CHUNK, &mut file);
        let len = crate::backup::write(kv, &mut out)?;
        out.flush()?;
        len
    };
    file.rewind()?;
    Ok((file, len, revision))
}

/// An unnamed file in `dir` (O_TMPFILE), removed when closed.
fn tempfile_in(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

/// The sha256 a backup file ends with (see [`crate::backup`]).
const DIGEST: u64 = 32;

/// Streams a backup file as etcd streams its snapshot: chunks of the data, each with the data
/// bytes that remain after it, then the sha256 alone in a last message (remaining 0), which
/// clients append to the file as etcd's.
fn send_backup(
    mut file: std::fs::File,
    len: u64,
    header: Option<rpc::ResponseHeader>,
    tx: tokio::sync::mpsc::Sender<Result<rpc::SnapshotResponse, Status>>,
) {
    let data = len.saturating_sub(DIGEST);
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while sent < len {
        // The data part, then the digest on its own.
        let want = if sent < data {
            (data - sent).min(CHUNK as u64)
        } else {
            len - sent
        } as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                let _ =
                    tx.blocking_send(Err(Status::internal("etcdserver: backup file ended early")));
                return;
            }
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("etcdserver: {e}"))));
                return;
            }
        };
        sent += n as u64;
        let chunk = rpc::SnapshotResponse {
            header,
            remaining_bytes: data.saturating_sub(sent),
            blob: buf[..n].to_vec(),
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return;
        }
    }
}

impl Grpc {
    /// The state digest folded to etcd's 32-bit hash, with the revision it was taken at.
    async fn hash32(&self, caller: &Caller) -> Result<(u32, u64), Status> {
        let h = self.state.state_hash(caller).await?;
        let full = u64::from_str_radix(&h.hash, 16)
            .map_err(|e| Status::internal(format!("etcdserver: bad state hash: {e}")))?;
        Ok(((full >> 32) as u32 ^ full as u32, h.revision))
    }
}

#[tonic::async_trait]
impl rpc::maintenance_server::Maintenance for Grpc {
    async fn alarm(
        &self,
        request: Request<rpc::AlarmRequest>,
    ) -> Result<Response<rpc::AlarmResponse>, Status> {
        use rpc::alarm_request::AlarmAction;
        let action = AlarmAction::try_from(request.get_ref().action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        // Listing needs a user; raising or clearing, root (etcd 3.4.43's rule: the service's).
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let kind = rpc::AlarmType::try_from(r.alarm).unwrap_or(rpc::AlarmType::None);
        let nospace = |member| rpc::AlarmMember {
            member_id: member,
            alarm: rpc::AlarmType::Nospace as i32,
        };
        let alarms = match action {
            // Only NOSPACE exists here; asking for CORRUPT finds none.
            AlarmAction::Get if kind == rpc::AlarmType::Corrupt => Vec::new(),
            AlarmAction::Get => self.state.alarms()?.into_iter().map(nospace).collect(),
            // Clearing an alarm that is not raised changes nothing (etcd: none answered).
            AlarmAction::Deactivate if kind != rpc::AlarmType::Nospace => {
                self.state.maintenance(&caller)?;
                Vec::new()
            }
            AlarmAction::Activate | AlarmAction::Deactivate => {
                if kind != rpc::AlarmType::Nospace {
                    return Err(Status::invalid_argument(
                        "etcdserver: metcd raises only NOSPACE alarms",
                    ));
                }
                let active = action == AlarmAction::Activate;
                // etcd answers the alarms the call changed.
                match self.state.set_alarm(&caller, r.member_id, active).await? {
                    true => vec![nospace(r.member_id)],
                    false => Vec::new(),
                }
            }
        };
        // etcd answers alarms without a header.
        Ok(Response::new(rpc::AlarmResponse {
            header: None,
            alarms,
        }))
    }

    async fn status(
        &self,
        request: Request<rpc::StatusRequest>,
    ) -> Result<Response<rpc::StatusResponse>, Status> {
        let caller = self.caller(&request).await?;
        let s = self.state.member_status(&caller).await?;
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
            errors: self
                .state
                .engine
                .alarms()?
                .into_iter()
                .map(|m| format!("memberID:{m} alarm:NOSPACE "))
                .collect(),
            db_size_in_use: to_i64(db_size),
            is_learner,
            metcd_version: s.version.into(),
            metcd_cluster_version: s.cluster_version.clone(),
            metcd_member_versions: s
                .members
                .iter()
                .map(|m| rpc::MetcdMemberVersion {
                    id: m.id,
                    version: m.version.clone().unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn defragment(
        &self,
        request: Request<rpc::DefragmentRequest>,
    ) -> Result<Response<rpc::DefragmentResponse>, Status> {
        let caller = self.caller(&request).await?;
        self.state.maintenance(&caller)?;
        // etcd answers without a header.
        Ok(Response::new(rpc::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<rpc::HashRequest>,
    ) -> Result<Response<rpc::HashResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (hash, revision) = self.hash32(&caller).await?;
        Ok(Response::new(rpc::HashResponse {
            header: self.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<rpc::HashKvRequest>,
    ) -> Result<Response<rpc::HashKvResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (hash, revision) = self.hash32(&caller).await?;
        Ok(Response::new(rpc::HashKvResponse {
            header: self.header(revision),
            hash,
            // etcd: -1 until the first compaction.
            compact_revision: match self.state.engine.meta().compact_revision {
                0 => -1,
                c => to_i64(c),
            },
        }))
    }

    type SnapshotStream = Outbound<rpc::SnapshotResponse>;

    async fn snapshot(
        &self,
        request: Request<rpc::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let caller = self.caller(&request).await?;
        self.state.maintenance(&caller)?;
        // Written to a file first (one consistent view, however slow the client), then sent
        // with the bytes remaining; the file goes when the stream ends.
        let store = self.state.engine.clone();
        let dir = self.state.settings.data_dir.join("snap");
        let (file, len, revision) = tokio::task::spawn_blocking(move || backup_file(&store, &dir))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let header = self.header(revision);
        tokio::task::spawn_blocking(move || send_backup(file, len, header, tx));
        Ok(Response::new(super::outbound(rx)))
    }

    async fn move_leader(
        &self,
        request: Request<rpc::MoveLeaderRequest>,
    ) -> Result<Response<rpc::MoveLeaderResponse>, Status> {
        let caller = self.caller(&request).await?;
        let to = request.into_inner().target_id;
        match self.state.transfer_leader(&caller, to).await {
            Err(Error::Admin(AdminError::NotFound(_))) => {
                return Err(status::bad_leader_transferee());
            }
            other => other?,
        }
        // etcd answers without a header.
        Ok(Response::new(rpc::MoveLeaderResponse { header: None }))
    }
}

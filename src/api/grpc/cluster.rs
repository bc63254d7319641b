//! The Cluster service, mapped onto metcd's membership (the same rules and refusals as
//! `/_members`):
//! - MemberList: every member with its peer URL, client URL (each member tells it over the
//!   peer port; one not heard from has none, and no name, so etcdctl shows it "unstarted") and
//!   learner flag.
//! - MemberAdd: metcd member ids are small numbers the operator starts the member with
//!   (`--id`), so the new member gets the next unused one (above every current and removed
//!   id) and the answer names it; start it with that `--id` and `--join`. One peer URL.
//! - MemberRemove, MemberPromote: as `/_members/<id>`.
//! - MemberUpdate: metcd does not move a member to a new peer URL; the current URL is
//!   accepted, any other refused.

use tonic::{Request, Response, Status};

use super::{Grpc, rpc, status};
use crate::config::{parse_member_url, parse_url};
use crate::peer::client as peer_client;
use crate::raft::members::{AdminError, MemberChange, MemberStatus};
use crate::service::Error;
use crate::service::access::Caller;

impl Grpc {
    /// Members as etcd lists them, with client URLs asked of each peer at once.
    async fn members(&self, list: Vec<MemberStatus>) -> Vec<rpc::Member> {
        let me = self.state.settings.id;
        let own = self.state.settings.client_url();
        let asks = list.iter().map(|m| {
            let authority = self
                .state
                .settings
                .peer_dial
                .get(&m.id)
                .cloned()
                .unwrap_or_else(|| crate::config::authority_of(&m.peer_url).to_string());
            let own = own.clone();
            let id = m.id;
            async move {
                if id == me {
                    return own;
                }
                match peer_client::ask(&authority).await {
                    Ok(info) if info.member_id == id => info.client_url,
                    _ => String::new(),
                }
            }
        });
        let client_urls = futures_util::future::join_all(asks).await;
        list.into_iter()
            .zip(client_urls)
            .map(|(m, client_url)| rpc::Member {
                id: m.id,
                // As etcd: a member not (yet) heard from has no name.
                name: if client_url.is_empty() {
                    String::new()
                } else {
                    m.name.unwrap_or_else(|| format!("metcd-{}", m.id))
                },
                peer_ur_ls: vec![m.peer_url],
                client_ur_ls: if client_url.is_empty() {
                    Vec::new()
                } else {
                    vec![client_url]
                },
                is_learner: m.role == "learner",
            })
            .collect()
    }

    /// Makes a membership change (on the leader), answering the members after it; a refusal
    /// gets etcd's message where `refused` knows it.
    async fn change(
        &self,
        caller: &Caller,
        change: MemberChange,
        refused: fn(&str) -> Option<Status>,
    ) -> Result<Vec<MemberStatus>, Status> {
        match self.state.change_members(caller, change).await {
            Ok(list) => Ok(list),
            Err(Error::Admin(AdminError::Conflict(msg) | AdminError::Relayed(409, msg))) => {
                Err(refused(&msg)
                    .unwrap_or_else(|| Status::failed_precondition(format!("etcdserver: {msg}"))))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn not_enough_started(msg: &str) -> Option<Status> {
    msg.contains("quorum").then(|| {
        Status::failed_precondition(
            "etcdserver: re-configuration failed due to not enough started members",
        )
    })
}

fn promote_refused(msg: &str) -> Option<Status> {
    Some(if msg.contains("already a voter") {
        status::member_not_learner()
    } else {
        status::learner_not_ready()
    })
}

fn add_refused(msg: &str) -> Option<Status> {
    msg.contains("peer URL").then(status::peer_url_exists)
}

#[tonic::async_trait]
impl rpc::cluster_server::Cluster for Grpc {
    async fn member_list(
        &self,
        request: Request<rpc::MemberListRequest>,
    ) -> Result<Response<rpc::MemberListResponse>, Status> {
        self.caller(&request).await?;
        let s = self.state.member_list().await?;
        let members = self.members(s.members).await;
        Ok(Response::new(rpc::MemberListResponse {
            header: self.current_header(),
            members,
        }))
    }

    async fn member_add(
        &self,
        request: Request<rpc::MemberAddRequest>,
    ) -> Result<Response<rpc::MemberAddResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let [url] = r.peer_ur_ls.as_slice() else {
            return Err(status::member_bad_urls());
        };
        let peer_tls = self.state.settings.peer_tls.is_some();
        let url = parse_member_url(url, peer_tls).map_err(|_| status::member_bad_urls())?;
        let id = self.state.next_member_id();
        let change = MemberChange::Add {
            id,
            url: url.clone(),
            learner: r.is_learner,
        };
        let list = self.change(&caller, change, add_refused).await?;
        let members = self.members(list).await;
        Ok(Response::new(rpc::MemberAddResponse {
            header: self.current_header(),
            member: Some(rpc::Member {
                id,
                name: String::new(),
                peer_ur_ls: vec![url],
                client_ur_ls: Vec::new(),
                is_learner: r.is_learner,
            }),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<rpc::MemberRemoveRequest>,
    ) -> Result<Response<rpc::MemberRemoveResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = request.into_inner().id;
        let list = self
            .change(&caller, MemberChange::Remove { id }, not_enough_started)
            .await?;
        let members = self.members(list).await;
        Ok(Response::new(rpc::MemberRemoveResponse {
            header: self.current_header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<rpc::MemberUpdateRequest>,
    ) -> Result<Response<rpc::MemberUpdateResponse>, Status> {
        let caller = self.caller(&request).await?;
        self.state.maintenance(&caller)?;
        let r = request.into_inner();
        let current = self
            .state
            .admin
            .membership
            .read()
            .url_of(r.id)
            .map(str::to_string);
        let Some(current) = current else {
            return Err(status::member_not_found());
        };
        let same = match r.peer_ur_ls.as_slice() {
            [url] => parse_url(url).is_ok_and(|(url, _)| url == current),
            _ => false,
        };
        if !same {
            return Err(Status::failed_precondition(format!(
                "etcdserver: metcd does not change a member's peer URL (member {} is at {current}); \
                 remove the member and add a new one at the new URL",
                r.id
            )));
        }
        let s = self.state.node.status().await?;
        let members = self.members(s.members).await;
        Ok(Response::new(rpc::MemberUpdateResponse {
            header: self.current_header(),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<rpc::MemberPromoteRequest>,
    ) -> Result<Response<rpc::MemberPromoteResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = request.into_inner().id;
        let list = self
            .change(&caller, MemberChange::Promote { id }, promote_refused)
            .await?;
        let members = self.members(list).await;
        Ok(Response::new(rpc::MemberPromoteResponse {
            header: self.current_header(),
            members,
        }))
    }
}

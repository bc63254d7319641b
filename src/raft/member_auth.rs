//! Who asked for a membership change, carried from the member that took the request to the
//! leader that decides it and into the committed entry, so that with auth on the change is
//! checked against the client who asked, where it is decided and again where it is applied.
//!
//! ```text
//! /raft/admin body:   {"op": "add" | "promote" | "remove", ..., "by": {"user", "auth_revision"}}
//! conf change context: add: the member's attributes (MemberInfo) and "by";
//!                      promote, remove: {"by": ...}, or empty without one
//! ```
//! `by` is absent when auth was off where the request was taken. Earlier versions ignore it
//! (they read the change alone), which is why the rule below is applied by this version only:
//! docs/upgrading.md.
//!
//! The rule ([`auth_refusal`]), decided from replicated auth state only, so every member
//! decides alike: with auth off, anyone; with auth on, the caller must be root under the very
//! auth revision it was checked at (etcd's "revision of auth store is old" otherwise), and a
//! change without a caller is refused, except the leader's own promotion of a caught-up
//! learner at apply.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

pub use super::members::AuthDenial;
use super::members::{MemberChange, MemberInfo};
use crate::store::auth::AuthView;

/// The client behind a membership change: its user and the auth revision its permission was
/// checked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user: String,
    pub auth_revision: u64,
}

/// A membership request as one member forwards it to the leader (`POST /raft/admin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRequest {
    #[serde(flatten)]
    pub change: MemberChange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Principal>,
}

/// Whether auth refuses a change asked by `by`; `own_promotion`: a promotion without a caller
/// is the leader's own (allowed at apply, never from a request).
pub fn auth_refusal(
    auth: &AuthView,
    by: Option<&Principal>,
    own_promotion: bool,
) -> Option<AuthDenial> {
    if !auth.state.enabled {
        return None;
    }
    match by {
        None if own_promotion => None,
        None => Some(AuthDenial::NoCaller),
        Some(p) if p.auth_revision != auth.state.revision => Some(AuthDenial::OldRevision),
        Some(p) if !auth.is_root(&p.user) => Some(AuthDenial::NotRoot),
        Some(_) => None,
    }
}

/// Membership changes travel with their client (defined here, beside the context it writes).
impl MemberChange {
    /// The raft change proposing it, asked by `by` (see this module).
    pub fn to_conf_change(&self, by: Option<&Principal>) -> ConfChangeV2 {
        let change_type = match self {
            MemberChange::Add { .. } => ConfChangeType::AddLearnerNode,
            MemberChange::Promote { .. } => ConfChangeType::AddNode,
            MemberChange::Remove { .. } => ConfChangeType::RemoveNode,
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = self.id();
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.context = context(self, by).into();
        cc
    }
}

/// The conf change context for `change` asked by `by`.
pub fn context(change: &MemberChange, by: Option<&Principal>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Context<'a> {
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        info: Option<&'a MemberInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<&'a Principal>,
    }
    let info = match change {
        MemberChange::Add { url, learner, .. } => Some(MemberInfo {
            url: url.clone(),
            hold_learner: *learner,
            incarnation: 0,
        }),
        MemberChange::Promote { .. } | MemberChange::Remove { .. } => None,
    };
    if info.is_none() && by.is_none() {
        return Vec::new();
    }
    let context = Context {
        info: info.as_ref(),
        by,
    };
    // Plain strings and numbers: serializing cannot fail.
    serde_json::to_vec(&context).unwrap_or_default()
}

/// Who asked for a committed change, from its context (none if absent or unreadable).
pub fn principal_of(cc: &ConfChangeV2) -> Option<Principal> {
    #[derive(Deserialize)]
    struct Attribution {
        #[serde(default)]
        by: Option<Principal>,
    }
    serde_json::from_slice::<Attribution>(&cc.context)
        .ok()
        .and_then(|a| a.by)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::auth::{AuthState, User};

    fn view(enabled: bool) -> AuthView {
        let mut v = AuthView {
            state: AuthState {
                enabled,
                revision: 7,
                secret: vec![1],
            },
            ..AuthView::default()
        };
        for (name, roles) in [("root", vec!["root".to_string()]), ("lim", vec![])] {
            let user = User {
                roles,
                ..User::default()
            };
            v.users.insert(name.into(), user);
        }
        v
    }

    fn by(user: &str, auth_revision: u64) -> Principal {
        Principal {
            user: user.into(),
            auth_revision,
        }
    }

    #[test]
    fn auth_on_needs_root_at_the_revision_checked() {
        let on = view(true);
        assert_eq!(auth_refusal(&on, Some(&by("root", 7)), false), None);
        assert_eq!(
            auth_refusal(&on, Some(&by("root", 6)), false),
            Some(AuthDenial::OldRevision)
        );
        assert_eq!(
            auth_refusal(&on, Some(&by("lim", 7)), false),
            Some(AuthDenial::NotRoot)
        );
        assert_eq!(
            auth_refusal(&on, Some(&by("gone", 7)), false),
            Some(AuthDenial::NotRoot)
        );
        assert_eq!(auth_refusal(&on, None, false), Some(AuthDenial::NoCaller));
        for d in AuthDenial::ALL {
            assert_eq!(
                AuthDenial::from_answer(d.status(), &format!("{d}\n")),
                Some(d)
            );
        }
        assert_eq!(AuthDenial::from_answer(409, "permission denied"), None);
        assert_eq!(auth_refusal(&on, None, true), None);
        let off = view(false);
        assert_eq!(auth_refusal(&off, None, false), None);
        assert_eq!(auth_refusal(&off, Some(&by("lim", 1)), false), None);
    }

    #[test]
    fn the_caller_travels_in_the_request_and_the_context() {
        let change = MemberChange::Add {
            id: 4,
            url: "http://h:4".into(),
            learner: true,
        };
        let req = MemberRequest {
            change: change.clone(),
            by: Some(by("root", 3)),
        };
        let json = serde_json::to_string(&req).unwrap();
        // An earlier version reads the change alone from the same body.
        assert_eq!(serde_json::from_str::<MemberChange>(&json).unwrap(), change);
        assert_eq!(serde_json::from_str::<MemberRequest>(&json).unwrap(), req);
        let plain = serde_json::to_string(&change).unwrap();
        let read: MemberRequest = serde_json::from_str(&plain).unwrap();
        assert_eq!(read.by, None);

        let mut cc = change.to_conf_change(Some(&by("root", 3)));
        assert_eq!(principal_of(&cc), Some(by("root", 3)));
        // The member's attributes read as before.
        let info: MemberInfo = serde_json::from_slice(&cc.context).unwrap();
        assert_eq!((info.url.as_str(), info.hold_learner), ("http://h:4", true));
        cc.context = Vec::new().into();
        assert_eq!(principal_of(&cc), None);
        let remove = MemberChange::Remove { id: 2 };
        assert!(remove.to_conf_change(None).context.is_empty());
        assert_eq!(
            principal_of(&remove.to_conf_change(Some(&by("root", 3)))),
            Some(by("root", 3))
        );
    }
}

//! etcd's users, roles and permissions as replicated state: changed only through the log
//! ([`AuthOp`], decided at apply with etcd's rules and errors, so every member decides alike),
//! kept in the keyspace (so snapshots and backups carry it), and read as an [`AuthView`].
//!
//! ```text
//! w             -> the auth state: enabled, auth revision, token secret (JSON)
//! u <name>      -> a user: password hash (PHC string) or none, roles, sorted (JSON)
//! o <name>      -> a role: permissions, sorted by key (JSON)
//! ```
//! Passwords never reach the log: the member that takes the request hashes them first. Every
//! successful change bumps the auth revision (etcd's), which makes older tokens stale.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::AuthRefusal;
use super::batch::Batch;
use super::layout::Meta;
use super::{OpResult, Refusal, Result, StoreError};
use crate::storage::Reader;

pub(crate) const STATE: &[u8] = b"w";
pub(crate) const USERS: u8 = b'u';
pub(crate) const ROLES: u8 = b'o';

/// The role whose holders may do anything (etcd's).
pub const ROOT: &str = "root";

/// A change to users, roles or auth itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// Turns auth on; `secret` signs this cluster's tokens from now on.
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    /// `password_hash: None`: a user that cannot log in with a password (etcd's no_password;
    /// a client certificate's CN may still name it).
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthOp {
    /// The longest key or range bound it names (checked against the key limit when a
    /// follower forwards it).
    pub fn key_bytes(&self) -> usize {
        match self {
            AuthOp::RoleGrantPermission { perm, .. } => perm.key.len().max(perm.range_end.len()),
            AuthOp::RoleRevokePermission { key, range_end, .. } => key.len().max(range_end.len()),
            _ => 0,
        }
    }
}

/// Read, write, or both (etcd's numbering: READ 0, WRITE 1, READWRITE 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Need::Read)
                | (PermKind::Write, Need::Write)
        )
    }
}

/// What a request needs on a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// A permission on `[key, range_end)` in etcd's form: an empty `range_end` is the key alone,
/// `[0]` every key from `key` on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Permission {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub kind: PermKind,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub password_hash: Option<String>,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
    /// The auth revision at which this user was added or last changed its password: who the
    /// name stands for since. A stream opened by the user ends when it changes (a user
    /// deleted and added again under the same name is another user). 0 for users written
    /// before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub since: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by (key, range_end); one entry per range.
    pub perms: Vec<Permission>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub secret: Vec<u8>,
}

/// The whole auth state, as read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthView {
    pub state: AuthState,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

fn named(ns: u8, name: &str) -> Vec<u8> {
    let mut k = vec![ns];
    k.extend_from_slice(name.as_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("auth {what} record: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Reads the whole auth state.
pub(crate) fn load(r: &dyn Reader) -> Result<AuthView> {
    let state = match r.get(STATE)? {
        Some(bytes) => decode("state", &bytes)?,
        // etcd's auth revision starts at 1.
        None => AuthState {
            revision: 1,
            ..AuthState::default()
        },
    };
    let mut view = AuthView {
        state,
        ..AuthView::default()
    };
    for (ns, what) in [(USERS, "user"), (ROLES, "role")] {
        let (lo, hi) = super::layout::namespace(ns);
        let mut failed = None;
        r.scan(&lo, &hi, &mut |k, v| {
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            let parsed = if ns == USERS {
                decode::<User>(what, v).map(|u| {
                    view.users.insert(name, u);
                })
            } else {
                decode::<Role>(what, v).map(|role| {
                    view.roles.insert(name, role);
                })
            };
            if let Err(e) = parsed {
                failed = Some(e);
                return Ok(false);
            }
            Ok(true)
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(view)
}

/// The auth revision (etcd's: 1 before any change).
pub(crate) fn revision(r: &dyn Reader) -> Result<u64> {
    Ok(match r.get(STATE)? {
        Some(bytes) => decode::<AuthState>("state", &bytes)?.revision,
        None => 1,
    })
}

/// Applies one auth change; a refusal changes nothing. The store revision never moves.
pub(super) fn apply(batch: &mut Batch, meta: &Meta, op: &AuthOp) -> Result<OpResult> {
    let view = load(batch)?;
    let refused = |r: AuthRefusal| {
        Ok(OpResult {
            refused: Some(Refusal::Auth(r)),
            ..OpResult::done(meta.revision, false)
        })
    };
    let mut state = view.state.clone();
    match decide(&view, op, batch.v0_2_rules) {
        Err(r) => return refused(r),
        Ok(Change::Nothing) => return Ok(OpResult::done(meta.revision, false)),
        Ok(Change::State(enabled, secret)) => {
            state.enabled = enabled;
            if let Some(secret) = secret {
                state.secret = secret;
            }
            // etcd bumps the revision when auth is disabled, not when it is enabled.
            if enabled {
                batch.put(STATE.to_vec(), encode(&state));
                return Ok(OpResult::done(meta.revision, true));
            }
        }
        Ok(Change::User(name, user)) => match user {
            Some(u) => batch.put(named(USERS, &name), encode(&u)),
            None => batch.delete(named(USERS, &name)),
        },
        Ok(Change::Role(name, role, users)) => {
            match role {
                Some(r) => batch.put(named(ROLES, &name), encode(&r)),
                None => batch.delete(named(ROLES, &name)),
            }
            for (user, u) in users {
                batch.put(named(USERS, &user), encode(&u));
            }
        }
    }
    state.revision += 1;
    batch.put(STATE.to_vec(), encode(&state));
    Ok(OpResult::done(meta.revision, true))
}

/// What an accepted change writes.
enum Change {
    /// Already so (enabling enabled auth, disabling disabled auth): no new revision.
    Nothing,
    /// Enabled, and a new secret.
    State(bool, Option<Vec<u8>>),
    User(String, Option<User>),
    /// A role, and users whose role lists change with it.
    Role(String, Option<Role>, Vec<(String, User)>),
}

/// etcd's rules for each change, as a pure function of the state before it.
/// `stamp`: whether a user's `since` is set to this change's revision (not below cluster
/// version 0.2.0, where v0.1.0 members do not keep it).
fn decide(view: &AuthView, op: &AuthOp, stamp: bool) -> std::result::Result<Change, AuthRefusal> {
    use AuthRefusal as R;
    Ok(match op {
        AuthOp::Enable { secret } => enable(view, secret)?,
        AuthOp::Disable if !view.state.enabled => Change::Nothing,
        AuthOp::Disable => Change::State(false, None),
        AuthOp::UserAdd {
            name,
            password_hash,
        } => {
            if name.is_empty() {
                return Err(R::UserEmpty);
            }
            if view.users.contains_key(name) {
                return Err(R::UserAlreadyExist);
            }
            let u = User {
                password_hash: password_hash.clone(),
                roles: Vec::new(),
                since: if stamp { view.state.revision + 1 } else { 0 },
            };
            Change::User(name.clone(), Some(u))
        }
        AuthOp::UserDelete { name } => {
            if view.state.enabled && name == ROOT {
                return Err(R::InvalidAuthMgmt);
            }
            user_of(view, name)?;
            Change::User(name.clone(), None)
        }
        AuthOp::UserChangePassword {
            name,
            password_hash,
        } => {
            let mut u = user_of(view, name)?;
            u.password_hash = Some(password_hash.clone());
            if stamp {
                u.since = view.state.revision + 1;
            }
            Change::User(name.clone(), Some(u))
        }
        AuthOp::UserGrantRole { user, role } => grant_role(view, user, role)?,
        AuthOp::UserRevokeRole { user, role } => {
            if view.state.enabled && user == ROOT && role == ROOT {
                return Err(R::InvalidAuthMgmt);
            }
            let mut u = user_of(view, user)?;
            let at = u.roles.binary_search(role).map_err(|_| R::RoleNotGranted)?;
            u.roles.remove(at);
            Change::User(user.clone(), Some(u))
        }
        AuthOp::RoleAdd { name } => {
            if name.is_empty() {
                return Err(R::RoleEmpty);
            }
            if view.roles.contains_key(name) {
                return Err(R::RoleAlreadyExist);
            }
            Change::Role(name.clone(), Some(Role::default()), Vec::new())
        }
        AuthOp::RoleDelete { name } => delete_role(view, name)?,
        AuthOp::RoleGrantPermission { role, perm } => grant_permission(view, role, perm)?,
        AuthOp::RoleRevokePermission {
            role,
            key,
            range_end,
        } => {
            let mut r = role_of(view, role)?;
            let at = r
                .perms
                .iter()
                .position(|p| p.key == *key && p.range_end == *range_end)
                .ok_or(R::PermissionNotGranted)?;
            r.perms.remove(at);
            Change::Role(role.clone(), Some(r), Vec::new())
        }
    })
}

type Decided = std::result::Result<Change, AuthRefusal>;

fn user_of(view: &AuthView, name: &str) -> std::result::Result<User, AuthRefusal> {
    view.users
        .get(name)
        .cloned()
        .ok_or(AuthRefusal::UserNotFound)
}

fn role_of(view: &AuthView, name: &str) -> std::result::Result<Role, AuthRefusal> {
    view.roles
        .get(name)
        .cloned()
        .ok_or(AuthRefusal::RoleNotFound)
}

/// Auth on: root must exist and hold the root role.
fn enable(view: &AuthView, secret: &[u8]) -> Decided {
    let root = view.users.get(ROOT).ok_or(AuthRefusal::RootUserNotExist)?;
    if !root.roles.iter().any(|r| r == ROOT) {
        return Err(AuthRefusal::RootRoleNotExist);
    }
    if view.state.enabled {
        return Ok(Change::Nothing);
    }
    Ok(Change::State(true, Some(secret.to_vec())))
}

fn grant_role(view: &AuthView, name: &str, role: &str) -> Decided {
    let mut u = user_of(view, name)?;
    if role != ROOT {
        role_of(view, role)?;
    }
    Ok(match u.roles.binary_search_by(|r| r.as_str().cmp(role)) {
        Ok(_) => Change::Nothing,
        Err(at) => {
            u.roles.insert(at, role.to_string());
            Change::User(name.to_string(), Some(u))
        }
    })
}

fn delete_role(view: &AuthView, name: &str) -> Decided {
    if view.state.enabled && name == ROOT {
        return Err(AuthRefusal::InvalidAuthMgmt);
    }
    role_of(view, name)?;
    // The role leaves every user that had it.
    let users = view
        .users
        .iter()
        .filter_map(|(n, u)| {
            let at = u.roles.binary_search_by(|r| r.as_str().cmp(name)).ok()?;
            let mut u = u.clone();
            u.roles.remove(at);
            Some((n.clone(), u))
        })
        .collect();
    Ok(Change::Role(name.to_string(), None, users))
}

fn grant_permission(view: &AuthView, name: &str, perm: &Permission) -> Decided {
    // A key, then nothing (the key alone), an end after it, or "\0" (from the key on).
    let valid = !perm.key.is_empty()
        && (perm.range_end.is_empty() || perm.range_end == [0] || perm.key < perm.range_end);
    if !valid {
        return Err(AuthRefusal::InvalidAuthMgmt);
    }
    let mut r = role_of(view, name)?;
    // One entry per range: granting a range again replaces its kind.
    let same = |p: &Permission| p.key == perm.key && p.range_end == perm.range_end;
    match r.perms.iter_mut().find(|p| same(p)) {
        Some(p) => p.kind = perm.kind,
        None => r.perms.push(perm.clone()),
    }
    r.perms.sort();
    Ok(Change::Role(name.to_string(), Some(r), Vec::new()))
}

impl AuthView {
    /// Whether `user` holds the root role (and may do anything).
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Whether `user` may `need` every key of `[key, range_end)` (etcd's form: empty
    /// `range_end` is the key alone, `[0]` every key from `key` on): the user's permissions
    /// of that kind, merged, must cover the whole range, so a range that crosses a key the
    /// user may not touch is refused as a whole.
    pub fn permitted(&self, user: &str, need: Need, key: &[u8], range_end: &[u8]) -> bool {
        // A range that ends before it starts names no key; it is refused rather than passed
        // as empty, so no engine's reading of it matters.
        if !range_end.is_empty() && range_end != [0] && range_end < key {
            return false;
        }
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return true;
        }
        let mut intervals: Vec<(Vec<u8>, Bound)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.kind.allows(need))
            .map(|p| (p.key.clone(), Bound::of(&p.key, &p.range_end)))
            .collect();
        intervals.sort();
        let want_end = Bound::of(key, range_end);
        // Walk the merged intervals: `covered` is how far from `key` on every key is allowed.
        let mut covered = Bound::Key(key.to_vec());
        for (start, end) in intervals {
            if let Bound::Key(c) = &covered
                && start.as_slice() > c.as_slice()
            {
                break;
            }
            if end > covered {
                covered = end;
            }
            if covered >= want_end {
                return true;
            }
        }
        false
    }
}

/// The exclusive end of an interval: a key, or past every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bound {
    Key(Vec<u8>),
    Infinite,
}

impl Bound {
    fn of(key: &[u8], range_end: &[u8]) -> Bound {
        match range_end {
            [] => {
                // The key alone: up to the next key after it.
                let mut next = key.to_vec();
                next.push(0);
                Bound::Key(next)
            }
            [0] => Bound::Infinite,
            end => Bound::Key(end.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As this build decides at cluster version 0.2.0.
    fn decide_now(v: &AuthView, op: &AuthOp) -> std::result::Result<Change, AuthRefusal> {
        decide(v, op, true)
    }

    /// Below 0.2.0 a user's `since` is not recorded (v0.1.0 members do not keep it, and the
    /// records must be the same on every member); from 0.2.0 on it is.
    #[test]
    fn since_is_recorded_only_when_stamping() {
        let v = AuthView::default();
        let add = AuthOp::UserAdd {
            name: "ann".into(),
            password_hash: None,
        };
        for (stamp, since) in [(false, 0), (true, v.state.revision + 1)] {
            match decide(&v, &add, stamp) {
                Ok(Change::User(_, Some(u))) => assert_eq!(u.since, since, "stamp {stamp}"),
                _ => panic!("user add refused"),
            }
        }
    }

    fn view(perms: &[(&str, &str, PermKind)]) -> AuthView {
        let mut v = AuthView::default();
        v.users.insert(
            "u".into(),
            User {
                roles: vec!["r".into()],
                ..User::default()
            },
        );
        let perms = perms
            .iter()
            .map(|(k, e, kind)| Permission {
                key: k.as_bytes().to_vec(),
                range_end: e.as_bytes().to_vec(),
                kind: *kind,
            })
            .collect();
        v.roles.insert("r".into(), Role { perms });
        v
    }

    #[test]
    fn ranges_must_be_covered_whole() {
        use PermKind::*;
        let v = view(&[("a", "c", Read), ("c", "e", ReadWrite), ("k", "", Write)]);
        assert!(v.permitted("u", Need::Read, b"a", b""));
        assert!(
            v.permitted("u", Need::Read, b"b", b"d"),
            "two adjacent ranges cover it"
        );
        assert!(v.permitted("u", Need::Read, b"a", b"e"));
        assert!(!v.permitted("u", Need::Read, b"a", b"f"), "crosses [e, f)");
        assert!(!v.permitted("u", Need::Write, b"a", b""));
        assert!(v.permitted("u", Need::Write, b"d", b""));
        assert!(v.permitted("u", Need::Write, b"k", b""));
        assert!(
            !v.permitted("u", Need::Write, b"k", b"l"),
            "more than the key"
        );
        assert!(!v.permitted("u", Need::Read, b"k", b""));
        assert!(
            !v.permitted("u", Need::Read, b"a", b"\0"),
            "from a on is more than granted"
        );
        assert!(!v.permitted("nobody", Need::Read, b"a", b""));
    }

    #[test]
    fn open_ended_permissions_cover_everything_after() {
        let v = view(&[("p", "\0", PermKind::Read)]);
        assert!(v.permitted("u", Need::Read, b"p", b"\0"));
        assert!(v.permitted("u", Need::Read, b"q", b"z"));
        assert!(v.permitted("u", Need::Read, b"zzz", b""));
        assert!(!v.permitted("u", Need::Read, b"o", b"q"));
    }

    #[test]
    fn root_may_do_anything() {
        let mut v = view(&[]);
        v.users.get_mut("u").unwrap().roles = vec![ROOT.into()];
        assert!(v.is_root("u"));
        assert!(v.permitted("u", Need::Write, b"", b"\0"));
    }

    #[test]
    fn a_range_ending_before_its_key_is_refused() {
        let v = view(&[("a", "\0", PermKind::ReadWrite)]);
        assert!(v.permitted("u", Need::Read, b"b", b"c"));
        assert!(!v.permitted("u", Need::Read, b"c", b"b"));
        let mut root = v.clone();
        root.users.get_mut("u").unwrap().roles.push(ROOT.into());
        assert!(!root.permitted("u", Need::Write, b"c", b"b"));
        assert!(root.permitted("u", Need::Write, b"c", b"\0"));
    }

    #[test]
    fn changes_follow_etcds_rules() {
        let mut v = AuthView::default();
        let add = |n: &str| AuthOp::UserAdd {
            name: n.into(),
            password_hash: None,
        };
        assert!(matches!(
            decide_now(&v, &AuthOp::Enable { secret: vec![1] }),
            Err(AuthRefusal::RootUserNotExist)
        ));
        assert!(matches!(
            decide_now(&v, &add("")),
            Err(AuthRefusal::UserEmpty)
        ));
        v.users.insert(ROOT.into(), User::default());
        assert!(matches!(
            decide_now(&v, &add(ROOT)),
            Err(AuthRefusal::UserAlreadyExist)
        ));
        assert!(matches!(
            decide_now(&v, &AuthOp::Enable { secret: vec![1] }),
            Err(AuthRefusal::RootRoleNotExist)
        ));
        let grant = AuthOp::UserGrantRole {
            user: ROOT.into(),
            role: "nope".into(),
        };
        assert!(matches!(
            decide_now(&v, &grant),
            Err(AuthRefusal::RoleNotFound)
        ));
        let revoke = AuthOp::RoleRevokePermission {
            role: "nope".into(),
            key: b"k".to_vec(),
            range_end: Vec::new(),
        };
        assert!(matches!(
            decide_now(&v, &revoke),
            Err(AuthRefusal::RoleNotFound)
        ));
        v.users.get_mut(ROOT).unwrap().roles = vec![ROOT.into()];
        assert!(decide_now(&v, &AuthOp::Enable { secret: vec![1] }).is_ok());
        v.state.enabled = true;
        let delete = AuthOp::UserDelete { name: ROOT.into() };
        assert!(matches!(
            decide_now(&v, &delete),
            Err(AuthRefusal::InvalidAuthMgmt)
        ));
    }
}

//! Who is asking, and may they. One place for both APIs:
//!
//! - **Identity**: a token (gRPC metadata `token`, HTTP `Authorization: Bearer`), a user name
//!   and password (HTTP `Authorization: Basic`), or the CN of a verified client certificate
//!   (used when no token or password is given, as etcd does).
//! - **Tokens** are signed, not stored: `user.auth_revision.expiry_ms.mac`, an HMAC-SHA256
//!   under the cluster's secret (replicated when auth is enabled), so every member accepts a
//!   token any member issued. A token expires after `--auth-token-ttl`, and any later change to
//!   users or roles makes it stale (etcd's "revision of auth store is old"): clients log in
//!   again, and a revoked permission cannot outlive its revocation.
//! - **Passwords** are hashed with Argon2id (a slow, salted hash) by the member that takes the
//!   request; only the hash enters the log. Failed logins back off per user and client
//!   address, up to [`MAX_BACKOFF`], so an attacker cannot lock a user out for good.
//! - **Rules**: etcd's ([`AuthView::permitted`]); root may do anything, and only root may
//!   manage members, leadership, alarms, backups or auth.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

pub use super::error::Denied;
use crate::store::auth::{AuthView, Need};
use crate::store::range::KeyRange;
use crate::store::txn::{Txn, TxnOp};
use crate::store::{KvStore, Op};

/// Failed logins for a user from one address before the next must wait.
const FREE_FAILURES: u32 = 3;
/// The longest wait after repeated failures (it doubles from one second).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A Basic login is re-verified at least this often (and after any auth change).
const BASIC_CACHE: Duration = Duration::from_secs(60);

/// What a request brings to prove who it is.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub password: Option<(String, String)>,
    /// The CN of a client certificate the client port verified.
    pub cert_cn: Option<String>,
    pub from: Option<IpAddr>,
}

/// The caller of one request, with the auth state its checks use.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Auth is off: everything is allowed.
    Anyone,
    /// No caller was resolved (a path the auth layer leaves open): nothing is allowed.
    Nobody,
    User {
        name: String,
        view: Arc<AuthView>,
        /// How it proved who it is: a stream keeps it and checks it again ([`Caller::recheck`]).
        credential: Credential,
    },
}

/// The credential a caller was resolved from, as a stream remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    pub proof: Proof,
    /// The user's `since` when it was resolved: who the name stood for (a user deleted and
    /// added again, or whose password changed, has another).
    pub since: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// A token issued at auth revision `revision`, valid until `expiry_ms` (Unix ms).
    Token { revision: u64, expiry_ms: u64 },
    /// A user name and password (HTTP Basic).
    Password,
    /// A verified client certificate's CN.
    Certificate,
}

impl Credential {
    /// How a stream with this credential is refused once it no longer stands (etcd's errors:
    /// a token of a deleted user, or of one whose password changed, is invalid).
    fn revoked(&self) -> Denied {
        match self.proof {
            Proof::Token { .. } => Denied::InvalidToken,
            Proof::Password => Denied::AuthFailed,
            Proof::Certificate => Denied::PermissionDenied,
        }
    }
}

/// What a stream learns when it checks its caller again (see docs/security.md, "Streams").
#[derive(Debug)]
pub enum Recheck {
    /// Users and roles did not change since the last check.
    Same,
    /// They changed and the stream's credential still stands: what its watchers read is
    /// checked again against this caller.
    Refreshed(Caller),
    /// The credential no longer stands (auth was enabled on a stream opened without one; the
    /// user was deleted, added again or changed its password): every watcher ends.
    Revoked(Denied),
}

impl Caller {
    /// Whether the caller may `need` all of `[key, range_end)` (etcd's range form).
    pub fn may(&self, need: Need, key: &[u8], range_end: &[u8]) -> Result<(), Denied> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User { name, view, .. } if view.permitted(name, need, key, range_end) => Ok(()),
            Caller::User { .. } | Caller::Nobody => Err(Denied::PermissionDenied),
        }
    }

    /// Root only: membership, leadership, alarms, backups, auth management.
    pub fn admin(&self) -> Result<(), Denied> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User { name, view, .. } if view.is_root(name) => Ok(()),
            Caller::User { .. } | Caller::Nobody => Err(Denied::PermissionDenied),
        }
    }

    /// [`Caller::may`] for a key range.
    pub fn may_range(&self, need: Need, range: &KeyRange) -> Result<(), Denied> {
        self.may(need, &range.start, range.etcd_end())
    }

    /// Every compare and operation of a transaction, nested ones too (etcd's rules): compares
    /// and gets read, puts and deletes write, and `prev_kv` reads what it returns.
    pub fn may_txn(&self, store: &KvStore, txn: &Txn) -> Result<(), Denied> {
        if matches!(self, Caller::Anyone) {
            return Ok(());
        }
        for c in &txn.compare {
            self.may_range(Need::Read, &c.range)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                TxnOp::Get { range, .. } => self.may_range(Need::Read, range)?,
                TxnOp::Put {
                    key,
                    options,
                    lease,
                    ..
                } => {
                    self.may_put(store, key, *lease)?;
                    if options.prev_kv {
                        self.may(Need::Read, key, &[])?;
                    }
                }
                TxnOp::Delete { range, prev_kv } => {
                    self.may_range(Need::Write, range)?;
                    if *prev_kv {
                        self.may_range(Need::Read, range)?;
                    }
                }
                TxnOp::Txn(inner) => self.may_txn(store, inner)?,
            }
        }
        Ok(())
    }

    /// The write to propose for `op`: with auth on, bound to the auth revision its checks were
    /// made at, so it is refused when applied if users or roles changed meanwhile (etcd
    /// checks again at apply).
    pub fn guard(&self, op: Op) -> Op {
        match self {
            Caller::User { view, .. } => Op::Checked {
                auth_revision: view.state.revision,
                op: Box::new(op),
            },
            Caller::Anyone | Caller::Nobody => op,
        }
    }

    /// After a read: refuses it if users or roles changed since its check (etcd's rule), so a
    /// read never returns what a permission revoked before it would hide.
    pub fn still_current(&self, access: &Access) -> Result<(), Denied> {
        match self {
            Caller::User { view, .. } if access.view()?.state.revision != view.state.revision => {
                Err(Denied::OldRevision)
            }
            _ => Ok(()),
        }
    }

    /// A stream's check of its caller, made before it serves anything that users or roles
    /// could have changed (cheap while they did not). The rule (docs/security.md): a stream
    /// is bound to the credential it was opened with, not to the user's name; it ends when
    /// that credential no longer stands, and otherwise goes on with the new permissions.
    pub fn recheck(&self, access: &Access) -> Recheck {
        let now = match access.view() {
            Ok(now) => now,
            Err(e) => return Recheck::Revoked(e),
        };
        let (name, view, credential) = match self {
            Caller::Anyone if now.state.enabled => return Recheck::Revoked(Denied::NoCredentials),
            Caller::Anyone | Caller::Nobody => return Recheck::Same,
            Caller::User {
                name,
                view,
                credential,
            } => (name, view, credential),
        };
        if now.state.revision == view.state.revision && now.state.enabled == view.state.enabled {
            return Recheck::Same;
        }
        if !now.state.enabled {
            return Recheck::Refreshed(Caller::Anyone);
        }
        match now.users.get(name) {
            Some(user) if user.since == credential.since => Recheck::Refreshed(Caller::User {
                name: name.clone(),
                view: now,
                credential: *credential,
            }),
            // Deleted, added again, or a new password: the credential is another user's now.
            _ => Recheck::Revoked(credential.revoked()),
        }
    }

    /// Whether a new request on an open stream (a new watcher, a keepalive) is accepted, as
    /// it would be on a new connection: the stream's credential must still stand, and a
    /// token must be unexpired and current (etcd's errors otherwise). Refreshes the caller.
    pub fn admit(&mut self, access: &Access) -> Result<(), Denied> {
        match self.recheck(access) {
            Recheck::Same => {}
            Recheck::Refreshed(now) => *self = now,
            Recheck::Revoked(denied) => return Err(denied),
        }
        if let Caller::User {
            view,
            credential:
                Credential {
                    proof:
                        Proof::Token {
                            revision,
                            expiry_ms,
                        },
                    ..
                },
            ..
        } = self
        {
            if *expiry_ms <= now_ms() {
                return Err(Denied::InvalidToken);
            }
            if *revision < view.state.revision {
                return Err(Denied::OldRevision);
            }
        }
        Ok(())
    }

    /// A put of `key` attached to `lease` (0: none): write on the key, and unless root, on
    /// every key already attached to the lease (etcd's rule: attaching to a lease shares its
    /// fate with those keys).
    pub fn may_put(&self, store: &KvStore, key: &[u8], lease: u64) -> Result<(), Denied> {
        self.may(Need::Write, key, &[])?;
        if lease == 0 || self.admin().is_ok() {
            return Ok(());
        }
        self.may_revoke(store, lease)
    }

    /// Revoking lease `id` deletes its keys: the caller must be allowed to write each.
    pub fn may_revoke(&self, store: &KvStore, id: u64) -> Result<(), Denied> {
        if matches!(self, Caller::Anyone) {
            return Ok(());
        }
        let lease = store
            .lease(id)
            .map_err(|e| Denied::Internal(e.to_string()))?;
        for key in lease.value.iter().flat_map(|l| &l.keys) {
            self.may(Need::Write, key, &[])?;
        }
        Ok(())
    }

    /// The user and the auth revision its checks were made at, for a membership change to
    /// carry (`None` while auth is off).
    pub fn principal(&self) -> Option<crate::raft::member_auth::Principal> {
        match self {
            Caller::User { name, view, .. } => Some(crate::raft::member_auth::Principal {
                user: name.clone(),
                auth_revision: view.state.revision,
            }),
            Caller::Anyone | Caller::Nobody => None,
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anyone | Caller::Nobody => None,
            Caller::User { name, .. } => Some(name),
        }
    }
}

/// A failed-login record for one (user, address).
struct Failures {
    count: u32,
    /// No attempt is checked before then.
    wait_until: Instant,
    last: Instant,
}

/// The member's side of auth: tokens, password checks, login back-off.
pub struct Access {
    store: Arc<KvStore>,
    token_ttl: Duration,
    failures: Mutex<HashMap<(String, Option<IpAddr>), Failures>>,
    /// Verified Basic logins: HMAC(secret, user, password) -> (auth revision, when).
    basic: Mutex<HashMap<[u8; 32], (u64, Instant)>>,
    /// One check at a time per Basic credential: requests with the same credential wait for
    /// the one being checked and share its outcome, so a burst of them (after an auth change
    /// emptied the cache) is one login, not a burst of logins that trips the back-off.
    basic_checks: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// Password hashes computed at once: each takes ~19 MiB and a core for tens of ms, so
    /// a flood of logins queues here instead of exhausting memory.
    hashing: tokio::sync::Semaphore,
}

type HmacSha256 = Hmac<Sha256>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

impl Access {
    pub fn new(store: Arc<KvStore>, token_ttl: Duration) -> Self {
        Access {
            store,
            token_ttl,
            failures: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
            basic_checks: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        }
    }

    pub fn view(&self) -> Result<Arc<AuthView>, Denied> {
        self.store
            .auth()
            .map_err(|e| Denied::Internal(e.to_string()))
    }

    /// Who the request is from. With auth off, anyone; with auth on, a token, then a
    /// password, then a client certificate's CN must name a user.
    pub async fn caller(&self, creds: &Credentials) -> Result<Caller, Denied> {
        let view = self.view()?;
        if !view.state.enabled {
            return Ok(Caller::Anyone);
        }
        let (name, proof) = if let Some(token) = &creds.token {
            let (name, revision, expiry_ms) = self.check_token(&view, token)?;
            (
                name,
                Proof::Token {
                    revision,
                    expiry_ms,
                },
            )
        } else if let Some((user, password)) = &creds.password {
            self.check_basic(&view, user, password, creds.from).await?;
            (user.clone(), Proof::Password)
        } else if let Some(cn) = &creds.cert_cn {
            (cn.clone(), Proof::Certificate)
        } else {
            return Err(Denied::NoCredentials);
        };
        let Some(since) = view.users.get(&name).map(|u| u.since) else {
            return Err(Denied::PermissionDenied);
        };
        let credential = Credential { proof, since };
        Ok(Caller::User {
            name,
            view,
            credential,
        })
    }

    /// Checks a password and issues a token (etcd's Authenticate).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<String, Denied> {
        let view = self.view()?;
        if !view.state.enabled {
            return Err(Denied::NotEnabled);
        }
        self.check_password(&view, user, password, from).await?;
        Ok(self.token(&view, user))
    }

    fn token(&self, view: &AuthView, user: &str) -> String {
        let expiry = now_ms().saturating_add(self.token_ttl.as_millis() as u64);
        let claims = format!("{}.{}.{expiry}", hex(user.as_bytes()), view.state.revision);
        let mut m = mac(&view.state.secret);
        m.update(claims.as_bytes());
        format!("{claims}.{}", hex(&m.finalize().into_bytes()))
    }

    /// The user a token names, if it is genuine, unexpired and current (for tests).
    pub fn verify_token(&self, token: &str) -> Result<String, Denied> {
        self.check_token(&*self.view()?, token)
            .map(|(user, ..)| user)
    }

    /// A token for `user` as Authenticate issues it, without a password (for tests).
    pub fn issue_token(&self, user: &str) -> Result<String, Denied> {
        Ok(self.token(&*self.view()?, user))
    }

    /// The user a token names, with the auth revision and expiry it was issued with, if it
    /// is genuine, unexpired and current.
    fn check_token(&self, view: &AuthView, token: &str) -> Result<(String, u64, u64), Denied> {
        let (claims, tag) = token.rsplit_once('.').ok_or(Denied::InvalidToken)?;
        let tag = unhex(tag).ok_or(Denied::InvalidToken)?;
        let mut m = mac(&view.state.secret);
        m.update(claims.as_bytes());
        // Constant-time comparison.
        m.verify_slice(&tag).map_err(|_| Denied::InvalidToken)?;
        let mut parts = claims.split('.');
        let (Some(user), Some(revision), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Denied::InvalidToken);
        };
        let user = unhex(user)
            .and_then(|u| String::from_utf8(u).ok())
            .ok_or(Denied::InvalidToken)?;
        let revision: u64 = revision.parse().map_err(|_| Denied::InvalidToken)?;
        let expiry: u64 = expiry.parse().map_err(|_| Denied::InvalidToken)?;
        if expiry <= now_ms() {
            return Err(Denied::InvalidToken);
        }
        if revision < view.state.revision {
            return Err(Denied::OldRevision);
        }
        if revision > view.state.revision {
            return Err(Denied::InvalidToken);
        }
        Ok((user, revision, expiry))
    }

    /// A Basic login: checked once, then remembered until the auth state changes.
    async fn check_basic(
        &self,
        view: &AuthView,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<(), Denied> {
        // Length-prefixed: no other (user, password) pair has the same key.
        let mut m = mac(&view.state.secret);
        m.update(&(user.len() as u64).to_be_bytes());
        m.update(user.as_bytes());
        m.update(password.as_bytes());
        let key: [u8; 32] = m.finalize().into_bytes().into();
        let fresh = |entry: Option<&(u64, Instant)>| {
            entry.is_some_and(|(rev, at)| *rev == view.state.revision && at.elapsed() < BASIC_CACHE)
        };
        if fresh(self.basic.lock().get(&key)) {
            return Ok(());
        }
        let check = {
            let mut checks = self.basic_checks.lock();
            // Forget the credentials nobody is checking (a flood of guesses stays bounded).
            checks.retain(|_, c| Arc::strong_count(c) > 1);
            checks.entry(key).or_default().clone()
        };
        let _one_at_a_time = check.lock().await;
        if fresh(self.basic.lock().get(&key)) {
            return Ok(());
        }
        self.check_password(view, user, password, from).await?;
        let mut basic = self.basic.lock();
        basic.retain(|_, (rev, at)| *rev == view.state.revision && at.elapsed() < BASIC_CACHE);
        basic.insert(key, (view.state.revision, Instant::now()));
        Ok(())
    }

    /// Verifies `password` for `user`, with back-off after repeated failures. An unknown user
    /// and a wrong password fail alike (and take as long).
    async fn check_password(
        &self,
        view: &AuthView,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<(), Denied> {
        let who = (user.to_string(), from);
        // Each attempt counts as a failure before it is checked (and is forgiven if it
        // succeeds), so concurrent guesses cannot all pass the back-off at once.
        {
            let mut failures = self.failures.lock();
            let now = Instant::now();
            // Forget old records so the map stays small.
            failures.retain(|_, f| now.duration_since(f.last) < MAX_BACKOFF * 4);
            let f = failures.entry(who.clone()).or_insert(Failures {
                count: 0,
                wait_until: now,
                last: now,
            });
            if f.wait_until > now {
                return Err(Denied::TooManyAttempts(
                    (f.wait_until - now).as_secs().max(1),
                ));
            }
            f.count += 1;
            f.last = now;
            // The attempt that makes FREE_FAILURES failures starts the wait (it is lifted if
            // this attempt succeeds): the next one, however soon, is not checked.
            if f.count >= FREE_FAILURES {
                let doublings = (f.count - FREE_FAILURES).min(5);
                f.wait_until = now + Duration::from_secs(1 << doublings).min(MAX_BACKOFF);
            }
        }
        let hash = view.users.get(user).and_then(|u| u.password_hash.clone());
        let password = password.to_string();
        let ok = {
            let _permit = self
                .hashing
                .acquire()
                .await
                .map_err(|e| Denied::Internal(e.to_string()))?;
            tokio::task::spawn_blocking(move || password::verify(&password, hash.as_deref()))
                .await
                .unwrap_or(false)
        };
        if ok {
            self.failures.lock().remove(&who);
            return Ok(());
        }
        Err(Denied::AuthFailed)
    }
}

/// Password hashing (Argon2id, a random salt per hash, PHC strings).
pub mod password {
    use argon2::Argon2;
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

    /// Hashes a password for storing; slow on purpose (run it off the async threads).
    pub fn hash(password: &str) -> Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("cannot hash the password: {e}"))
    }

    /// Whether `password` matches `hash` (none: the user has no password, and nothing
    /// matches). Runs the hash even without a user, so the two cases take as long.
    pub fn verify(password: &str, stored: Option<&str>) -> bool {
        // A hash of an unguessable password keeps timing alike for unknown users.
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let decoy = DECOY.get_or_init(|| {
            let random = crate::raft::storage::random_id().unwrap_or(1);
            hash(&format!("decoy-{random:016x}")).unwrap_or_default()
        });
        let target = stored.unwrap_or(decoy);
        let Ok(parsed) = PasswordHash::new(target) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && stored.is_some()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex only: a token has exactly one spelling.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(unhex(&hex(b"root\xff")).unwrap(), b"root\xff");
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("AB").is_none(), "one spelling per token");
        assert!(unhex("é1").is_none());
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = password::hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(password::verify("s3cret", Some(&h)));
        assert!(!password::verify("s3cret!", Some(&h)));
        assert!(!password::verify("", None));
        assert!(!password::verify("x", Some("not a hash")));
    }
}

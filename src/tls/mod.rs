//! TLS on the client and peer ports (rustls with ring; no OpenSSL).
//!
//! - Client port: `--cert-file`/`--key-file` turn TLS on for HTTP and gRPC alike;
//!   `--trusted-ca-file` verifies client certificates when given, `--client-cert-auth` requires
//!   them. A client certificate's CN is kept with the connection ([`Remote`]).
//! - Peer port: `--peer-cert-file`/`--peer-key-file`/`--peer-trusted-ca-file` turn on mutual
//!   TLS in both directions: a member accepts a peer only with a certificate from the peer CA
//!   (and `--peer-allowed-cn`/`--peer-allowed-hostname` if given), and verifies the certificate
//!   of every peer it dials against the host of the peer's URL. The handshake completes before
//!   any byte reaches the HTTP server, so nothing of raft is read from an unverified peer.
//! - A port with TLS answers a plaintext request with a one-line 400 and closes; a plaintext
//!   port logs a TLS attempt and closes. Mixed clusters fail loudly instead of half-working.
//! - Files are polled once a second ([`Reloading`]); a changed set that loads replaces the one
//!   in use for new connections, one that does not is refused with a log line.

pub mod generate;
mod io;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use tracing::{info, warn};

pub use io::{Io, Listener, Port, Remote, connect};

/// How often certificate files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("{0}")]
    Config(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Config(e.to_string())
    }
}

/// A certificate, its key and (optionally) the CA that certificates of the other side must
/// chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl CertFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.ca.clone());
        paths
    }
}

/// TLS on the client port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPortTls {
    pub files: CertFiles,
    /// Refuse clients without a certificate from `files.ca` (`--client-cert-auth`).
    pub require_client_cert: bool,
}

/// Mutual TLS between members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTls {
    /// `ca` is always set.
    pub files: CertFiles,
    pub allowed_cn: Option<String>,
    pub allowed_hostname: Option<String>,
    /// The client port's CA (`--trusted-ca-file`): the peer CA must not also be one
    /// ([`shared_ca`]) unless the members are pinned or `shared_ca_ok`.
    pub client_ca: Option<PathBuf>,
    /// `--insecure-peer-shared-ca`: accept a peer CA that also signs client certificates.
    pub shared_ca_ok: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The PEM certificates in `path` (a chain, or a CA bundle); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let bad = |what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

/// The PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("no usable PEM private key: {e}"),
    })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Loads this side's certificate and key, warning when the certificate is not valid now
/// (the other side will refuse it).
fn load_identity(
    files: &CertFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    if let Some(names) = names_of(&certs[0]) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now < names.not_before || now > names.not_after {
            warn!(cert = %files.cert.display(), "certificate is not valid at this time (expired, or not yet valid): the other side will refuse it");
        }
    }
    Ok((certs, key))
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The client port's server configuration.
pub fn client_port_config(tls: &ClientPortTls) -> Result<ServerConfig, TlsError> {
    let (certs, key) = load_identity(&tls.files)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &tls.files.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider());
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!(
            "{} and {}: {e}",
            tls.files.cert.display(),
            tls.files.key.display()
        ))
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The peer port's server configuration: a peer certificate is always required, and a peer
/// CA that would also admit client certificates is refused ([`check_peer_trust`]).
pub fn peer_server_config(tls: &PeerTls) -> Result<ServerConfig, TlsError> {
    let (certs, key) = load_identity(&tls.files)?;
    let ca = peer_ca(tls)?;
    check_peer_trust(tls)?;
    let inner = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
    let verifier = Arc::new(AllowedPeers {
        inner,
        allowed: Allowed::of(tls),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The configuration a member dials its peers with: its own certificate, and the peer CA.
pub fn peer_client_config(tls: &PeerTls) -> Result<ClientConfig, TlsError> {
    let (certs, key) = load_identity(&tls.files)?;
    let ca = peer_ca(tls)?;
    let inner = WebPkiServerVerifier::builder_with_provider(load_roots(ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
    let verifier = Arc::new(AllowedServers {
        inner,
        allowed: Allowed::of(tls),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Refuses a peer TLS setup in which a client certificate would pass as a member: the peer
/// CA is also the client port's CA (or signed it), and neither `--peer-allowed-cn` nor
/// `--peer-allowed-hostname` tells members apart, unless `--insecure-peer-shared-ca`.
fn check_peer_trust(tls: &PeerTls) -> Result<(), TlsError> {
    let pinned = tls.allowed_cn.is_some() || tls.allowed_hostname.is_some();
    let (Some(client_ca), false) = (&tls.client_ca, pinned) else {
        return Ok(());
    };
    let peer_ca = peer_ca(tls)?;
    let Some(overlap) = shared_ca(peer_ca, client_ca)? else {
        return Ok(());
    };
    if tls.shared_ca_ok {
        warn!(%overlap, "--insecure-peer-shared-ca: a client certificate from this CA is admitted to the peer port as a member");
        return Ok(());
    }
    Err(TlsError::Config(format!(
        "the peer CA would accept client certificates: {overlap}. Any client certificate that CA \
         signed (a user's, say) would be admitted to the peer port as a member, and could add or \
         remove members or speak raft. Fix one of: give --peer-trusted-ca-file a CA that signs \
         only members; or pin the members with --peer-allowed-cn or --peer-allowed-hostname. \
         To accept the risk (etcd's behaviour), add --insecure-peer-shared-ca"
    )))
}

/// How the CA certificates in `peer_ca` overlap those in `client_ca`, if they do: one is in
/// both (the same certificate, or the same subject and key), or a client CA was issued by a
/// peer CA (so client certificates chain to the peer CA).
pub fn shared_ca(peer_ca: &Path, client_ca: &Path) -> Result<Option<String>, TlsError> {
    let peer = load_certs(peer_ca)?;
    let client = load_certs(client_ca)?;
    let parse = |path: &Path, der: &CertificateDer<'static>| -> Result<CaFacts, TlsError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                what: format!("a certificate does not parse: {e}"),
            })?;
        Ok(CaFacts {
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            key: cert.public_key().raw.to_vec(),
            name: cert.subject().to_string(),
        })
    };
    let peer: Vec<CaFacts> = peer
        .iter()
        .map(|c| parse(peer_ca, c))
        .collect::<Result<_, _>>()?;
    let client: Vec<CaFacts> = client
        .iter()
        .map(|c| parse(client_ca, c))
        .collect::<Result<_, _>>()?;
    let (p, c) = (peer_ca.display(), client_ca.display());
    for pc in &peer {
        for cc in &client {
            if pc.subject == cc.subject && pc.key == cc.key {
                return Ok(Some(format!(
                    "CA {:?} is in both --peer-trusted-ca-file {p} and --trusted-ca-file {c}",
                    pc.name
                )));
            }
            if cc.issuer == pc.subject {
                return Ok(Some(format!(
                    "client CA {:?} (--trusted-ca-file {c}) was issued by peer CA {:?} (--peer-trusted-ca-file {p})",
                    cc.name, pc.name
                )));
            }
        }
    }
    Ok(None)
}

/// What [`shared_ca`] compares of a CA certificate.
struct CaFacts {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    key: Vec<u8>,
    name: String,
}

fn peer_ca(tls: &PeerTls) -> Result<&Path, TlsError> {
    tls.files
        .ca
        .as_deref()
        .ok_or_else(|| TlsError::Config("peer TLS needs --peer-trusted-ca-file".into()))
}

/// What a certificate says about its holder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses a DER certificate's subject CN, alternative names and validity; `None` if it
/// does not parse.
pub fn names_of(cert: &CertificateDer<'_>) -> Option<Names> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    // The last CN, as Go's x509 (so etcd) reads a subject with several.
    let common_name = cert
        .subject()
        .iter_common_name()
        .last()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut names = Names {
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ..Names::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.ips.push(<[u8; 4]>::try_from(*ip).ok()?.into()),
                    16 => names.ips.push(<[u8; 16]>::try_from(*ip).ok()?.into()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(names)
}

impl Names {
    /// Whether `host` (a DNS name or an IP address) is among the alternative names; a
    /// `*.` name matches one label.
    pub fn has_host(&self, host: &str) -> bool {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return self.ips.contains(&ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.dns.iter().any(|d| {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            match d.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => d == host,
            }
        })
    }
}

/// `--peer-allowed-cn` and `--peer-allowed-hostname` (etcd's rules: the CN must equal the
/// allowed one; the allowed hostname must be among the certificate's names), checked after
/// the CA's verification, on both the peer port and the connections a member dials: a member
/// exchanges raft only with peers that pass them.
#[derive(Debug)]
struct Allowed {
    cn: Option<String>,
    hostname: Option<String>,
}

impl Allowed {
    fn of(tls: &PeerTls) -> Self {
        Allowed {
            cn: tls.allowed_cn.clone(),
            hostname: tls.allowed_hostname.clone(),
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.cn.is_none() && self.hostname.is_none() {
            return Ok(());
        }
        let names = names_of(end_entity)
            .ok_or_else(|| rustls::Error::General("peer certificate does not parse".into()))?;
        if let Some(cn) = &self.cn
            && names.common_name.as_deref() != Some(cn.as_str())
        {
            let got = names.common_name.unwrap_or_default();
            warn!(allowed = %cn, %got, "peer refused: its certificate's CN is not --peer-allowed-cn");
            return Err(rustls::Error::General(format!(
                "peer certificate CN {got:?} is not the allowed {cn:?}"
            )));
        }
        if let Some(host) = &self.hostname
            && !names.has_host(host)
        {
            warn!(allowed = %host, "peer refused: its certificate does not name --peer-allowed-hostname");
            return Err(rustls::Error::General(format!(
                "peer certificate is not for the allowed hostname {host:?}"
            )));
        }
        Ok(())
    }
}

/// The handshake-signature checks of a verifier that adds rules to `self.inner`'s: the
/// inner verifier's own (both client and server verifiers have the same three).
macro_rules! signatures_from_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// The peer port's client-certificate check: the peer CA's, then [`Allowed`].
struct AllowedPeers {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Allowed,
}

impl fmt::Debug for AllowedPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.allowed.fmt(f)
    }
}

impl ClientCertVerifier for AllowedPeers {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    signatures_from_inner!();
}

/// The check of a dialed peer's certificate: the peer CA's for the host dialed, then
/// [`Allowed`].
struct AllowedServers {
    inner: Arc<WebPkiServerVerifier>,
    allowed: Allowed,
}

impl fmt::Debug for AllowedServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.allowed.fmt(f)
    }
}

impl ServerCertVerifier for AllowedServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    signatures_from_inner!();
}

/// A configuration built from files, rebuilt when they change.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the first configuration (an error stops start-up), then watches `paths` and
    /// rebuilds on change, for as long as the returned value is held somewhere.
    pub fn start(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let seen = fingerprint(&paths);
        let this = Arc::new(Reloading {
            current: RwLock::new(Arc::new(build()?)),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut seen = seen;
            loop {
                tokio::time::sleep(RELOAD_POLL).await;
                let Some(this) = weak.upgrade() else { return };
                let now = fingerprint(&paths);
                if now == seen {
                    continue;
                }
                seen = now;
                match build() {
                    Ok(config) => {
                        *this.current.write() = Arc::new(config);
                        info!(what, "TLS files changed; new connections use the new ones");
                    }
                    Err(e) => {
                        warn!(what, error = %e, "TLS files changed but do not load; keeping the ones in use")
                    }
                }
            }
        });
        Ok(this)
    }

    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }
}

/// Modification time and length of each file (a missing file counts as a change too).
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Starts the client port's TLS (if configured): loaded now, reloaded on change.
pub fn start_client_port(
    tls: &Option<ClientPortTls>,
) -> Result<Option<Arc<Reloading<ServerConfig>>>, TlsError> {
    let Some(tls) = tls.clone() else {
        return Ok(None);
    };
    let paths = tls.files.paths();
    Reloading::start("client port", paths, move || client_port_config(&tls)).map(Some)
}

/// This member's peer TLS: the server side of its peer port, and the side it dials with.
pub struct PeerSides {
    pub server: Arc<Reloading<ServerConfig>>,
    pub client: Arc<Reloading<ClientConfig>>,
}

/// Starts peer TLS (if configured) and installs the dialing side for [`connect`].
pub fn start_peer(tls: &Option<PeerTls>) -> Result<Option<PeerSides>, TlsError> {
    let Some(tls) = tls.clone() else {
        io::set_dialer(None);
        return Ok(None);
    };
    let mut paths = tls.files.paths();
    paths.extend(tls.client_ca.clone());
    let server_tls = tls.clone();
    let server = Reloading::start("peer port", paths.clone(), move || {
        peer_server_config(&server_tls)
    })?;
    let client = Reloading::start("peer client", paths, move || peer_client_config(&tls))?;
    io::set_dialer(Some(client.clone()));
    Ok(Some(PeerSides { server, client }))
}

/// The TLS name of `host:port` (a DNS name or an IP address, brackets removed).
pub fn server_name(authority: &str) -> Result<ServerName<'static>, TlsError> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("{host:?} is not a TLS server name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_names_and_one_wildcard_label() {
        let names = Names {
            dns: vec!["a.example".into(), "*.b.example".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            ..Names::default()
        };
        assert!(names.has_host("a.example"));
        assert!(names.has_host("A.Example."));
        assert!(names.has_host("x.b.example"));
        assert!(!names.has_host("b.example"));
        assert!(!names.has_host("y.x.b.example"));
        assert!(names.has_host("127.0.0.1"));
        assert!(!names.has_host("127.0.0.2"));
        assert!(!names.has_host("other"));
    }

    #[test]
    fn server_names_from_authorities() {
        assert!(server_name("127.0.0.1:2380").is_ok());
        assert!(server_name("[::1]:2380").is_ok());
        assert!(server_name("m1.example:2380").is_ok());
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn a_peer_ca_that_is_or_signed_the_client_ca_is_found() {
        use generate::Authority;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, ca: &Authority| {
            let path = dir.path().join(name);
            std::fs::write(&path, ca.pem()).unwrap();
            path
        };
        let peer = Authority::new("peer CA").unwrap();
        let client = Authority::new("client CA").unwrap();
        let under_peer = peer.intermediate("client CA under the peer CA").unwrap();
        let (p, c, u) = (
            write("p.pem", &peer),
            write("c.pem", &client),
            write("u.pem", &under_peer),
        );
        assert_eq!(shared_ca(&p, &c).unwrap(), None);
        let same = shared_ca(&p, &p).unwrap().expect("the same CA");
        assert!(same.contains("is in both"), "{same}");
        let signed = shared_ca(&p, &u)
            .unwrap()
            .expect("a client CA the peer CA signed");
        assert!(signed.contains("was issued by peer CA"), "{signed}");
        // A bundle: one shared certificate among others is enough.
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", client.pem(), peer.pem())).unwrap();
        assert!(shared_ca(&p, &bundle).unwrap().is_some());
    }

    #[test]
    fn peer_trust_refuses_a_shared_ca_unless_members_are_pinned_or_the_risk_accepted() {
        use generate::{Authority, Validity};
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("one CA").unwrap();
        let day = Validity::For(Duration::from_secs(3600));
        let files = ca
            .write(dir.path(), "m1", "m1", &["127.0.0.1"], day)
            .unwrap();
        let mut tls = PeerTls {
            files: files.clone(),
            allowed_cn: None,
            allowed_hostname: None,
            client_ca: files.ca.clone(),
            shared_ca_ok: false,
        };
        let e = check_peer_trust(&tls).unwrap_err().to_string();
        assert!(
            e.contains("--peer-allowed-cn") && e.contains("--insecure-peer-shared-ca"),
            "{e}"
        );
        tls.allowed_hostname = Some("127.0.0.1".into());
        assert!(check_peer_trust(&tls).is_ok());
        tls.allowed_hostname = None;
        tls.shared_ca_ok = true;
        assert!(check_peer_trust(&tls).is_ok());
        tls.shared_ca_ok = false;
        tls.client_ca = None;
        assert!(
            check_peer_trust(&tls).is_ok(),
            "no client CA: nothing to compare"
        );
    }

    #[test]
    fn garbage_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not a certificate").unwrap();
        let e = load_certs(&junk).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load_key(&junk).unwrap_err().to_string();
        assert!(e.contains("no usable PEM private key"), "{e}");
        let e = load_certs(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}

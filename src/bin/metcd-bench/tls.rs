//! TLS for `https://` endpoints (`--cacert`, `--cert`, `--key`, named as etcdctl's): the
//! server's certificate must chain to `--cacert` and name the endpoint's host (an IP address
//! is a valid name); `--cert`/`--key` are presented when the server asks for a client
//! certificate. rustls with ring, as metcd's own TLS.
//!
//! HTTP/1.1 targets offer ALPN `http/1.1`, the gRPC target `h2`. An `http://` endpoint never
//! reaches this module: its connections are the bare TcpStream they always were.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::Args;

/// How one `https://` endpoint is dialled.
#[derive(Clone)]
pub struct Dialer {
    http1: TlsConnector,
    h2: TlsConnector,
    name: ServerName<'static>,
}

/// The two client configurations of a run, built once from the flags.
pub struct Configs {
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl Configs {
    /// The TLS configurations the flags ask for; `None` without `--cacert`. `--cert` and
    /// `--key` go together.
    pub fn from_args(args: &Args) -> Result<Option<Configs>, String> {
        let identity = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        let Some(ca) = &args.cacert else {
            if identity.is_some() {
                return Err("--cert and --key need --cacert (and https:// endpoints)".into());
            }
            return Ok(None);
        };
        let roots = roots(ca)?;
        let config = |alpn: &[u8]| client_config(roots.clone(), identity, alpn).map(Arc::new);
        Ok(Some(Configs {
            http1: config(b"http/1.1")?,
            h2: config(b"h2")?,
        }))
    }

    /// The dialer of the endpoint at `authority` (`host:port`).
    pub fn dialer(&self, authority: &str) -> Result<Dialer, String> {
        Ok(Dialer {
            http1: TlsConnector::from(self.http1.clone()),
            h2: TlsConnector::from(self.h2.clone()),
            name: server_name(authority)?,
        })
    }
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    let certs = metcd::tls::load_certs(ca).map_err(|e| format!("--cacert: {e}"))?;
    for cert in certs {
        roots.add(cert).map_err(|e| {
            format!(
                "--cacert {}: not a usable CA certificate: {e}",
                ca.display()
            )
        })?;
    }
    Ok(Arc::new(roots))
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> Result<ClientConfig, String> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = metcd::tls::load_certs(cert).map_err(|e| format!("--cert: {e}"))?;
            let key_der = metcd::tls::load_key(key).map_err(|e| format!("--key: {e}"))?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                format!("--cert {} and --key {}: {e}", cert.display(), key.display())
            })?
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The TLS name of `host:port`, as metcd's own dialer takes it.
fn server_name(authority: &str) -> Result<ServerName<'static>, String> {
    metcd::tls::server_name(authority).map_err(|e| format!("endpoint {authority:?}: {e}"))
}

impl Dialer {
    /// TLS for an HTTP/1.1 connection over `tcp`.
    pub async fn http1(
        &self,
        tcp: TcpStream,
        authority: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        handshake(&self.http1, self.name.clone(), tcp, authority).await
    }

    /// A gRPC connection: TCP (no delay), then TLS, wrapped for hyper.
    pub async fn h2(&self, authority: &str) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
        let tcp = TcpStream::connect(authority).await?;
        let _ = tcp.set_nodelay(true);
        handshake(&self.h2, self.name.clone(), tcp, authority)
            .await
            .map(TokioIo::new)
    }
}

async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
    authority: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    connector.connect(name, tcp).await.map_err(|e| {
        let hint = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(_)) => {
                " (does --cacert hold the CA that signed the server's certificate, for this host?)"
            }
            _ => "",
        };
        std::io::Error::new(
            e.kind(),
            format!("TLS handshake with {authority} failed: {e}{hint}"),
        )
    })
}

//! Throwaway certificates (rcgen): `metcd local-cluster --tls` makes a client CA and a peer
//! CA and certificates from each, and the tests make right, wrong and expired ones.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::CertFiles;

/// A certificate authority whose key lives in memory only.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    /// The name [`Authority::write`] gives its certificate file (`ca.pem` unless set).
    file: String,
}

/// When an issued certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From an hour ago until this long from now.
    For(Duration),
    /// Only in the past: expired a day ago.
    Expired,
}

/// A certificate and its private key, PEM encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Authority {
    /// A new CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        Self::made(name, None)
    }

    /// A CA named `name` whose certificate this CA signs (an intermediate).
    pub fn intermediate(&self, name: &str) -> Result<Self, rcgen::Error> {
        Self::made(name, Some(self))
    }

    fn made(name: &str, signer: Option<&Authority>) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate()?;
        let pem = match signer {
            Some(signer) => params.signed_by(&key, &signer.issuer)?.pem(),
            None => params.self_signed(&key)?.pem(),
        };
        Ok(Authority {
            issuer: Issuer::new(params, key),
            pem,
            file: "ca.pem".into(),
        })
    }

    /// The same CA, writing its certificate as `file` (a peer CA beside a client CA).
    pub fn with_file(mut self, file: &str) -> Self {
        self.file = file.into();
        self
    }

    /// Where [`Authority::write`] puts this CA's certificate in `dir`.
    pub fn path_in(&self, dir: &Path) -> std::path::PathBuf {
        dir.join(&self.file)
    }

    /// The CA certificate, PEM encoded (what `--trusted-ca-file` names).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `common_name`, valid for `hosts` (DNS names or IP addresses) as a
    /// server and as a client.
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> Result<Issued, rcgen::Error> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(hosts)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match validity {
            Validity::For(d) => (
                now - time::Duration::hours(1),
                now + time::Duration::seconds(d.as_secs() as i64),
            ),
            Validity::Expired => (
                now - time::Duration::days(30),
                now - time::Duration::days(1),
            ),
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate as [`Authority::issue`] does and writes `<name>.pem`,
    /// `<name>-key.pem` (mode 0600) and the CA's certificate (`ca.pem` unless
    /// [`Authority::with_file`] named another) into `dir`.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> std::io::Result<CertFiles> {
        let issued = self
            .issue(common_name, hosts, validity)
            .map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let files = CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: Some(self.path_in(dir)),
        };
        std::fs::write(&files.cert, issued.cert_pem)?;
        write_private(&files.key, issued.key_pem.as_bytes())?;
        if let Some(ca) = &files.ca {
            std::fs::write(ca, &self.pem)?;
        }
        Ok(files)
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn issued_certificates_carry_their_names_and_validity() {
        let ca = Authority::new("test CA").unwrap();
        let issued = ca
            .issue(
                "m1",
                &["127.0.0.1", "m1.local"],
                Validity::For(Duration::from_secs(3600)),
            )
            .unwrap();
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let names = super::super::names_of(&certs[0]).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("m1"));
        assert!(names.has_host("127.0.0.1") && names.has_host("m1.local"));
        assert!(names.not_after > names.not_before);
        let expired = ca.issue("old", &["127.0.0.1"], Validity::Expired).unwrap();
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(expired.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let names = super::super::names_of(&certs[0]).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(names.not_after < now);
    }
}

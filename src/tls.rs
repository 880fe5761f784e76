//! Certificates: the development CA generated on first start, loading operator certificates, and the
//! rustls configurations both ends use.

use crate::protocol::ALPN;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file held no certificate or key.
    #[error("{0}")]
    Pem(String),
    /// Generating a certificate failed.
    #[error("generating a development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server certificate chain and its key, plus the PEM of the CA that clients should trust
/// (for the development CA).
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
    /// PEM of the CA that signed the chain, when roomcast generated it.
    pub ca_pem: Option<String>,
}

/// File name of the development CA certificate in the data folder.
pub const DEV_CA_FILE: &str = "ca.pem";
const DEV_CERT_FILE: &str = "server.pem";
const DEV_KEY_FILE: &str = "server.key";

impl ServerIdentity {
    /// A fresh development CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and
    /// `extra_names`, in memory.
    pub fn generate(extra_names: &[String]) -> Result<Self, TlsError> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "roomcast development CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra_names.iter().cloned());
        let leaf_key = rcgen::KeyPair::generate()?;
        let mut leaf_params = rcgen::CertificateParams::new(names)?;
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "roomcast development server");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
        Ok(ServerIdentity {
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            ca_pem: Some(ca.pem()),
        })
    }

    /// The development identity in `data`: loaded if present, generated and written on first use.
    /// Returns the identity and whether it was generated now.
    pub fn dev_in(data: &Path, extra_names: &[String]) -> Result<(Self, bool), TlsError> {
        let cert = data.join(DEV_CERT_FILE);
        let key = data.join(DEV_KEY_FILE);
        if cert.exists() && key.exists() {
            let mut id = Self::load(&cert, &key)?;
            id.ca_pem = std::fs::read_to_string(data.join(DEV_CA_FILE)).ok();
            return Ok((id, false));
        }
        let id = Self::generate(extra_names)?;
        let mut chain_pem = String::new();
        for der in &id.chain {
            chain_pem.push_str(&pem_block("CERTIFICATE", der));
        }
        let key_pem = pem_block("PRIVATE KEY", id.key.secret_der());
        write_file(
            &data.join(DEV_CA_FILE),
            id.ca_pem.as_deref().unwrap_or(""),
            false,
        )?;
        write_file(&cert, &chain_pem, false)?;
        write_file(&key, &key_pem, true)?;
        Ok((id, true))
    }

    /// Loads a PEM chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = load_certs(cert)?;
        let key_bytes = read(key)?;
        let key = rustls_pemfile::private_key(&mut key_bytes.as_slice())
            .map_err(|source| TlsError::Io {
                path: key.to_owned(),
                source,
            })?
            .ok_or_else(|| TlsError::Pem(format!("{}: no private key found", key.display())))?;
        Ok(ServerIdentity {
            chain,
            key,
            ca_pem: None,
        })
    }

    /// The QUIC server crypto for this identity with ALPN `roomcast/1`.
    pub fn quic_server_crypto(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = 0;
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Pem(format!("QUIC server crypto: {e}")))
    }
}

/// The crypto provider roomcast uses everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // AES-128-GCM with SHA-256 first: cheaper handshakes (no SHA-512) and bulk sealing than the
    // default AES-256-GCM-SHA384, and as secure for this use.
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    });
    Arc::new(p)
}

/// QUIC client crypto trusting the CA certificates in `ca_pem`, with ALPN `roomcast/1`.
pub fn quic_client_crypto(
    ca_pem: &[u8],
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &*ca_pem) {
        let cert = cert.map_err(|e| TlsError::Pem(format!("CA file: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("CA file holds no certificate".into()));
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Pem(format!("QUIC client crypto: {e}")))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to `path`, readable by the owner only when `private`.
pub fn write_file(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_identity_is_written_once_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, fresh) = ServerIdentity::dev_in(dir.path(), &[]).expect("generates");
        assert!(fresh);
        let (b, fresh) = ServerIdentity::dev_in(dir.path(), &[]).expect("loads");
        assert!(!fresh);
        assert_eq!(a.chain, b.chain);
        assert_eq!(a.ca_pem, b.ca_pem);
        let ca = std::fs::read(dir.path().join(DEV_CA_FILE)).expect("ca written");
        quic_client_crypto(&ca).expect("clients can trust it");
        b.quic_server_crypto().expect("server config builds");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        assert!(quic_client_crypto(b"not a pem").is_err());
    }
}

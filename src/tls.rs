//! Certificates: the development CA generated on first start, loading operator certificates, and the
//! rustls configurations both ends use.

use crate::protocol::ALPN;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// The development CA that issued the leaf and issues its successors, when roomcast made it.
    issuer: Option<Arc<DevIssuer>>,
}

/// File name of the development CA certificate in the data folder.
pub const DEV_CA_FILE: &str = "ca.pem";
const DEV_CA_KEY_FILE: &str = "ca.key";
/// Development server certificate chain in the data folder (signed by [`DEV_CA_FILE`]).
pub const DEV_CERT_FILE: &str = "server.pem";
/// Private key of [`DEV_CERT_FILE`].
pub const DEV_KEY_FILE: &str = "server.key";

/// Validity of a development leaf. Browsers accept a certificate by its hash
/// (`serverCertificateHashes` of WebTransport) only when it is valid for at most 14 days and its
/// key is ECDSA P-256; the leaf is re-issued once it is half way through ([`renewal_due`]).
pub const DEV_LEAF_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// How far before "now" a new leaf's validity starts, for clocks a little behind ours.
const DEV_LEAF_BACKDATE: Duration = Duration::from_secs(3600);

/// The development CA: its certificate (as clients trust it) and its key, and the names its
/// leaves are for.
struct DevIssuer {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    ca_key: rcgen::KeyPair,
    names: Vec<String>,
    /// Where re-issued leaves are written (`server.pem`, `server.key`), if anywhere.
    folder: Option<PathBuf>,
}

/// The fixed parameters of the development CA. Its leaves name it as issuer by these, so the CA
/// can sign again after a restart from its stored key alone.
fn dev_ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "roomcast development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

impl DevIssuer {
    fn new_ca(names: Vec<String>, folder: Option<PathBuf>) -> Result<Self, TlsError> {
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = dev_ca_params()?.self_signed(&ca_key)?;
        Ok(DevIssuer {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            ca_key,
            names,
            folder,
        })
    }

    /// A leaf (ECDSA P-256) for `localhost`, `127.0.0.1`, `::1` and the extra names, valid from a
    /// little before `now` for [`DEV_LEAF_VALIDITY`].
    fn issue(
        &self,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        // The issuer is rebuilt from the CA's fixed parameters and key: the leaf's issuer name
        // and key identifier come from those, so it chains to the stored CA certificate.
        let ca = dev_ca_params()?.self_signed(&self.ca_key)?;
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
        names.extend(self.names.iter().cloned());
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut leaf_params = rcgen::CertificateParams::new(names)?;
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "roomcast development server");
        let start = now.checked_sub(DEV_LEAF_BACKDATE).unwrap_or(now);
        leaf_params.not_before = time::OffsetDateTime::from(start);
        leaf_params.not_after = time::OffsetDateTime::from(start + DEV_LEAF_VALIDITY);
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &self.ca_key)?;
        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        if let Some(folder) = &self.folder {
            write_chain(folder, &chain, &key)?;
        }
        Ok((chain, key))
    }
}

fn write_chain(
    folder: &Path,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    let mut chain_pem = String::new();
    for der in chain {
        chain_pem.push_str(&pem_block("CERTIFICATE", der));
    }
    // The key first: a crash between the two leaves a new key beside the old certificate,
    // which the next start refuses to pair and re-issues.
    write_file(
        &folder.join(DEV_KEY_FILE),
        &pem_block("PRIVATE KEY", key.secret_der()),
        true,
    )?;
    write_file(&folder.join(DEV_CERT_FILE), &chain_pem, false)
}

/// Whether a leaf valid from `not_before` to `not_after` should be replaced at `now`: once half
/// its validity has passed (or it is not valid at all).
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let Ok(span) = not_after.duration_since(not_before) else {
        return true;
    };
    now < not_before || now >= not_before + span / 2
}

/// The validity period of a DER certificate.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), TlsError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| TlsError::Pem(format!("unreadable certificate: {e}")))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH
        }
    };
    let v = cert.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

impl ServerIdentity {
    /// A fresh development CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and
    /// `extra_names`, in memory. Its leaf can be renewed ([`Certs::renew_if_due`]).
    pub fn generate(extra_names: &[String]) -> Result<Self, TlsError> {
        let issuer = DevIssuer::new_ca(extra_names.to_vec(), None)?;
        let (chain, key) = issuer.issue(SystemTime::now())?;
        Ok(ServerIdentity {
            chain,
            key,
            ca_pem: Some(issuer.ca_pem.clone()),
            issuer: Some(Arc::new(issuer)),
        })
    }

    /// The development identity in `data`: loaded if present, generated and written on first use.
    /// A leaf half way through its validity (or without the CA key to renew it) is replaced at
    /// once; a folder without the CA's key gets a new CA. Returns the identity and whether a new
    /// CA was generated now.
    pub fn dev_in(data: &Path, extra_names: &[String]) -> Result<(Self, bool), TlsError> {
        Self::dev_in_at(data, extra_names, SystemTime::now())
    }

    /// [`ServerIdentity::dev_in`] with the clock as an argument.
    pub fn dev_in_at(
        data: &Path,
        extra_names: &[String],
        now: SystemTime,
    ) -> Result<(Self, bool), TlsError> {
        let cert = data.join(DEV_CERT_FILE);
        let key = data.join(DEV_KEY_FILE);
        let ca_key = data.join(DEV_CA_KEY_FILE);
        let ca_cert = data.join(DEV_CA_FILE);
        if ca_key.exists() && ca_cert.exists() {
            let ca_pem = String::from_utf8_lossy(&read(&ca_cert)?).into_owned();
            let ca_der = load_certs(&ca_cert)?.remove(0);
            let key_pem = String::from_utf8_lossy(&read(&ca_key)?).into_owned();
            let ca_key = rcgen::KeyPair::from_pem(&key_pem)?;
            let issuer = Arc::new(DevIssuer {
                ca_der,
                ca_pem: ca_pem.clone(),
                ca_key,
                names: extra_names.to_vec(),
                folder: Some(data.to_owned()),
            });
            let current = if cert.exists() && key.exists() {
                Self::load(&cert, &key).ok().filter(|id| {
                    id.chain.first().is_some_and(|leaf| {
                        validity(leaf).is_ok_and(|(from, until)| {
                            until
                                .duration_since(from)
                                .is_ok_and(|d| d <= DEV_LEAF_VALIDITY)
                                && !renewal_due(from, until, now)
                        })
                    }) && key_matches(id)
                })
            } else {
                None
            };
            let (chain, key) = match current {
                Some(id) => (id.chain, id.key),
                None => issuer.issue(now)?,
            };
            return Ok((
                ServerIdentity {
                    chain,
                    key,
                    ca_pem: Some(ca_pem),
                    issuer: Some(issuer),
                },
                false,
            ));
        }
        let issuer = DevIssuer::new_ca(extra_names.to_vec(), Some(data.to_owned()))?;
        write_file(&ca_cert, &issuer.ca_pem, false)?;
        write_file(&ca_key, &issuer.ca_key.serialize_pem(), true)?;
        let (chain, key) = issuer.issue(now)?;
        Ok((
            ServerIdentity {
                chain,
                key,
                ca_pem: Some(issuer.ca_pem.clone()),
                issuer: Some(Arc::new(issuer)),
            },
            true,
        ))
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
            issuer: None,
        })
    }

    /// The QUIC server crypto for this identity with ALPN `roomcast/1`.
    pub fn quic_server_crypto(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        self.certs()?.quic_server_crypto(&[ALPN])
    }

    /// The certificate as a relay serves it: swappable, so a running relay can renew a
    /// development leaf.
    pub fn certs(&self) -> Result<Arc<Certs>, TlsError> {
        let current = Current::new(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(Certs {
            current: arc_swap::ArcSwap::from_pointee(current),
            issuer: self.issuer.clone(),
            renew: std::sync::Mutex::new(()),
        }))
    }
}

/// Whether a loaded chain's leaf belongs to its key (a crash between writing the two can
/// leave them unpaired).
fn key_matches(id: &ServerIdentity) -> bool {
    Current::new(id.chain.clone(), id.key.clone_key()).is_ok_and(|c| c.key.keys_match().is_ok())
}

/// The certificate in use: what rustls presents, and its hash and validity.
#[derive(Debug)]
struct Current {
    key: Arc<rustls::sign::CertifiedKey>,
    sha256: [u8; 32],
    validity: Option<(SystemTime, SystemTime)>,
}

impl Current {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Pem("empty certificate chain".into()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        let validity = validity(leaf).ok();
        let signer = provider().key_provider.load_private_key(key)?;
        Ok(Current {
            key: Arc::new(rustls::sign::CertifiedKey::new(chain, signer)),
            sha256,
            validity,
        })
    }
}

/// The server certificate of a running relay, shared by its QUIC endpoint and its public HTTPS
/// listener. A development leaf is renewed in place ([`Certs::renew_if_due`]): connections
/// made after that see the new one.
#[derive(Debug)]
pub struct Certs {
    current: arc_swap::ArcSwap<Current>,
    issuer: Option<Arc<DevIssuer>>,
    /// One renewal at a time.
    renew: std::sync::Mutex<()>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

impl Certs {
    /// SHA-256 of the leaf in use, when browsers can trust it by that hash: a development leaf
    /// (ECDSA P-256, valid for at most 14 days). An operator's certificate is trusted the usual
    /// way and has none.
    pub fn browser_hash(&self) -> Option<[u8; 32]> {
        self.issuer.as_ref()?;
        Some(self.current.load().sha256)
    }

    /// The leaf in use, DER.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().key.cert[0].clone()
    }

    /// The validity of the leaf in use.
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        self.current.load().validity
    }

    /// Replaces a development leaf that is half way through its validity at `now` with a new one
    /// (written to the data folder too); true when it did. Operator certificates are left alone.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<bool, TlsError> {
        let Some(issuer) = &self.issuer else {
            return Ok(false);
        };
        let _one = self.renew.lock().unwrap_or_else(|p| p.into_inner());
        let due = match self.current.load().validity {
            Some((from, until)) => renewal_due(from, until, now),
            None => true,
        };
        if !due {
            return Ok(false);
        }
        let (chain, key) = issuer.issue(now)?;
        self.current.store(Arc::new(Current::new(chain, key)?));
        Ok(true)
    }

    /// QUIC server crypto presenting this certificate, offering `alpn` in that order.
    pub fn quic_server_crypto(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let mut tls = self.server_config(alpn)?;
        tls.max_early_data_size = 0;
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Pem(format!("QUIC server crypto: {e}")))
    }

    /// A TLS 1.3 server configuration presenting this certificate, offering `alpn`.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(tls)
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
    let tls = tls_client_config(ca_pem, &[ALPN])?;
    quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Pem(format!("QUIC client crypto: {e}")))
}

/// A TLS 1.3 client configuration trusting the CA certificates in `ca_pem`, offering `alpn`.
pub fn tls_client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
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
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
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

    /// Verifies `leaf` for `localhost` at `now` against the CA in `ca_pem`, as a client does.
    fn verify(
        ca_pem: &str,
        leaf: &CertificateDer<'static>,
        now: SystemTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        let secs = now
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            leaf,
            &[],
            &rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            &[],
            rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        )
        .map(|_| ())
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn renewal_is_due_from_half_way_and_outside_the_validity() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let end = t0 + 14 * DAY;
        assert!(!renewal_due(t0, end, t0));
        assert!(!renewal_due(t0, end, t0 + 7 * DAY - Duration::from_secs(1)));
        assert!(renewal_due(t0, end, t0 + 7 * DAY));
        assert!(renewal_due(t0, end, end + DAY));
        assert!(
            renewal_due(t0, end, t0 - Duration::from_secs(1)),
            "not yet valid"
        );
        assert!(
            renewal_due(end, t0, t0),
            "a reversed validity is never kept"
        );
    }

    #[test]
    fn the_dev_leaf_is_p256_short_lived_and_chains_to_the_dev_ca() {
        let id = ServerIdentity::generate(&[]).expect("generates");
        let leaf = &id.chain[0];
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).expect("parses");
        let spki = cert.public_key();
        assert_eq!(
            spki.algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .expect("a named curve");
        assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
        let (from, until) = validity(leaf).expect("validity");
        let span = until.duration_since(from).expect("ordered");
        assert!(span <= 14 * DAY, "{span:?}");
        assert!(from <= SystemTime::now() && SystemTime::now() < until);
        verify(
            id.ca_pem.as_deref().expect("dev CA"),
            leaf,
            SystemTime::now(),
        )
        .expect("the leaf chains to the development CA");
        let certs = id.certs().expect("certs");
        let want = ring::digest::digest(&ring::digest::SHA256, leaf);
        assert_eq!(
            certs
                .browser_hash()
                .expect("dev leaf has a hash")
                .as_slice(),
            want.as_ref()
        );
    }

    #[test]
    fn a_dev_leaf_half_way_through_is_reissued_at_start_under_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let (a, _) = ServerIdentity::dev_in_at(dir.path(), &[], now).expect("generates");
        let (b, fresh) = ServerIdentity::dev_in_at(dir.path(), &[], now + 6 * DAY).expect("loads");
        assert!(!fresh);
        assert_eq!(a.chain[0], b.chain[0], "not half way yet: kept");
        let later = now + 7 * DAY;
        let (c, fresh) = ServerIdentity::dev_in_at(dir.path(), &[], later).expect("renews");
        assert!(!fresh, "the CA is kept");
        assert_ne!(a.chain[0], c.chain[0], "half way: re-issued");
        assert_eq!(a.ca_pem, c.ca_pem);
        verify(c.ca_pem.as_deref().expect("CA"), &c.chain[0], later)
            .expect("chains to the same CA");
        assert!(
            verify(
                a.ca_pem.as_deref().expect("CA"),
                &a.chain[0],
                now + 14 * DAY
            )
            .is_err(),
            "the old leaf expires"
        );
        // The renewed leaf was written: the next start loads it.
        let (d, _) = ServerIdentity::dev_in_at(dir.path(), &[], later).expect("loads");
        assert_eq!(c.chain[0], d.chain[0]);
    }

    #[test]
    fn a_folder_without_the_ca_key_gets_a_new_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, _) = ServerIdentity::dev_in(dir.path(), &[]).expect("generates");
        std::fs::remove_file(dir.path().join(DEV_CA_KEY_FILE)).expect("remove");
        let (b, fresh) = ServerIdentity::dev_in(dir.path(), &[]).expect("regenerates");
        assert!(fresh);
        assert_ne!(a.ca_pem, b.ca_pem);
        let ca = std::fs::read_to_string(dir.path().join(DEV_CA_FILE)).expect("ca");
        verify(&ca, &b.chain[0], SystemTime::now()).expect("chains to the new CA");
    }

    #[test]
    fn a_running_relay_renews_its_leaf_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let (id, _) = ServerIdentity::dev_in_at(dir.path(), &[], now).expect("generates");
        let certs = id.certs().expect("certs");
        let before = certs.leaf();
        assert!(!certs.renew_if_due(now + DAY).expect("checks"));
        assert_eq!(certs.leaf(), before);
        assert!(certs.renew_if_due(now + 7 * DAY).expect("renews"));
        let after = certs.leaf();
        assert_ne!(after, before);
        let want = ring::digest::digest(&ring::digest::SHA256, &after);
        assert_eq!(
            certs.browser_hash().expect("hash").as_slice(),
            want.as_ref()
        );
        verify(id.ca_pem.as_deref().expect("CA"), &after, now + 7 * DAY).expect("chains");
        let (reloaded, _) =
            ServerIdentity::dev_in_at(dir.path(), &[], now + 7 * DAY).expect("loads");
        assert_eq!(reloaded.chain[0], after, "the renewed leaf is on disk");
        let operator = ServerIdentity::load(
            &dir.path().join(DEV_CERT_FILE),
            &dir.path().join(DEV_KEY_FILE),
        )
        .expect("loads as an operator certificate");
        let certs = operator.certs().expect("certs");
        assert!(certs.browser_hash().is_none());
        assert!(!certs.renew_if_due(now + 30 * DAY).expect("never renews"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        assert!(quic_client_crypto(b"not a pem").is_err());
    }
}

//! Certificates for the client listeners: the dev node's self-signed identity, certificate
//! files, and their reload without dropping a session.
//!
//! One [`Certs`] serves both listeners: it is the rustls certificate resolver of the QUIC
//! (WebTransport, TLS 1.3, ALPN `h3`) and of the TCP (HTTPS/WSS, TLS 1.2 and 1.3, ALPN
//! `http/1.1`) configurations. A reload swaps the key pair inside it, so the next handshake on
//! either listener uses the new certificate and established connections keep theirs: no
//! endpoint is rebuilt, nothing is dropped. [`watch`] reloads when the files change (their
//! modification time or size, polled) and on `SIGHUP`; a pair that fails any check (unreadable,
//! not PEM, key not matching the certificate, certificate expired or not yet valid) is refused
//! with a logged reason and the old pair stays.
//!
//! Imports nothing from the rest of the crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wtransport::Identity;

/// Days a dev certificate is valid: browsers accept `serverCertificateHashes` only for
/// certificates valid at most 14 days; 13 leaves a margin for clock skew.
pub const DEV_CERT_DAYS: u32 = 13;

/// A fresh self-signed ECDSA P-256 identity for `localhost`, `127.0.0.1`, `::1` and `names`.
pub fn dev_identity(names: &[String]) -> anyhow::Result<Identity> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(names.iter().cloned());
    Identity::self_signed_builder()
        .subject_alt_names(&sans)
        .from_now_utc()
        .validity_days(DEV_CERT_DAYS)
        .build()
        .context("generating the dev certificate")
}

/// Loads a certificate chain and key from PEM files.
pub async fn load_identity(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    Identity::load_pemfiles(cert, key)
        .await
        .with_context(|| format!("loading {} and {}", cert.display(), key.display()))
}

/// Hex SHA-256 of the identity's leaf certificate (what `serverCertificateHashes` pins).
pub fn cert_sha256(identity: &Identity) -> String {
    identity
        .certificate_chain()
        .as_slice()
        .first()
        .map(|c| hex::encode(Sha256::digest(c.der())))
        .unwrap_or_default()
}

/// A certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{}: no PEM certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// The key file holds no usable private key.
    #[error("{}: no usable private key ({reason})", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate, or the certificate does not parse.
    #[error("the key does not match the certificate: {0}")]
    Mismatch(String),
    /// The leaf certificate does not parse as X.509.
    #[error("the certificate does not parse: {0}")]
    Parse(String),
    /// The leaf certificate is outside its validity period now.
    #[error(
        "the certificate is valid from {not_before} to {not_after} (unix seconds), not now ({now})"
    )]
    Validity {
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
        /// Now.
        now: i64,
    },
}

/// Modification time and length of a file: a change of either means "read it again".
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// Stamps of the pair last read (loaded or refused), so a refused pair is not retried
    /// (and logged) on every poll.
    seen: Mutex<(Stamp, Stamp)>,
}

/// The key pair in force for the client listeners, swappable at run time.
#[derive(Debug)]
pub struct Certs {
    current: RwLock<(Arc<CertifiedKey>, String)>,
    files: Option<Files>,
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Checks a pair and builds what rustls serves, with the leaf's hex SHA-256.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, String), CertError> {
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::NoCertificate(PathBuf::new()))?;
    let sha = hex::encode(Sha256::digest(leaf.as_ref()));
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = x509.validity();
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now < not_before || now > not_after {
        return Err(CertError::Validity {
            not_before,
            not_after,
            now,
        });
    }
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    Ok((Arc::new(ck), sha))
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_files(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, String), CertError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| CertError::NoCertificate(cert.to_path_buf()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(cert.to_path_buf()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    certified(chain, key_der, key, SystemTime::now())
}

impl Certs {
    /// The pair in `cert` and `key` (PEM), reloadable from them.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<Certs>, CertError> {
        let seen = (stamp(cert), stamp(key));
        let current = load_files(cert, key)?;
        Ok(Arc::new(Certs {
            current: RwLock::new(current),
            files: Some(Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                seen: Mutex::new(seen),
            }),
        }))
    }

    /// A fixed identity (the dev node's self-signed one); [`Certs::reload`] keeps it.
    pub fn from_identity(identity: &Identity) -> Result<Arc<Certs>, CertError> {
        let chain = identity
            .certificate_chain()
            .as_slice()
            .iter()
            .map(|c| CertificateDer::from(c.der().to_vec()))
            .collect();
        let key =
            PrivateKeyDer::try_from(identity.private_key().secret_der().to_vec()).map_err(|e| {
                CertError::Key {
                    path: PathBuf::from("(generated)"),
                    reason: e.to_string(),
                }
            })?;
        let current = certified(chain, key, Path::new("(generated)"), SystemTime::now())?;
        Ok(Arc::new(Certs {
            current: RwLock::new(current),
            files: None,
        }))
    }

    /// Hex SHA-256 of the leaf certificate in force (what `/cert.sha256` serves).
    pub fn sha256(&self) -> String {
        self.current.read().1.clone()
    }

    /// Whether the files changed since they were last read.
    pub fn changed_on_disk(&self) -> bool {
        self.files.as_ref().is_some_and(|f| {
            let now = (stamp(&f.cert), stamp(&f.key));
            *f.seen.lock() != now
        })
    }

    /// Reads the files again and, if the pair passes every check, serves it from the next
    /// handshake on. Returns whether the certificate changed; on error the old pair stays.
    /// A node without files (dev) keeps its identity: `Ok(false)`.
    pub fn reload(&self) -> Result<bool, CertError> {
        let Some(f) = &self.files else {
            return Ok(false);
        };
        *f.seen.lock() = (stamp(&f.cert), stamp(&f.key));
        let next = load_files(&f.cert, &f.key)?;
        let mut cur = self.current.write();
        let changed = cur.1 != next.1;
        *cur = next;
        Ok(changed)
    }

    /// TLS for WebTransport: TLS 1.3 only (QUIC), ALPN `h3`, served from this store.
    pub fn quic_server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("invariant: ring supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![wtransport::tls::WEBTRANSPORT_ALPN.to_vec()];
        c
    }

    /// TLS for the TCP port (HTTPS, WSS): TLS 1.2 and 1.3, ALPN `http/1.1`.
    pub fn tcp_server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("invariant: ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

/// Reloads `certs` when its files change (checked every `poll`; zero turns polling off) and
/// on `SIGHUP`, until `stop`. Calls `on_reload` with the new hex SHA-256 after each reload
/// that changed the certificate, and with the error after each refused one (also logged).
pub async fn watch(
    certs: Arc<Certs>,
    poll: Duration,
    on_reload: impl Fn(Result<&str, &CertError>) + Send,
    stop: CancellationToken,
) {
    if certs.files.is_none() {
        return;
    }
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; certificates reload on file change only");
            None
        }
    };
    let period = if poll.is_zero() {
        Duration::from_secs(24 * 3600)
    } else {
        poll
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if poll.is_zero() || !certs.changed_on_disk() {
                    continue;
                }
                "file change"
            }
            Some(()) = async {
                match &mut hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
        };
        match certs.reload() {
            Ok(true) => {
                let sha = certs.sha256();
                info!(trigger = why, cert_sha256 = %sha, "certificate reloaded");
                on_reload(Ok(&sha));
            }
            Ok(false) => info!(trigger = why, "certificate files read again: unchanged"),
            Err(e) => {
                warn!(
                    trigger = why,
                    error = %e,
                    "new certificate refused; keeping the one in force"
                );
                on_reload(Err(&e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh key and a self-signed certificate for it, expired or valid until 2100.
    fn pair(expired: bool) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = if expired {
            rcgen::date_time_ymd(2001, 1, 1)
        } else {
            rcgen::date_time_ymd(2100, 1, 1)
        };
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("edgegate-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn reload_swaps_a_good_pair_and_refuses_a_bad_one() {
        let d = dir();
        let (c1, k1) = pair(false);
        let (cp, kp) = (d.join("cert.pem"), d.join("key.pem"));
        std::fs::write(&cp, &c1).expect("write");
        std::fs::write(&kp, &k1).expect("write");
        let certs = Certs::from_files(&cp, &kp).expect("load");
        let first = certs.sha256();
        assert!(!certs.changed_on_disk());
        assert!(!certs.reload().expect("same files"));

        // A new certificate with the old key: refused, old kept.
        let (c2, k2) = pair(false);
        std::fs::write(&cp, &c2).expect("write");
        assert!(certs.changed_on_disk());
        let e = certs.reload().expect_err("mismatch");
        assert!(matches!(e, CertError::Mismatch(_)), "{e}");
        assert_eq!(certs.sha256(), first);
        assert!(!certs.changed_on_disk(), "a refused pair is not retried");
        // Its key arrives: accepted.
        std::fs::write(&kp, &k2).expect("write");
        assert!(certs.reload().expect("good pair"));
        assert_ne!(certs.sha256(), first);

        // Garbage, an empty file, an expired certificate: refused, the good one stays.
        let good = certs.sha256();
        for (cert, key) in [
            ("garbage".to_string(), k2.clone()),
            (String::new(), k2.clone()),
            (c2.clone(), "not a key".to_string()),
            pair(true),
        ] {
            std::fs::write(&cp, cert).expect("write");
            std::fs::write(&kp, key).expect("write");
            assert!(certs.reload().is_err());
            assert_eq!(certs.sha256(), good);
        }
        std::fs::remove_file(&kp).expect("rm");
        assert!(matches!(certs.reload(), Err(CertError::Read { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn dev_identity_serves_and_never_reloads() {
        let id = dev_identity(&[]).expect("dev");
        let certs = Certs::from_identity(&id).expect("certs");
        assert_eq!(certs.sha256(), cert_sha256(&id));
        assert!(!certs.reload().expect("no files"));
        assert!(!certs.changed_on_disk());
        let _ = certs.quic_server_config();
        let _ = certs.tcp_server_config();
    }
}

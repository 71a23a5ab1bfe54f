//! Certificates: the dev node's self-signed identity and certificate files.

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
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

//! Cluster TLS: a private CA and one certificate per node, mutual TLS on every link. A peer
//! whose certificate was not issued by the cluster CA is refused during the handshake.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wtransport::quinn;

/// Name every node certificate carries and every dialer asks for: node identity is checked
/// by the cluster CA, not by DNS.
pub const CLUSTER_SNI: &str = "edgegate-cluster";

/// ALPN of the mesh protocol.
pub const ALPN: &[u8] = b"edgegate-mesh/2";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate", path.display());
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading key {}", path.display()))
}

/// QUIC configs (server and client side of links) from the cluster CA and this node's pair.
pub fn quic_configs(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).context("cluster CA")?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(cert)?;
    let key = read_key(key)?;

    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("client verifier")?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("node certificate")?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("node certificate (client side)")?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(5)).context("idle timeout")?,
    ));
    let transport = Arc::new(transport);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).context("QUIC server TLS")?,
    ));
    sc.transport_config(transport.clone());
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).context("QUIC client TLS")?,
    ));
    cc.transport_config(transport);
    Ok((sc, cc))
}

/// Writes a development cluster CA and a certificate per node into `out`:
/// `ca.pem`, `ca.key`, `<node>.pem`, `<node>.key`. (rcgen's default validity is used; a
/// production cluster CA belongs in your PKI, with short-lived node certificates.)
pub fn generate(out: &Path, nodes: &[String]) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edgegate cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(out, "ca.pem", &ca.pem())?;
    write(out, "ca.key", &ca.key().serialize_pem())?;
    for node in nodes {
        anyhow::ensure!(
            !node.is_empty()
                && node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "node name {node:?}: use letters, digits, '-' and '.'"
        );
        let mut p = CertificateParams::new(vec![
            CLUSTER_SNI.to_string(),
            node.clone(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ])?;
        p.distinguished_name.push(DnType::CommonName, node.as_str());
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca)?;
        write(out, &format!("{node}.pem"), &cert.pem())?;
        write(out, &format!("{node}.key"), &key.serialize_pem())?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    #[cfg(unix)]
    if name.ends_with(".key") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

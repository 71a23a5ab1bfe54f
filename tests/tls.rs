//! TLS on the TCP port and certificate reload, over real sockets: a node with certificate
//! files serves HTTPS and WSS with the same certificate as WebTransport; replacing the files
//! switches new connections to the new certificate (pinned by hash) while open sessions keep
//! running; a bad pair is refused and the old one kept.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use edgegate::client::{Client, Options, SubscribeOptions, TransportChoice};
use edgegate::protocol::Mode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WT: TransportChoice = TransportChoice::WebTransport;
const WS: TransportChoice = TransportChoice::WebSocket;

/// A fresh ECDSA P-256 pair for localhost valid 10 days (pinnable like a dev certificate),
/// written to `dir`; returns the certificate's hex SHA-256.
fn write_pair(dir: &Path) -> String {
    let mut p = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(3600)).into();
    p.not_after = (now + std::time::Duration::from_secs(10 * 86_400)).into();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("cert");
    // Key first: a reload that sees the new certificate with the old key refuses it and
    // waits for the next change, so the order only matters for the log.
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert");
    hex::encode(Sha256::digest(cert.der()))
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgegate-tls-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

async fn tls_node(dir: &Path) -> TestNode {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    start(move |c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
        c.tls.reload_poll_secs = 1;
    })
    .await
}

fn options(node: &TestNode, t: TransportChoice, sha: &str) -> Options {
    Options::new(format!("https://{}", node.addr))
        .transport(t)
        .cert_sha256(sha)
        .expect("hash")
}

/// `GET path` over HTTPS; returns the status, the body and the hex SHA-256 of the
/// certificate the TCP port presented.
async fn https_get(node: &TestNode, path: &str) -> (u16, String, String) {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(
        wtransport::tls::client::NoServerVerification::new(),
    ))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake");
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .expect("a certificate");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut out))
        .await
        .expect("response in time");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    (status, body, presented)
}

#[tokio::test]
async fn the_tcp_port_serves_https_and_wss_with_the_webtransport_certificate() {
    let dir = temp_dir();
    let sha = write_pair(&dir);
    let node = tls_node(&dir).await;
    assert_eq!(node.cert_sha256, sha);
    let (status, body, presented) = https_get(&node, "/cert.sha256").await;
    assert_eq!((status, body.as_str()), (200, sha.as_str()));
    assert_eq!(presented, sha, "one certificate for both listeners");
    // Plain HTTP on a TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Both transports through the Rust client with an https:// URL.
    let mut clients = Vec::new();
    for t in [WT, WS] {
        let c = Client::connect(options(&node, t, &sha))
            .await
            .expect("connect");
        assert_eq!(c.transport(), t);
        c.subscribe("chat:tls", SubscribeOptions::default())
            .await
            .expect("sub");
        clients.push(c);
    }
    clients[1]
        .publish("chat:tls", Mode::Reliable, None, "over wss")
        .await
        .expect("publish");
    for c in &mut clients {
        assert_eq!(next_message(c).await.data.as_ref(), b"over wss");
    }
    // A wrong pin is refused on both.
    let wrong = "00".repeat(32);
    for t in [WT, WS] {
        assert!(Client::connect(options(&node, t, &wrong)).await.is_err());
    }
    drop(clients);
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn certificates_reload_without_dropping_sessions_and_a_bad_pair_keeps_the_old() {
    let dir = temp_dir();
    let old = write_pair(&dir);
    let node = tls_node(&dir).await;
    let counters = node.shared.hub.counters().clone();
    let mut open = Vec::new();
    for t in [WT, WS] {
        let c = Client::connect(options(&node, t, &old))
            .await
            .expect("connect");
        c.subscribe("chat:reload", SubscribeOptions::default())
            .await
            .expect("sub");
        open.push(c);
    }

    // New files: new connections see the new certificate, open sessions carry on.
    let new = write_pair(&dir);
    eventually("the new certificate to be loaded", || {
        counters.cert_reloads.load(Ordering::Relaxed) == 1
    })
    .await;
    let (_, body, presented) = https_get(&node, "/cert.sha256").await;
    assert_eq!(
        (body.as_str(), presented.as_str()),
        (new.as_str(), new.as_str())
    );
    for t in [WT, WS] {
        assert!(
            Client::connect(options(&node, t, &old)).await.is_err(),
            "{t:?}: the old pin no longer matches"
        );
        let c = Client::connect(options(&node, t, &new))
            .await
            .expect("the new pin matches");
        c.publish("chat:reload", Mode::Reliable, None, format!("{t:?}"))
            .await
            .expect("publish");
    }
    for c in &mut open {
        assert_eq!(next_message(c).await.data.as_ref(), b"WebTransport");
        assert_eq!(next_message(c).await.data.as_ref(), b"WebSocket");
    }

    // A bad pair: refused, the new one stays in force, sessions untouched. (Writing a pair
    // file by file may already have been refused once, half written.)
    let failures = counters.cert_reload_failures.load(Ordering::Relaxed);
    std::fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nnope\n").expect("write");
    eventually("the bad certificate to be refused", || {
        counters.cert_reload_failures.load(Ordering::Relaxed) > failures
    })
    .await;
    let (_, body, presented) = https_get(&node, "/cert.sha256").await;
    assert_eq!(
        (body.as_str(), presented.as_str()),
        (new.as_str(), new.as_str())
    );
    let c = Client::connect(options(&node, WT, &new))
        .await
        .expect("still served with the good pair");
    c.publish("chat:reload", Mode::Reliable, None, "after")
        .await
        .expect("publish");
    for c in &mut open {
        assert_eq!(next_message(c).await.data.as_ref(), b"after");
    }
    assert_eq!(counters.cert_reloads.load(Ordering::Relaxed), 1);
    drop(open);
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_at_the_handshake_timeout() {
    let dir = temp_dir();
    write_pair(&dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let node = start(move |c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
        c.session.handshake_timeout_secs = 1;
    })
    .await;
    // Connected, then silent (and half a ClientHello on a second one).
    let mut silent = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    let mut half = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    for s in [&mut silent, &mut half] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the server closes a stalled TLS handshake")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    // Counted just after the socket is dropped: wait for the counter, not the socket.
    let counters = node.shared.hub.counters().clone();
    eventually("both timeouts counted", || {
        counters
            .handshake_reasons
            .lock()
            .get("tls_handshake_timeout")
            == Some(&2)
    })
    .await;
    // Meanwhile a real client is served.
    let (status, _, _) = https_get(&node, "/healthz").await;
    assert_eq!(status, 200);
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

//! Test harness: real nodes on loopback (in-process), clients, a tiny HTTP client, and
//! bounded waits. Shared by the integration tests; each uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgegate::client::{Client, Event, Options, TransportChoice};
use edgegate::config::{Config, Sources};
use edgegate::gateway::Gateway;
use edgegate::protocol::Message;
use edgegate::session::Shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running node.
pub struct TestNode {
    pub addr: SocketAddr,
    pub api_key: String,
    pub cert_sha256: String,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A dev config on 127.0.0.1:0.
pub fn dev_config() -> Config {
    Config::load(&Sources {
        file: None,
        env: Vec::new(),
        overrides: vec![("listen".into(), "\"127.0.0.1:0\"".into())],
    })
    .expect("dev config")
}

/// Starts a dev node, changed by `tweak`.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestNode {
    let mut config = dev_config();
    // Tests stop nodes often: a short drain.
    config.shutdown.lame_duck_secs = 1;
    config.shutdown.deadline_secs = 5;
    tweak(&mut config);
    if std::env::var_os("RUST_LOG").is_some() {
        edgegate::telemetry::init(&config.log, None, "");
    }
    config.validate().expect("valid test config");
    let gw = Gateway::load(config).await.expect("gateway loads");
    let shutdown = CancellationToken::new();
    TestNode {
        addr: gw.local_addr(),
        api_key: gw.api_key().expect("dev key").to_string(),
        cert_sha256: gw.cert_sha256(),
        shared: gw.shared().clone(),
        shutdown: shutdown.clone(),
        handle: tokio::spawn(gw.run(shutdown)),
    }
}

impl TestNode {
    /// Base URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client options for `t`, pinned to this node's certificate.
    pub fn options(&self, t: TransportChoice) -> Options {
        Options::new(self.url())
            .transport(t)
            .cert_sha256(&self.cert_sha256)
            .expect("hash")
    }

    /// Connects over `t`.
    pub async fn connect(&self, t: TransportChoice) -> Client {
        tokio::time::timeout(WAIT, Client::connect(self.options(t)))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// Connects over `t` with a token.
    pub async fn connect_with(&self, t: TransportChoice, token: &str) -> Client {
        tokio::time::timeout(WAIT, Client::connect(self.options(t).token(token)))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// HTTP request with the API key; returns (status, body).
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.addr, method, path, Some(&self.api_key), body).await
    }

    /// Stops the node and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("node stops in time")
            .expect("join")
            .expect("run ok");
    }
}

/// A minimal HTTP/1.1 request (Connection: close).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("tcp connect");
    let body = body.unwrap_or("");
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The next event, within [`WAIT`].
pub async fn next_event(c: &mut Client) -> Event {
    tokio::time::timeout(WAIT, c.next_event())
        .await
        .expect("event in time")
        .expect("connection open")
}

/// The next channel message, skipping other events, within [`WAIT`].
pub async fn next_message(c: &mut Client) -> Message {
    loop {
        match next_event(c).await {
            Event::Message(m) => return m,
            Event::Closed => panic!("connection closed while waiting for a message"),
            _ => {}
        }
    }
}

/// Waits until `f` holds, checking after every `step`, failing after [`WAIT`]. For state
/// with no event to wait on (counters); never used to paper over a race.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! The `edgegate` binary as an operator runs it: `serve` with no config (dev node), with a
//! config file, env and flags; bad configs; signals; `token`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::http;
use edgegate::client::{Client, Options, SubscribeOptions, TransportChoice};

const BIN: &str = env!("CARGO_BIN_EXE_edgegate");

struct Served {
    child: Child,
    fields: std::collections::HashMap<String, String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `edgegate serve ARGS` and waits (bounded) for its `ready` line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn edgegate");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = tx.try_send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ready line within 30 s");
    let fields = line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Served { child, fields }
}

fn addr(s: &Served) -> std::net::SocketAddr {
    s.fields["http"]
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()
        .expect("addr")
}

fn sigterm_and_wait(mut s: Served) -> std::process::ExitStatus {
    let pid = s.child.id().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "edgegate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn dev_node_with_no_config_serves_everything_and_stops_on_sigterm() {
    let s = serve(&["--listen", "127.0.0.1:0"], &[]);
    let a = addr(&s);
    assert!(s.fields["wt"].ends_with("/wt"));
    assert_eq!(s.fields["cert_sha256"].len(), 64);
    let (status, body) = http(a, "GET", "/cert.sha256", None, None).await;
    assert_eq!(
        (status, body.trim()),
        (200, s.fields["cert_sha256"].as_str())
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http(a, "GET", path, None, None).await.0, 200, "{path}");
    }
    // The demo feed runs, and the generated API key works.
    let key = s.fields["api_key"].clone();
    let (status, body) = http(
        a,
        "POST",
        "/api/publish",
        Some(&key),
        Some(r#"{"channel":"chat:cli","data":"hi"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A WebTransport client pinned to the printed hash gets the ticker's snapshot.
    let mut c = Client::connect(
        Options::new(format!("http://{a}"))
            .transport(TransportChoice::WebTransport)
            .cert_sha256(&s.fields["cert_sha256"])
            .expect("hash"),
    )
    .await
    .expect("connect");
    c.subscribe("prices:ticker", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let snapshot_or_tick = common::next_event(&mut c).await;
    assert!(
        matches!(
            snapshot_or_tick,
            edgegate::client::Event::Snapshot { .. } | edgegate::client::Event::Message(_)
        ),
        "{snapshot_or_tick:?}"
    );
    let status = sigterm_and_wait(s);
    assert!(status.success(), "exit status {status}");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgegate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test]
async fn config_file_env_and_flags_combine_with_flags_winning() {
    let dir = temp_dir("prod");
    let id = edgegate::tls::dev_identity(&[]).expect("identity");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let chain: String = id
        .certificate_chain()
        .as_slice()
        .iter()
        .map(|c| c.to_pem())
        .collect();
    std::fs::write(&cert, chain).expect("cert");
    std::fs::write(&key, id.private_key().to_secret_pem()).expect("key");
    let file = dir.join("edgegate.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:1\"\n[node]\nid = \"from-file\"\nregion = \"file-region\"\n[tls]\ncert = {:?}\nkey = {:?}\n[api]\nkey = \"file-key-file-key-file-key\"\n[[namespace]]\nname = \"*\"\nanonymous_subscribe = true\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("config");
    let s = serve(
        &[
            "--config",
            file.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "from-flag",
        ],
        &[
            ("EDGEGATE_NODE__ID", "from-env"),
            ("EDGEGATE_NODE__REGION", "env-region"),
        ],
    );
    let a = addr(&s);
    assert_eq!(s.fields["api_key"], "file-key-file-key-file-key");
    // A certificate is configured: the TCP port speaks TLS.
    assert!(s.fields["http"].starts_with("https://"), "{:?}", s.fields);
    assert!(s.fields["ws"].starts_with("wss://"), "{:?}", s.fields);
    let c = Client::connect(
        Options::new(format!("https://{a}"))
            .transport(TransportChoice::WebTransport)
            .dev_insecure(),
    )
    .await
    .expect("anonymous connect (namespace allows subscribe)");
    assert_eq!(c.welcome().node_id, "from-flag", "flag beats env and file");
    assert_eq!(c.welcome().region, "env-region", "env beats file");
    // Production node: anonymous may subscribe (namespace says so) but not publish.
    c.subscribe("any:thing", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let err = c
        .publish("any:thing", edgegate::protocol::Mode::Reliable, None, "x")
        .await
        .expect_err("anonymous publish refused");
    assert_eq!(err.code(), Some(edgegate::protocol::ErrorCode::Forbidden));
    drop(c);
    assert!(sigterm_and_wait(s).success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes a fresh 13-day ECDSA pair (pinnable by hash) and returns its hex SHA-256.
fn write_identity(cert: &std::path::Path, key: &std::path::Path) -> String {
    let id = edgegate::tls::dev_identity(&[]).expect("identity");
    let chain: String = id
        .certificate_chain()
        .as_slice()
        .iter()
        .map(|c| c.to_pem())
        .collect();
    std::fs::write(key, id.private_key().to_secret_pem()).expect("key");
    std::fs::write(cert, chain).expect("cert");
    edgegate::tls::cert_sha256(&id)
}

#[tokio::test]
async fn sighup_reloads_the_certificate_files_without_dropping_sessions() {
    let dir = temp_dir("hup");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let old = write_identity(&cert, &key);
    let s = serve(
        &[
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            key.to_str().expect("utf8"),
            // Only the signal reloads.
            "--set",
            "tls.reload_poll_secs=0",
        ],
        &[],
    );
    assert_eq!(s.fields["cert_sha256"], old);
    let url = format!("https://{}", addr(&s));
    let pinned = |sha: &str| {
        Options::new(url.clone())
            .transport(TransportChoice::WebTransport)
            .cert_sha256(sha)
            .expect("hash")
    };
    let open = Client::connect(pinned(&old)).await.expect("connect");
    open.subscribe("chat:hup", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let new = write_identity(&cert, &key);
    assert!(
        Client::connect(pinned(&new)).await.is_err(),
        "no reload before the signal"
    );
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    // The signal is handled asynchronously: poll the observable result, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        if let Ok(c) = Client::connect(pinned(&new)).await {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    fresh
        .publish("chat:hup", edgegate::protocol::Mode::Reliable, None, "x")
        .await
        .expect("publish");
    let mut open = open;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), open.next_event())
            .await
            .expect("event in time")
            .expect("the session opened before the reload is still up")
        {
            edgegate::client::Event::Message(m) => {
                assert_eq!(m.data.as_ref(), b"x");
                break;
            }
            _ => continue,
        }
    }
    drop((open, fresh));
    assert!(sigterm_and_wait(s).success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    let dir = temp_dir("bad");
    let file = dir.join("edgegate.toml");
    std::fs::write(
        &file,
        "dev = true\n[session]\nmax_frame = 65536\npublish_rat = 5\n",
    )
    .expect("config");
    type Case = (Vec<String>, Vec<(&'static str, &'static str)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec!["--config".into(), file.display().to_string()],
            vec![],
            "publish_rat",
        ),
        (
            vec!["--set".into(), "session.heartbeat_secs=abc".into()],
            vec![],
            "session.heartbeat_secs",
        ),
        (
            vec![],
            vec![("EDGEGATE_SESSION__MAX_FRAME", "12")],
            "session.max_frame",
        ),
        (vec!["--listen".into(), "nowhere".into()], vec![], "listen"),
    ];
    for (args, env, key) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid configuration") && err.contains(key),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn minted_token_grants_exactly_its_channels() {
    let secret = "a-dev-secret-that-is-long-enough-for-hs256";
    let out = Command::new(BIN)
        .args([
            "token", "--sub", "alice", "--allow", "room:*", "--ttl", "1h",
        ])
        .env("EDGEGATE_AUTH__HS256_SECRET", secret)
        .output()
        .expect("token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let node = common::start(|c| {
        c.auth.hs256_secret = Some(secret.into());
        c.auth.allow_anonymous = false;
        // Nothing anonymous: only the token's capabilities count.
        c.namespace = vec![edgegate::hub::Policy::default()];
    })
    .await;
    let c = Client::connect(
        node.options(TransportChoice::WebTransport)
            .token(token.clone()),
    )
    .await
    .expect("token accepted");
    c.subscribe("room:1", SubscribeOptions::default())
        .await
        .expect("room:* allowed");
    let err = c
        .subscribe("chat:1", SubscribeOptions::default())
        .await
        .expect_err("outside the token");
    assert_eq!(err.code(), Some(edgegate::protocol::ErrorCode::Forbidden));
    let err = Client::connect(node.options(TransportChoice::WebSocket))
        .await
        .expect_err("no token, no anonymous");
    assert_eq!(
        err.code(),
        Some(edgegate::protocol::ErrorCode::Unauthorized)
    );
    node.stop().await;
}

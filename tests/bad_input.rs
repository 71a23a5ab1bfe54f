//! The bad-input catalogue, over real sockets. Every case asserts the exact error code the
//! offender gets, and that a healthy subscriber on the same node receives every reliable
//! message published meanwhile (offsets consecutive, nothing lost).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use edgegate::client::{Client, Event, SubscribeOptions, TransportChoice};
use edgegate::protocol::{
    ClientFrame, ErrorCode, Mode, PROTOCOL_VERSION, ServerFrame, decode_server, encode_client,
};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;

const WT: TransportChoice = TransportChoice::WebTransport;
const WS: TransportChoice = TransportChoice::WebSocket;
const SECRET: &str = "catalogue-secret-catalogue-secret-0123456789";

/// A subscriber, fed by a backend over the HTTP API, that must be unaffected by the bad
/// input next door.
struct Healthy {
    sub: Client,
    addr: std::net::SocketAddr,
    key: String,
    next: u64,
}

impl Healthy {
    async fn new(node: &TestNode, token: &str) -> Healthy {
        let sub = Client::connect(node.options(WT).token(token))
            .await
            .expect("healthy subscriber");
        sub.subscribe("room:steady", SubscribeOptions::default())
            .await
            .expect("sub");
        Healthy {
            sub,
            addr: node.addr,
            key: node.api_key.clone(),
            next: 1,
        }
    }

    async fn publish(&self) {
        let (status, body) = http(
            self.addr,
            "POST",
            "/api/publish",
            Some(&self.key),
            Some(r#"{"channel":"room:steady","data":"tick"}"#),
        )
        .await;
        assert_eq!(status, 200, "healthy publish: {body}");
    }

    /// Publishes `n` messages and checks the subscriber gets each, in order.
    async fn flows(&mut self, n: u64) {
        for _ in 0..n {
            self.publish().await;
        }
        for _ in 0..n {
            let m = next_message(&mut self.sub).await;
            assert_eq!(m.offset, self.next, "the healthy subscriber lost a message");
            self.next += 1;
        }
    }

    /// Runs `bad` while the healthy pair keeps exchanging messages.
    async fn during<F: std::future::Future<Output = ()>>(&mut self, bad: F) {
        self.flows(10).await;
        let this = &*self;
        let publishing = async move {
            for _ in 0..50 {
                this.publish().await;
            }
        };
        tokio::join!(bad, publishing);
        for _ in 0..50 {
            let m = next_message(&mut self.sub).await;
            assert_eq!(m.offset, self.next, "the healthy subscriber lost a message");
            self.next += 1;
        }
        self.flows(10).await;
    }
}

async fn catalogue_node(tweak: impl FnOnce(&mut edgegate::config::Config)) -> TestNode {
    start(|c| {
        c.auth.hs256_secret = Some(SECRET.into());
        c.auth.allow_anonymous = false;
        c.namespace = vec![edgegate::hub::Policy::default()];
        c.session.handshake_timeout_secs = 1;
        c.session.publish_rate = 1_000;
        c.session.publish_burst = 1_000;
        tweak(c);
    })
    .await
}

fn token(sub: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    let now = edgegate::session::now_ms() / 1000;
    edgegate::auth::mint_hs256(SECRET, sub, &allow, 3600, now).expect("mint")
}

/// A token with chosen times, signed with `secret`.
fn token_at(secret: &str, iat: i64, nbf: i64, exp: i64) -> String {
    let claims = serde_json::json!({ "sub": "t", "iat": iat, "nbf": nbf, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn hello(token: &str) -> Bytes {
    encode_client(&ClientFrame::Hello {
        protocol_version: PROTOCOL_VERSION,
        token: token.into(),
        client_name: "catalogue".into(),
        resume: None,
        single_stream: false,
    })
}

/// Sends WebSocket messages and returns the fatal error code the server ends with.
async fn ws_case(node: &TestNode, msgs: Vec<Ws>) -> Option<ErrorCode> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
        .await
        .expect("ws connect");
    for m in msgs {
        if ws.send(m).await.is_err() {
            break;
        }
    }
    let mut code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, ws.next()).await {
        if let Ws::Binary(b) = msg
            && let Ok(ServerFrame::Error {
                code: c,
                fatal: true,
                ..
            }) = decode_server(&b, 1 << 20)
        {
            code = ErrorCode::from_code(c);
        }
    }
    code
}

/// A raw WebTransport session: writes `bytes` on the control stream (then finishes it if
/// asked) and returns the fatal error code the server ends with.
async fn wt_case(
    node: &TestNode,
    path: &str,
    bytes: &[u8],
    finish: bool,
) -> Result<Option<ErrorCode>, String> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_no_cert_validation()
        .build();
    let endpoint = wtransport::Endpoint::client(config).map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect(format!("https://{}{path}", node.addr))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    if finish {
        let _ = send.finish().await;
    }
    let mut dec = edgegate::protocol::StreamDecoder::new(1 << 20);
    let mut buf = vec![0u8; 4096];
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => dec.extend(&buf[..n]),
            _ => break,
        }
        while let Ok(Some(f)) = dec.next_frame() {
            if let Ok(ServerFrame::Error {
                code: c,
                fatal: true,
                ..
            }) = decode_server(&f, 1 << 20)
            {
                code = ErrorCode::from_code(c);
            }
        }
    }
    Ok(code)
}

fn prefixed(body: &[u8]) -> Vec<u8> {
    edgegate::protocol::encode_with_prefix(body).to_vec()
}

#[tokio::test]
async fn framing_and_handshake_errors_close_only_the_offender() {
    let node = catalogue_node(|_| {}).await;
    let good = token("healthy", &["room:*"]);
    let mut healthy = Healthy::new(&node, &good).await;
    let after_hello = |bad: &'static [u8]| {
        vec![
            Ws::Binary(hello(&good)),
            Ws::Binary(Bytes::from_static(bad)),
        ]
    };

    let cases: Vec<(&str, Vec<Ws>, ErrorCode)> = vec![
        (
            "malformed frame",
            after_hello(&[5, 0xff, 0xff]),
            ErrorCode::Malformed,
        ),
        ("unknown variant", after_hello(&[200]), ErrorCode::Malformed),
        (
            "oversize frame",
            vec![
                Ws::Binary(hello(&good)),
                Ws::Binary(Bytes::from(vec![1u8; 100_000])),
            ],
            ErrorCode::FrameTooLarge,
        ),
        (
            "text message",
            vec![Ws::Text("hello?".into())],
            ErrorCode::BadTransport,
        ),
        (
            "garbage before Hello",
            vec![Ws::Binary(Bytes::from_static(b"GET / HTTP/1.1"))],
            ErrorCode::Malformed,
        ),
        (
            "wrong protocol version",
            vec![Ws::Binary(encode_client(&ClientFrame::Hello {
                protocol_version: PROTOCOL_VERSION + 1,
                token: good.clone(),
                client_name: "future".into(),
                resume: None,
                single_stream: false,
            }))],
            ErrorCode::UnsupportedVersion,
        ),
        (
            "no Hello within the timeout (slowloris)",
            vec![],
            ErrorCode::HandshakeTimeout,
        ),
    ];
    for (name, msgs, want) in cases {
        let mut got = None;
        healthy
            .during(async { got = ws_case(&node, msgs).await })
            .await;
        assert_eq!(got, Some(want), "WebSocket: {name}");
    }

    // The same over a raw WebTransport control stream.
    let hello_then = |extra: &[u8]| {
        let mut v = prefixed(&hello(&good));
        v.extend_from_slice(extra);
        v
    };
    let wt_cases: Vec<(&str, Vec<u8>, bool, ErrorCode)> = vec![
        (
            "malformed frame",
            hello_then(&prefixed(&[5, 0xff, 0xff])),
            false,
            ErrorCode::Malformed,
        ),
        (
            "truncated length prefix",
            hello_then(&[9, 0]),
            true,
            ErrorCode::Malformed,
        ),
        (
            "frame cut short",
            hello_then(&[100, 0, 0, 0, 1, 2, 3]),
            true,
            ErrorCode::Malformed,
        ),
        (
            "oversize length prefix",
            hello_then(&[0, 0, 0, 0x40]),
            false,
            ErrorCode::FrameTooLarge,
        ),
        (
            "zero length prefix",
            hello_then(&[0, 0, 0, 0]),
            false,
            ErrorCode::Malformed,
        ),
        ("slowloris", Vec::new(), false, ErrorCode::HandshakeTimeout),
    ];
    for (name, bytes, finish, want) in wt_cases {
        let mut got = Ok(None);
        healthy
            .during(async { got = wt_case(&node, "/wt", &bytes, finish).await })
            .await;
        assert_eq!(got, Ok(Some(want)), "WebTransport: {name}");
    }
    // Not a WebTransport CONNECT to our path: refused at the HTTP/3 layer, counted.
    let mut refused = Ok(None);
    healthy
        .during(async { refused = wt_case(&node, "/not-wt", &[], false).await })
        .await;
    assert!(
        refused.is_err(),
        "a CONNECT to another path is refused: {refused:?}"
    );
    let failures = node.shared.hub.counters().handshake_reasons.lock().clone();
    assert_eq!(failures.get("wrong_path"), Some(&1), "{failures:?}");
    node.stop().await;
}

#[tokio::test]
async fn credentials_are_checked_with_distinct_codes() {
    let node = catalogue_node(|_| {}).await;
    let good = token("healthy", &["room:*"]);
    let mut healthy = Healthy::new(&node, &good).await;
    let now = (edgegate::session::now_ms() / 1000) as i64;
    let cases: Vec<(&str, String, ErrorCode)> = vec![
        ("missing token", String::new(), ErrorCode::Unauthorized),
        ("not a JWT", "not.a.jwt".into(), ErrorCode::Unauthorized),
        (
            "expired",
            token_at(SECRET, now - 7200, now - 7200, now - 3600),
            ErrorCode::TokenExpired,
        ),
        (
            "not yet valid",
            token_at(SECRET, now, now + 3600, now + 7200),
            ErrorCode::TokenNotYetValid,
        ),
        (
            "signed with the wrong key",
            token_at(
                "another-secret-another-secret-0123456789",
                now,
                now,
                now + 3600,
            ),
            ErrorCode::Unauthorized,
        ),
    ];
    for (name, tok, want) in cases {
        for t in [WT, WS] {
            let mut got = None;
            healthy
                .during(async {
                    got = Client::connect(node.options(t).token(tok.clone()))
                        .await
                        .err()
                        .and_then(|e| e.code());
                })
                .await;
            assert_eq!(got, Some(want), "{name} over {t:?}");
        }
    }
    node.stop().await;
}

#[tokio::test]
async fn requests_outside_capabilities_and_limits_are_refused_then_abuse_closes_the_session() {
    let node = catalogue_node(|c| {
        c.session.max_subscriptions = 3;
        c.session.max_presence_info = 64;
        c.session.publish_rate = 20;
        c.session.publish_burst = 20;
        c.session.max_violations = 30;
    })
    .await;
    let good = token("healthy", &["room:*"]);
    let mut healthy = Healthy::new(&node, &good).await;
    let scoped = token("mallory", &["room:mallory"]);
    let c = Client::connect(node.options(WT).token(scoped.clone()))
        .await
        .expect("connect");
    let code = |r: Result<_, edgegate::client::Error>| r.err().and_then(|e| e.code());
    // Refused requests: the session stays.
    let mut results = Vec::new();
    healthy
        .during(async {
            results.push(code(
                c.subscribe("room:steady", SubscribeOptions::default())
                    .await
                    .map(|_| ()),
            ));
            results.push(code(
                c.publish("room:steady", Mode::Reliable, None, "x")
                    .await
                    .map(|_| ()),
            ));
            results.push(code(
                c.subscribe("bad name!", SubscribeOptions::default())
                    .await
                    .map(|_| ()),
            ));
            results.push(code(
                c.subscribe(&"x".repeat(300), SubscribeOptions::default())
                    .await
                    .map(|_| ()),
            ));
            results.push(code(
                c.subscribe(
                    "room:mallory",
                    SubscribeOptions {
                        presence: Some(Bytes::from(vec![b'i'; 65])),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
            ));
        })
        .await;
    assert_eq!(
        results,
        vec![
            Some(ErrorCode::Forbidden),
            Some(ErrorCode::Forbidden),
            Some(ErrorCode::BadChannel),
            Some(ErrorCode::BadChannel),
            Some(ErrorCode::PresenceTooLarge),
        ]
    );
    // Too many subscriptions (an allowed channel pattern would be needed for more than one:
    // use a token allowing room:*).
    let wide = Client::connect(node.options(WS).token(good.clone()))
        .await
        .expect("connect");
    for i in 0..3 {
        wide.subscribe(&format!("room:s{i}"), SubscribeOptions::default())
            .await
            .expect("within the limit");
    }
    let err = wide
        .subscribe("room:s3", SubscribeOptions::default())
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Some(ErrorCode::TooManySubscriptions));

    // A publish rate far over the limit: RateLimited replies, then the session is closed;
    // the healthy pair never notices.
    let mut flooder = Client::connect(node.options(WS).token(good.clone()))
        .await
        .expect("connect");
    let mut limited = 0;
    let mut fatal = None;
    healthy
        .during(async {
            for _ in 0..500 {
                match flooder
                    .publish("room:flood", Mode::Reliable, None, "spam")
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(ErrorCode::RateLimited) => limited += 1,
                    Err(_) => break,
                }
            }
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_secs(5), flooder.next_event()).await
            {
                if let Event::Error {
                    code, fatal: true, ..
                } = ev
                {
                    fatal = ErrorCode::from_code(code);
                }
            }
        })
        .await;
    assert!(limited >= 20, "refused with RateLimited first ({limited})");
    assert_eq!(fatal, Some(ErrorCode::RateLimited), "then closed");
    // The scoped client, refused several times but below the abuse threshold, still works.
    c.subscribe("room:mallory", SubscribeOptions::default())
        .await
        .expect("still served");
    node.stop().await;
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_refused_beyond_the_limit() {
    let node = catalogue_node(|c| {
        c.limits.max_connections_per_ip = 12;
    })
    .await;
    let good = token("healthy", &["room:*"]);
    let mut healthy = Healthy::new(&node, &good).await; // 1 of the 12
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    healthy
        .during(async {
            for i in 0..20 {
                let t = if i % 2 == 0 { WT } else { WS };
                match Client::connect(node.options(t).token(good.clone())).await {
                    Ok(c) => kept.push(c),
                    Err(e) => refused.push(e.code()),
                }
            }
        })
        .await;
    assert_eq!(
        kept.len(),
        11,
        "12 per address, 1 taken by the healthy subscriber"
    );
    assert_eq!(refused.len(), 9);
    assert!(
        refused
            .iter()
            .all(|c| *c == Some(ErrorCode::TooManyConnections)),
        "{refused:?}"
    );
    // Places come back when connections leave.
    drop(kept);
    eventually("places to be given back", || {
        node.shared.admission.admitted() == 1
    })
    .await;
    Client::connect(node.options(WS).token(good))
        .await
        .expect("admitted again");
    node.stop().await;
}

//! The bad-input catalogue, over real sockets: every case asserts the exact error code a
//! client gets, and that a healthy subscriber on the same node receives every reliable
//! message of a steady publisher meanwhile ([`raw::Healthy`]).
//!
//! Cases on the wire: malformed frames, truncated length prefixes, oversize frames, unknown
//! variants, wrong protocol versions, slowloris, WebSocket text, HTTP/3 requests that are not
//! a WebTransport CONNECT. Limits: connection floods, publish floods, subscriptions, presence
//! info, channel names. Authentication and capabilities are in `auth.rs`.

mod auth;
#[path = "../common/mod.rs"]
mod common;
mod raw;

use bytes::Bytes;
use common::*;
use edgegate::client::{Client, SubscribeOptions, TransportChoice};
use edgegate::protocol::{ClientFrame, ErrorCode, Mode, ServerFrame, encode_client};
use raw::*;
use tokio_tungstenite::tungstenite::Message as Ws;

const WT: TransportChoice = TransportChoice::WebTransport;
const WS: TransportChoice = TransportChoice::WebSocket;

fn ping() -> Bytes {
    encode_client(&ClientFrame::Ping { nonce: 7 })
}

/// Sends `bodies` as frames after a good `Hello` (or instead of one with `hello = false`) on
/// `t`, and returns how the server ended the session.
async fn send_frames(
    node: &TestNode,
    t: TransportChoice,
    hello: bool,
    bodies: &[&[u8]],
) -> Outcome {
    match t {
        WS => {
            let mut c = RawWs::connect(node).await;
            if hello {
                c.frame(&raw::hello("")).await;
                c.until(is_welcome).await;
            }
            for b in bodies {
                c.frame(b).await;
            }
            c.outcome().await
        }
        _ => {
            let mut c = RawWt::connect(node).await;
            if hello {
                c.frame(&raw::hello("")).await;
                c.until(is_welcome).await;
            }
            for b in bodies {
                c.frame(b).await;
            }
            c.outcome().await
        }
    }
}

#[tokio::test]
async fn malformed_frames_and_unknown_variants_close_only_that_session() {
    let node = start(|_| {}).await;
    let healthy = Healthy::start(&node).await;
    let mut trailing = ping().to_vec();
    trailing.push(0);
    // Variant 200 does not exist; variant 2 (Unsubscribe) cut short; a bool that is 7.
    let unknown_variant: &[u8] = &[200];
    let cut_short: &[u8] = &[2, 1];
    let bad_bool = {
        let mut b = raw::hello("").to_vec();
        *b.last_mut().expect("bool") = 7;
        b
    };
    for t in [WT, WS] {
        for (hello, body) in [
            (false, &[0xff, 0xff, 0xff][..]),
            (false, &bad_bool[..]),
            (true, &[0xff, 0xff, 0xff][..]),
            (true, unknown_variant),
            (true, cut_short),
            (true, &trailing[..]),
        ] {
            let out = send_frames(&node, t, hello, &[body]).await;
            out.assert_closed_with(ErrorCode::Malformed, t);
        }
        // A second Hello is valid bincode but not allowed.
        let out = send_frames(&node, t, true, &[&raw::hello("")]).await;
        out.assert_closed_with(ErrorCode::UnexpectedFrame, t);
    }
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn truncated_and_empty_length_prefixes_on_a_webtransport_stream() {
    let node = start(|_| {}).await;
    let healthy = Healthy::start(&node).await;
    // Half a prefix, a prefix promising more than arrives, and both after a Welcome.
    for hello in [false, true] {
        for bytes in [&[5u8, 0][..], &[50, 0, 0, 0, 1, 2, 3][..]] {
            let mut c = RawWt::connect(&node).await;
            if hello {
                c.frame(&raw::hello("")).await;
                c.until(is_welcome).await;
            }
            c.write(bytes).await;
            c.finish().await;
            c.outcome()
                .await
                .assert_closed_with(ErrorCode::Malformed, WT);
        }
    }
    // A zero-length frame.
    let mut c = RawWt::connect(&node).await;
    c.write(&[0, 0, 0, 0]).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::Malformed, WT);
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn oversize_frames_are_refused_before_they_are_buffered() {
    const MAX: u32 = 4096;
    let node = start(|c| {
        c.session.max_frame = MAX;
        for ns in &mut c.namespace {
            ns.max_payload = ns.max_payload.min(MAX as usize);
        }
    })
    .await;
    let healthy = Healthy::start(&node).await;
    // WebTransport: the prefix alone is enough to refuse, before or after Hello.
    for hello in [false, true] {
        let mut c = RawWt::connect(&node).await;
        if hello {
            c.frame(&raw::hello("")).await;
            c.until(is_welcome).await;
        }
        c.write(&(MAX + 1).to_le_bytes()).await;
        c.outcome()
            .await
            .assert_closed_with(ErrorCode::FrameTooLarge, WT);
    }
    // A huge declared length, and no body at all.
    let mut c = RawWt::connect(&node).await;
    c.write(&u32::MAX.to_le_bytes()).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::FrameTooLarge, WT);
    // WebSocket: just over the limit, and far over it (tungstenite's own cap).
    for len in [MAX as usize + 1, 10 * MAX as usize, 1 << 20] {
        let out = send_frames(&node, WS, true, &[&vec![0u8; len]]).await;
        out.assert_closed_with(ErrorCode::FrameTooLarge, WS);
    }
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_on_both_transports() {
    let node = start(|_| {}).await;
    let healthy = Healthy::start(&node).await;
    for t in [WT, WS] {
        for v in [0, 2, u16::MAX] {
            let out = send_frames(&node, t, false, &[&raw::hello_version(v, "")]).await;
            out.assert_closed_with(ErrorCode::UnsupportedVersion, t);
            let ServerFrame::Error { reason, .. } = &out.frames[0] else {
                panic!("{out:?}")
            };
            assert!(reason.contains("speaks 1"), "{reason}");
        }
    }
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn slowloris_without_hello_is_cut_at_the_handshake_timeout() {
    let node = start(|c| c.session.handshake_timeout_secs = 1).await;
    let healthy = Healthy::start(&node).await;
    // WebSocket upgraded, then silence.
    RawWs::connect(&node)
        .await
        .outcome()
        .await
        .assert_closed_with(ErrorCode::HandshakeTimeout, WS);
    // WebTransport: half a Hello, then silence.
    let mut c = RawWt::connect(&node).await;
    c.write(&raw::hello("")[..3]).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::HandshakeTimeout, WT);
    // WebTransport: a session but no control stream ever (nothing to carry a frame: the
    // close code says it).
    let endpoint = wtransport::Endpoint::client(wt_client_config(&node)).expect("endpoint");
    let conn = endpoint
        .connect(format!("https://{}/wt", node.addr))
        .await
        .expect("session");
    assert_eq!(
        wt_close_code(&conn).await,
        Some(u64::from(ErrorCode::HandshakeTimeout.code()))
    );
    // Plain TCP that never finishes its HTTP request is closed too.
    let mut tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("the server closes a connection stuck in its headers")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    let counters = node.shared.hub.counters().clone();
    assert!(
        counters.handshake_reasons.lock()["handshake_timeout"] >= 2,
        "counted"
    );
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn text_and_garbage_on_the_websocket() {
    let node = start(|_| {}).await;
    let healthy = Healthy::start(&node).await;
    for hello in [false, true] {
        let mut c = RawWs::connect(&node).await;
        if hello {
            c.frame(&raw::hello("")).await;
            c.until(is_welcome).await;
        }
        c.send(Ws::Text("{\"subscribe\":\"chat:x\"}".into())).await;
        c.outcome()
            .await
            .assert_closed_with(ErrorCode::BadTransport, WS);
    }
    // Random bytes as the first binary message.
    let garbage: Vec<u8> = (0..512).map(|_| rand::random::<u8>() | 0x80).collect();
    send_frames(&node, WS, false, &[&garbage])
        .await
        .assert_closed_with(ErrorCode::Malformed, WS);
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn http3_requests_that_are_not_a_webtransport_connect() {
    let node = start(|_| {}).await;
    let healthy = Healthy::start(&node).await;
    // A CONNECT to another path is answered 404 (the client sees the session rejected).
    for path in ["/", "/ws", "/wt/x", "/api/publish"] {
        let e = RawWt::try_connect(&node, path)
            .await
            .map(drop)
            .expect_err("rejected");
        assert!(e.contains("reject"), "{path}: {e}");
    }
    assert!(node.shared.hub.counters().handshake_reasons.lock()["wrong_path"] >= 4);
    // A plain HTTP/3 GET on a QUIC connection with the h3 ALPN.
    let status = raw_h3_get(&node).await;
    assert!(
        status.is_none_or(|s| s >= 400),
        "a plain GET is refused: {status:?}"
    );
    healthy.check().await;
    node.stop().await;
}

/// Sends a plain HTTP/3 `GET /` (not a CONNECT) and returns the response status, if the
/// server answered one rather than resetting the stream or closing the connection.
async fn raw_h3_get(node: &TestNode) -> Option<u16> {
    use wtransport::quinn;
    let endpoint = wtransport::Endpoint::client(wt_client_config(node)).expect("endpoint");
    let conn = endpoint
        .connect(format!("https://{}/wt", node.addr))
        .await
        .expect("a session opens the QUIC connection");
    let q: &quinn::Connection = conn.quic_connection();
    // The session is up; a second request stream carries a GET.
    let (mut send, mut recv) = q.open_bi().await.expect("request stream");
    let authority = node.addr.to_string();
    // QPACK: prefix 0,0; static :method GET (17), :scheme https (23), :path / (1),
    // :authority (0) with a literal value.
    let mut block = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23, 0xc0 | 1, 0x50];
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    let mut frame = vec![0x01, block.len() as u8];
    frame.extend_from_slice(&block);
    send.write_all(&frame).await.ok()?;
    let _ = send.finish();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, recv.read(&mut buf))
        .await
        .expect("the server answers or resets in time")
        .ok()??;
    // HEADERS frame (type 1), then a QPACK block whose first indexed line is :status.
    let b = &buf[..n];
    let status = match b.get(4..).and_then(|r| r.first()) {
        Some(0xd9) => 200, // static 25 (:status 200)
        Some(0xdb) => 404, // static 27 (:status 404)
        Some(0xd9..=0xff) => 400,
        _ => 0,
    };
    (b.first() == Some(&0x01)).then_some(status)
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_refused_and_released() {
    // The healthy pair holds 2 of the 6 slots of 127.0.0.1.
    let node = start(|c| c.limits.max_connections_per_ip = 6).await;
    let healthy = Healthy::start(&node).await;
    let mut held = Vec::new();
    for t in [WT, WS, WT, WS] {
        held.push(node.connect(t).await);
    }
    for t in [WT, WS, WT, WS] {
        let e = Client::connect(node.options(t))
            .await
            .map(drop)
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{t:?}: {e}");
        assert!(e.to_string().contains("your address"), "{e}");
    }
    // The raw refusal carries the close code too.
    let mut c = RawWt::connect(&node).await;
    c.frame(&raw::hello("")).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::TooManyConnections, WT);
    let mut c = RawWs::connect(&node).await;
    c.frame(&raw::hello("")).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::TooManyConnections, WS);
    // Closing one frees its slot.
    held.pop().expect("held").close().await;
    let adm = node.shared.admission.clone();
    eventually("the slot to be released", || adm.admitted() == 5).await;
    held.push(node.connect(WS).await);
    let c = node.shared.hub.counters();
    assert_eq!(Counters::get(&c.refused_per_address), 6);
    healthy.check().await;
    drop(held);
    node.stop().await;
}

use edgegate::hub::Counters;

#[tokio::test]
async fn node_capacity_and_new_connection_rate() {
    let node = start(|c| c.limits.max_connections = 4).await;
    let healthy = Healthy::start(&node).await;
    let held = [node.connect(WT).await, node.connect(WS).await];
    for t in [WT, WS] {
        let e = Client::connect(node.options(t))
            .await
            .map(drop)
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{e}");
        assert!(e.to_string().contains("node is full"), "{e}");
    }
    healthy.check().await;
    drop(held);
    node.stop().await;

    // 2 per second with a burst of 4: the healthy pair takes 2, then a quick burst runs out.
    let node = start(|c| c.limits.new_connections_per_sec = 2).await;
    let healthy = Healthy::start(&node).await;
    let mut refused = 0;
    let mut held = Vec::new();
    for i in 0..12 {
        let t = if i % 2 == 0 { WT } else { WS };
        match Client::connect(node.options(t)).await {
            Ok(c) => held.push(c),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{e}");
                assert!(e.to_string().contains("per second"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 4, "refused {refused} of 12");
    assert_eq!(
        Counters::get(&node.shared.hub.counters().refused_rate),
        refused
    );
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn a_publish_flood_is_rate_limited_then_only_that_session_is_closed() {
    let node = start(|c| {
        c.session.publish_rate = 100;
        c.session.publish_burst = 100;
        c.session.max_violations = 50;
    })
    .await;
    let healthy = Healthy::start(&node).await;
    for t in [WT, WS] {
        let mut abuser = node.connect(t).await;
        // Spend the burst, then one acknowledged publish: refused, not fatal.
        for i in 0..100u32 {
            abuser
                .publish_nowait("chat:flood", Mode::Reliable, None, i.to_string())
                .await
                .expect("within the burst");
        }
        let e = loop {
            match abuser
                .publish("chat:flood", Mode::Reliable, None, "x")
                .await
            {
                Ok(_) => continue, // the bucket refilled a little meanwhile
                Err(e) => break e,
            }
        };
        assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
        assert!(e.to_string().contains("publishes per second"), "{e}");
        // Keep going far over the limit: the session is closed.
        for i in 0..5000u32 {
            if abuser
                .publish_nowait("chat:flood", Mode::Reliable, None, i.to_string())
                .await
                .is_err()
            {
                break;
            }
        }
        let (code, reason) = loop {
            match next_event(&mut abuser).await {
                edgegate::client::Event::Error {
                    code,
                    fatal: true,
                    reason,
                } => break (code, reason),
                edgegate::client::Event::Closed => panic!("closed without a fatal error"),
                _ => {}
            }
        };
        assert_eq!(code, ErrorCode::RateLimited.code(), "{reason}");
        assert!(reason.contains("refused requests in a row"), "{reason}");
    }
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn subscriptions_presence_info_and_channel_names_over_their_limits() {
    let node = start(|c| {
        c.session.max_subscriptions = 3;
        c.session.max_presence_info = 64;
    })
    .await;
    let healthy = Healthy::start(&node).await;
    for t in [WT, WS] {
        let c = node.connect(t).await;
        for i in 0..3 {
            c.subscribe(&format!("chat:s{i}"), SubscribeOptions::default())
                .await
                .expect("within the limit");
        }
        let e = c
            .subscribe("chat:s3", SubscribeOptions::default())
            .await
            .expect_err("over");
        assert_eq!(e.code(), Some(ErrorCode::TooManySubscriptions), "{e}");
        c.unsubscribe("chat:s0").await.expect("unsubscribe");
        c.subscribe("chat:s3", SubscribeOptions::default())
            .await
            .expect("room again");

        let c = node.connect(t).await;
        let e = c
            .subscribe(
                "chat:p",
                SubscribeOptions {
                    presence: Some(Bytes::from(vec![b'x'; 65])),
                    ..Default::default()
                },
            )
            .await
            .expect_err("presence info too large");
        assert_eq!(e.code(), Some(ErrorCode::PresenceTooLarge), "{e}");
        c.subscribe(
            "chat:p",
            SubscribeOptions {
                presence: Some(Bytes::from(vec![b'x'; 64])),
                ..Default::default()
            },
        )
        .await
        .expect("at the limit");

        let long = format!("chat:{}", "x".repeat(300));
        for name in [
            "",
            "chat:a b",
            "chat:é",
            "chat:\0",
            "chat:a\nb",
            long.as_str(),
        ] {
            let e = c
                .subscribe(name, SubscribeOptions::default())
                .await
                .expect_err("bad name");
            assert_eq!(e.code(), Some(ErrorCode::BadChannel), "{name:?}: {e}");
            let e = c
                .publish(name, Mode::Reliable, None, "x")
                .await
                .expect_err("bad name");
            assert_eq!(e.code(), Some(ErrorCode::BadChannel), "{name:?}: {e}");
        }
        // Refused requests are not fatal: the session still works.
        c.publish("chat:p", Mode::Reliable, None, "still here")
            .await
            .expect("session alive");
    }
    healthy.check().await;
    node.stop().await;
}

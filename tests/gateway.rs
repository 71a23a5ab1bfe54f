//! A single node end to end over real sockets: WebTransport and WebSocket clients, the HTTP
//! API, recovery after a reconnect, datagrams, snapshots, presence, slow consumers and
//! shutdown.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::*;
use edgegate::client::{Event, SubscribeOptions, TransportChoice};
use edgegate::protocol::{ErrorCode, Mode, Position};

const WT: TransportChoice = TransportChoice::WebTransport;
const WS: TransportChoice = TransportChoice::WebSocket;

#[tokio::test]
async fn webtransport_and_websocket_clients_exchange_messages_in_order() {
    let node = start(|c| c.session.publish_rate = 10_000).await;
    let mut wt = node.connect(WT).await;
    let mut ws = node.connect(WS).await;
    assert_eq!(wt.transport(), WT);
    assert_eq!(ws.transport(), WS);
    assert!(!wt.welcome().session_id.is_empty());
    for c in [&wt, &ws] {
        let s = c
            .subscribe("chat:x", SubscribeOptions::default())
            .await
            .expect("subscribe");
        assert!(s.recovered);
    }
    // WebTransport publisher → both subscribers, in order.
    for i in 0..200u32 {
        wt.publish_nowait("chat:x", Mode::Reliable, None, i.to_string())
            .await
            .expect("publish");
    }
    for c in [&mut wt, &mut ws] {
        for i in 0..200u32 {
            let m = next_message(c).await;
            assert_eq!(m.channel, "chat:x");
            assert_eq!(m.offset, u64::from(i) + 1, "offsets are consecutive");
            assert_eq!(m.data, Bytes::from(i.to_string()));
        }
    }
    // And the other way round, with the publish acknowledged.
    let pos = ws
        .publish("chat:x", Mode::Reliable, None, "from ws")
        .await
        .expect("publish");
    assert_eq!(pos.offset, 201);
    for c in [&mut wt, &mut ws] {
        let m = next_message(c).await;
        assert_eq!((m.offset, m.data.as_ref()), (201, &b"from ws"[..]));
        assert_eq!(m.epoch, pos.epoch);
    }
    node.stop().await;
}

#[tokio::test]
async fn reliable_stream_resumes_after_reconnect_with_no_gap_or_duplicate() {
    const N: u64 = 1000;
    let node = start(|c| c.session.publish_rate = 100_000).await;
    let publisher = node.connect(WS).await;
    for (first, second) in [(WT, WS), (WS, WT)] {
        let channel = format!("room:resume-{first:?}");
        let mut sub = node.connect(first).await;
        sub.subscribe(&channel, SubscribeOptions::default())
            .await
            .expect("subscribe");
        let pubc = &publisher;
        let ch = channel.clone();
        let publishing = async move {
            for i in 1..=N {
                pubc.publish_nowait(&ch, Mode::Reliable, None, i.to_string())
                    .await
                    .expect("publish");
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        };
        let receiving = async {
            let mut seen = Vec::new();
            let mut last = Position {
                epoch: 0,
                offset: 0,
            };
            // Read part of the stream, then drop the connection mid-stream.
            while seen.len() < 300 {
                let m = next_message(&mut sub).await;
                last = Position {
                    epoch: m.epoch,
                    offset: m.offset,
                };
                seen.push(m.offset);
            }
            drop(sub);
            let mut again = node.connect(second).await;
            let s = again
                .subscribe(
                    &channel,
                    SubscribeOptions {
                        recover: Some(last),
                        ..Default::default()
                    },
                )
                .await
                .expect("resubscribe");
            assert!(s.recovered, "history covers the gap");
            while seen.len() < N as usize {
                seen.push(next_message(&mut again).await.offset);
            }
            seen
        };
        let ((), seen) = tokio::join!(publishing, receiving);
        let expected: Vec<u64> = (1..=N).collect();
        assert_eq!(seen, expected, "no gap, no duplicate, in order");
    }
    node.stop().await;
}

#[tokio::test]
async fn recovery_beyond_history_says_not_recovered() {
    let node = start(|c| {
        c.session.publish_rate = 10_000;
        c.namespace[0].history_len = 10; // chat
    })
    .await;
    let c = node.connect(WT).await;
    let s = c
        .subscribe("chat:short", SubscribeOptions::default())
        .await
        .expect("sub");
    for i in 0..50 {
        c.publish("chat:short", Mode::Reliable, None, format!("{i}"))
            .await
            .expect("pub");
    }
    let c2 = node.connect(WS).await;
    let r = c2
        .subscribe(
            "chat:short",
            SubscribeOptions {
                recover: Some(Position {
                    epoch: s.position.epoch,
                    offset: 5,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("sub");
    assert!(!r.recovered, "offset 5 fell out of a 10-message history");
    // A wrong epoch is never recovered either.
    let c3 = node.connect(WT).await;
    let r = c3
        .subscribe(
            "chat:short",
            SubscribeOptions {
                recover: Some(Position {
                    epoch: s.position.epoch ^ 1,
                    offset: 49,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("sub");
    assert!(!r.recovered);
    drop((c, c2, c3));
    node.stop().await;
}

#[tokio::test]
async fn datagrams_reach_webtransport_and_websocket_subscribers() {
    let node = start(|c| c.session.publish_rate = 10_000).await;
    let mut wt = node.connect(WT).await;
    let mut ws = node.connect(WS).await;
    let publisher = node.connect(WT).await;
    for c in [&wt, &ws] {
        c.subscribe("scene:d", SubscribeOptions::default())
            .await
            .expect("sub");
    }
    const N: usize = 200;
    for i in 0..N {
        publisher
            .publish_nowait("scene:d", Mode::Datagram, None, format!("pos {i}"))
            .await
            .expect("datagram");
        if i % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Datagrams may be lost; on loopback nearly all arrive. Wait for the last one or a
    // bounded number of events, then require most of them.
    for c in [&mut wt, &mut ws] {
        let mut got = BTreeSet::new();
        while got.len() < N {
            let m = match tokio::time::timeout(std::time::Duration::from_secs(3), c.next_event())
                .await
            {
                Ok(Some(Event::Message(m))) => m,
                Ok(Some(_)) => continue,
                _ => break,
            };
            assert_eq!(m.mode, Mode::Datagram);
            assert_eq!(m.offset, 0, "datagrams are not sequenced");
            got.insert(m.data);
        }
        assert!(got.len() >= N * 9 / 10, "received {} of {N}", got.len());
    }
    // Too large for a datagram: a clear error, not a silent drop.
    let err = publisher
        .publish("scene:d", Mode::Datagram, None, vec![0u8; 1100])
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Some(ErrorCode::DatagramTooLarge), "{err}");
    node.stop().await;
}

#[tokio::test]
async fn latest_values_arrive_as_a_keyed_snapshot_before_live_messages() {
    let node = start(|c| c.session.publish_rate = 10_000).await;
    let p = node.connect(WS).await;
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        p.publish("scene:snap", Mode::Latest, Some(k), v)
            .await
            .expect("latest");
    }
    let mut s = node.connect(WT).await;
    s.subscribe("scene:snap", SubscribeOptions::default())
        .await
        .expect("sub");
    match next_event(&mut s).await {
        Event::Snapshot {
            channel, entries, ..
        } => {
            assert_eq!(channel, "scene:snap");
            let mut kv: Vec<(String, Bytes)> = entries
                .into_iter()
                .map(|e| (e.key.expect("keyed"), e.data))
                .collect();
            kv.sort();
            assert_eq!(
                kv,
                vec![
                    ("a".into(), Bytes::from("3")),
                    ("b".into(), Bytes::from("2"))
                ]
            );
        }
        other => panic!("expected a snapshot first, got {other:?}"),
    }
    p.publish("scene:snap", Mode::Latest, Some("b"), "4")
        .await
        .expect("latest");
    let m = next_message(&mut s).await;
    assert_eq!((m.key.as_deref(), m.data.as_ref()), (Some("b"), &b"4"[..]));
    node.stop().await;
}

#[tokio::test]
async fn presence_join_leave_and_list() {
    let node = start(|_| {}).await;
    let mut watcher = node.connect(WT).await;
    watcher
        .subscribe(
            "chat:p",
            SubscribeOptions {
                presence: Some(Bytes::from("watcher")),
                presence_events: true,
                ..Default::default()
            },
        )
        .await
        .expect("sub");
    let joiner = node.connect(WS).await;
    joiner
        .subscribe(
            "chat:p",
            SubscribeOptions {
                presence: Some(Bytes::from("{\"name\":\"bob\"}")),
                ..Default::default()
            },
        )
        .await
        .expect("sub");
    let joined = loop {
        if let Event::Join { member, .. } = next_event(&mut watcher).await {
            break member;
        }
    };
    assert_eq!(joined.session_id, joiner.welcome().session_id);
    let members = watcher.presence("chat:p").await.expect("presence");
    assert_eq!(members.len(), 2);
    let (status, body) = node.api("GET", "/api/channels/chat:p/presence", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("bob"), "{body}");
    joiner.close().await;
    let left = loop {
        if let Event::Leave { member, .. } = next_event(&mut watcher).await {
            break member;
        }
    };
    assert_eq!(left.session_id, joined.session_id);
    node.stop().await;
}

#[tokio::test]
async fn http_api_publishes_to_both_transports_and_lists_channels() {
    let node = start(|_| {}).await;
    let mut wt = node.connect(WT).await;
    let mut ws = node.connect(WS).await;
    for c in [&wt, &ws] {
        c.subscribe("chat:api", SubscribeOptions::default())
            .await
            .expect("sub");
    }
    let (status, body) = node
        .api(
            "POST",
            "/api/publish",
            Some(r#"{"channel":"chat:api","data":"hello from the backend"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply["offset"], 1);
    for c in [&mut wt, &mut ws] {
        let m = next_message(c).await;
        assert_eq!(m.data, Bytes::from("hello from the backend"));
        assert_eq!(m.epoch.to_string(), reply["epoch"].as_str().expect("epoch"));
    }
    let (status, body) = node
        .api(
            "POST",
            "/api/publish",
            Some(r#"{"channel":"chat:api","data_b64":"AAEC"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_message(&mut wt).await.data.as_ref(), &[0u8, 1, 2][..]);

    let (status, body) = node.api("GET", "/api/channels", None).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ch = list
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["name"] == "chat:api")
        .expect("listed");
    assert_eq!(ch["subscribers"], 2);
    assert_eq!(ch["offset"], 2);

    // Errors carry a stable code and a reason.
    let (status, body) = http(
        node.addr,
        "POST",
        "/api/publish",
        Some("wrong-key-wrong-key"),
        Some(r#"{"channel":"chat:api","data":"x"}"#),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":2000"), "{body}");
    let (status, body) = node
        .api(
            "POST",
            "/api/publish",
            Some(r#"{"channel":"bad name","data":"x"}"#),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("\"code\":4000"), "{body}");
    let (status, body) = node.api("POST", "/api/publish", Some("{not json")).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"code\":4005"), "{body}");

    for path in ["/healthz", "/readyz", "/cert.sha256"] {
        let (status, body) = http(node.addr, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path}");
        if path == "/cert.sha256" {
            assert_eq!(body.trim(), node.cert_sha256);
        }
    }
    node.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_while_a_healthy_one_gets_everything() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    // 20 MB in all: more than loopback socket buffers can hide.
    const N: u64 = 5000;
    let node = start(|c| {
        c.session.publish_rate = 100_000;
        c.session.publish_burst = 100_000;
        c.session.outbox.max_items = 256;
        c.session.outbox.max_bytes = 256 * 1024;
    })
    .await;
    // A raw WebSocket client that subscribes and then never reads.
    let (mut stalled, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
        .await
        .expect("ws");
    let hello = edgegate::protocol::ClientFrame::Hello {
        protocol_version: edgegate::protocol::PROTOCOL_VERSION,
        token: String::new(),
        client_name: "stalled".into(),
        resume: None,
        single_stream: false,
    };
    let sub = edgegate::protocol::ClientFrame::Subscribe {
        id: 1,
        channel: "room:firehose".into(),
        recover: None,
        presence: None,
        presence_events: false,
    };
    for f in [hello, sub] {
        stalled
            .send(Ws::Binary(edgegate::protocol::encode_client(&f)))
            .await
            .expect("send");
    }
    let mut healthy = node.connect(WT).await;
    healthy
        .subscribe("room:firehose", SubscribeOptions::default())
        .await
        .expect("sub");
    // Wait until the stalled session's subscription is in place.
    eventually("two subscribers", || {
        node.shared
            .hub
            .channels()
            .iter()
            .any(|c| c.name == "room:firehose" && c.subscribers == 2)
    })
    .await;
    let publisher = node.connect(WS).await;
    let payload = Bytes::from(vec![7u8; 4000]);
    // The publisher stays at most 16 messages ahead of the healthy subscriber, so only the
    // stalled one can fall behind.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let publishing = async {
        for i in 0..N {
            while i >= *progress.borrow() + 16 {
                progress.changed().await.expect("receiver alive");
            }
            publisher
                .publish_nowait("room:firehose", Mode::Reliable, None, payload.clone())
                .await
                .expect("publish");
        }
    };
    let receiving = async {
        for i in 1..=N {
            assert_eq!(next_message(&mut healthy).await.offset, i);
            progress_tx.send_replace(i);
        }
    };
    tokio::join!(publishing, receiving);
    let counters = node.shared.hub.counters().clone();
    eventually("the stalled subscriber to be cut off", || {
        counters.slow_consumers.load(Ordering::Relaxed) == 1
    })
    .await;
    // What the stalled client finds when it finally reads: messages, then the error.
    let mut code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, stalled.next()).await {
        if let Ws::Binary(b) = msg
            && let Ok(edgegate::protocol::ServerFrame::Error { code: c, fatal, .. }) =
                edgegate::protocol::decode_server(&b, 1 << 20)
        {
            assert!(fatal);
            code = Some(c);
        }
    }
    assert_eq!(code, Some(ErrorCode::SlowConsumer.code()));
    node.stop().await;
}

#[tokio::test]
async fn bad_hello_is_refused_with_a_code_while_others_are_served() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let node = start(|c| c.session.publish_rate = 10_000).await;
    let mut healthy = node.connect(WT).await;
    healthy
        .subscribe("chat:ok", SubscribeOptions::default())
        .await
        .expect("sub");
    let publisher = node.connect(WS).await;
    let wrong_version =
        edgegate::protocol::encode_client(&edgegate::protocol::ClientFrame::Hello {
            protocol_version: 99,
            token: String::new(),
            client_name: "old".into(),
            resume: None,
            single_stream: false,
        });
    let cases: Vec<(Bytes, ErrorCode)> = vec![
        (wrong_version, ErrorCode::UnsupportedVersion),
        (
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            ErrorCode::Malformed,
        ),
        (
            edgegate::protocol::encode_client(&edgegate::protocol::ClientFrame::Ping { nonce: 1 }),
            ErrorCode::UnexpectedFrame,
        ),
    ];
    for (i, (body, want)) in cases.into_iter().enumerate() {
        publisher
            .publish_nowait("chat:ok", Mode::Reliable, None, format!("{i}"))
            .await
            .expect("publish");
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
            .await
            .expect("ws");
        ws.send(Ws::Binary(body)).await.expect("send");
        let mut got = None;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, ws.next()).await {
            match msg {
                Ws::Binary(b) => {
                    if let Ok(edgegate::protocol::ServerFrame::Error { code, fatal, .. }) =
                        edgegate::protocol::decode_server(&b, 1 << 20)
                    {
                        assert!(fatal);
                        got = ErrorCode::from_code(code);
                    }
                }
                Ws::Close(Some(frame)) => {
                    assert_eq!(u16::from(frame.code), want.ws_close_code());
                }
                _ => {}
            }
        }
        assert_eq!(got, Some(want), "case {i}");
        let m = next_message(&mut healthy).await;
        assert_eq!(
            m.data,
            Bytes::from(format!("{i}")),
            "healthy client kept up"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn shutdown_tells_every_client_to_go_away() {
    let node = start(|_| {}).await;
    let mut wt = node.connect(WT).await;
    let mut ws = node.connect(WS).await;
    node.shutdown.cancel();
    for c in [&mut wt, &mut ws] {
        let ev = loop {
            match next_event(c).await {
                e @ Event::GoingAway { .. } => break e,
                Event::Closed => panic!("closed without GoingAway"),
                _ => {}
            }
        };
        assert!(matches!(ev, Event::GoingAway { .. }));
    }
    tokio::time::timeout(WAIT, node.handle)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("clean exit");
}

//! Codec tests: every frame variant round-trips, golden vectors are current, random frames
//! round-trip, and random bytes never panic the decoder.

use bytes::Bytes;
use edgegate::protocol::*;
use proptest::prelude::*;

fn limits() -> Limits {
    Limits {
        max_frame: DEFAULT_MAX_FRAME,
        max_datagram_payload: DEFAULT_MAX_DATAGRAM_PAYLOAD,
        max_subscriptions: 128,
        publish_rate: 100,
        publish_burst: 300,
    }
}

fn member() -> Member {
    Member {
        session_id: "s-1f".into(),
        user: "alice".into(),
        info: Bytes::from_static(b"{\"n\":1}"),
    }
}

fn message(mode: Mode) -> Message {
    Message {
        channel: "prices:BTC-USD".into(),
        mode,
        epoch: 0x1234_5678_9abc,
        offset: 300,
        time_ms: 1_763_000_000_000,
        key: Some("bid".into()),
        publisher: None,
        data: Bytes::from_static(&[0, 1, 250, 251, 255]),
    }
}

/// One value of every client frame variant, named.
fn client_samples() -> Vec<(&'static str, ClientFrame)> {
    vec![
        (
            "Hello",
            ClientFrame::Hello {
                protocol_version: PROTOCOL_VERSION,
                token: "tok".into(),
                client_name: "edgegate-js/0.1".into(),
                resume: Some("s-1f".into()),
                single_stream: true,
            },
        ),
        (
            "Subscribe",
            ClientFrame::Subscribe {
                id: 1,
                channel: "room:eu/42".into(),
                recover: Some(Position {
                    epoch: 9,
                    offset: 65_535,
                }),
                presence: Some(Bytes::from_static(b"hi")),
                presence_events: true,
            },
        ),
        (
            "Unsubscribe",
            ClientFrame::Unsubscribe {
                id: 2,
                channel: "room:eu/42".into(),
            },
        ),
        (
            "Publish",
            ClientFrame::Publish {
                id: 251,
                channel: "chat:lobby".into(),
                mode: Mode::Latest,
                key: Some("k".into()),
                data: Bytes::from_static("héllo".as_bytes()),
            },
        ),
        (
            "Presence",
            ClientFrame::Presence {
                id: 70_000,
                channel: "chat:lobby".into(),
            },
        ),
        (
            "History",
            ClientFrame::History {
                id: 4,
                channel: "chat:lobby".into(),
                since: None,
                limit: 100,
            },
        ),
        ("Ping", ClientFrame::Ping { nonce: u64::MAX }),
        (
            "Pong",
            ClientFrame::Pong {
                nonce: 4_294_967_296,
            },
        ),
        (
            "Refresh",
            ClientFrame::Refresh {
                id: 5,
                token: "new".into(),
            },
        ),
    ]
}

/// One value of every server frame variant, named.
fn server_samples() -> Vec<(&'static str, ServerFrame)> {
    let pos = Position {
        epoch: 77,
        offset: 1000,
    };
    vec![
        (
            "Welcome",
            ServerFrame::Welcome {
                session_id: "s-1f".into(),
                node_id: "eu-1".into(),
                region: "eu-west".into(),
                limits: limits(),
                heartbeat_ms: 15_000,
            },
        ),
        ("Ok", ServerFrame::Ok { id: 3 }),
        (
            "Subscribed",
            ServerFrame::Subscribed {
                id: 1,
                channel: "room:eu/42".into(),
                position: pos,
                recovered: false,
            },
        ),
        (
            "Published",
            ServerFrame::Published {
                id: 9,
                position: pos,
            },
        ),
        ("Message", ServerFrame::Message(message(Mode::Reliable))),
        (
            "Snapshot",
            ServerFrame::Snapshot {
                channel: "prices:BTC-USD".into(),
                position: pos,
                entries: vec![
                    SnapshotEntry {
                        key: Some("bid".into()),
                        offset: 999,
                        time_ms: 1,
                        data: Bytes::from_static(b"1.5"),
                    },
                    SnapshotEntry {
                        key: None,
                        offset: 1000,
                        time_ms: 2,
                        data: Bytes::new(),
                    },
                ],
            },
        ),
        (
            "PresenceList",
            ServerFrame::PresenceList {
                id: 2,
                channel: "chat:lobby".into(),
                members: vec![member()],
            },
        ),
        (
            "Join",
            ServerFrame::Join {
                channel: "chat:lobby".into(),
                member: member(),
            },
        ),
        (
            "Leave",
            ServerFrame::Leave {
                channel: "chat:lobby".into(),
                member: member(),
            },
        ),
        (
            "HistoryPage",
            ServerFrame::HistoryPage {
                id: 4,
                channel: "prices:BTC-USD".into(),
                position: pos,
                complete: true,
                messages: vec![message(Mode::Datagram)],
            },
        ),
        (
            "Dropped",
            ServerFrame::Dropped {
                channel: "game:1".into(),
                count: 12,
            },
        ),
        (
            "Resync",
            ServerFrame::Resync {
                channel: "game:1".into(),
                position: pos,
            },
        ),
        (
            "Unsubscribed",
            ServerFrame::Unsubscribed {
                channel: "game:1".into(),
                code: ErrorCode::Forbidden.code(),
                reason: "revoked".into(),
            },
        ),
        (
            "Error",
            ServerFrame::fatal(ErrorCode::SlowConsumer, "outbound queue full"),
        ),
        ("Ping", ServerFrame::Ping { nonce: 1 }),
        ("Pong", ServerFrame::Pong { nonce: 2 }),
        (
            "GoingAway",
            ServerFrame::GoingAway {
                reason: "drain".into(),
                reconnect_to: Some("https://eu-2.example:4433".into()),
                after_ms: 250,
            },
        ),
        (
            "TokenExpiring",
            ServerFrame::TokenExpiring { grace_ms: 30_000 },
        ),
    ]
}

#[test]
fn every_variant_round_trips() {
    for (name, f) in client_samples() {
        let b = encode_client(&f);
        assert_eq!(decode_client(&b, 1 << 16).expect(name), f, "{name}");
    }
    for (name, f) in server_samples() {
        let b = encode_server(&f);
        assert_eq!(decode_server(&b, 1 << 16).expect(name), f, "{name}");
    }
}

/// Variant names in declaration order, read from the serde JSON of each sample; checks the
/// sample lists cover every variant (a new variant without a sample fails here).
#[test]
fn samples_cover_every_variant() {
    for (name, f) in client_samples() {
        let b = encode_client(&f);
        assert!(b[0] < 251, "{name}: single-byte tag");
    }
    // Tags must be 0..n with no hole: a missing sample shows as a hole.
    let tags: Vec<u8> = client_samples()
        .iter()
        .map(|(_, f)| encode_client(f)[0])
        .collect();
    assert_eq!(tags, (0..tags.len() as u8).collect::<Vec<_>>());
    let tags: Vec<u8> = server_samples()
        .iter()
        .map(|(_, f)| encode_server(f)[0])
        .collect();
    assert_eq!(tags, (0..tags.len() as u8).collect::<Vec<_>>());
    // One past the last tag must be unknown.
    assert!(decode_client(&[client_samples().len() as u8], 1024).is_err());
    assert!(decode_server(&[server_samples().len() as u8], 1024).is_err());
}

fn golden() -> String {
    let mut out = Vec::new();
    for (name, f) in client_samples() {
        out.push(serde_json::json!({
            "kind": "client", "name": name,
            "value": serde_json::to_value(&f).expect("json"),
            "hex": hex::encode(encode_client(&f)),
        }));
    }
    for (name, f) in server_samples() {
        out.push(serde_json::json!({
            "kind": "server", "name": name,
            "value": serde_json::to_value(&f).expect("json"),
            "hex": hex::encode(encode_server(&f)),
        }));
    }
    let mut s = serde_json::to_string_pretty(&out).expect("json");
    s.push('\n');
    s
}

/// The golden file is what the codec produces today. Set `EDGEGATE_BLESS=1` to rewrite it
/// after an intended protocol change (and bump the protocol version).
#[test]
fn golden_vectors_are_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/frames.json");
    let want = golden();
    if std::env::var_os("EDGEGATE_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(path).parent().expect("dir")).expect("mkdir");
        std::fs::write(path, &want).expect("write golden");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "tests/golden/frames.json is stale: run `EDGEGATE_BLESS=1 cargo test --test protocol`"
    );
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn arb_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Reliable),
        Just(Mode::Datagram),
        Just(Mode::Latest)
    ]
}

fn arb_pos() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset })
}

fn arb_client() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            any::<u16>(),
            ".*",
            ".*",
            proptest::option::of(".*"),
            any::<bool>()
        )
            .prop_map(
                |(protocol_version, token, client_name, resume, single_stream)| {
                    ClientFrame::Hello {
                        protocol_version,
                        token,
                        client_name,
                        resume,
                        single_stream,
                    }
                }
            ),
        (
            any::<u32>(),
            ".*",
            proptest::option::of(arb_pos()),
            proptest::option::of(arb_bytes()),
            any::<bool>()
        )
            .prop_map(|(id, channel, recover, presence, presence_events)| {
                ClientFrame::Subscribe {
                    id,
                    channel,
                    recover,
                    presence,
                    presence_events,
                }
            }),
        (any::<u32>(), ".*").prop_map(|(id, channel)| ClientFrame::Unsubscribe { id, channel }),
        (
            any::<u32>(),
            ".*",
            arb_mode(),
            proptest::option::of(".*"),
            arb_bytes()
        )
            .prop_map(|(id, channel, mode, key, data)| ClientFrame::Publish {
                id,
                channel,
                mode,
                key,
                data
            }),
        (any::<u32>(), ".*").prop_map(|(id, channel)| ClientFrame::Presence { id, channel }),
        (
            any::<u32>(),
            ".*",
            proptest::option::of(arb_pos()),
            any::<u32>()
        )
            .prop_map(|(id, channel, since, limit)| ClientFrame::History {
                id,
                channel,
                since,
                limit
            }),
        any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ClientFrame::Pong { nonce }),
        (any::<u32>(), ".*").prop_map(|(id, token)| ClientFrame::Refresh { id, token }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        ".*",
        arb_mode(),
        arb_pos(),
        any::<u64>(),
        proptest::option::of(".*"),
        proptest::option::of(".*"),
        arb_bytes(),
    )
        .prop_map(
            |(channel, mode, p, time_ms, key, publisher, data)| Message {
                channel,
                mode,
                epoch: p.epoch,
                offset: p.offset,
                time_ms,
                key,
                publisher,
                data,
            },
        )
}

fn arb_server() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        arb_message().prop_map(ServerFrame::Message),
        (any::<u32>(), ".*", arb_pos(), any::<bool>()).prop_map(
            |(id, channel, position, recovered)| ServerFrame::Subscribed {
                id,
                channel,
                position,
                recovered
            }
        ),
        (any::<u32>(), any::<u16>(), ".*", any::<bool>()).prop_map(|(id, code, reason, fatal)| {
            ServerFrame::Error {
                id,
                code,
                reason,
                fatal,
            }
        }),
        (
            any::<u32>(),
            ".*",
            arb_pos(),
            any::<bool>(),
            proptest::collection::vec(arb_message(), 0..4)
        )
            .prop_map(|(id, channel, position, complete, messages)| {
                ServerFrame::HistoryPage {
                    id,
                    channel,
                    position,
                    complete,
                    messages,
                }
            }),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(f in arb_client()) {
        let b = encode_client(&f);
        prop_assert_eq!(decode_client(&b, 1 << 20).expect("decodes"), f);
    }

    #[test]
    fn server_frames_round_trip(f in arb_server()) {
        let b = encode_server(&f);
        prop_assert_eq!(decode_server(&b, 1 << 20).expect("decodes"), f);
    }

    #[test]
    fn random_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_client(&v, 1 << 16);
        let _ = decode_server(&v, 1 << 16);
        let _ = decode_peer(&v, 1 << 16);
        let mut d = StreamDecoder::new(1 << 10);
        d.extend(&v);
        while let Ok(Some(f)) = d.next_frame() {
            let _ = decode_client(&f, 1 << 10);
        }
    }
}

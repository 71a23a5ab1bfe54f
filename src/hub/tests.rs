//! Deterministic hub tests: no sockets, no sleeps, time passed in.

use super::outbox::Config as OutboxConfig;
use super::*;
use crate::protocol::{ServerFrame, decode_server};

const T0: u64 = 1_700_000_000_000;

fn hub() -> Hub {
    let ns = Namespaces::new([
        Policy {
            name: "chat".into(),
            history_len: 5,
            ..Policy::default()
        },
        Policy {
            name: "prices".into(),
            snapshot: SnapshotMode::Keyed,
            ..Policy::default()
        },
        Policy {
            name: "strict".into(),
            modes: vec![policy::ModeName::Reliable],
            max_payload: 4,
            ..Policy::default()
        },
    ]);
    Hub::new(ns, Arc::new(Counters::default()))
}

struct Client {
    who: SessionRef,
    outbox: Arc<Outbox>,
}

fn client(hub: &Hub, id: u64, max_items: usize) -> Client {
    Client {
        who: SessionRef {
            id,
            sid: format!("s{id}").into(),
            user: format!("u{id}").into(),
        },
        outbox: Outbox::new(
            OutboxConfig {
                max_items,
                max_bytes: 1 << 20,
                max_datagrams: 8,
            },
            hub.counters().clone(),
        ),
    }
}

impl Client {
    fn sub(&self, hub: &Hub, channel: &str, recover: Option<Position>) -> Result<Position, Error> {
        hub.subscribe(
            Subscribe {
                who: &self.who,
                outbox: &self.outbox,
                lane: 1,
                id: 7,
                channel,
                recover,
                presence: Some(Bytes::from(self.who.user.to_string())),
                presence_events: true,
            },
            T0,
        )
    }

    /// Every frame queued so far, decoded, and the close reason if any.
    fn frames(&self) -> (Vec<ServerFrame>, Option<ErrorCode>) {
        let mut items = Vec::new();
        let mut dg = Vec::new();
        let closed = self.outbox.drain(&mut items, &mut dg, usize::MAX);
        let mut out: Vec<ServerFrame> = items
            .into_iter()
            .filter_map(|i| match i {
                Item::Frame(_, b) => Some(decode_server(&b, 1 << 20).expect("valid frame")),
                Item::Finish(_) => None,
            })
            .collect();
        out.extend(dg.iter().map(|b| decode_server(b, 1 << 20).expect("valid")));
        (out, closed.map(|c| c.code))
    }

    fn offsets(&self) -> Vec<u64> {
        self.frames()
            .0
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Message(m) => Some(m.offset),
                _ => None,
            })
            .collect()
    }
}

fn publish(hub: &Hub, channel: &str, mode: Mode, key: Option<&str>, data: &str) -> Position {
    hub.publish(
        Publish {
            channel,
            mode,
            key,
            publisher: Some("pub"),
            data: Bytes::from(data.to_string()),
        },
        T0,
    )
    .expect("publish")
}

#[test]
fn reliable_in_order_with_subscribed_first() {
    let hub = hub();
    let c = client(&hub, 1, 64);
    let p0 = c.sub(&hub, "chat:a", None).expect("sub");
    assert_eq!(p0.offset, 0);
    for i in 0..4 {
        publish(&hub, "chat:a", Mode::Reliable, None, &format!("m{i}"));
    }
    let (frames, closed) = c.frames();
    assert!(closed.is_none());
    assert!(matches!(
        &frames[0],
        ServerFrame::Subscribed {
            id: 7,
            recovered: true,
            ..
        }
    ));
    assert!(matches!(&frames[1], ServerFrame::Snapshot { entries, .. } if entries.is_empty()));
    let offs: Vec<u64> = frames[2..]
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => {
                assert_eq!(m.epoch, p0.epoch);
                assert_eq!(m.publisher.as_deref(), Some("pub"));
                m.offset
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(offs, vec![1, 2, 3, 4]);
}

#[test]
fn recovery_hit_replays_exactly_the_gap() {
    let hub = hub();
    let keep = client(&hub, 9, 64);
    let p = keep.sub(&hub, "chat:a", None).expect("sub");
    for i in 0..4 {
        publish(&hub, "chat:a", Mode::Reliable, None, &format!("m{i}"));
    }
    let c = client(&hub, 1, 64);
    let from = Position {
        epoch: p.epoch,
        offset: 2,
    };
    let pos = c.sub(&hub, "chat:a", Some(from)).expect("sub");
    assert_eq!(pos.offset, 4);
    publish(&hub, "chat:a", Mode::Reliable, None, "live");
    let (frames, _) = c.frames();
    assert!(matches!(
        &frames[0],
        ServerFrame::Subscribed {
            recovered: true,
            ..
        }
    ));
    // No snapshot on a successful recovery; 3, 4 from history then 5 live.
    let offs: Vec<u64> = frames[1..]
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => m.offset,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(offs, vec![3, 4, 5]);
    // Recovering from the current offset replays nothing but is a hit.
    let d = client(&hub, 2, 64);
    d.sub(
        &hub,
        "chat:a",
        Some(Position {
            epoch: p.epoch,
            offset: 5,
        }),
    )
    .expect("sub");
    assert_eq!(d.offsets(), Vec::<u64>::new());
}

#[test]
fn recovery_miss_when_history_too_short_or_epoch_differs() {
    let hub = hub();
    let keep = client(&hub, 9, 64);
    let p = keep.sub(&hub, "chat:a", None).expect("sub");
    for i in 0..8 {
        publish(&hub, "chat:a", Mode::Reliable, None, &format!("m{i}"));
    }
    // history_len 5 keeps offsets 4..=8; recovering from 1 needs 2 and 3.
    let c = client(&hub, 1, 64);
    c.sub(
        &hub,
        "chat:a",
        Some(Position {
            epoch: p.epoch,
            offset: 1,
        }),
    )
    .expect("sub");
    let (frames, _) = c.frames();
    assert!(matches!(
        &frames[0],
        ServerFrame::Subscribed {
            recovered: false,
            ..
        }
    ));
    assert!(
        matches!(&frames[1], ServerFrame::Snapshot { entries, .. } if entries.len() == 1 && entries[0].offset == 8)
    );
    // From offset 3, 4..=8 are all there: a hit.
    let d = client(&hub, 2, 64);
    d.sub(
        &hub,
        "chat:a",
        Some(Position {
            epoch: p.epoch,
            offset: 3,
        }),
    )
    .expect("sub");
    assert_eq!(d.offsets(), vec![4, 5, 6, 7, 8]);
    // Another epoch is always a miss.
    let e = client(&hub, 3, 64);
    e.sub(
        &hub,
        "chat:a",
        Some(Position {
            epoch: p.epoch + 1,
            offset: 8,
        }),
    )
    .expect("sub");
    assert!(matches!(
        &e.frames().0[0],
        ServerFrame::Subscribed {
            recovered: false,
            ..
        }
    ));
}

#[test]
fn channel_recreated_gets_new_epoch() {
    let hub = hub();
    let c = client(&hub, 1, 64);
    let p1 = c.sub(&hub, "chat:z", None).expect("sub");
    hub.unsubscribe(1, "chat:z");
    let p2 = c.sub(&hub, "chat:z", None).expect("sub");
    assert_ne!(p1.epoch, p2.epoch);
    assert!(p2.epoch > 0 && p2.epoch < (1 << 53));
}

#[test]
fn keyed_snapshot_and_latest_conflation() {
    let hub = hub();
    publish(&hub, "prices:x", Mode::Latest, Some("BTC"), "1");
    publish(&hub, "prices:x", Mode::Latest, Some("ETH"), "2");
    publish(&hub, "prices:x", Mode::Latest, Some("BTC"), "3");
    // A subscriber that has not drained yet sees only the newest of each key.
    let c = client(&hub, 1, 64);
    c.sub(&hub, "prices:x", None).expect("sub");
    let (frames, _) = c.frames();
    match &frames[1] {
        ServerFrame::Snapshot {
            entries, position, ..
        } => {
            assert_eq!(position.offset, 3);
            let kv: Vec<(String, Vec<u8>)> = entries
                .iter()
                .map(|e| (e.key.clone().expect("key"), e.data.to_vec()))
                .collect();
            assert_eq!(
                kv,
                vec![("BTC".into(), b"3".to_vec()), ("ETH".into(), b"2".to_vec())]
            );
        }
        other => panic!("want snapshot, got {other:?}"),
    }
    for i in 0..10 {
        publish(&hub, "prices:x", Mode::Latest, Some("BTC"), &i.to_string());
    }
    publish(&hub, "prices:x", Mode::Latest, Some("ETH"), "e");
    let (frames, _) = c.frames();
    let got: Vec<(String, String)> = frames
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => (
                m.key.clone().expect("key"),
                String::from_utf8(m.data.to_vec()).expect("utf8"),
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![("BTC".into(), "9".into()), ("ETH".into(), "e".into())]
    );
    assert_eq!(hub.counters().conflated.load(Ordering::Relaxed), 9);
}

#[test]
fn presence_join_leave_and_list() {
    let hub = hub();
    let a = client(&hub, 1, 64);
    let b = client(&hub, 2, 64);
    a.sub(&hub, "chat:room", None).expect("sub");
    a.frames();
    b.sub(&hub, "chat:room", None).expect("sub");
    let (fa, _) = a.frames();
    assert!(
        matches!(&fa[..], [ServerFrame::Join { member, .. }] if member.user == "u2" && member.info == "u2")
    );
    let users: Vec<String> = hub
        .presence("chat:room")
        .expect("presence")
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(users, vec!["u1", "u2"]);
    assert!(hub.unsubscribe(2, "chat:room"));
    let (fa, _) = a.frames();
    assert!(matches!(&fa[..], [ServerFrame::Leave { member, .. }] if member.session_id == "s2"));
    assert_eq!(hub.presence("chat:room").expect("presence").len(), 1);
}

#[test]
fn slow_consumer_is_closed_and_others_get_everything() {
    let hub = hub();
    let slow = client(&hub, 1, 8);
    let fast = client(&hub, 2, 8);
    slow.sub(&hub, "chat:a", None).expect("sub");
    fast.sub(&hub, "chat:a", None).expect("sub");
    fast.frames();
    let mut got = Vec::new();
    for i in 0..50 {
        publish(&hub, "chat:a", Mode::Reliable, None, &format!("m{i}"));
        // The fast one drains every message; the slow one never does.
        got.extend(fast.offsets());
    }
    assert_eq!(got, (1..=50).collect::<Vec<u64>>());
    let (frames, closed) = slow.frames();
    assert!(frames.is_empty());
    assert_eq!(closed, Some(ErrorCode::SlowConsumer));
    assert_eq!(hub.counters().slow_consumers.load(Ordering::Relaxed), 1);
}

#[test]
fn datagrams_are_not_sequenced_and_drop_oldest() {
    let hub = hub();
    let c = client(&hub, 1, 64);
    c.sub(&hub, "chat:g", None).expect("sub");
    c.frames();
    for i in 0..20 {
        let p = publish(&hub, "chat:g", Mode::Datagram, None, &i.to_string());
        assert_eq!(p.offset, 0);
    }
    let (frames, _) = c.frames();
    let dropped = frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Dropped { count, .. } => Some(*count),
            _ => None,
        })
        .expect("a Dropped notice");
    assert_eq!(dropped, 12);
    let data: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(String::from_utf8(m.data.to_vec()).expect("utf8")),
            _ => None,
        })
        .collect();
    assert_eq!(data, (12..20).map(|i| i.to_string()).collect::<Vec<_>>());
    // Datagrams leave no history.
    assert_eq!(hub.history("chat:g", None, 100).expect("h").2.len(), 0);
}

#[test]
fn policy_checks() {
    let hub = hub();
    let e = hub
        .publish(
            Publish {
                channel: "strict:a",
                mode: Mode::Datagram,
                key: None,
                publisher: None,
                data: Bytes::new(),
            },
            T0,
        )
        .expect_err("mode");
    assert_eq!(e.code, ErrorCode::ModeNotAllowed);
    let e = hub
        .publish(
            Publish {
                channel: "strict:a",
                mode: Mode::Reliable,
                key: None,
                publisher: None,
                data: Bytes::from_static(b"12345"),
            },
            T0,
        )
        .expect_err("size");
    assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    let e = hub
        .publish(
            Publish {
                channel: "nons:a",
                mode: Mode::Reliable,
                key: None,
                publisher: None,
                data: Bytes::new(),
            },
            T0,
        )
        .expect_err("ns");
    assert_eq!(e.code, ErrorCode::UnknownNamespace);
    let e = hub
        .publish(
            Publish {
                channel: "chat:bad name",
                mode: Mode::Reliable,
                key: None,
                publisher: None,
                data: Bytes::new(),
            },
            T0,
        )
        .expect_err("name");
    assert_eq!(e.code, ErrorCode::BadChannel);
    let c = client(&hub, 1, 64);
    c.sub(&hub, "chat:a", None).expect("sub");
    assert_eq!(
        c.sub(&hub, "chat:a", None).expect_err("dup").code,
        ErrorCode::AlreadySubscribed
    );
}

#[test]
fn history_paging_and_ttl() {
    let hub = hub();
    for i in 0..3 {
        publish(&hub, "chat:h", Mode::Reliable, None, &format!("m{i}"));
    }
    let (pos, complete, msgs) = hub.history("chat:h", None, 2).expect("history");
    assert!(complete);
    assert_eq!(pos.offset, 3);
    assert_eq!(
        msgs.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let since = Position {
        epoch: pos.epoch,
        offset: 1,
    };
    let (_, complete, msgs) = hub.history("chat:h", Some(since), 10).expect("history");
    assert!(complete);
    assert_eq!(msgs.len(), 2);
    // After the TTL (600 s default) the sweep forgets the history; the snapshot stays.
    hub.sweep(T0 + 601_000);
    let (_, _, msgs) = hub.history("chat:h", None, 10).expect("history");
    assert!(msgs.is_empty());
    assert_eq!(hub.channels().len(), 1, "snapshot keeps the channel");
}

#[derive(Debug, Default)]
struct Recorder(parking_lot::Mutex<Vec<String>>);

impl Observer for Recorder {
    fn interest(&self, channel: &str, on: bool) {
        self.0.lock().push(format!("interest {channel} {on}"));
    }
    fn sequenced(&self, channel: &str, _epoch: u64, entry: &Entry) {
        self.0
            .lock()
            .push(format!("seq {channel} {}", entry.offset));
    }
}

#[test]
fn observer_sees_interest_and_sequencing() {
    let rec = Arc::new(Recorder::default());
    let hub = Hub::with_observer(
        Namespaces::new([Policy::default()]),
        Arc::new(Counters::default()),
        Some(rec.clone()),
    );
    let a = client(&hub, 1, 64);
    let b = client(&hub, 2, 64);
    a.sub(&hub, "x:1", None).expect("sub");
    b.sub(&hub, "x:1", None).expect("sub");
    publish(&hub, "x:1", Mode::Reliable, None, "m");
    hub.unsubscribe(1, "x:1");
    hub.unsubscribe(2, "x:1");
    assert_eq!(
        *rec.0.lock(),
        vec!["interest x:1 true", "seq x:1 1", "interest x:1 false"]
    );
}

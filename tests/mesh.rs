//! The relay mesh in-process: three nodes on loopback, real QUIC and mutual TLS, links cut
//! for real through UDP relays the test controls.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/relay.rs"]
mod relay;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use cluster::*;
use common::*;
use edgegate::client::{Client, Event, SubscribeOptions, TransportChoice};
use edgegate::mesh::Mesh;
use edgegate::protocol::{Message, Mode};
use relay::Relay;

const WT: TransportChoice = TransportChoice::WebTransport;
const WS: TransportChoice = TransportChoice::WebSocket;

/// The next message on `channel`, skipping other events (a Resync is returned as None).
async fn next_on(c: &mut Client, channel: &str) -> Option<Message> {
    loop {
        match next_event(c).await {
            Event::Message(m) if m.channel == channel => return Some(m),
            Event::Resync { channel: ch, .. } if ch == channel => return None,
            Event::Closed => panic!("closed"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_act_as_one_gateway() {
    let dir = certs("one", &["a", "b", "c"]);
    let a = node(&dir, "a", "eu", vec![], None, 0, |_| {}).await;
    let seed = a.mesh.local_addr().expect("addr").to_string();
    let b = node(&dir, "b", "us", vec![seed.clone()], None, 0, |_| {}).await;
    let c = node(&dir, "c", "ap", vec![seed], None, 0, |_| {}).await;
    // Membership spread: c and b found each other through a.
    linked(&[&a, &b, &c], 2).await;

    let channel = "chat:global";
    let mut subs = Vec::new();
    for (n, t, name) in [
        (&b, WT, "bob"),
        (&b, WS, "bea"),
        (&c, WT, "carol"),
        (&a, WS, "ann"),
    ] {
        let cl = n.t.connect(t).await;
        cl.subscribe(
            channel,
            SubscribeOptions {
                presence: Some(Bytes::from(name)),
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
        subs.push(cl);
    }
    let home = a.mesh.home_of(channel);
    assert_eq!(
        home,
        b.mesh.home_of(channel),
        "every node agrees on the home"
    );
    assert_eq!(home, c.mesh.home_of(channel));
    // Presence lists members from every region.
    let reader = a.t.connect(WT).await;
    eventually_async("presence from all regions", || async {
        reader.presence(channel).await.map(|m| m.len()).unwrap_or(0) == 4
    })
    .await;

    // Give replicas a moment to sync with the home: wait until every node has interest
    // registered at the home (the home's links carry it).
    let home_mesh = [&a, &b, &c]
        .into_iter()
        .find(|n| n.t.shared.node.id == home)
        .expect("home node")
        .mesh
        .clone();
    let hm = home_mesh.clone();
    eventually("interest at the home", move || {
        hm.links().iter().all(|l| !l.interest.lock().is_empty())
    })
    .await;
    let b_from_home = |m: &Mesh| {
        m.links()
            .iter()
            .find(|l| l.peer.node_id == "b")
            .map(|l| l.stats.msgs_out.load(Ordering::Relaxed))
    };
    let before = b_from_home(&home_mesh);

    // A publish on any node reaches subscribers on every node, in order.
    let publisher = c.t.connect(WS).await;
    const N: usize = 200;
    for i in 0..N {
        publisher
            .publish(channel, Mode::Reliable, None, format!("{i}"))
            .await
            .expect("publish");
    }
    for s in &mut subs {
        let mut got = Vec::new();
        while got.len() < N {
            if let Some(m) = next_on(s, channel).await {
                got.push(m);
            }
        }
        let data: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).to_string())
            .collect();
        assert_eq!(data, (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(got.windows(2).all(|w| w[1].offset == w[0].offset + 1));
    }
    // One copy per interested peer: b has two subscribers but got each entry once.
    if home != "b"
        && let (Some(x), Some(y)) = (before, b_from_home(&home_mesh))
    {
        let sent = y - x;
        assert!(
            sent >= N as u64 && sent < (N as u64) * 3 / 2,
            "home sent {sent} frames to b for {N} messages"
        );
    }
    // Datagrams go one hop from their origin.
    let d = b.t.connect(WT).await;
    let mut dsub = a.t.connect(WT).await;
    dsub.subscribe("scene:g", SubscribeOptions::default())
        .await
        .expect("sub");
    let bm = b.mesh.clone();
    eventually("interest in scene:g at b", move || {
        bm.links()
            .iter()
            .any(|l| l.peer.node_id == "a" && l.interest.lock().contains("scene:g"))
    })
    .await;
    for i in 0..20 {
        d.publish_nowait("scene:g", Mode::Datagram, None, format!("{i}"))
            .await
            .expect("datagram");
    }
    let m = next_on(&mut dsub, "scene:g").await.expect("a datagram");
    assert_eq!(m.mode, Mode::Datagram);

    // /api/mesh shows the links with RTT and traffic.
    let (status, body) = a.t.api("GET", "/api/mesh", None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["links"].as_array().map(Vec::len), Some(2), "{body}");
    assert!(v["links"][0]["rtt_ms"].as_f64().is_some(), "{body}");
    // Each node's load reaches the others (the /mesh page draws it per node).
    let addr = a.t.addr;
    let key = a.t.api_key.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(addr, "GET", "/api/mesh", Some(&key), None).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let b_sessions = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == "b")
            .and_then(|n| n["sessions"].as_u64());
        if b_sessions.is_some_and(|s| s >= 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's load never reached a: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = http(a.t.addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("edgegate_relay_links{state=\"up\"} 2"),
        "{metrics}"
    );
    for n in [a, b, c] {
        n.t.stop().await;
    }
}

/// Polls an async condition (bounded).
async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_nothing_and_replays_from_offsets() {
    let dir = certs("cut", &["a", "b", "c"]);
    // a <-> b goes through two relays the test can cut; a <-> c and b <-> c are direct.
    let a_port = free_udp_port();
    let b_port = free_udp_port();
    let to_a = Relay::start(([127, 0, 0, 1], a_port).into()).await;
    let to_b = Relay::start(([127, 0, 0, 1], b_port).into()).await;
    // The replay after the cut arrives as one burst of thousands of entries: subscriber
    // queues sized to take it (with the default 4096, a subscriber slower than the burst is
    // cut off as a slow consumer and must reconnect and recover, which this test does not do).
    let big_queues = |c: &mut edgegate::config::Config| {
        c.session.outbox.max_items = 32_768;
        c.session.outbox.max_bytes = 64 << 20;
    };
    let a = node(&dir, "a", "ra", vec![], None, a_port, big_queues).await;
    let b = node(
        &dir,
        "b",
        "rb",
        vec![to_a.addr.to_string()],
        Some(to_b.addr.to_string()),
        b_port,
        big_queues,
    )
    .await;
    let c = node(
        &dir,
        "c",
        "rc",
        vec![format!("127.0.0.1:{a_port}")],
        None,
        0,
        big_queues,
    )
    .await;
    linked(&[&a, &b, &c], 2).await;

    // Pinned to region ra: a is the home.
    let channel = "room:stream@ra";
    assert_eq!(b.mesh.home_of(channel), "a");
    let mut sb = b.t.connect(WT).await;
    let mut sc = c.t.connect(WS).await;
    for s in [&sb, &sc] {
        s.subscribe(channel, SubscribeOptions::default())
            .await
            .expect("sub");
    }
    let am = a.mesh.clone();
    eventually("interest of b and c at a", move || {
        am.links()
            .iter()
            .all(|l| l.interest.lock().contains(channel))
    })
    .await;

    const N: u64 = 10_000;
    let publisher = a.t.connect(WT).await;
    let publishing = async {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 1..=N {
            if i % 10 == 0 {
                tick.tick().await; // ~10k/s: the stream spans the cut
            }
            publisher
                .publish_nowait(channel, Mode::Reliable, None, i.to_string())
                .await
                .expect("publish");
            if i == 2_000 {
                to_a.set_cut(true);
                to_b.set_cut(true);
            }
            if i == 8_000 {
                // Cut long enough for QUIC to give the link up (5 s idle timeout).
                let bm = b.mesh.clone();
                eventually("the a-b link to drop", move || {
                    !bm.links().iter().any(|l| l.peer.node_id == "a")
                })
                .await;
                to_a.set_cut(false);
                to_b.set_cut(false);
            }
        }
    };
    let recv_b = async {
        let mut got = Vec::with_capacity(N as usize);
        while got.len() < N as usize {
            match next_on(&mut sb, channel).await {
                Some(m) => got.push(m.offset),
                None => panic!("b was told to resync: history covered the cut"),
            }
        }
        got
    };
    let recv_c = async {
        let mut got = Vec::with_capacity(N as usize);
        while got.len() < N as usize {
            match next_on(&mut sc, channel).await {
                Some(m) => got.push(m.offset),
                None => panic!("c was told to resync"),
            }
        }
        got
    };
    let ((), gb, gc) = tokio::join!(publishing, recv_b, recv_c);
    let expected: Vec<u64> = (1..=N).collect();
    assert_eq!(gb, expected, "b: 0 lost, 0 duplicated, 0 reordered");
    assert_eq!(gc, expected, "c: 0 lost, 0 duplicated, 0 reordered");
    assert!(to_a.dropped.load(Ordering::Relaxed) + to_b.dropped.load(Ordering::Relaxed) > 0);
    let replayed: u64 = a
        .mesh
        .links()
        .iter()
        .filter(|l| l.peer.node_id == "b")
        .map(|l| l.stats.replayed.load(Ordering::Relaxed))
        .sum();
    assert!(replayed > 0, "the hole was filled by a replay from offsets");
    for n in [a, b, c] {
        n.t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_home_stops_the_next_node_takes_over_with_a_new_epoch() {
    let dir = certs("home", &["a", "b", "c"]);
    let a = node(&dir, "a", "eu", vec![], None, 0, |_| {}).await;
    let seed = a.mesh.local_addr().expect("addr").to_string();
    let b = node(&dir, "b", "eu", vec![seed.clone()], None, 0, |_| {}).await;
    let c = node(&dir, "c", "eu", vec![seed], None, 0, |_| {}).await;
    linked(&[&a, &b, &c], 2).await;
    // A channel whose home is not a (a's clients keep publishing after the home dies).
    let channel = (0..100)
        .map(|i| format!("room:failover-{i}"))
        .find(|ch| a.mesh.home_of(ch) != "a")
        .expect("a channel homed elsewhere");
    let home = a.mesh.home_of(&channel);
    let (home_node, other) = if home == "b" { (b, c) } else { (c, b) };
    let mut sub_a = a.t.connect(WT).await;
    let mut sub_o = other.t.connect(WS).await;
    for s in [&sub_a, &sub_o] {
        s.subscribe(&channel, SubscribeOptions::default())
            .await
            .expect("sub");
    }
    let publisher = a.t.connect(WS).await;
    let first = publisher
        .publish(&channel, Mode::Reliable, None, "before")
        .await
        .expect("publish via the home");
    for s in [&mut sub_a, &mut sub_o] {
        let m = next_on(s, &channel).await.expect("message");
        assert_eq!(m.epoch, first.epoch);
    }
    home_node.t.stop().await;
    let am = a.mesh.clone();
    eventually("the home's links to drop", move || am.links().len() == 1).await;
    // Publishing continues on the new home, in a new epoch.
    let after = publisher
        .publish(&channel, Mode::Reliable, None, "after")
        .await
        .expect("publish after failover");
    assert_ne!(after.epoch, first.epoch, "a new epoch");
    for s in [&mut sub_a, &mut sub_o] {
        let mut resynced = false;
        loop {
            match next_on(s, &channel).await {
                None => resynced = true,
                Some(m) => {
                    assert_eq!(m.data, Bytes::from("after"));
                    assert_eq!(m.epoch, after.epoch);
                    break;
                }
            }
        }
        assert!(resynced, "subscribers were told of the new epoch");
    }
    for n in [a, other] {
        n.t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_clusters_certificate_is_refused() {
    let dir = certs("ok", &["a", "b"]);
    let rogue = certs("rogue", &["x"]);
    let a = node(&dir, "a", "eu", vec![], None, 0, |_| {}).await;
    let seed = a.mesh.local_addr().expect("addr").to_string();
    let b = node(&dir, "b", "eu", vec![seed.clone()], None, 0, |_| {}).await;
    linked(&[&a, &b], 1).await;
    let x = node(&rogue, "x", "eu", vec![seed], None, 0, |_| {}).await;
    let am = a.mesh.clone();
    eventually("the rogue node to be refused", move || am.refused() > 0).await;
    assert_eq!(a.mesh.links().len(), 1, "no link to the rogue node");
    assert!(x.mesh.links().is_empty());
    for n in [a, b, x] {
        n.t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_works_on_a_node_that_did_not_replicate_the_channel() {
    let dir = certs("recover", &["a", "b", "c"]);
    let a = node(&dir, "a", "eu", vec![], None, 0, |_| {}).await;
    let seed = a.mesh.local_addr().expect("addr").to_string();
    let b = node(&dir, "b", "eu", vec![seed.clone()], None, 0, |_| {}).await;
    let c = node(&dir, "c", "eu", vec![seed], None, 0, |_| {}).await;
    linked(&[&a, &b, &c], 2).await;
    let channel = (0..100)
        .map(|i| format!("room:move-{i}"))
        .find(|ch| a.mesh.home_of(ch) == "c")
        .expect("a channel homed on c");
    let publish = |i: u32| {
        let body = format!(r#"{{"channel":"{channel}","data":"{i}"}}"#);
        let node = &c.t;
        async move {
            let (status, reply) = node.api("POST", "/api/publish", Some(&body)).await;
            assert_eq!(status, 200, "{reply}");
        }
    };
    // A client on a follows the channel for a while...
    let mut x = a.t.connect(WT).await;
    x.subscribe(&channel, SubscribeOptions::default())
        .await
        .expect("sub");
    let am = c.mesh.clone();
    let ch = channel.clone();
    eventually("a's interest at the home", move || {
        am.links()
            .iter()
            .any(|l| l.peer.node_id == "a" && l.interest.lock().contains(&ch))
    })
    .await;
    for i in 1..=50 {
        publish(i).await;
    }
    let mut last = None;
    for _ in 1..=50 {
        let m = next_on(&mut x, &channel).await.expect("message");
        last = Some(edgegate::protocol::Position {
            epoch: m.epoch,
            offset: m.offset,
        });
    }
    drop(x);
    for i in 51..=80 {
        publish(i).await;
    }
    // ...then reconnects to b, which has never seen the channel, and recovers there.
    assert!(
        b.t.shared.hub.position(&channel).is_none(),
        "b holds no replica yet"
    );
    let mut y = b.t.connect(WS).await;
    let s = y
        .subscribe(
            &channel,
            SubscribeOptions {
                recover: last,
                ..Default::default()
            },
        )
        .await
        .expect("resubscribe on b");
    assert!(s.recovered, "b fetched the home's history before answering");
    for i in 51..=80u32 {
        let m = next_on(&mut y, &channel).await.expect("recovered message");
        assert_eq!(m.data, Bytes::from(i.to_string()));
    }
    for n in [a, b, c] {
        n.t.stop().await;
    }
}

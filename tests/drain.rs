//! Graceful drain and the reconnecting Rust client: `POST /api/drain` turns readiness off,
//! sends new sessions away, spreads `GoingAway` over the lame-duck window with a reconnect
//! hint, and the node exits when empty; `Resilient` clients follow the hint and resume.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::Duration;

use common::*;
use edgegate::client::{Client, Error, Event, Resilient, SubscribeOptions, TransportChoice};

#[tokio::test]
async fn drain_sends_clients_to_the_hinted_node_spread_over_the_lame_duck_window() {
    let b = start(|_| {}).await;
    let b_url = b.url();
    let a = start(|c| {
        c.shutdown.lame_duck_secs = 1;
        c.shutdown.deadline_secs = 10;
        c.shutdown.reconnect_to = Some(b_url.clone());
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let t = if i % 2 == 0 {
            TransportChoice::WebTransport
        } else {
            TransportChoice::WebSocket
        };
        // Two dev nodes have two self-signed certificates: pinning A's would refuse B.
        let opts = edgegate::client::Options::new(a.url())
            .transport(t)
            .dev_insecure();
        let mut c = Resilient::connect(opts).await.expect("connect");
        c.subscribe("chat:drain", SubscribeOptions::default())
            .await
            .expect("sub");
        clients.push(c);
    }
    let started = tokio::time::Instant::now();
    let (status, body) = a.api("POST", "/api/drain", Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(a.addr, "GET", "/readyz", None, None).await.0, 503);
    // A newcomer is sent away with the hint instead of a session.
    match Client::connect(a.options(TransportChoice::WebSocket)).await {
        Err(Error::GoingAway { reconnect_to, .. }) => {
            assert_eq!(reconnect_to.as_deref(), Some(b_url.as_str()))
        }
        other => panic!("expected GoingAway, got {other:?}"),
    }
    // Every client is polled at once, so each arrival is timed when it happens.
    let b_url2 = b_url.clone();
    let b_id = b.shared.node.id.clone();
    let mut arrivals: Vec<Duration> = futures::future::join_all(clients.iter_mut().map(|c| {
        let (b_url, b_id) = (b_url2.clone(), b_id.clone());
        async move {
            loop {
                match tokio::time::timeout(WAIT, c.next_event()).await {
                    Ok(Some(Event::Reconnected { url })) => {
                        assert_eq!(url, b_url);
                        break;
                    }
                    Ok(Some(_)) => {}
                    other => panic!("no reconnect: {other:?}"),
                }
            }
            assert_eq!(c.client().expect("connected").welcome().node_id, b_id);
            started.elapsed()
        }
    }))
    .await;
    arrivals.sort();
    let spread = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(500),
        "6 sessions over a 1 s window were told at once ({spread:?})"
    );
    // Empty now: A exits without waiting for the 10 s deadline.
    tokio::time::timeout(WAIT, a.handle)
        .await
        .expect("A exits")
        .expect("join")
        .expect("clean");
    assert!(started.elapsed() < Duration::from_secs(9));
    b.stop().await;
}

#[tokio::test]
async fn resilient_clients_lose_nothing_across_forced_reconnects() {
    const N: u64 = 1500;
    let node = start(|_| {}).await;
    let mut subs = Vec::new();
    for t in [TransportChoice::WebTransport, TransportChoice::WebSocket] {
        let mut c = Resilient::connect(node.options(t)).await.expect("connect");
        c.subscribe("room:resilient", SubscribeOptions::default())
            .await
            .expect("sub");
        subs.push(c);
    }
    // A backend publishes over HTTP (unaffected by the cuts) and cuts every client session
    // twice mid-stream.
    let publishing = async {
        for i in 1..=N {
            let body = format!(r#"{{"channel":"room:resilient","data":"{i}"}}"#);
            let (status, reply) = node.api("POST", "/api/publish", Some(&body)).await;
            assert_eq!(status, 200, "{reply}");
            if i == N / 3 || i == 2 * N / 3 {
                let (status, _) = node.api("POST", "/api/disconnect", Some("{}")).await;
                assert_eq!(status, 200);
            }
        }
    };
    let receiving = futures::future::join_all(subs.iter_mut().map(|c| async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            match tokio::time::timeout(WAIT, c.next_event()).await {
                Ok(Some(Event::Message(m))) => got.push(m.offset),
                Ok(Some(Event::Resync { .. })) => panic!("history covers the gap"),
                Ok(Some(_)) => {}
                other => panic!("stream ended after {}: {other:?}", got.len()),
            }
        }
        (got, c.reconnects())
    }));
    let ((), results) = tokio::join!(publishing, receiving);
    for (got, reconnects) in results {
        let expected: Vec<u64> = (1..=N).collect();
        assert_eq!(got, expected, "0 lost, 0 duplicated, in order");
        assert_eq!(reconnects, 2, "cut twice");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_mesh_node_moves_its_clients_to_another_with_nothing_lost() {
    use cluster::*;
    const N: u64 = 600;
    let dir = certs("drain", &["a", "b"]);
    let b_port = free_port_pair();
    let b_url = format!("http://127.0.0.1:{b_port}");
    let b = node(&dir, "b", "eu", vec![], None, 0, |c| {
        c.listen = ([127, 0, 0, 1], b_port).into();
        c.cluster.client_url = Some(b_url.clone());
    })
    .await;
    let seed = b.mesh.local_addr().expect("addr").to_string();
    let a = node(&dir, "a", "eu", vec![seed], None, 0, |c| {
        c.shutdown.lame_duck_secs = 1;
        c.shutdown.deadline_secs = 10;
    })
    .await;
    linked(&[&a, &b], 1).await;
    // A channel sequenced on b, the node that stays.
    let channel = (0..100)
        .map(|i| format!("room:drain-{i}"))
        .find(|ch| a.mesh.home_of(ch) == "b")
        .expect("a channel homed on b");
    let mut clients = Vec::new();
    for i in 0..20 {
        let t = if i % 2 == 0 {
            TransportChoice::WebTransport
        } else {
            TransportChoice::WebSocket
        };
        // Two nodes, two dev certificates: skip pinning.
        let opts = edgegate::client::Options::new(a.t.url())
            .transport(t)
            .dev_insecure();
        let mut c = Resilient::connect(opts).await.expect("connect");
        c.subscribe(&channel, SubscribeOptions::default())
            .await
            .expect("sub");
        clients.push(c);
    }
    let ch2 = channel.clone();
    let bm = b.mesh.clone();
    let ch3 = ch2.clone();
    eventually("interest at the home", move || {
        bm.links().iter().any(|l| l.interest.lock().contains(&ch3))
    })
    .await;
    // A backend keeps publishing on b (~3 s in all, paced so the stream outlasts the 1 s
    // lame-duck window); a drains a third of the way in.
    let publishing = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
        for i in 1..=N {
            tick.tick().await;
            let body = format!(r#"{{"channel":"{ch2}","data":"{i}"}}"#);
            let (status, reply) = b.t.api("POST", "/api/publish", Some(&body)).await;
            assert_eq!(status, 200, "{reply}");
            if i == N / 3 {
                let (status, _) = a.t.api("POST", "/api/drain", Some("{}")).await;
                assert_eq!(status, 200);
            }
        }
    };
    let receiving = futures::future::join_all(clients.iter_mut().map(|c| async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            match tokio::time::timeout(WAIT, c.next_event()).await {
                Ok(Some(Event::Message(m))) => got.push(m.offset),
                Ok(Some(Event::Resync { .. })) => panic!("b's history covers the move"),
                Ok(Some(_)) => {}
                other => panic!("stream ended after {}: {other:?}", got.len()),
            }
        }
        let node = c.client().map(|x| x.welcome().node_id.clone());
        (got, node, c.reconnects())
    }));
    let ((), results) = tokio::join!(publishing, receiving);
    let expected: Vec<u64> = (1..=N).collect();
    for (got, node, reconnects) in results {
        assert_eq!(got, expected, "0 lost, 0 duplicated");
        assert_eq!(node.as_deref(), Some("b"), "ended on b");
        assert!(reconnects >= 1);
    }
    tokio::time::timeout(WAIT, a.t.handle)
        .await
        .expect("a exits when empty")
        .expect("join")
        .expect("clean");
    b.t.stop().await;
}

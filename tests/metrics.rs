//! `/metrics` in Prometheus text format: parsed with a Prometheus parser, counters move with
//! traffic.

mod common;

use common::*;
use edgegate::client::{SubscribeOptions, TransportChoice};
use edgegate::protocol::Mode;

async fn scrape(node: &TestNode) -> prometheus_parse::Scrape {
    let (status, body) = http(node.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn counters_move_as_traffic_flows() {
    let node = start(|c| {
        c.session.publish_rate = 10_000;
        c.session.heartbeat_secs = 1;
        c.session.idle_timeout_secs = 5;
    })
    .await;
    let before = scrape(&node).await;
    assert_eq!(value(&before, "edgegate_sessions", None), 0.0);
    assert_eq!(
        value(
            &before,
            "edgegate_messages_published_total",
            Some(("mode", "reliable"))
        ),
        0.0
    );
    let mut wt = node.connect(TransportChoice::WebTransport).await;
    let mut ws = node.connect(TransportChoice::WebSocket).await;
    for c in [&wt, &ws] {
        c.subscribe("chat:m", SubscribeOptions::default())
            .await
            .expect("sub");
    }
    for i in 0..10 {
        wt.publish("chat:m", Mode::Reliable, None, format!("{i}"))
            .await
            .expect("pub");
    }
    for c in [&mut wt, &mut ws] {
        for _ in 0..10 {
            next_message(c).await;
        }
    }
    // Heartbeats measure the clients' RTT (the Rust client answers pings).
    let counters = node.shared.hub.counters().clone();
    eventually("an RTT sample", || counters.rtt.snapshot().2 >= 2).await;
    // A refused handshake, counted by reason.
    let bad = edgegate::client::Client::connect(
        node.options(TransportChoice::WebSocket).token("not-a-jwt"),
    )
    .await;
    assert!(bad.is_err());
    let after = scrape(&node).await;
    let g = |n, l| value(&after, n, l);
    assert_eq!(
        g("edgegate_sessions", Some(("transport", "webtransport"))),
        1.0
    );
    assert_eq!(
        g("edgegate_sessions", Some(("transport", "websocket"))),
        1.0
    );
    assert_eq!(
        g(
            "edgegate_sessions_accepted_total",
            Some(("transport", "websocket"))
        ),
        1.0
    );
    assert_eq!(g("edgegate_subscriptions", None), 2.0);
    assert!(g("edgegate_channels", None) >= 1.0);
    assert_eq!(
        g(
            "edgegate_messages_published_total",
            Some(("mode", "reliable"))
        ),
        10.0
    );
    assert_eq!(
        g(
            "edgegate_messages_delivered_total",
            Some(("mode", "reliable"))
        ),
        20.0
    );
    assert_eq!(
        g(
            "edgegate_handshake_failures_total",
            Some(("reason", "unauthorized"))
        ),
        1.0
    );
    // The latency histogram saw the write batches.
    let hist = after
        .samples
        .iter()
        .find(|s| s.metric == "edgegate_deliver_latency_seconds")
        .expect("histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.last().expect("buckets").count;
            assert!(inf >= 2.0, "at least one batch per subscriber, got {inf}");
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
    assert_eq!(g("edgegate_draining", None), 0.0);
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "edgegate_client_rtt_seconds"),
        "RTT histogram exported"
    );
    node.stop().await;
}

//! OpenTelemetry export end to end: a small OTLP/HTTP receiver runs in-process, a node
//! exports to it, and spans (session, request) and metrics (node counters) arrive.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use common::*;
use edgegate::client::{SubscribeOptions, TransportChoice};
use edgegate::config::TelemetryConfig;
use edgegate::protocol::Mode;
use edgegate::telemetry::otel::Otel;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// What the receiver got: (signal, JSON body).
#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<(String, serde_json::Value)>>,
    arrived: Notify,
}

async fn collect(State(r): State<Arc<Received>>, Path(signal): Path<String>, body: Bytes) {
    let v: serde_json::Value = serde_json::from_slice(&body).expect("OTLP JSON");
    let mut b = r.bodies.lock();
    // Bounded: a test never needs more.
    if b.len() < 1000 {
        b.push((signal, v));
    }
    r.arrived.notify_waiters();
}

impl Received {
    /// Waits (bounded) until `f` holds over everything received (evaluated without the lock).
    async fn wait_until(&self, what: &str, f: impl Fn(&Received) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = self.arrived.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if f(self) {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, n).await.is_ok(),
                "no export with {what}"
            );
        }
    }

    /// Waits (bounded) until some body of `signal` satisfies `f`.
    async fn wait_for(&self, signal: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = self.arrived.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.bodies.lock().iter().any(|(s, v)| s == signal && f(v)) {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, n).await.is_ok(),
                "no {signal} export with {what}"
            );
        }
    }
}

fn span_names(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(s["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

fn metric_names(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for rm in v["resourceMetrics"].as_array().into_iter().flatten() {
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten() {
                out.push(m["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

/// (trace id, span name, parent span id) of every span received so far.
fn received_spans(r: &Received) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (signal, v) in r.bodies.lock().iter() {
        if signal != "traces" {
            continue;
        }
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((
                        s["traceId"].as_str().unwrap_or_default().to_string(),
                        s["name"].as_str().unwrap_or_default().to_string(),
                        s["parentSpanId"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// A `relay.sequence` span (on the home) in the same trace as a publish `request` span (on
/// the origin node).
fn crossing_trace(spans: &[(String, String, String)]) -> bool {
    spans.iter().any(|(trace, name, parent)| {
        name == "relay.sequence"
            && !parent.is_empty()
            && spans.iter().any(|(t, n, _)| t == trace && n == "request")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_receiver() {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route("/v1/{signal}", post(collect))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{collector}")),
        metrics_interval_secs: 1,
        ..TelemetryConfig::default()
    };
    // The blocking HTTP exporter must be built off the async threads.
    let otel = tokio::task::spawn_blocking(move || Otel::new(&config, "otel-node", "test"))
        .await
        .expect("join")
        .expect("otel")
        .expect("configured");
    edgegate::telemetry::init(
        &edgegate::config::LogConfig::default(),
        Some(&otel),
        "edgegate=debug",
    );
    let node = start(|c| c.node.id = "otel-node".into()).await;
    otel.observe(node.shared.hub.counters().clone(), "otel-node");

    let mut c = node.connect(TransportChoice::WebTransport).await;
    c.subscribe("chat:otel", SubscribeOptions::default())
        .await
        .expect("sub");
    c.publish("chat:otel", Mode::Reliable, None, "traced")
        .await
        .expect("pub");
    next_message(&mut c).await;
    c.close().await;
    // The session span ends when the session does.
    eventually("the session to end", || node.shared.session_count() == 0).await;
    let o = otel.clone();
    tokio::task::spawn_blocking(move || o.flush())
        .await
        .expect("flush");

    received
        .wait_for("traces", "session and request spans", |v| {
            let names = span_names(v);
            names.iter().any(|n| n == "session") && names.iter().any(|n| n == "request")
        })
        .await;
    received
        .wait_for("metrics", "edgegate.messages.delivered", |v| {
            metric_names(v)
                .iter()
                .any(|n| n == "edgegate.messages.delivered")
        })
        .await;
    // Resource attributes name the node.
    let bodies = received.bodies.lock().clone();
    let (_, traces) = bodies.iter().find(|(s, _)| s == "traces").expect("traces");
    let attrs = traces["resourceSpans"][0]["resource"]["attributes"].to_string();
    assert!(attrs.contains("otel-node"), "{attrs}");
    node.stop().await;

    // One publish followed across the mesh hop: the request span on the origin node and
    // the sequencing span on the channel's home share a trace.
    let dir = cluster::certs("otel", &["oa", "ob"]);
    let a = cluster::node(&dir, "oa", "eu", vec![], None, 0, |_| {}).await;
    let seed = a.mesh.local_addr().expect("addr").to_string();
    let b = cluster::node(&dir, "ob", "eu", vec![seed], None, 0, |_| {}).await;
    cluster::linked(&[&a, &b], 1).await;
    let channel = (0..100)
        .map(|i| format!("room:traced-{i}"))
        .find(|ch| b.mesh.home_of(ch) == "oa")
        .expect("a channel homed on oa");
    let c = b.t.connect(TransportChoice::WebSocket).await;
    c.publish(&channel, Mode::Reliable, None, "across")
        .await
        .expect("publish through the home");
    let o = otel.clone();
    tokio::task::spawn_blocking(move || o.flush())
        .await
        .expect("flush");
    received
        .wait_until("a trace crossing two nodes", |r| {
            crossing_trace(&received_spans(r))
        })
        .await;
    for n in [a, b] {
        n.t.stop().await;
    }
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .expect("shutdown");
}

//! OpenTelemetry export end to end: a small OTLP/HTTP receiver runs in-process, a node
//! exports to it, and spans (session, request) and metrics (node counters) arrive.

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

#[tokio::test]
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
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .expect("shutdown");
}

//! Three simulated regions on one machine, one node each, clients in each, every inter-region
//! link through the project's WAN emulator (one-way delay 15, 40 and 60 ms, ±2 ms jitter, 1%
//! loss). Prints cross-region delivery latency percentiles against the configured delay and
//! fails when a reliable message is lost.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/relay.rs"]
mod relay;

use std::time::Duration;

use cluster::*;
use common::*;
use edgegate::client::{Event, SubscribeOptions, TransportChoice};
use edgegate::protocol::Mode;
use relay::{Relay, Wan};

fn wan(delay_ms: u64) -> Wan {
    Wan {
        delay_ms,
        jitter_ms: 2,
        loss: 0.01,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_over_an_emulated_wan_lose_nothing_and_pay_the_link_delay() {
    let dir = certs("wan", &["a", "b", "c"]);
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    // One relay per pair and direction of dialing: a dials b (15 ms) and c (60 ms), b dials
    // c (40 ms). Advertised addresses lead nowhere, so only these paths carry the mesh.
    let ab = Relay::with_wan(([127, 0, 0, 1], pb).into(), wan(15)).await;
    let ac = Relay::with_wan(([127, 0, 0, 1], pc).into(), wan(60)).await;
    let bc = Relay::with_wan(([127, 0, 0, 1], pc).into(), wan(40)).await;
    let nowhere = Relay::start(([127, 0, 0, 1], 9).into()).await;
    nowhere.set_cut(true);
    let void = Some(nowhere.addr.to_string());
    let c = node(&dir, "c", "rc", vec![], void.clone(), pc, |_| {}).await;
    let b = node(
        &dir,
        "b",
        "rb",
        vec![bc.addr.to_string()],
        void.clone(),
        pb,
        |_| {},
    )
    .await;
    let a = node(
        &dir,
        "a",
        "ra",
        vec![ab.addr.to_string(), ac.addr.to_string()],
        void,
        pa,
        |_| {},
    )
    .await;
    linked(&[&a, &b, &c], 2).await;

    // Each region publishes to a channel homed in its own region (one hop to the others),
    // and every region subscribes to all three.
    let nodes = [("ra", &a), ("rb", &b), ("rc", &c)];
    let mut subs = Vec::new();
    for (region, n) in nodes {
        let mut cl = n.t.connect(TransportChoice::WebTransport).await;
        for (from, _) in nodes {
            cl.subscribe(&format!("chat:wan@{from}"), SubscribeOptions::default())
                .await
                .expect("subscribe");
        }
        let _ = &mut cl;
        subs.push((region, cl));
    }
    for (_, n) in nodes {
        let m = n.mesh.clone();
        eventually("interest from both other regions", move || {
            m.links().iter().all(|l| l.interest.lock().len() == 3)
        })
        .await;
    }
    const N: u64 = 200;
    let mut publishers = Vec::new();
    for (region, n) in nodes {
        publishers.push((region, n.t.connect(TransportChoice::WebSocket).await));
    }
    let publishing = async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 1..=N {
            tick.tick().await;
            for (region, p) in &publishers {
                let sent = edgegate::session::now_ms();
                p.publish_nowait(
                    &format!("chat:wan@{region}"),
                    Mode::Reliable,
                    None,
                    format!("{i} {sent}"),
                )
                .await
                .expect("publish");
            }
        }
    };
    let receiving = futures::future::join_all(subs.iter_mut().map(|(to, cl)| async move {
        let mut lat: std::collections::HashMap<String, Vec<f64>> = Default::default();
        let mut next: std::collections::HashMap<String, u64> = Default::default();
        let mut total = 0;
        while total < 3 * N {
            match tokio::time::timeout(WAIT, cl.next_event()).await {
                Ok(Some(Event::Message(m))) => {
                    let text = String::from_utf8_lossy(&m.data).to_string();
                    let (i, sent) = text.split_once(' ').expect("payload");
                    let i: u64 = i.parse().expect("seq");
                    let want = next.entry(m.channel.clone()).or_insert(1);
                    assert_eq!(i, *want, "{} on {to}: lost or reordered", m.channel);
                    *want += 1;
                    let sent: u64 = sent.parse().expect("time");
                    let from = m
                        .channel
                        .rsplit_once('@')
                        .map(|(_, r)| r.to_string())
                        .unwrap_or_default();
                    lat.entry(from)
                        .or_default()
                        .push(edgegate::session::now_ms().saturating_sub(sent) as f64);
                    total += 1;
                }
                Ok(Some(Event::Resync { channel, .. })) => panic!("resync on {channel} at {to}"),
                Ok(Some(_)) => {}
                other => panic!("{to}: stream ended after {total}: {other:?}"),
            }
        }
        (to.to_string(), lat)
    }));
    let ((), results) = tokio::join!(publishing, receiving);
    let delay = |x: &str, y: &str| -> u64 {
        match (x.min(y), x.max(y)) {
            ("ra", "rb") => 15,
            ("ra", "rc") => 60,
            ("rb", "rc") => 40,
            _ => 0,
        }
    };
    println!(
        "cross-region delivery latency, ms (configured one-way delay, 1% loss, ±2 ms jitter):"
    );
    for (to, lat) in results {
        for (from, mut v) in lat {
            v.sort_by(|a, b| a.total_cmp(b));
            let d = delay(&from, &to);
            let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
            println!(
                "  {from} -> {to}: link {d:>2} ms  p50 {p50:>5.1}  p90 {:>5.1}  p99 {p99:>5.1}  max {:>5.1}  ({} msgs, 0 lost)",
                percentile(&v, 0.9),
                v[v.len() - 1],
                v.len()
            );
            assert_eq!(v.len() as u64, N, "{from} -> {to}");
            // Delivery cannot beat the link; the median should not be far above it either.
            assert!(
                p50 + 1.0 >= d as f64 - 2.0,
                "{from} -> {to}: p50 {p50} below the link delay"
            );
        }
    }
    for n in [a, b, c] {
        n.t.stop().await;
    }
}

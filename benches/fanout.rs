//! Hub fan-out: one publish delivered to N subscribers of one channel (N = 10 … 10,000). Each
//! message is encoded once; the per-delivery cost should stay flat as N grows. Outboxes are
//! drained between iterations so they never overflow.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use edgegate::hub::outbox::Config as OutboxConfig;
use edgegate::hub::{Counters, Hub, Namespaces, Outbox, Policy, Publish, SessionRef, Subscribe};
use edgegate::protocol::Mode;

fn setup(n: usize) -> (Hub, Vec<Arc<Outbox>>) {
    let counters = Arc::new(Counters::default());
    let hub = Hub::new(
        Namespaces::new([Policy {
            name: "*".into(),
            history_len: 100,
            ..Policy::default()
        }]),
        counters.clone(),
    );
    let mut outboxes = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let who = SessionRef {
            id: i + 1,
            sid: format!("s{i}").into(),
            user: "".into(),
        };
        let outbox = Outbox::new(
            OutboxConfig {
                max_items: 1 << 20,
                max_bytes: 1 << 30,
                max_datagrams: 1 << 20,
            },
            counters.clone(),
        );
        hub.subscribe(
            Subscribe {
                who: &who,
                outbox: &outbox,
                lane: 1,
                id: 1,
                channel: "room:bench",
                recover: None,
                presence: None,
                presence_events: false,
            },
            0,
        )
        .expect("subscribe");
        outboxes.push(outbox);
    }
    (hub, outboxes)
}

fn drain(outboxes: &[Arc<Outbox>]) {
    let mut items = Vec::new();
    let mut dg = Vec::new();
    for o in outboxes {
        items.clear();
        dg.clear();
        let _ = o.drain(&mut items, &mut dg, usize::MAX);
    }
}

fn fanout(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 100]);
    for (mode, key) in [
        (Mode::Reliable, None),
        (Mode::Latest, Some("k")),
        (Mode::Datagram, None),
    ] {
        let mut g = c.benchmark_group(format!("fanout {mode:?}"));
        for n in [10usize, 100, 1_000, 10_000] {
            let (hub, outboxes) = setup(n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{n} subscribers"), |b| {
                b.iter_batched(
                    || drain(&outboxes),
                    |()| {
                        hub.publish(
                            Publish {
                                channel: "room:bench",
                                mode,
                                key,
                                publisher: None,
                                data: payload.clone(),
                            },
                            1,
                        )
                        .expect("publish");
                        black_box(&outboxes);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        g.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);

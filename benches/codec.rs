//! Encode/decode cost of the hot frames: client Publish, server Message (100 B and 1 KiB),
//! Ping/Pong, Subscribed, a datagram-size Message, and length-prefixed stream reassembly.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgegate::protocol::{
    ClientFrame, Message, Mode, Position, ServerFrame, StreamDecoder, decode_client, decode_server,
    encode_client, encode_server, encode_with_prefix,
};

fn message(len: usize) -> ServerFrame {
    ServerFrame::Message(Message {
        channel: "prices:BTC-USD".into(),
        mode: Mode::Reliable,
        epoch: 4_503_599_627_370_495,
        offset: 1_234_567,
        time_ms: 1_790_000_000_000,
        key: None,
        publisher: Some("alice".into()),
        data: Bytes::from(vec![7u8; len]),
    })
}

fn frames(c: &mut Criterion) {
    let cases: Vec<(&str, Result<ClientFrame, ServerFrame>)> = vec![
        (
            "client Publish 100 B",
            Ok(ClientFrame::Publish {
                id: 42,
                channel: "room:eu/42".into(),
                mode: Mode::Reliable,
                key: None,
                data: Bytes::from(vec![1u8; 100]),
            }),
        ),
        ("client Pong", Ok(ClientFrame::Pong { nonce: 123_456_789 })),
        ("server Message 100 B", Err(message(100))),
        ("server Message 1 KiB", Err(message(1024))),
        ("server Message datagram 900 B", Err(message(900))),
        ("server Ping", Err(ServerFrame::Ping { nonce: 987_654 })),
        (
            "server Subscribed",
            Err(ServerFrame::Subscribed {
                id: 7,
                channel: "room:eu/42".into(),
                position: Position {
                    epoch: 99,
                    offset: 1000,
                },
                recovered: true,
            }),
        ),
    ];
    let mut g = c.benchmark_group("frames");
    for (name, frame) in &cases {
        let bytes = match frame {
            Ok(f) => encode_client(f),
            Err(f) => encode_server(f),
        };
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        match frame {
            Ok(f) => {
                g.bench_function(format!("encode {name}"), |b| {
                    b.iter(|| encode_client(black_box(f)))
                });
                g.bench_function(format!("decode {name}"), |b| {
                    b.iter(|| decode_client(black_box(&bytes), 1 << 20))
                });
            }
            Err(f) => {
                g.bench_function(format!("encode {name}"), |b| {
                    b.iter(|| encode_server(black_box(f)))
                });
                g.bench_function(format!("decode {name}"), |b| {
                    b.iter(|| decode_server(black_box(&bytes), 1 << 20))
                });
            }
        }
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    let one = encode_server(&message(100));
    let mut buf = Vec::new();
    for _ in 0..1000 {
        buf.extend_from_slice(&encode_with_prefix(&one));
    }
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("reassemble 1000 frames in 16 KiB reads", |b| {
        b.iter(|| {
            let mut d = StreamDecoder::new(1 << 20);
            let mut n = 0;
            for chunk in buf.chunks(16 * 1024) {
                d.extend(chunk);
                while let Ok(Some(f)) = d.next_frame() {
                    n += f.len();
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, frames, stream);
criterion_main!(benches);

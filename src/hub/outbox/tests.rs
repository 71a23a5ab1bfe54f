//! Outbox policies and the inline-write path, deterministically (no runtime, no sockets).
use super::*;
use futures::FutureExt;

fn outbox(max_items: usize, max_datagrams: usize) -> Arc<Outbox> {
    Outbox::new(
        Config {
            max_items,
            max_bytes: 1 << 20,
            max_datagrams,
        },
        Arc::new(Counters::default()),
    )
}

fn drain(o: &Outbox) -> (Vec<Item>, Vec<Bytes>, Option<Closed>) {
    let mut out = Vec::new();
    let mut d = Vec::new();
    let c = o.drain(&mut out, &mut d, usize::MAX);
    (out, d, c)
}

#[test]
fn reliable_overflow_closes_with_slow_consumer() {
    let o = outbox(2, 4);
    assert_eq!(o.push(1, Bytes::from_static(b"a")), Pushed::Queued);
    assert_eq!(o.push(1, Bytes::from_static(b"b")), Pushed::Queued);
    assert_eq!(o.push(1, Bytes::from_static(b"c")), Pushed::Closed);
    let (items, _, closed) = drain(&o);
    assert!(items.is_empty());
    assert_eq!(closed.expect("closed").code, ErrorCode::SlowConsumer);
    assert_eq!(o.counters.slow_consumers.load(Ordering::Relaxed), 1);
}

#[test]
fn latest_is_conflated_per_key_and_ends_on_newest() {
    let o = outbox(16, 4);
    let ch: Arc<str> = "prices:x".into();
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    o.push_latest(1, &ch, &a, Bytes::from_static(b"a1"));
    o.push_latest(1, &ch, &b, Bytes::from_static(b"b1"));
    o.push_latest(1, &ch, &a, Bytes::from_static(b"a2"));
    o.push_latest(1, &ch, &a, Bytes::from_static(b"a3"));
    let (items, _, _) = drain(&o);
    assert_eq!(
        items,
        vec![
            Item::Frame(1, Bytes::from_static(b"a3")),
            Item::Frame(1, Bytes::from_static(b"b1"))
        ]
    );
    assert_eq!(o.counters.conflated.load(Ordering::Relaxed), 2);
    // After a drain the key queues again.
    o.push_latest(1, &ch, &a, Bytes::from_static(b"a4"));
    assert_eq!(drain(&o).0, vec![Item::Frame(1, Bytes::from_static(b"a4"))]);
}

#[test]
fn datagrams_drop_oldest_and_report() {
    let o = outbox(16, 2);
    let ch: Arc<str> = "game:1".into();
    for i in 0..5u8 {
        o.push_datagram(3, &ch, Bytes::from(vec![i]));
    }
    let (items, d, _) = drain(&o);
    assert_eq!(d, vec![Bytes::from(vec![3u8]), Bytes::from(vec![4u8])]);
    let notice = ServerFrame::Dropped {
        channel: "game:1".into(),
        count: 3,
    };
    assert_eq!(items, vec![Item::Frame(3, encode_server(&notice))]);
    assert_eq!(o.counters.dropped_datagrams.load(Ordering::Relaxed), 3);
}

#[test]
fn wakes_once_until_drained() {
    let o = outbox(16, 2);
    o.push(0, Bytes::from_static(b"x"));
    o.push(0, Bytes::from_static(b"y"));
    assert!(o.ready().now_or_never().is_some());
    // Second push before a drain does not store a second permit.
    assert!(o.ready().now_or_never().is_none());
    drain(&o);
    o.push(0, Bytes::from_static(b"z"));
    assert!(o.ready().now_or_never().is_some());
}

#[test]
fn close_after_delivers_queued_frames_then_closes() {
    let o = outbox(16, 2);
    o.push(1, Bytes::from_static(b"a"));
    o.close_after(
        &ServerFrame::Ping { nonce: 1 },
        ErrorCode::GoingAway,
        "drain",
    );
    assert_eq!(o.push(1, Bytes::from_static(b"late")), Pushed::Closed);
    let (items, _, closed) = drain(&o);
    assert_eq!(items.len(), 2);
    let c = closed.expect("closes after the last frame");
    assert_eq!((c.code, c.send_error), (ErrorCode::GoingAway, false));
    assert!(o.is_closed());
}

#[test]
fn drain_respects_max_and_rewakes() {
    let o = outbox(16, 2);
    for i in 0..5u8 {
        o.push(0, Bytes::from(vec![i]));
    }
    assert!(o.ready().now_or_never().is_some());
    let mut out = Vec::new();
    o.drain(&mut out, &mut Vec::new(), 3);
    assert_eq!(out.len(), 3);
    assert!(o.ready().now_or_never().is_some(), "rewoken for the rest");
    out.clear();
    o.drain(&mut out, &mut Vec::new(), 3);
    assert_eq!(out.len(), 2);
}

/// A transport that records what it was given inline and keeps a tail when told to.
#[derive(Default)]
struct Recorder {
    written: Mutex<Vec<Bytes>>,
    keep_tail: std::sync::atomic::AtomicBool,
    tail: std::sync::atomic::AtomicBool,
}

impl Direct for Recorder {
    fn idle(&self) -> bool {
        !self.tail.load(Ordering::Relaxed)
    }
    fn write_now(&self, items: &[Item], datagrams: &[Bytes]) -> bool {
        let mut w = self.written.lock();
        for i in items {
            if let Item::Frame(_, b) = i {
                w.push(b.clone());
            }
        }
        w.extend(datagrams.iter().cloned());
        let keep = self.keep_tail.load(Ordering::Relaxed);
        self.tail.store(keep, Ordering::Relaxed);
        keep
    }
}

fn direct_outbox() -> (Arc<Outbox>, Arc<Recorder>) {
    let r = Arc::new(Recorder::default());
    let o = Outbox::with_direct(
        Config::default(),
        Arc::new(Counters::default()),
        Some(r.clone() as Arc<dyn Direct>),
    );
    (o, r)
}

#[test]
fn pushes_in_a_scope_are_written_inline_without_waking_the_writer() {
    let (o, r) = direct_outbox();
    {
        let _scope = InlineFlush::begin();
        o.push(1, Bytes::from_static(b"a"));
        o.push_datagram(1, &"c".into(), Bytes::from_static(b"d"));
        assert!(r.written.lock().is_empty(), "written when the scope ends");
    }
    assert_eq!(
        *r.written.lock(),
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"d")]
    );
    assert!(o.ready().now_or_never().is_none(), "writer not woken");
    assert!(o.is_empty());
    // Outside a scope (replies), the writer task does the work.
    o.push(0, Bytes::from_static(b"reply"));
    assert!(o.ready().now_or_never().is_some());
    assert_eq!(r.written.lock().len(), 2);
}

#[test]
fn a_kept_tail_wakes_the_writer_and_stops_inline_writes_until_written() {
    let (o, r) = direct_outbox();
    r.keep_tail.store(true, Ordering::Relaxed);
    {
        let _scope = InlineFlush::begin();
        o.push(1, Bytes::from_static(b"a"));
    }
    assert!(
        o.ready().now_or_never().is_some(),
        "woken to flush the tail"
    );
    // While the tail waits, new frames stay queued for the writer, in order.
    {
        let _scope = InlineFlush::begin();
        o.push(1, Bytes::from_static(b"b"));
    }
    assert_eq!(r.written.lock().len(), 1);
    let (items, _, _) = drain(&o);
    assert_eq!(items, vec![Item::Frame(1, Bytes::from_static(b"b"))]);
}

#[test]
fn no_inline_write_while_the_writer_holds_a_drained_batch() {
    let (o, r) = direct_outbox();
    o.push(1, Bytes::from_static(b"a"));
    let mut out = Vec::new();
    o.drain(&mut out, &mut Vec::new(), 16);
    // The writer task has "a" and has not written it: "b" must wait behind it.
    {
        let _scope = InlineFlush::begin();
        o.push(1, Bytes::from_static(b"b"));
    }
    assert!(r.written.lock().is_empty());
    assert!(o.ready().now_or_never().is_some());
    o.written();
    // Once written, the next fan-out goes inline again (after "b" is drained).
    let (items, _, _) = drain(&o);
    assert_eq!(items, vec![Item::Frame(1, Bytes::from_static(b"b"))]);
    o.written();
    {
        let _scope = InlineFlush::begin();
        o.push(1, Bytes::from_static(b"c"));
    }
    assert_eq!(*r.written.lock(), vec![Bytes::from_static(b"c")]);
}

#[test]
fn overflow_in_a_scope_still_closes_with_slow_consumer() {
    let r = Arc::new(Recorder::default());
    r.tail.store(true, Ordering::Relaxed);
    let o = Outbox::with_direct(
        Config {
            max_items: 2,
            max_bytes: 1 << 20,
            max_datagrams: 2,
        },
        Arc::new(Counters::default()),
        Some(r.clone() as Arc<dyn Direct>),
    );
    let _scope = InlineFlush::begin();
    for b in [b"a", b"b", b"c"] {
        o.push(1, Bytes::from_static(b));
    }
    assert!(o.is_closed());
    assert!(o.ready().now_or_never().is_some(), "a close wakes at once");
}

/// Datagrams only, like WebTransport's inline path.
struct DatagramsOnly(Mutex<Vec<Bytes>>);

impl Direct for DatagramsOnly {
    fn idle(&self) -> bool {
        true
    }
    fn takes_frames(&self) -> bool {
        false
    }
    fn write_now(&self, items: &[Item], datagrams: &[Bytes]) -> bool {
        assert!(items.is_empty(), "frames handed to a datagram-only path");
        self.0.lock().extend(datagrams.iter().cloned());
        false
    }
}

#[test]
fn a_datagram_only_path_takes_datagrams_and_leaves_frames_to_the_writer() {
    let d = Arc::new(DatagramsOnly(Mutex::new(Vec::new())));
    let o = Outbox::with_direct(
        Config::default(),
        Arc::new(Counters::default()),
        Some(d.clone() as Arc<dyn Direct>),
    );
    let ch: Arc<str> = "game:1".into();
    {
        let _scope = InlineFlush::begin();
        o.push_datagram(1, &ch, Bytes::from_static(b"d1"));
    }
    assert_eq!(*d.0.lock(), vec![Bytes::from_static(b"d1")]);
    assert!(o.ready().now_or_never().is_none(), "writer not woken");
    // A datagram first is written inline even if a frame follows it for the writer.
    {
        let _scope = InlineFlush::begin();
        o.push_datagram(1, &ch, Bytes::from_static(b"d2"));
        o.push(1, Bytes::from_static(b"frame"));
    }
    assert_eq!(d.0.lock().len(), 2);
    assert!(o.ready().now_or_never().is_some(), "woken for the frame");
    let (items, datagrams, _) = drain(&o);
    assert_eq!(items, vec![Item::Frame(1, Bytes::from_static(b"frame"))]);
    assert!(datagrams.is_empty());
    o.written();
    // Once the writer is woken for a frame, datagrams queued meanwhile go with it.
    {
        let _scope = InlineFlush::begin();
        o.push(1, Bytes::from_static(b"frame2"));
        o.push_datagram(1, &ch, Bytes::from_static(b"d3"));
    }
    assert_eq!(d.0.lock().len(), 2);
    let (items, datagrams, _) = drain(&o);
    assert_eq!(items.len(), 1);
    assert_eq!(datagrams, vec![Bytes::from_static(b"d3")]);
}

#[test]
fn closed_resolves_on_hard_close_only() {
    let o = outbox(4, 4);
    o.close_after(&ServerFrame::Ping { nonce: 1 }, ErrorCode::GoingAway, "bye");
    assert!(
        o.closed().now_or_never().is_none(),
        "graceful close still drains"
    );
    let o = outbox(4, 4);
    let waiting = o.closed();
    futures::pin_mut!(waiting);
    assert!(waiting.as_mut().now_or_never().is_none());
    o.close(ErrorCode::SlowConsumer, "full");
    assert!(waiting.now_or_never().is_some());
}

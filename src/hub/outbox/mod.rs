//! A session's bounded outbound queue, filled by the hub and drained by the session's writer.
//!
//! The hub never awaits: it calls `push_*`, which either queue, apply the lane's drop policy,
//! or close the outbox. Policies:
//!
//! | what | policy |
//! |---|---|
//! | control replies, reliable messages, presence events | `Disconnect`: past `max_items` or `max_bytes` the outbox closes with `SlowConsumer`; the client reconnects and recovers from history |
//! | `latest` messages | conflated per (lane, key): a newer value replaces a queued one in place |
//! | `datagram` messages | `DropOldest` past `max_datagrams` |
//!
//! Every drop is counted in [`Counters`] and reported to the client with a `Dropped` notice on
//! the channel's lane, so it knows it missed something.
//!
//! # Writing inline
//!
//! A transport that can write without waiting (plain WebSocket: a non-blocking `send` on its
//! socket) gives the outbox a [`Direct`]. Inside an [`InlineFlush`] scope (a hub fan-out), a
//! push does not wake the session's writer task: the outbox is noted, and when the scope ends
//! (after the shard lock is released) the publisher's own task drains each noted outbox and
//! hands the frames to its `Direct`. That saves a task wake-up and poll per delivery. Whatever
//! the socket does not take stays with the transport, whose writer task is then woken to
//! finish it, so backpressure and the drop policies above are unchanged. On a runtime with
//! several worker threads the inline work per scope is capped in time ([`INLINE_BUDGET`]);
//! past it, writers are woken as usual and spread over the threads.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;

use super::Counters;
use crate::protocol::{ErrorCode, ServerFrame, encode_server};

/// Which ordered stream an item belongs to.
///
/// `0` is the control lane; every subscription gets its own lane id from the session, which
/// WebTransport maps to one server-opened unidirectional stream.
pub type Lane = u32;

/// The control lane.
pub const CONTROL: Lane = 0;

/// Outbox capacities (`[outbox]` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Most queued frames (reliable, control, presence, latest slots) before `SlowConsumer`.
    pub max_items: usize,
    /// Most queued bytes before `SlowConsumer`.
    pub max_bytes: usize,
    /// Most queued datagrams; older ones are dropped first.
    pub max_datagrams: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // 4096 frames covers a full default history replay (1000) plus a burst of live
            // traffic; a session further behind than that is better served by recovery.
            max_items: 4096,
            // 4 MiB bounds the memory one stalled session can pin.
            max_bytes: 4 * 1024 * 1024,
            // 256 datagrams ≈ 2.5 s of a 100 Hz game state stream: older state is worthless.
            max_datagrams: 256,
        }
    }
}

/// One queued frame, already encoded (no length prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A frame for a lane.
    Frame(Lane, Bytes),
    /// The lane's subscription ended: finish its stream.
    Finish(Lane),
}

#[derive(Debug)]
enum Slot {
    Frame(Lane, Bytes),
    Latest(Lane, Arc<str>),
    Finish(Lane),
}

/// Why an outbox was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code.
    pub code: ErrorCode,
    /// Readable reason.
    pub reason: String,
    /// Send an `Error` frame with this code before closing (`false` when the last queued
    /// frame already told the client, as `GoingAway` does).
    pub send_error: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Slot>,
    bytes: usize,
    latest: HashMap<(Lane, Arc<str>), Bytes>,
    datagrams: VecDeque<Bytes>,
    /// Drops per lane not yet reported with a `Dropped` notice.
    dropped: HashMap<Lane, (Arc<str>, u64)>,
    closed: Option<Closed>,
    /// Close once everything queued before it has been drained.
    closing: Option<Closed>,
    /// A wake-up is pending: the writer has not drained since the last notify.
    woken: bool,
    /// When the first frame not yet drained was queued (for the latency histogram).
    since: Option<Instant>,
    /// The writer task has drained frames it has not finished writing: nothing may be
    /// written inline until it has (order).
    busy: bool,
}

/// A transport's synchronous write path (see "Writing inline" above).
pub trait Direct: Send + Sync {
    /// Whether a write now would go straight to the socket: nothing of an earlier write is
    /// still pending and no other write is in progress.
    fn idle(&self) -> bool;
    /// Writes `items` then `datagrams` without waiting. What the socket does not take is
    /// kept, in order, for the writer task. Returns `true` when something is kept (the
    /// writer task must be woken to finish it).
    fn write_now(&self, items: &[Item], datagrams: &[Bytes]) -> bool;
    /// Whether it takes frames at all; `false` for a transport that writes only datagrams
    /// inline (frames then stay queued for the writer task).
    fn takes_frames(&self) -> bool {
        true
    }
}

/// Longest a publisher's task spends writing inline per fan-out when the runtime has more
/// than one worker thread (past it, the rest are left to their writer tasks, which other
/// threads can run). With one worker there is nobody to hand off to: no limit.
pub const INLINE_BUDGET: Duration = Duration::from_millis(1);

/// Largest queue capacity an outbox keeps once drained (slots).
const QUEUE_KEEP: usize = 4;

/// Most frames written inline for one outbox per fan-out (like the writer's batch).
const INLINE_BATCH: usize = 256;

thread_local! {
    /// Outboxes noted in the current [`InlineFlush`] scope of this thread.
    static NOTED: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
    /// Reused drain buffers for inline writes.
    static SCRATCH: RefCell<(Vec<Item>, Vec<Bytes>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A scope in which pushes to outboxes with a [`Direct`] are written inline when the scope
/// ends, instead of waking each writer task. Nested scopes join the outermost.
#[must_use = "the flush happens when the scope is dropped"]
pub struct InlineFlush {
    outermost: bool,
}

impl InlineFlush {
    /// Opens a scope on this thread.
    pub fn begin() -> Self {
        let outermost = NOTED.with(|n| {
            let mut n = n.borrow_mut();
            if n.is_some() {
                false
            } else {
                *n = Some(Vec::new());
                true
            }
        });
        InlineFlush { outermost }
    }
}

impl Drop for InlineFlush {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        let Some(noted) = NOTED.with(|n| n.borrow_mut().take()) else {
            return;
        };
        if noted.is_empty() {
            return;
        }
        let limited = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers() > 1)
            .unwrap_or(true);
        let deadline = limited.then(|| Instant::now() + INLINE_BUDGET);
        let mut over = false;
        for (i, o) in noted.iter().enumerate() {
            // Checking the clock every 16 writes keeps its cost out of the profile.
            if !over && i % 16 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                over = true;
            }
            o.flush_inline(!over);
        }
    }
}

/// A session's outbound queue. Shared by the hub (producer) and the session writer (consumer).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    closed_notify: Notify,
    config: Config,
    counters: Arc<Counters>,
    direct: Option<Arc<dyn Direct>>,
    /// `direct` takes frames (not only datagrams).
    inline_frames: bool,
    me: Weak<Outbox>,
}

impl std::fmt::Debug for dyn Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Direct")
    }
}

/// Result of a push that may close the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// The outbox is (now) closed; the item was not queued.
    Closed,
}

impl Outbox {
    /// A new, empty outbox.
    pub fn new(config: Config, counters: Arc<Counters>) -> Arc<Self> {
        Self::with_direct(config, counters, None)
    }

    /// A new, empty outbox whose transport can write inline.
    pub fn with_direct(
        config: Config,
        counters: Arc<Counters>,
        direct: Option<Arc<dyn Direct>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            closed_notify: Notify::new(),
            config,
            counters,
            inline_frames: direct.as_ref().is_some_and(|d| d.takes_frames()),
            direct,
            me: me.clone(),
        })
    }

    /// Wakes the writer for a frame, or notes the outbox for an inline write at the end of
    /// the thread's scope if the transport takes frames inline.
    fn wake(&self, s: &mut State) {
        self.wake_or_note(s, self.inline_frames);
    }

    /// As [`wake`](Self::wake), for a datagram: inline on any `Direct` path.
    fn wake_datagram(&self, s: &mut State) {
        self.wake_or_note(s, self.direct.is_some());
    }

    fn wake_or_note(&self, s: &mut State, inline: bool) {
        if s.closed.is_some() {
            // A close is never deferred to the end of an inline scope.
            s.woken = true;
            self.notify.notify_one();
            return;
        }
        if !s.woken {
            s.woken = true;
            s.since.get_or_insert_with(Instant::now);
            if inline && !s.busy && self.note() {
                return;
            }
            self.notify.notify_one();
        }
    }

    /// Notes this outbox in the thread's inline scope; `false` when there is none.
    fn note(&self) -> bool {
        NOTED.with(|n| match &mut *n.borrow_mut() {
            Some(v) => match self.me.upgrade() {
                Some(me) => {
                    v.push(me);
                    true
                }
                None => false,
            },
            None => false,
        })
    }

    /// End of an inline scope: writes what is queued through the `Direct` if `allowed` and
    /// the transport is idle; otherwise (or for what it could not write) wakes the writer.
    fn flush_inline(&self, allowed: bool) {
        let Some(direct) = &self.direct else { return };
        let mut s = self.state.lock();
        if !s.woken {
            // The writer task drained it meanwhile.
            return;
        }
        if !allowed || s.busy || s.closed.is_some() || s.closing.is_some() || !direct.idle() {
            self.notify.notify_one();
            return;
        }
        SCRATCH.with(|sc| {
            let Ok(mut sc) = sc.try_borrow_mut() else {
                self.notify.notify_one();
                return;
            };
            let (items, datagrams) = &mut *sc;
            items.clear();
            datagrams.clear();
            s.woken = false;
            if direct.takes_frames() {
                self.drain_locked(&mut s, items, datagrams, INLINE_BATCH);
            } else {
                // Datagrams only; anything else stays for the writer task.
                datagrams.extend(s.datagrams.drain(..));
                if !s.queue.is_empty() || !s.dropped.is_empty() {
                    s.woken = true;
                    self.notify.notify_one();
                } else if let Some(t) = s.since.take() {
                    self.counters.deliver_latency.observe(t.elapsed());
                }
            }
            let pending = direct.write_now(items, datagrams);
            items.clear();
            datagrams.clear();
            if pending && !s.woken {
                s.woken = true;
                self.notify.notify_one();
            }
        });
    }

    /// The writer task finished writing what it last drained.
    pub fn written(&self) {
        self.state.lock().busy = false;
    }

    fn overflow(&self, s: &mut State) -> Pushed {
        self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
        s.closed = Some(Closed {
            code: ErrorCode::SlowConsumer,
            reason: format!(
                "outbound queue over {} frames or {} bytes; reconnect and recover",
                self.config.max_items, self.config.max_bytes
            ),
            send_error: true,
        });
        s.queue.clear();
        s.latest.clear();
        s.datagrams.clear();
        s.bytes = 0;
        self.wake(s);
        Pushed::Closed
    }

    /// Queues a frame that must not be lost (control reply, reliable message, presence).
    /// Over capacity the outbox closes with `SlowConsumer`.
    pub fn push(&self, lane: Lane, frame: Bytes) -> Pushed {
        let mut s = self.state.lock();
        if s.closed.is_some() || s.closing.is_some() {
            return Pushed::Closed;
        }
        if s.queue.len() >= self.config.max_items || s.bytes + frame.len() > self.config.max_bytes {
            return self.overflow(&mut s);
        }
        s.bytes += frame.len();
        s.queue.push_back(Slot::Frame(lane, frame));
        self.wake(&mut s);
        Pushed::Queued
    }

    /// Encodes and queues a control-lane frame (replies, errors).
    pub fn push_frame(&self, lane: Lane, frame: &ServerFrame) -> Pushed {
        self.push(lane, encode_server(frame))
    }

    /// Queues a `latest` message: replaces a queued value of the same (lane, key) in place.
    pub fn push_latest(&self, lane: Lane, channel: &Arc<str>, key: &Arc<str>, frame: Bytes) {
        let mut s = self.state.lock();
        if s.closed.is_some() || s.closing.is_some() {
            return;
        }
        let k = (lane, key.clone());
        if let Some(v) = s.latest.get_mut(&k) {
            let old = std::mem::replace(v, frame.clone());
            s.bytes = s.bytes + frame.len() - old.len();
            self.counters.conflated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if s.queue.len() >= self.config.max_items || s.bytes + frame.len() > self.config.max_bytes {
            // A new key with no room: drop it and tell the client; never disconnect for
            // latest traffic, the next value of that key will arrive.
            self.note_drop(&mut s, lane, channel);
            self.counters.dropped_latest.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.bytes += frame.len();
        s.latest.insert(k, frame);
        s.queue.push_back(Slot::Latest(lane, key.clone()));
        self.wake(&mut s);
    }

    /// Queues a datagram, dropping the oldest queued one when full.
    pub fn push_datagram(&self, lane: Lane, channel: &Arc<str>, frame: Bytes) {
        let mut s = self.state.lock();
        if s.closed.is_some() || s.closing.is_some() {
            return;
        }
        if s.datagrams.len() >= self.config.max_datagrams {
            s.datagrams.pop_front();
            self.note_drop(&mut s, lane, channel);
            self.counters
                .dropped_datagrams
                .fetch_add(1, Ordering::Relaxed);
        }
        s.datagrams.push_back(frame);
        self.wake_datagram(&mut s);
    }

    fn note_drop(&self, s: &mut State, lane: Lane, channel: &Arc<str>) {
        s.dropped
            .entry(lane)
            .or_insert_with(|| (channel.clone(), 0))
            .1 += 1;
    }

    /// Records a datagram the transport could not send (path too small, send buffer full),
    /// to be reported with the next `Dropped` notice.
    pub fn report_drop(&self, lane: Lane, channel: &Arc<str>) {
        let mut s = self.state.lock();
        self.note_drop(&mut s, lane, channel);
    }

    /// Marks the subscription on `lane` finished (after its last frame).
    pub fn finish(&self, lane: Lane) {
        let mut s = self.state.lock();
        if s.closed.is_some() || s.closing.is_some() {
            return;
        }
        s.queue.push_back(Slot::Finish(lane));
        self.wake(&mut s);
    }

    /// Closes the outbox: queued items are discarded and the writer sends `code` and stops.
    pub fn close(&self, code: ErrorCode, reason: impl Into<String>) {
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.closed = Some(Closed {
                code,
                reason: reason.into(),
                send_error: true,
            });
            s.queue.clear();
            s.latest.clear();
            s.datagrams.clear();
            s.bytes = 0;
        }
        self.wake(&mut s);
        self.closed_notify.notify_waiters();
    }

    /// Queues `last` (bypassing capacity), then closes with `code` once the writer has
    /// drained everything queued up to it. Later pushes are refused.
    pub fn close_after(&self, last: &ServerFrame, code: ErrorCode, reason: impl Into<String>) {
        let mut s = self.state.lock();
        if s.closed.is_some() || s.closing.is_some() {
            return;
        }
        let b = encode_server(last);
        s.bytes += b.len();
        s.queue.push_back(Slot::Frame(CONTROL, b));
        s.closing = Some(Closed {
            code,
            reason: reason.into(),
            send_error: false,
        });
        self.wake(&mut s);
    }

    /// Whether the outbox is closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Queued frames (not counting datagrams).
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Queued frames and bytes (for the queue-depth gauges).
    pub fn depth(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.queue.len() + s.datagrams.len(), s.bytes)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        let s = self.state.lock();
        s.queue.is_empty() && s.datagrams.is_empty()
    }

    /// Moves up to `max` queued frames into `out` and every queued datagram into `datagrams`,
    /// in order, with `Dropped` notices first. Returns the close reason once the outbox is
    /// closed (nothing was moved), or once a graceful close has drained its last frame (write
    /// `out`, then close).
    pub fn drain(
        &self,
        out: &mut Vec<Item>,
        datagrams: &mut Vec<Bytes>,
        max: usize,
    ) -> Option<Closed> {
        let mut s = self.state.lock();
        s.woken = false;
        if let Some(c) = &s.closed {
            return Some(c.clone());
        }
        s.busy = true;
        self.drain_locked(&mut s, out, datagrams, max);
        if !s.queue.is_empty() {
            return None;
        }
        // An emptied queue that grew for a burst gives its memory back; a small one is kept
        // (freeing it would cost an allocation per delivery on the writer's path).
        if s.queue.capacity() > QUEUE_KEEP {
            s.queue = VecDeque::new();
        }
        s.closing.take().inspect(|c| s.closed = Some(c.clone()))
    }

    /// Moves up to `max` frames (after any `Dropped` notices) and every datagram; stays
    /// woken when frames are left.
    fn drain_locked(
        &self,
        s: &mut State,
        out: &mut Vec<Item>,
        datagrams: &mut Vec<Bytes>,
        max: usize,
    ) {
        if !s.dropped.is_empty() {
            for (lane, (channel, count)) in s.dropped.drain() {
                let f = ServerFrame::Dropped {
                    channel: channel.to_string(),
                    count,
                };
                out.push(Item::Frame(lane, encode_server(&f)));
            }
        }
        datagrams.extend(s.datagrams.drain(..));
        let n = s.queue.len().min(max);
        if let Some(t) = s.since.take()
            && (n > 0 || !datagrams.is_empty())
        {
            self.counters.deliver_latency.observe(t.elapsed());
        }
        for _ in 0..n {
            let slot = s.queue.pop_front().expect("invariant: n <= len");
            match slot {
                Slot::Frame(lane, b) => {
                    s.bytes -= b.len();
                    out.push(Item::Frame(lane, b));
                }
                Slot::Latest(lane, key) => {
                    if let Some(b) = s.latest.remove(&(lane, key)) {
                        s.bytes -= b.len();
                        out.push(Item::Frame(lane, b));
                    }
                }
                Slot::Finish(lane) => out.push(Item::Finish(lane)),
            }
        }
        if !s.queue.is_empty() {
            // More left than `max`: stay woken so the writer comes back.
            s.woken = true;
            self.notify.notify_one();
        }
    }

    /// Resolves once the outbox is closed (not by a graceful `close_after` still draining).
    /// The writer races its writes against this, so a peer that stops reading cannot keep
    /// a closed session alive.
    pub async fn closed(&self) {
        loop {
            let n = self.closed_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }

    /// Waits until something may be queued or the outbox closed.
    ///
    /// Cancel-safe: a wake-up that arrives while not waiting is kept for the next call.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests;

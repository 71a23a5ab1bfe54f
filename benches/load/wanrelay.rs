//! The bench's WAN emulator (this kernel has no netem), ported from the tests' UDP relay
//! (`tests/common/relay.rs`): each relay sits in front of one node's mesh port and forwards
//! datagrams both ways with a one-way delay, uniform jitter and random loss.
//!
//! Every relay runs on one thread of its own (its own single-threaded runtime), so the
//! generator's busy runtime does not add to the emulated delay. Delayed datagrams wait in
//! bounded delay lines (a heap ordered by due time; jitter may reorder, as on a real path);
//! a full line, or a datagram from one flow too many, is dropped and counted.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::Hist;

/// Datagrams one direction of one flow may hold back at once (20 ms at 800k packets/s).
const MAX_QUEUED: usize = 16_384;

/// Source addresses one relay forwards for (a mesh node dials from its one QUIC socket).
const MAX_FLOWS: usize = 64;

/// Largest UDP datagram read.
const MAX_DATAGRAM: usize = 65_536;

/// Delay, jitter (uniform, ±) and loss applied to every datagram, both ways.
#[derive(Debug, Clone, Copy)]
pub struct Wan {
    /// One-way delay, milliseconds.
    pub delay_ms: f64,
    /// Uniform jitter around the delay (±), milliseconds.
    pub jitter_ms: f64,
    /// Probability that a datagram is dropped (0..=1).
    pub loss: f64,
}

impl Wan {
    /// How long to hold one datagram, or `None` to drop it.
    fn hold(&self) -> Option<Duration> {
        if self.loss > 0.0 && rand::random::<f64>() < self.loss {
            return None;
        }
        let j = self.jitter_ms * (rand::random::<f64>() * 2.0 - 1.0);
        Some(Duration::from_micros(
            ((self.delay_ms + j).max(0.0) * 1000.0) as u64,
        ))
    }
}

/// What one relay did, both directions together.
#[derive(Default)]
pub struct RelayStats {
    /// Datagrams sent on after their delay.
    pub forwarded: AtomicU64,
    /// Datagrams dropped by the emulated loss.
    pub lost: AtomicU64,
    /// Datagrams dropped because a delay line or the flow table was full, or the socket
    /// would have blocked.
    pub overflow: AtomicU64,
    /// How late each datagram left against its due time, µs (the emulator's own error).
    pub late: Mutex<Hist>,
}

/// One relay: `addr` forwards to `target`.
pub struct Relay {
    /// Where to send to reach `target` through the emulated WAN.
    pub addr: SocketAddr,
    /// The node's real mesh address.
    pub target: SocketAddr,
    /// Counters.
    pub stats: Arc<RelayStats>,
}

/// The relays and the thread running them; everything stops when dropped.
pub struct Relays {
    /// One per target, in the order given.
    pub relays: Vec<Relay>,
    /// The emulated link.
    pub wan: Wan,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            // Every task selects on `stop`; the runtime is dropped right after, which ends
            // whatever is left. The join is therefore prompt.
            let _ = t.join();
        }
    }
}

impl Relays {
    /// Starts one relay per target, all through `wan`. Sockets are bound here, so the
    /// addresses are known before the thread runs.
    pub fn start(targets: &[SocketAddr], wan: Wan) -> anyhow::Result<Relays> {
        let mut fronts = Vec::new();
        let mut relays = Vec::new();
        for &target in targets {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").context("bind relay")?;
            s.set_nonblocking(true)?;
            let stats = Arc::new(RelayStats::default());
            relays.push(Relay {
                addr: s.local_addr()?,
                target,
                stats: stats.clone(),
            });
            fronts.push((s, target, stats));
        }
        let stop = CancellationToken::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("relay runtime")?;
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wan-relay".into())
            .spawn(move || {
                rt.block_on(async move {
                    for (s, target, stats) in fronts {
                        match UdpSocket::from_std(s) {
                            Ok(front) => {
                                tokio::spawn(forward(
                                    Arc::new(front),
                                    target,
                                    wan,
                                    stats,
                                    st.clone(),
                                ));
                            }
                            Err(e) => eprintln!("wan relay: {e}"),
                        }
                    }
                    st.cancelled().await;
                });
            })
            .context("relay thread")?;
        Ok(Relays {
            relays,
            wan,
            stop,
            thread: Some(thread),
        })
    }
}

/// Where a held datagram goes.
enum Dest {
    /// To the target, on the flow's own (connected) socket.
    Back(Arc<UdpSocket>),
    /// Back to the flow's source, from the relay's front socket.
    Front(Arc<UdpSocket>, SocketAddr),
}

/// A datagram waiting for its due time.
struct Held {
    due: Instant,
    seq: u64,
    data: Vec<u8>,
    dest: Dest,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    /// Reversed, so the standard max-heap pops the earliest due first.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// One direction's held datagrams, bounded.
struct Line {
    heap: BinaryHeap<Held>,
    seq: u64,
    wan: Wan,
    stats: Arc<RelayStats>,
}

impl Line {
    fn new(wan: Wan, stats: Arc<RelayStats>) -> Self {
        Line {
            heap: BinaryHeap::new(),
            seq: 0,
            wan,
            stats,
        }
    }

    /// Holds `data` for the WAN's delay (or drops it).
    fn push(&mut self, data: &[u8], dest: Dest) {
        let Some(hold) = self.wan.hold() else {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.heap.len() >= MAX_QUEUED {
            self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.seq += 1;
        let held = Held {
            due: Instant::now() + hold,
            seq: self.seq,
            data: data.to_vec(),
            dest,
        };
        if hold.is_zero() {
            self.send(held);
        } else {
            self.heap.push(held);
        }
    }

    /// When the next datagram is due.
    fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.due)
    }

    /// Sends everything due by now.
    fn flush(&mut self) {
        let now = Instant::now();
        while self.heap.peek().is_some_and(|h| h.due <= now) {
            if let Some(h) = self.heap.pop() {
                self.send(h);
            }
        }
    }

    fn send(&self, h: Held) {
        let late = Instant::now().saturating_duration_since(h.due);
        self.stats.late.lock().record(late.as_micros() as u64);
        let sent = match &h.dest {
            Dest::Back(s) => s.try_send(&h.data),
            Dest::Front(s, to) => s.try_send_to(&h.data, *to),
        };
        let counter = match sent {
            Ok(_) => &self.stats.forwarded,
            Err(_) => &self.stats.overflow,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sleeps until `due`, or forever without one.
async fn until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The front socket's loop: datagrams from dialers go to the target, each source through a
/// socket of its own (so replies can be told apart), after the delay.
async fn forward(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    wan: Wan,
    stats: Arc<RelayStats>,
    stop: CancellationToken,
) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut line = Line::new(wan, stats.clone());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = until(line.next_due()) => line.flush(),
            r = front.recv_from(&mut buf) => {
                // An unconnected socket reports no ICMP errors; anything else is transient.
                let Ok((n, from)) = r else { continue };
                let back = match flows.get(&from) {
                    Some(b) => b.clone(),
                    None if flows.len() >= MAX_FLOWS => {
                        stats.overflow.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    None => match open_back(target).await {
                        Ok(b) => {
                            tokio::spawn(back_loop(
                                b.clone(),
                                front.clone(),
                                from,
                                wan,
                                stats.clone(),
                                stop.clone(),
                            ));
                            flows.insert(from, b.clone());
                            b
                        }
                        Err(e) => {
                            eprintln!("wan relay: socket for {from}: {e}");
                            stats.overflow.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                line.push(&buf[..n], Dest::Back(back));
            }
        }
    }
}

async fn open_back(target: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(target).await?;
    Ok(Arc::new(s))
}

/// One flow's return path: what the target sends goes back to the source, after the delay.
async fn back_loop(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    to: SocketAddr,
    wan: Wan,
    stats: Arc<RelayStats>,
    stop: CancellationToken,
) {
    let mut line = Line::new(wan, stats);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = until(line.next_due()) => line.flush(),
            r = back.recv(&mut buf) => match r {
                Ok(n) => line.push(&buf[..n], Dest::Front(front.clone(), to)),
                // The target was not listening yet (ICMP port unreachable on a connected
                // socket): the sender retries.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    eprintln!("wan relay: flow {to}: {e}");
                    return;
                }
            },
        }
    }
}

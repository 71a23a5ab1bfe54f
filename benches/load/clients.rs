//! Opening many subscribers at once (bounded concurrency, spread over loopback addresses and
//! UDP sockets), their receive loops, and the paced publisher.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use edgegate::protocol::Mode;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::proto;
use crate::stats::{Run, Tally};
use crate::target::{Server, Target};
use crate::ws::{self, Dialect, Ws};
use crate::wt::{self, Publishing};

/// Which transport the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// WebSocket (every server).
    Ws,
    /// WebTransport (edgegate only).
    Wt,
}

impl Transport {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wt => "wt",
        }
    }
}

/// Loopback source addresses WebSocket clients are spread over (127.0.0.2 …), so 15k
/// connections never run one source address out of ephemeral ports.
const SOURCE_ADDRS: u8 = 16;

/// Handshakes in flight at once: enough to connect thousands in seconds, few enough that a
/// connect burst does not overflow accept queues or UDP buffers.
const CONNECT_CONCURRENCY: usize = 128;

/// QUIC connections per client UDP socket. A broadcast lands one packet per session on the
/// generator at once; with 1000 sessions on one socket the burst overflowed its 8 MiB receive
/// buffer (drops, retransmits, 0.5 s tails), 250 per socket does not.
pub const SESSIONS_PER_SOCKET: usize = 250;

/// Most client UDP sockets (50k sessions still share "a few").
pub const MAX_SOCKETS: usize = 64;

/// Everything the clients of one run share.
pub struct Clients {
    /// Counters.
    pub run: Arc<Run>,
    /// Ends every client task.
    pub stop: CancellationToken,
    /// The receive loops.
    pub tasks: Vec<JoinHandle<()>>,
    /// Connections that failed to open.
    pub failed: usize,
    pool: Option<Arc<wt::Pool>>,
}

impl Clients {
    /// A fresh set for `target` over `transport`.
    pub fn new(target: &Target, transport: Transport, sessions: usize) -> anyhow::Result<Self> {
        let pool = match transport {
            Transport::Wt => {
                if target.server != Server::Edgegate {
                    bail!("WebTransport is only measured against edgegate");
                }
                let sockets = sessions.div_ceil(SESSIONS_PER_SOCKET).clamp(1, MAX_SOCKETS);
                Some(Arc::new(wt::Pool::new(
                    sockets,
                    target.addr,
                    target
                        .cert_sha256
                        .as_deref()
                        .context("no certificate hash")?,
                )?))
            }
            Transport::Ws => None,
        };
        Ok(Clients {
            run: Arc::new(Run::new()),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            failed: 0,
            pool,
        })
    }

    /// Opens `n` subscribers to `channel(i)` (each publishing if `publishing(i)` says so)
    /// and starts their loops. Gives up after `deadline`.
    pub async fn open(
        &mut self,
        target: &Target,
        n: usize,
        channel: impl Fn(usize) -> String,
        publishing: impl Fn(usize) -> Option<Publishing>,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let mut opening = Vec::with_capacity(n);
        let first_err = Arc::new(parking_lot::Mutex::new(None::<String>));
        for i in 0..n {
            let permit = sem.clone().acquire_owned().await?;
            let (run, stop, ch, p) = (
                self.run.clone(),
                self.stop.clone(),
                channel(i),
                publishing(i),
            );
            let (server, addr, pool) = (target.server, target.addr, self.pool.clone());
            let err = first_err.clone();
            opening.push(tokio::spawn(async move {
                let opened = tokio::time::timeout(deadline, async {
                    match &pool {
                        Some(pool) => pool.open(i, Some(&ch)).await.map(Either::Wt),
                        None => {
                            let local = IpAddr::V4(Ipv4Addr::new(
                                127,
                                0,
                                0,
                                2 + (i % SOURCE_ADDRS as usize) as u8,
                            ));
                            ws::open(server.dialect(), addr, Some(local), &ch, true, false)
                                .await
                                .map(Either::Ws)
                                .map_err(anyhow::Error::from)
                        }
                    }
                })
                .await;
                drop(permit);
                let conn = match opened {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        err.lock().get_or_insert_with(|| format!("{e:#}"));
                        return None;
                    }
                    Err(_) => {
                        err.lock().get_or_insert_with(|| "connect timed out".into());
                        return None;
                    }
                };
                Some(tokio::spawn(async move {
                    let ended = match conn {
                        Either::Wt(s) => s.run(&run, p, stop.clone()).await,
                        Either::Ws(w) => ws_loop(w, server.dialect(), &run, p, stop.clone()).await,
                    };
                    if ended && !stop.is_cancelled() {
                        run.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }))
            }));
        }
        for o in opening {
            match o.await? {
                Some(t) => self.tasks.push(t),
                None => self.failed += 1,
            }
        }
        if self.failed > 0 {
            eprintln!(
                "{} of {n} connections failed; first error: {}",
                self.failed,
                first_err.lock().clone().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Stops every loop and waits for them (bounded).
    pub async fn close(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            futures::future::join_all(self.tasks),
        )
        .await;
    }

    /// A publisher connection (not subscribed).
    pub async fn publisher(
        &self,
        target: &Target,
        transport: Transport,
        channel: &str,
    ) -> anyhow::Result<Publisher> {
        Ok(match &self.pool {
            Some(pool) if transport == Transport::Wt => {
                Publisher::Wt(pool.open(usize::MAX / 2, None).await?)
            }
            _ => {
                let d = target.server.dialect();
                Publisher::Ws(
                    ws::open(d, target.addr, None, channel, false, true).await?,
                    d,
                )
            }
        })
    }
}

enum Either {
    Wt(wt::Session),
    Ws(Ws),
}

/// A WebSocket subscriber's loop: one read, every frame in it, until stopped. Returns
/// whether the server ended the connection.
async fn ws_loop(
    mut w: Ws,
    d: Dialect,
    run: &Run,
    publishing: Option<Publishing>,
    stop: CancellationToken,
) -> bool {
    let mut tally = Tally::new(run);
    let mut tick = publishing.as_ref().map(|p| {
        let mut i = tokio::time::interval_at(
            tokio::time::Instant::now() + p.offset,
            Duration::from_secs_f64(1.0 / p.hz.max(0.001)),
        );
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        i
    });
    let mut seq = 0u64;
    loop {
        let ticked = async {
            match &mut tick {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return false,
            r = w.fill() => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => {
                    if w.drain(|op, p| ws::on_frame(d, &mut tally, op, p)).await.is_err() || w.closed {
                        return true;
                    }
                    tally.flush_if_due();
                }
            },
            _ = ticked => {
                if let Some(p) = &publishing {
                    let measuring = p.measuring.load(Ordering::Relaxed);
                    let phase = if measuring { proto::MEASURED } else { proto::WARMUP };
                    let data = proto::payload(p.size, phase, seq, run.now_us());
                    seq += 1;
                    let (op, m) = ws::publish_message(d, &p.channel, Mode::Datagram, data);
                    if w.send(op, &[&m]).await.is_err() {
                        return true;
                    }
                    if measuring {
                        p.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The one publisher of a broadcast.
pub enum Publisher {
    /// Over WebSocket (any server).
    Ws(Ws, Dialect),
    /// Over WebTransport: reliable on the control stream, datagrams as datagrams.
    Wt(wt::Session),
}

/// What the publisher's loop reads and reports while it runs.
pub struct Pace {
    /// Messages per second, changed between saturation steps (milli-messages per second).
    pub rate_milli: AtomicU64,
    /// Whether sends count as measured.
    pub measuring: AtomicBool,
    /// Measured messages sent.
    pub sent_measured: AtomicU64,
    /// All messages sent.
    pub sent: AtomicU64,
}

impl Pace {
    /// A pace of `rate` messages per second.
    pub fn new(rate: f64) -> Arc<Self> {
        Arc::new(Pace {
            rate_milli: AtomicU64::new((rate * 1000.0) as u64),
            measuring: AtomicBool::new(false),
            sent_measured: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    /// Changes the rate.
    pub fn set_rate(&self, rate: f64) {
        self.rate_milli
            .store((rate * 1000.0) as u64, Ordering::Relaxed);
    }
}

/// Most messages sent in one tick (1 ms): bounds a catch-up burst after a stall.
const MAX_PER_TICK: f64 = 5000.0;

impl Publisher {
    /// Publishes at `pace` until `stop`: every millisecond, as many messages as are due,
    /// in one write. Answers pings on WebSocket.
    pub async fn run(
        mut self,
        run: Arc<Run>,
        channel: String,
        mode: Mode,
        size: usize,
        pace: Arc<Pace>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut credit = 0.0f64;
        let mut last = tokio::time::Instant::now();
        let mut seq = 0u64;
        loop {
            let incoming = async {
                match &mut self {
                    Publisher::Ws(w, _) => w.fill().await.map(|_| ()),
                    Publisher::Wt(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = incoming => {
                    r?;
                    if let Publisher::Ws(w, d) = &mut self {
                        let d = *d;
                        w.drain(|op, p| ws::on_publisher_frame(d, op, p)).await?;
                        if w.closed {
                            bail!("server closed the publisher");
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    let rate = pace.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
                    credit = (credit + rate * now.duration_since(last).as_secs_f64()).min(MAX_PER_TICK);
                    last = now;
                    let n = credit.floor() as usize;
                    if n == 0 {
                        continue;
                    }
                    credit -= n as f64;
                    let measuring = pace.measuring.load(Ordering::Relaxed);
                    let phase = if measuring { proto::MEASURED } else { proto::WARMUP };
                    let t = run.now_us();
                    let datas: Vec<Vec<u8>> = (0..n).map(|k| proto::payload(size, phase, seq + k as u64, t)).collect();
                    seq += n as u64;
                    match &mut self {
                        Publisher::Ws(w, d) => {
                            let msgs: Vec<(u8, Vec<u8>)> = datas.into_iter().map(|v| ws::publish_message(*d, &channel, mode, v)).collect();
                            let op = msgs[0].0;
                            let refs: Vec<&[u8]> = msgs.iter().map(|(_, m)| &m[..]).collect();
                            w.send(op, &refs).await?;
                        }
                        Publisher::Wt(s) => {
                            let frames: Vec<bytes::Bytes> = datas.into_iter().map(|v| proto::publish(&channel, mode, v)).collect();
                            if mode == Mode::Datagram {
                                for f in &frames {
                                    s.send_datagram(f)?;
                                }
                            } else {
                                s.send_frames(&frames).await?;
                            }
                        }
                    }
                    pace.sent.fetch_add(n as u64, Ordering::Relaxed);
                    if measuring {
                        pace.sent_measured.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

//! The scenarios: `broadcast` (fixed rate), `saturation` (stepped rate), `idle` (memory per
//! connection) and `rooms` (many small channels of players sending datagrams). Each returns
//! its figures as one JSON object; `main` prints it and a table row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use edgegate::protocol::Mode;
use serde_json::{Value, json};

use crate::clients::{Clients, Pace, Transport};
use crate::stats::{Hist, Run, cpu_secs, rss_bytes};
use crate::target::Target;
use crate::wt::Publishing;

/// Longest any connect phase may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// How long idle CPU is measured: longer than the session heartbeat (15 s) and the QUIC
/// keep-alive, so periodic traffic falls inside the window.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

/// Longest the tail of a run may take to arrive after the publisher stops.
const DRAIN: Duration = Duration::from_secs(3);

/// Broadcast parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct Broadcast {
    /// Subscribers on the one channel.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Messages per second published (deliveries/s = rate × subs).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Send `datagram` publishes instead of `reliable` (edgegate).
    #[arg(long)]
    pub datagram: bool,
}

/// Server CPU and wall time over a window (and the generator's own CPU, to tell a
/// generator-bound run).
struct Window {
    t: Instant,
    cpu: Option<f64>,
    own: Option<f64>,
}

impl Window {
    fn start(pid: Option<u32>) -> Self {
        Window {
            t: Instant::now(),
            cpu: pid.and_then(cpu_secs),
            own: cpu_secs(std::process::id()),
        }
    }

    /// The generator's CPU over the window, percent of one core.
    fn generator_pct(&self) -> Option<f64> {
        let now = cpu_secs(std::process::id())?;
        Some(100.0 * (now - self.own?) / self.t.elapsed().as_secs_f64())
    }

    /// (wall seconds, server CPU seconds).
    fn end(&self, pid: Option<u32>) -> (f64, Option<f64>) {
        let wall = self.t.elapsed().as_secs_f64();
        let cpu = match (self.cpu, pid.and_then(cpu_secs)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        (wall, cpu)
    }
}

/// Latency percentiles of a run, in ms.
pub(crate) fn latency(h: &Hist) -> Value {
    json!({
        "p50_ms": h.quantile(0.50) as f64 / 1000.0,
        "p90_ms": h.quantile(0.90) as f64 / 1000.0,
        "p99_ms": h.quantile(0.99) as f64 / 1000.0,
        "p999_ms": h.quantile(0.999) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
    })
}

/// Prints one progress line a second until `stop` (to stderr; `\r` on a terminal): a bar for
/// the time passed, then what `figures` says for the last second.
pub(crate) fn progress_line(
    label: String,
    total_secs: f64,
    stop: tokio_util::sync::CancellationToken,
    mut figures: impl FnMut() -> String + Send + 'static,
) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let el = start.elapsed().as_secs_f64();
            let width = 30usize;
            let done = ((el / total_secs.max(0.001)) * width as f64).min(width as f64) as usize;
            let line = format!(
                "{label} [{}{}] {el:>5.1}/{total_secs:.0}s {}",
                "#".repeat(done),
                " ".repeat(width - done),
                figures()
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprintln!();
        }
    });
}

/// One run's deliveries/s and disconnects, one line a second.
fn progress(
    label: String,
    run: Arc<Run>,
    total_secs: f64,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut last = run.delivered.load(Ordering::Relaxed);
    progress_line(label, total_secs, stop, move || {
        let d = run.delivered.load(Ordering::Relaxed);
        let per = (d - last) as f64;
        last = d;
        format!(
            "{per:>9.0} deliveries/s, disconnects {}",
            run.disconnects.load(Ordering::Relaxed)
        )
    });
}

/// `broadcast`: `subs` subscribers on one channel, one publisher at a fixed rate.
pub async fn broadcast(
    target: &Target,
    transport: Transport,
    b: &Broadcast,
) -> anyhow::Result<Value> {
    let channel = "bench:broadcast".to_string();
    let mode = if b.datagram {
        Mode::Datagram
    } else {
        Mode::Reliable
    };
    let mut clients = Clients::new(target, transport, b.subs + 1)?;
    clients
        .open(
            target,
            b.subs,
            |_| channel.clone(),
            |_| None,
            CONNECT_DEADLINE,
        )
        .await?;
    let subs = b.subs - clients.failed;
    if subs == 0 {
        bail!("no subscriber connected");
    }
    let run = clients.run.clone();
    let publisher = clients.publisher(target, transport, &channel).await?;
    let pace = Pace::new(b.rate);
    let pub_task = tokio::spawn(publisher.run(
        run.clone(),
        channel.clone(),
        mode,
        b.size,
        pace.clone(),
        clients.stop.clone(),
    ));
    progress(
        format!("broadcast {}/{}", target.server.name(), transport.name()),
        run.clone(),
        b.warmup + b.secs,
        clients.stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs_f64(b.warmup)).await;
    pace.measuring.store(true, Ordering::Relaxed);
    let w = Window::start(target.pid);
    tokio::time::sleep(Duration::from_secs_f64(b.secs)).await;
    pace.measuring.store(false, Ordering::Relaxed);
    let generator = w.generator_pct();
    let (wall, cpu) = w.end(target.pid);
    let sent = pace.sent_measured.load(Ordering::Relaxed);
    let expected = sent * subs as u64;
    let deadline = Instant::now() + DRAIN;
    while run.measured.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = run.measured.load(Ordering::Relaxed);
    let publisher_error = if pub_task.is_finished() {
        pub_task
            .await
            .ok()
            .and_then(|r| r.err())
            .map(|e| format!("{e:#}"))
    } else {
        None
    };
    let disconnects = run.disconnects.load(Ordering::Relaxed);
    let dropped = run.dropped_notices.load(Ordering::Relaxed);
    clients.close().await;
    let h = run.hist();
    let dps = got as f64 / wall;
    Ok(json!({
        "scenario": if b.datagram { "datagram" } else { "broadcast" },
        "subs": subs,
        "connect_failures": b.subs - subs,
        "rate": b.rate,
        "size": b.size,
        "secs": wall,
        "offered_deliveries_per_s": b.rate * subs as f64,
        "deliveries_per_s": dps,
        "sent": sent,
        "expected": expected,
        "delivered": got,
        "loss": if expected > 0 { 1.0 - got as f64 / expected as f64 } else { 0.0 },
        "latency": latency(&h),
        "server_cpu_pct": cpu.map(|c| 100.0 * c / wall),
        "server_us_per_delivery": cpu.map(|c| if got > 0 { c * 1e6 / got as f64 } else { 0.0 }),
        "generator_cpu_pct": generator,
        "disconnects": disconnects,
        "dropped_notices": dropped,
        "publisher_error": publisher_error,
    }))
}

/// Saturation parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct Saturation {
    /// Subscribers on the one channel.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// First step's publish rate, messages/s.
    #[arg(long, default_value_t = 50.0)]
    pub start: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Seconds per step (the first second of each is not counted).
    #[arg(long, default_value_t = 3.0)]
    pub step: f64,
    /// Most steps.
    #[arg(long, default_value_t = 14)]
    pub steps: usize,
}

/// `saturation`: the offered rate grows step by step until delivery falls behind.
pub async fn saturation(
    target: &Target,
    transport: Transport,
    s: &Saturation,
) -> anyhow::Result<Value> {
    let channel = "bench:saturation".to_string();
    let mut clients = Clients::new(target, transport, s.subs + 1)?;
    clients
        .open(
            target,
            s.subs,
            |_| channel.clone(),
            |_| None,
            CONNECT_DEADLINE,
        )
        .await?;
    let subs = s.subs - clients.failed;
    if subs == 0 {
        bail!("no subscriber connected");
    }
    let run = clients.run.clone();
    let publisher = clients.publisher(target, transport, &channel).await?;
    let pace = Pace::new(s.start);
    pace.measuring.store(true, Ordering::Relaxed);
    tokio::spawn(publisher.run(
        run.clone(),
        channel.clone(),
        Mode::Reliable,
        s.size,
        pace.clone(),
        clients.stop.clone(),
    ));
    progress(
        format!("saturation {}/{}", target.server.name(), transport.name()),
        run.clone(),
        s.step * s.steps as f64,
        clients.stop.clone(),
    );
    let mut steps = Vec::new();
    let (mut best, mut peak, mut misses) = (0.0f64, 0.0f64, 0);
    let mut rate = s.start;
    for _ in 0..s.steps {
        pace.set_rate(rate);
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.reset_hist();
        let (d0, p0) = (
            run.delivered.load(Ordering::Relaxed),
            pace.sent.load(Ordering::Relaxed),
        );
        let disc0 = run.disconnects.load(Ordering::Relaxed);
        let w = Window::start(target.pid);
        tokio::time::sleep(Duration::from_secs_f64((s.step - 1.0).max(1.0))).await;
        let generator = w.generator_pct();
        let (wall, cpu) = w.end(target.pid);
        let delivered = (run.delivered.load(Ordering::Relaxed) - d0) as f64 / wall;
        let offered = (pace.sent.load(Ordering::Relaxed) - p0) as f64 * subs as f64 / wall;
        let h = run.hist();
        let lost_subs = run.disconnects.load(Ordering::Relaxed) - disc0;
        let sustained =
            delivered >= 0.95 * offered && h.quantile(0.99) < 1_000_000 && lost_subs == 0;
        peak = peak.max(delivered);
        if sustained {
            best = best.max(delivered);
            misses = 0;
        } else {
            misses += 1;
        }
        steps.push(json!({
            "rate": rate,
            "offered_deliveries_per_s": offered,
            "deliveries_per_s": delivered,
            "p99_ms": h.quantile(0.99) as f64 / 1000.0,
            "server_cpu_pct": cpu.map(|c| 100.0 * c / wall),
            "generator_cpu_pct": generator,
            "sustained": sustained,
            "disconnects": lost_subs,
        }));
        if misses >= 2 || run.disconnects.load(Ordering::Relaxed) as usize * 10 > subs {
            break;
        }
        rate *= s.factor;
    }
    clients.close().await;
    Ok(json!({
        "scenario": "saturation",
        "subs": subs,
        "size": s.size,
        "max_sustained_deliveries_per_s": best,
        "peak_deliveries_per_s": peak,
        "disconnects": run.disconnects.load(Ordering::Relaxed),
        "steps": steps,
    }))
}

/// `idle`: `conns` connections, each subscribed to one channel, doing nothing.
pub async fn idle(target: &Target, transport: Transport, conns: usize) -> anyhow::Result<Value> {
    let Some(pid) = target.pid else {
        bail!("idle needs a server process to measure");
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_bytes(pid).unwrap_or(0);
    let t = Instant::now();
    let mut clients = Clients::new(target, transport, conns)?;
    clients
        .open(
            target,
            conns,
            |_| "bench:idle".to_string(),
            |_| None,
            CONNECT_DEADLINE * 3,
        )
        .await?;
    let connect_secs = t.elapsed().as_secs_f64();
    let open = conns - clients.failed;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_bytes(pid).unwrap_or(0);
    let w = Window::start(Some(pid));
    tokio::time::sleep(IDLE_WINDOW).await;
    let (wall, cpu) = w.end(Some(pid));
    let disconnects = clients.run.disconnects.load(Ordering::Relaxed);
    clients.close().await;
    Ok(json!({
        "scenario": "idle",
        "conns": open,
        "connect_failures": clients_failed(conns, open),
        "connect_secs": connect_secs,
        "rss_before_mib": before as f64 / 1048576.0,
        "rss_after_mib": after as f64 / 1048576.0,
        "bytes_per_conn": if open > 0 { (after.saturating_sub(before)) as f64 / open as f64 } else { 0.0 },
        "idle_server_cpu_pct": cpu.map(|c| 100.0 * c / wall),
        "disconnects": disconnects,
    }))
}

fn clients_failed(asked: usize, open: usize) -> usize {
    asked - open
}

/// Rooms parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct Rooms {
    /// Rooms (channels).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Players per room; each subscribes to its room and publishes to it.
    #[arg(long, default_value_t = 8)]
    pub players: usize,
    /// Datagrams per second each player sends.
    #[arg(long, default_value_t = 20.0)]
    pub hz: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Seconds of warm-up.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

/// `rooms`: K rooms × P players, each player sending `datagram` publishes to its room at
/// T Hz and receiving everyone's (its own included).
pub async fn rooms(target: &Target, transport: Transport, r: &Rooms) -> anyhow::Result<Value> {
    let n = r.rooms * r.players;
    let sent = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut clients = Clients::new(target, transport, n)?;
    let period = 1.0 / r.hz.max(0.001);
    let room = |i: usize| format!("bench:room-{}", i % r.rooms);
    let publishing = |i: usize| {
        Some(Publishing {
            channel: room(i),
            hz: r.hz,
            // Spread players over the period, as real clients are.
            offset: Duration::from_secs_f64(period * ((i * 7919) % 1000) as f64 / 1000.0 + 1.0),
            size: r.size,
            sent: sent.clone(),
            measuring: measuring.clone(),
        })
    };
    clients
        .open(target, n, room, publishing, CONNECT_DEADLINE)
        .await?;
    if clients.failed > 0 {
        bail!(
            "{} players failed to connect; rooms would be uneven",
            clients.failed
        );
    }
    let run = clients.run.clone();
    progress(
        format!("rooms {}/{}", target.server.name(), transport.name()),
        run.clone(),
        r.warmup + r.secs + 1.0,
        clients.stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs_f64(r.warmup + 1.0)).await;
    measuring.store(true, Ordering::Relaxed);
    let w = Window::start(target.pid);
    tokio::time::sleep(Duration::from_secs_f64(r.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let generator = w.generator_pct();
    let (wall, cpu) = w.end(target.pid);
    let expected = sent.load(Ordering::Relaxed) * r.players as u64;
    let deadline = Instant::now() + DRAIN;
    while run.measured.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = run.measured.load(Ordering::Relaxed);
    let disconnects = run.disconnects.load(Ordering::Relaxed);
    let dropped = run.dropped_notices.load(Ordering::Relaxed);
    clients.close().await;
    let h = run.hist();
    Ok(json!({
        "scenario": "rooms",
        "rooms": r.rooms,
        "players": r.players,
        "hz": r.hz,
        "size": r.size,
        "secs": wall,
        "publishes_per_s": sent.load(Ordering::Relaxed) as f64 / wall,
        "offered_deliveries_per_s": (r.rooms * r.players * r.players) as f64 * r.hz,
        "deliveries_per_s": got as f64 / wall,
        "expected": expected,
        "delivered": got,
        "loss": if expected > 0 { 1.0 - got as f64 / expected as f64 } else { 0.0 },
        "latency": latency(&h),
        "server_cpu_pct": cpu.map(|c| 100.0 * c / wall),
        "server_us_per_delivery": cpu.map(|c| if got > 0 { c * 1e6 / got as f64 } else { 0.0 }),
        "generator_cpu_pct": generator,
        "disconnects": disconnects,
        "dropped_notices": dropped,
    }))
}

//! `cross-region`: the broadcast scenario over a local multi-region mesh ([`crate::mesh`]).
//! One node per region, `--subs` subscribers on each, one publisher on the first node; the
//! channel's home is pinned to the first region (`bench:cross@<region>`), so every other
//! region receives each message over exactly one mesh link, which optionally crosses a WAN
//! relay with a one-way delay. Figures per receiving region and overall, against the link
//! delay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgegate::protocol::Mode;
use serde_json::{Value, json};

use crate::clients::{Clients, Pace, Transport};
use crate::mesh::{Mesh, Spec, links};
use crate::scenario::{latency, progress_line};
use crate::stats::{Hist, Run, cpu_secs};
use crate::wanrelay::Wan;

/// Longest any connect phase may take (per region).
const CONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// Longest the subscribers' interest may take to reach the channel's home.
const INTEREST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the tail of a run may take to arrive after the publisher stops (plus four link
/// delays: a retransmitted packet crosses the link again).
const DRAIN: Duration = Duration::from_secs(3);

/// `cross-region` parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct Cross {
    /// Regions, one node each (`<region>-1`). The publisher connects to the first, which is
    /// also the channel's home.
    #[arg(long, value_delimiter = ',', default_value = "eu,us,ap")]
    pub regions: Vec<String>,
    /// Subscribers per region, all on the one channel.
    #[arg(long, default_value_t = 300)]
    pub subs: usize,
    /// Messages per second published.
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
    /// Send `datagram` publishes instead of `reliable`.
    #[arg(long)]
    pub datagram: bool,
    /// One-way delay of every mesh link through the WAN relay, ms; 0: no relay at all.
    #[arg(long, default_value_t = 20.0)]
    pub wan_delay_ms: f64,
    /// Uniform jitter (±) on the delay, ms.
    #[arg(long, default_value_t = 2.0)]
    pub wan_jitter_ms: f64,
    /// Probability that the relay drops a packet (each direction).
    #[arg(long, default_value_t = 0.0)]
    pub wan_loss: f64,
    /// Seconds the mesh may take to link every pair of nodes.
    #[arg(long, default_value_t = 30.0)]
    pub mesh_timeout: f64,
    /// A small short run (20 subscribers per region, 1 s) that fails unless every reliable
    /// delivery arrived in every region; timing is never asserted.
    #[arg(long)]
    pub smoke: bool,
}

/// Where the nodes run.
pub struct Placement {
    /// Core every node is pinned to.
    pub core: Option<usize>,
    /// Niceness of the nodes.
    pub nice: i32,
    /// The edgegate binary.
    pub bin: Option<std::path::PathBuf>,
}

/// One region's subscribers.
struct Region {
    clients: Clients,
    subs: usize,
}

/// CPU seconds of every process, or `None` when one cannot be read.
fn cpu_all(pids: &[u32]) -> Option<Vec<f64>> {
    pids.iter().map(|p| cpu_secs(*p)).collect()
}

fn check(c: &Cross) -> anyhow::Result<()> {
    if c.regions.len() < 2 {
        bail!("--regions needs at least two");
    }
    for (i, r) in c.regions.iter().enumerate() {
        if r.is_empty() || !r.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') {
            bail!("region {r:?}: letters, digits and '-' only");
        }
        if c.regions[..i].contains(r) {
            bail!("region {r} given twice");
        }
    }
    if c.subs == 0 || c.rate <= 0.0 || c.secs <= 0.0 || c.warmup < 0.0 {
        bail!("--subs, --rate and --secs must be positive");
    }
    if !(0.0..1.0).contains(&c.wan_loss) || c.wan_delay_ms < 0.0 || c.wan_jitter_ms < 0.0 {
        bail!("--wan-loss is in [0, 1), delay and jitter are not negative");
    }
    if c.wan_delay_ms == 0.0 && c.wan_loss > 0.0 {
        bail!("--wan-loss needs the relay: give --wan-delay-ms > 0");
    }
    Ok(())
}

/// One progress line a second until `stop`: deliveries/s per region.
fn progress(
    label: String,
    names: Vec<String>,
    runs: Vec<Arc<Run>>,
    total_secs: f64,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut last: Vec<u64> = runs
        .iter()
        .map(|r| r.delivered.load(Ordering::Relaxed))
        .collect();
    progress_line(label, total_secs, stop, move || {
        let mut per = String::new();
        let mut disconnects = 0;
        for ((name, run), last) in names.iter().zip(&runs).zip(last.iter_mut()) {
            let d = run.delivered.load(Ordering::Relaxed);
            per.push_str(&format!(" {name} {:>7.0}", (d - *last) as f64));
            *last = d;
            disconnects += run.disconnects.load(Ordering::Relaxed);
        }
        format!("deliveries/s:{per}, disconnects {disconnects}")
    });
}

/// Waits until the channel's home (node 0) knows every other node wants `channel`'s
/// traffic, so the first measured message is not lost to a subscription still on its way.
async fn wait_interest(mesh: &Mesh) -> anyhow::Result<()> {
    let home = &mesh.nodes[0];
    let deadline = tokio::time::Instant::now() + INTEREST_TIMEOUT;
    loop {
        let v = mesh.view(home).await?;
        let interested = links(&v)
            .iter()
            .filter(|l| l["interest"].as_u64().unwrap_or(0) > 0)
            .count();
        if interested + 1 >= mesh.nodes.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the home {} saw interest from {interested} of {} nodes after {} s",
                home.id,
                mesh.nodes.len() - 1,
                INTEREST_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the scenario; returns its figures as one JSON object (per-region array included).
pub async fn cross_region(
    transport: Transport,
    asked: &Cross,
    placement: Placement,
) -> anyhow::Result<Value> {
    let mut c = asked.clone();
    if c.smoke {
        c.subs = 20;
        c.rate = 50.0;
        c.secs = 1.0;
        c.warmup = 1.0;
    }
    check(&c)?;
    let wan = (c.wan_delay_ms > 0.0).then_some(Wan {
        delay_ms: c.wan_delay_ms,
        jitter_ms: c.wan_jitter_ms,
        loss: c.wan_loss,
    });
    let mesh = Mesh::start(&Spec {
        regions: c.regions.clone(),
        core: placement.core,
        nice: placement.nice,
        bin: placement.bin,
        wan,
    })?;
    let t_link = Instant::now();
    mesh.wait_linked(Duration::from_secs_f64(c.mesh_timeout))
        .await?;
    let link_secs = t_link.elapsed().as_secs_f64();
    // Let the nodes settle (allocator arenas, the first Stats exchange).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let channel = format!("bench:cross@{}", c.regions[0]);
    let mode = if c.datagram {
        Mode::Datagram
    } else {
        Mode::Reliable
    };
    // One clock for every region: latency is the receiver's now minus the publisher's stamp.
    let t0 = Instant::now();
    let mut regions = Vec::new();
    for (i, node) in mesh.nodes.iter().enumerate() {
        let mut clients = Clients::new(&node.target, transport, c.subs + usize::from(i == 0))?;
        let mut run = Run::new();
        run.t0 = t0;
        clients.run = Arc::new(run);
        clients
            .open(
                &node.target,
                c.subs,
                |_| channel.clone(),
                |_| None,
                CONNECT_DEADLINE,
            )
            .await?;
        let subs = c.subs - clients.failed;
        if subs == 0 {
            bail!("no subscriber connected to {}", node.id);
        }
        regions.push(Region { clients, subs });
    }
    wait_interest(&mesh).await?;
    let home = &mesh.nodes[0];
    let publisher = regions[0]
        .clients
        .publisher(&home.target, transport, &channel)
        .await
        .context("publisher")?;
    let pace = Pace::new(c.rate);
    let pub_task = tokio::spawn(publisher.run(
        regions[0].clients.run.clone(),
        channel.clone(),
        mode,
        c.size,
        pace.clone(),
        regions[0].clients.stop.clone(),
    ));
    progress(
        format!("cross-region {}", transport.name()),
        c.regions.clone(),
        regions.iter().map(|r| r.clients.run.clone()).collect(),
        c.warmup + c.secs,
        regions[0].clients.stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs_f64(c.warmup)).await;

    let pids: Vec<u32> = mesh.nodes.iter().map(|n| n.pid).collect();
    pace.measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let cpu0 = cpu_all(&pids);
    let own0 = cpu_secs(std::process::id());
    tokio::time::sleep(Duration::from_secs_f64(c.secs)).await;
    pace.measuring.store(false, Ordering::Relaxed);
    let wall = t.elapsed().as_secs_f64();
    let cpu: Option<Vec<f64>> = match (cpu0, cpu_all(&pids)) {
        (Some(a), Some(b)) => Some(b.iter().zip(&a).map(|(b, a)| b - a).collect()),
        _ => None,
    };
    let generator = match (own0, cpu_secs(std::process::id())) {
        (Some(a), Some(b)) => Some(100.0 * (b - a) / wall),
        _ => None,
    };

    let sent = pace.sent_measured.load(Ordering::Relaxed);
    let link_delay = wan.map(|w| w.delay_ms).unwrap_or(0.0);
    let deadline = Instant::now() + DRAIN + Duration::from_secs_f64(4.0 * link_delay / 1000.0);
    while regions
        .iter()
        .any(|r| r.clients.run.measured.load(Ordering::Relaxed) < sent * r.subs as u64)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publisher_error = if pub_task.is_finished() {
        pub_task
            .await
            .ok()
            .and_then(|r| r.err())
            .map(|e| format!("{e:#}"))
    } else {
        None
    };
    // The mesh's own view of each link to the home: RTT (QUIC's smoothed estimate) and
    // entries replayed to fill gaps.
    let mut views = Vec::new();
    for n in &mesh.nodes {
        views.push(mesh.view(n).await.unwrap_or(Value::Null));
    }
    let mut per = Vec::new();
    let mut all = Hist::default();
    let (mut got_all, mut expected_all, mut disconnects_all) = (0u64, 0u64, 0u64);
    for (i, (r, node)) in regions.iter().zip(&mesh.nodes).enumerate() {
        let run = &r.clients.run;
        let got = run.measured.load(Ordering::Relaxed);
        let expected = sent * r.subs as u64;
        let disconnects = run.disconnects.load(Ordering::Relaxed);
        let h = run.hist();
        all.merge(&h);
        got_all += got;
        expected_all += expected;
        disconnects_all += disconnects;
        let to_home = links(&views[i])
            .into_iter()
            .find(|l| l["peer"] == home.id.as_str());
        let link_ms = if i == 0 { 0.0 } else { link_delay };
        per.push(json!({
            "region": node.region,
            "node": node.id,
            "mesh_addr": node.mesh_addr.to_string(),
            "dialed_at": node.dial_addr.to_string(),
            "role": if i == 0 { "publisher, home" } else { "remote" },
            "subs": r.subs,
            "connect_failures": c.subs - r.subs,
            "expected": expected,
            "delivered": got,
            "deliveries_per_s": got as f64 / wall,
            "loss": if expected > 0 { 1.0 - got as f64 / expected as f64 } else { 0.0 },
            "latency": latency(&h),
            "link_delay_ms": link_ms,
            "p50_minus_link_ms": h.quantile(0.5) as f64 / 1000.0 - link_ms,
            "p99_minus_link_ms": h.quantile(0.99) as f64 / 1000.0 - link_ms,
            "mesh_rtt_ms": to_home.map(|l| l["rtt_ms"].clone()),
            "replayed_from_home": links(&views[0])
                .into_iter()
                .find(|l| l["peer"] == node.id.as_str())
                .map(|l| l["replayed"].clone()),
            "server_cpu_pct": cpu.as_ref().map(|v| 100.0 * v[i] / wall),
            "disconnects": disconnects,
            "dropped_notices": run.dropped_notices.load(Ordering::Relaxed),
            "bad_frames": run.bad_frames.load(Ordering::Relaxed),
        }));
    }
    for r in regions {
        r.clients.close().await;
    }
    let cpu_sum = cpu.as_ref().map(|v| v.iter().sum::<f64>());
    let relay = mesh.relays.as_ref().map(|rs| {
        let (mut fwd, mut lost, mut over) = (0, 0, 0);
        let mut late = Hist::default();
        let mut each = Vec::new();
        for r in &rs.relays {
            let (f, l, o) = (
                r.stats.forwarded.load(Ordering::Relaxed),
                r.stats.lost.load(Ordering::Relaxed),
                r.stats.overflow.load(Ordering::Relaxed),
            );
            each.push(json!({
                "addr": r.addr.to_string(), "to": r.target.to_string(),
                "forwarded": f, "lost": l, "overflow": o,
            }));
            (fwd, lost, over) = (fwd + f, lost + l, over + o);
            late.merge(&r.stats.late.lock());
        }
        json!({
            "delay_ms": rs.wan.delay_ms,
            "jitter_ms": rs.wan.jitter_ms,
            "loss": rs.wan.loss,
            "forwarded": fwd,
            "lost": lost,
            "overflow": over,
            "late_p50_ms": late.quantile(0.5) as f64 / 1000.0,
            "late_p99_ms": late.quantile(0.99) as f64 / 1000.0,
            "late_max_ms": late.max() as f64 / 1000.0,
            "relays": each,
        })
    });
    let v = json!({
        "scenario": "cross-region",
        "mode": if c.datagram { "datagram" } else { "reliable" },
        "nodes": mesh.nodes.len(),
        "channel": channel,
        "subs_per_region": c.subs,
        "rate": c.rate,
        "size": c.size,
        "secs": wall,
        "mesh_link_secs": link_secs,
        "link_delay_ms": link_delay,
        "relay": relay,
        "sent": sent,
        "offered_deliveries_per_s": c.rate * regions_subs(&per) as f64,
        "deliveries_per_s": got_all as f64 / wall,
        "expected": expected_all,
        "delivered": got_all,
        "loss": if expected_all > 0 { 1.0 - got_all as f64 / expected_all as f64 } else { 0.0 },
        "latency": latency(&all),
        "server_cpu_pct": cpu_sum.map(|s| 100.0 * s / wall),
        "server_us_per_delivery": cpu_sum.map(|s| if got_all > 0 { s * 1e6 / got_all as f64 } else { 0.0 }),
        "generator_cpu_pct": generator,
        "disconnects": disconnects_all,
        "publisher_error": publisher_error,
        "regions": per,
    });
    if c.smoke {
        smoke_check(&v)?;
    }
    Ok(v)
}

fn regions_subs(per: &[Value]) -> u64 {
    per.iter().map(|r| r["subs"].as_u64().unwrap_or(0)).sum()
}

/// `--smoke`: every reliable delivery arrived in every region, nobody was disconnected.
fn smoke_check(v: &Value) -> anyhow::Result<()> {
    anyhow::ensure!(v["sent"].as_u64().unwrap_or(0) > 0, "nothing was published");
    let Some(per) = v["regions"].as_array() else {
        bail!("no regions in the result");
    };
    for r in per {
        let (got, want) = (
            r["delivered"].as_u64().unwrap_or(0),
            r["expected"].as_u64().unwrap_or(0),
        );
        if v["mode"] == "reliable" {
            anyhow::ensure!(
                got == want,
                "{}: {got} reliable deliveries, expected {want}",
                r["region"]
            );
        } else {
            anyhow::ensure!(got > 0, "{}: no datagram arrived", r["region"]);
        }
        anyhow::ensure!(
            r["disconnects"] == 0,
            "{}: subscribers were disconnected",
            r["region"]
        );
    }
    println!("cross-region smoke: {} regions passed", per.len());
    Ok(())
}

fn num(v: &Value, k: &str, digits: usize) -> String {
    match v.pointer(k).and_then(Value::as_f64) {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

/// The human table: one row per receiving region, then all of them.
pub fn print_table(v: &Value) {
    let relay = match v.get("relay") {
        Some(r) if !r.is_null() => format!(
            "WAN relay on every link: one-way {} ms ±{} ms, loss {}",
            num(r, "/delay_ms", 1),
            num(r, "/jitter_ms", 1),
            num(r, "/loss", 3)
        ),
        _ => "no WAN relay (loopback links)".into(),
    };
    println!(
        "\ncross-region: edgegate / {}, {} nodes, {}, {}",
        v["transport"].as_str().unwrap_or("?"),
        v["nodes"],
        v["mode"].as_str().unwrap_or("?"),
        relay
    );
    println!(
        "| region | subs | deliveries/s | loss | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | link ms | p50 − link | p99 − link | mesh RTT ms | node CPU % | disconnects |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in v["regions"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        println!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["region"].as_str().unwrap_or("?"),
            r["role"].as_str().unwrap_or(""),
            r["subs"],
            num(r, "/deliveries_per_s", 0),
            num(r, "/loss", 4),
            num(r, "/latency/p50_ms", 2),
            num(r, "/latency/p90_ms", 2),
            num(r, "/latency/p99_ms", 2),
            num(r, "/latency/p999_ms", 2),
            num(r, "/latency/max_ms", 2),
            num(r, "/link_delay_ms", 1),
            num(r, "/p50_minus_link_ms", 2),
            num(r, "/p99_minus_link_ms", 2),
            num(r, "/mesh_rtt_ms", 1),
            num(r, "/server_cpu_pct", 1),
            r["disconnects"],
        );
    }
    println!(
        "| all | {} | {} | {} | {} | {} | {} | {} | {} | | | | | {} | {} |",
        regions_subs(v["regions"].as_array().map(Vec::as_slice).unwrap_or(&[])),
        num(v, "/deliveries_per_s", 0),
        num(v, "/loss", 4),
        num(v, "/latency/p50_ms", 2),
        num(v, "/latency/p90_ms", 2),
        num(v, "/latency/p99_ms", 2),
        num(v, "/latency/p999_ms", 2),
        num(v, "/latency/max_ms", 2),
        num(v, "/server_cpu_pct", 1),
        v["disconnects"],
    );
    println!(
        "server CPU, all nodes: {}% of a core, {} µs per delivery; generator CPU {}%",
        num(v, "/server_cpu_pct", 1),
        num(v, "/server_us_per_delivery", 2),
        num(v, "/generator_cpu_pct", 1),
    );
    if let Some(r) = v.get("relay").filter(|r| !r.is_null()) {
        println!(
            "relay: {} datagrams forwarded, {} lost (emulated), {} overflowed; sent late (emulator error, on top of the delay) by p50 {} ms, p99 {} ms, max {} ms",
            r["forwarded"],
            r["lost"],
            r["overflow"],
            num(r, "/late_p50_ms", 2),
            num(r, "/late_p99_ms", 2),
            num(r, "/late_max_ms", 2),
        );
    }
    if let Some(e) = v["publisher_error"].as_str() {
        println!("publisher error: {e}");
    }
}

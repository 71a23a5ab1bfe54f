//! `edgegate-load`: the end-to-end load benchmark (issue 7).
//!
//! Starts the server under test (edgegate, or a Node peer from `benches/peers/`) as a child
//! pinned to one core, pins itself to the other, drives real WebSocket and WebTransport
//! clients on loopback, and prints a progress line, a table row and one JSON line per run.
//! See `benches/README.md` for the scenarios and the results.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench load -- broadcast --server edgegate --transport ws --subs 1000 --rate 50
//! cargo bench --bench load -- smoke      # a few seconds, asserts deliveries arrived
//! ```
//!
//! Every run is bounded: connects give up after a deadline, scenarios run for a fixed time
//! and a fixed number of steps, and the server child is killed when the tool exits.

mod clients;
mod cross;
mod mesh;
mod proto;
mod scenario;
mod stats;
mod target;
mod wanrelay;
mod ws;
mod wt;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use clients::Transport;
use target::Server;

#[derive(Parser)]
#[command(
    name = "edgegate-load",
    about = "End-to-end load benchmark for edgegate and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Server under test.
    #[arg(long, global = true, value_enum, default_value = "edgegate")]
    server: Server,
    /// Client transport (WebTransport is edgegate only).
    #[arg(long, global = true, value_enum, default_value = "ws")]
    transport: Transport,
    /// Core the server is pinned to (`taskset`); -1 for none.
    #[arg(long, global = true, default_value_t = 0, allow_hyphen_values = true)]
    server_core: i64,
    /// Core this generator is pinned to; -1 for none.
    #[arg(long, global = true, default_value_t = 1, allow_hyphen_values = true)]
    client_core: i64,
    /// Scheduling niceness for the server and the generator (e.g. -10 on a machine shared
    /// with other work, so both get their core; needs root). 0 leaves it alone.
    #[arg(long, global = true, default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
    /// The edgegate binary (default: target/release/edgegate).
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Command {
    /// N subscribers on one channel, a publisher at a fixed rate.
    Broadcast(scenario::Broadcast),
    /// Stepped publish rate until delivery falls behind.
    Saturation(scenario::Saturation),
    /// N idle connections: server RSS per connection.
    Idle {
        /// Connections (sessions).
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
    /// K rooms × P players sending datagrams at T Hz (the game workload).
    Rooms(scenario::Rooms),
    /// A few seconds against an in-process node, small N: asserts deliveries arrived.
    Smoke,
    /// Broadcast over a local multi-region mesh (one node per region, optional WAN relay).
    CrossRegion(cross::Cross),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.client_core >= 0
        && !matches!(cli.command, Command::Smoke)
        && let Err(e) = target::pin_self(cli.client_core as usize)
    {
        eprintln!(
            "edgegate-load: cannot pin to core {}: {e:#}",
            cli.client_core
        );
    }
    if cli.nice != 0
        && !matches!(cli.command, Command::Smoke)
        && let Err(e) = target::renice_self(cli.nice)
    {
        eprintln!("edgegate-load: cannot renice to {}: {e:#}", cli.nice);
    }
    // One thread: the generator owns one core, and every client task shares it.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgegate-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgegate-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Smoke = cli.command {
        return smoke().await;
    }
    let machine = target::machine();
    let core = (cli.server_core >= 0).then_some(cli.server_core as usize);
    if let Command::CrossRegion(c) = &cli.command {
        if cli.server != Server::Edgegate {
            anyhow::bail!("cross-region runs edgegate nodes only");
        }
        let placement = cross::Placement {
            core,
            nice: cli.nice,
            bin: cli.server_bin.clone(),
        };
        let mut v = cross::cross_region(cli.transport, c, placement).await?;
        annotate(&mut v, &cli, &machine);
        cross::print_table(&v);
        println!("{v}");
        return Ok(());
    }
    let target = target::spawn(cli.server, core, cli.nice, cli.server_bin.clone())?;
    // Let the server settle (JIT warm-up for Node, allocator arenas for Rust).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (name, mut v) = match &cli.command {
        Command::Broadcast(b) => (
            "broadcast",
            scenario::broadcast(&target, cli.transport, b).await?,
        ),
        Command::Saturation(s) => (
            "saturation",
            scenario::saturation(&target, cli.transport, s).await?,
        ),
        Command::Idle { conns } => (
            "idle",
            scenario::idle(&target, cli.transport, *conns).await?,
        ),
        Command::Rooms(r) => ("rooms", scenario::rooms(&target, cli.transport, r).await?),
        Command::Smoke | Command::CrossRegion(_) => unreachable!("handled above"),
    };
    annotate(&mut v, &cli, &machine);
    print_row(name, &v);
    println!("{v}");
    Ok(())
}

/// Adds what every result line names: server, transport, machine, pinning, niceness.
fn annotate(v: &mut Value, cli: &Cli, machine: &str) {
    if let Value::Object(m) = v {
        m.insert("server".into(), json!(cli.server.name()));
        m.insert("transport".into(), json!(cli.transport.name()));
        m.insert("machine".into(), json!(machine));
        m.insert("server_core".into(), json!(cli.server_core));
        m.insert("client_core".into(), json!(cli.client_core));
        m.insert("nice".into(), json!(cli.nice));
    }
}

fn f(v: &Value, k: &str) -> String {
    match v.pointer(k) {
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.abs() >= 1000.0 {
                format!("{x:.0}")
            } else if x.fract() == 0.0 {
                format!("{x}")
            } else {
                format!("{x:.3}")
            }
        }
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// A human table for one run.
fn print_row(name: &str, v: &Value) {
    let who = format!(
        "{} / {}",
        f(v, "/server").trim_matches('"'),
        f(v, "/transport").trim_matches('"')
    );
    let rows: Vec<(&str, String)> = match name {
        "broadcast" | "rooms" => vec![
            ("deliveries/s", f(v, "/deliveries_per_s")),
            ("offered/s", f(v, "/offered_deliveries_per_s")),
            ("loss", f(v, "/loss")),
            ("p50 ms", f(v, "/latency/p50_ms")),
            ("p90 ms", f(v, "/latency/p90_ms")),
            ("p99 ms", f(v, "/latency/p99_ms")),
            ("p99.9 ms", f(v, "/latency/p999_ms")),
            ("max ms", f(v, "/latency/max_ms")),
            ("server CPU %", f(v, "/server_cpu_pct")),
            ("server µs/delivery", f(v, "/server_us_per_delivery")),
            ("generator CPU %", f(v, "/generator_cpu_pct")),
            ("disconnects", f(v, "/disconnects")),
        ],
        "saturation" => vec![
            (
                "max sustained deliveries/s",
                f(v, "/max_sustained_deliveries_per_s"),
            ),
            ("peak deliveries/s", f(v, "/peak_deliveries_per_s")),
            ("disconnects", f(v, "/disconnects")),
        ],
        _ => vec![
            ("connections", f(v, "/conns")),
            ("bytes per connection", f(v, "/bytes_per_conn")),
            ("RSS before MiB", f(v, "/rss_before_mib")),
            ("RSS after MiB", f(v, "/rss_after_mib")),
            ("idle server CPU %", f(v, "/idle_server_cpu_pct")),
        ],
    };
    println!("\n{name}: {who}");
    println!("| figure | value |\n|---|---|");
    for (k, val) in rows {
        println!("| {k} | {val} |");
    }
}

/// The CI smoke run: an in-process node, WebSocket and WebTransport broadcasts and a small
/// rooms run, asserting that every reliable delivery arrived and datagrams flowed. Timing
/// is never asserted.
async fn smoke() -> anyhow::Result<()> {
    proto::self_check().map_err(anyhow::Error::msg)?;
    stats::self_check().map_err(anyhow::Error::msg)?;
    let target = target::in_process().await?;
    for transport in [Transport::Ws, Transport::Wt] {
        let b = scenario::Broadcast {
            subs: 20,
            rate: 200.0,
            size: 100,
            secs: 1.0,
            warmup: 0.5,
            datagram: false,
        };
        let v = scenario::broadcast(&target, transport, &b).await?;
        println!("smoke broadcast {}: {v}", transport.name());
        let (sent, got) = (
            v["sent"].as_u64().unwrap_or(0),
            v["delivered"].as_u64().unwrap_or(0),
        );
        anyhow::ensure!(sent > 0, "{}: nothing was published", transport.name());
        anyhow::ensure!(
            got == sent * 20,
            "{}: {got} reliable deliveries, expected {}",
            transport.name(),
            sent * 20
        );
        anyhow::ensure!(
            v["disconnects"] == 0,
            "{}: subscribers were disconnected",
            transport.name()
        );
        let r = scenario::Rooms {
            rooms: 2,
            players: 3,
            hz: 20.0,
            size: 100,
            secs: 1.0,
            warmup: 0.2,
        };
        let v = scenario::rooms(&target, transport, &r).await?;
        println!("smoke rooms {}: {v}", transport.name());
        anyhow::ensure!(
            v["delivered"].as_u64().unwrap_or(0) > 0,
            "{}: no datagram delivery arrived",
            transport.name()
        );
    }
    println!("smoke: 4 passed, 0 failed");
    Ok(())
}

//! The server under test: edgegate or a peer (`benches/peers/*.js`), started as a child
//! process pinned to one core with `taskset`, killed when dropped. Or an in-process edgegate
//! node (smoke runs, no pinning and no process figures).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ws::Dialect;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    /// edgegate (`target/release/edgegate serve`).
    Edgegate,
    /// `ws` 8.x on Node (`benches/peers/ws.js`).
    Ws,
    /// Socket.IO 4.8 on Node (`benches/peers/socketio.js`).
    Socketio,
    /// uWebSockets.js v20 on Node (`benches/peers/uws.js`), broadcasting with its own
    /// pub/sub.
    Uws,
}

impl Server {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Server::Edgegate => "edgegate",
            Server::Ws => "ws",
            Server::Socketio => "socket.io",
            Server::Uws => "uws",
        }
    }

    /// The WebSocket dialect it speaks.
    pub fn dialect(self) -> Dialect {
        match self {
            Server::Edgegate => Dialect::Edgegate,
            Server::Ws => Dialect::Plain,
            Server::Socketio => Dialect::SocketIo,
            Server::Uws => Dialect::Plain,
        }
    }

    /// The peer's script in `benches/peers/` and the npm package it loads (none for
    /// edgegate).
    fn peer(self) -> Option<(&'static str, &'static str)> {
        match self {
            Server::Edgegate => None,
            Server::Ws => Some(("ws.js", "ws")),
            Server::Socketio => Some(("socketio.js", "socket.io")),
            Server::Uws => Some(("uws.js", "uwebsockets")),
        }
    }
}

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A running server.
pub struct Target {
    /// Which one.
    pub server: Server,
    /// Where it listens (TCP, and UDP for edgegate).
    pub addr: SocketAddr,
    /// Its process id, for CPU and RSS (none when in-process).
    pub pid: Option<u32>,
    /// edgegate's certificate hash (WebTransport).
    pub cert_sha256: Option<String>,
    child: Option<Child>,
    /// Keeps an in-process node running.
    pub shutdown: Option<tokio_util::sync::CancellationToken>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(s) = &self.shutdown {
            s.cancel();
        }
        if let Some(c) = &mut self.child {
            // SIGTERM first so a server under a profiler (valgrind, perf) writes its output.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + STOP_GRACE;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Target {
    /// An edgegate process started and stopped by someone else (a node of
    /// [`crate::mesh::Mesh`]): clients reach it like any target; dropping this leaves the
    /// process alone.
    pub fn external(addr: SocketAddr, pid: u32, cert_sha256: Option<String>) -> Target {
        Target {
            server: Server::Edgegate,
            addr,
            pid: Some(pid),
            cert_sha256,
            child: None,
            shutdown: None,
        }
    }
}

/// Directory of the repository (benches, peers, target).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The edgegate binary: `bin`, or `target/release/edgegate`; an error naming the build
/// command if it is not there.
pub fn edgegate_bin(bin: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = bin.unwrap_or_else(|| {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_dir().join("target"));
        dir.join("release").join("edgegate")
    });
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Starts `server` pinned to `core`. `bin` overrides the edgegate binary.
pub fn spawn(
    server: Server,
    core: Option<usize>,
    nice: i32,
    bin: Option<PathBuf>,
) -> anyhow::Result<Target> {
    let (prog, args): (PathBuf, Vec<String>) = match server {
        Server::Edgegate => {
            let bin = edgegate_bin(bin)?;
            (
                bin,
                [
                    "serve",
                    "--dev",
                    "--listen",
                    "127.0.0.1:0",
                    // The publisher is one session sending thousands of messages a second;
                    // the default per-session rate (100/s) is for end users.
                    "--set",
                    "session.publish_rate=10000000",
                    "--set",
                    "session.publish_burst=10000000",
                    // Every generated session comes from one host, in a burst.
                    "--set",
                    "limits.max_connections_per_ip=1000000",
                    "--set",
                    "limits.new_connections_per_sec=1000000",
                ]
                .map(String::from)
                .to_vec(),
            )
        }
        Server::Ws | Server::Socketio | Server::Uws => {
            let (script, package) = server.peer().context("peer without a script")?;
            let peers = repo_dir().join("benches").join("peers");
            if !peers.join("node_modules").join(package).exists() {
                bail!("{package} not installed: run `npm ci --prefix benches/peers`");
            }
            (
                PathBuf::from("node"),
                vec![peers.join(script).display().to_string(), "0".into()],
            )
        }
    };
    // taskset [-c CORE] nice -n N PROG ARGS: each wrapper execs the next, so the pid is the
    // server's.
    let mut argv: Vec<String> = Vec::new();
    if let Some(c) = core {
        argv.extend(["taskset".into(), "-c".into(), c.to_string()]);
    }
    if nice != 0 {
        argv.extend(["nice".into(), "-n".into(), nice.to_string()]);
    }
    argv.push(prog.display().to_string());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let log = std::env::temp_dir().join(format!("edgegate-load-{}.log", server.name()));
    cmd.args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).context("server log file")?);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", prog.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(l))) => l,
        _ => {
            let _ = child.kill();
            bail!(
                "{} did not print its ready line (log: {})",
                server.name(),
                log.display()
            );
        }
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let addr: SocketAddr = match server {
        Server::Edgegate => field("http=http://")
            .context("http= in ready line")?
            .parse()?,
        _ => format!(
            "127.0.0.1:{}",
            field("port=").context("port= in ready line")?
        )
        .parse()?,
    };
    Ok(Target {
        server,
        addr,
        pid: Some(pid),
        cert_sha256: field("cert_sha256="),
        child: Some(child),
        shutdown: None,
    })
}

/// An in-process edgegate dev node on 127.0.0.1:0 (smoke runs).
pub async fn in_process() -> anyhow::Result<Target> {
    use edgegate::config::{Config, Sources};
    let config = Config::load(&Sources {
        file: None,
        env: Vec::new(),
        overrides: vec![
            ("listen".into(), "\"127.0.0.1:0\"".into()),
            ("session.publish_rate".into(), "100000".into()),
            ("session.publish_burst".into(), "100000".into()),
            ("limits.max_connections_per_ip".into(), "1000000".into()),
            ("limits.new_connections_per_sec".into(), "1000000".into()),
        ],
    })?;
    let gw = edgegate::gateway::Gateway::load(config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let t = Target {
        server: Server::Edgegate,
        addr: gw.local_addr(),
        pid: None,
        cert_sha256: Some(gw.cert_sha256()),
        child: None,
        shutdown: Some(shutdown.clone()),
    };
    tokio::spawn(gw.run(shutdown));
    Ok(t)
}

/// Pins this process (every thread) to `core`.
pub fn pin_self(core: usize) -> anyhow::Result<()> {
    let ok = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("taskset failed");
    }
    Ok(())
}

/// Sets this process's niceness (every thread).
pub fn renice_self(nice: i32) -> anyhow::Result<()> {
    let ok = Command::new("renice")
        .args([
            "-n",
            &nice.to_string(),
            "-p",
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("renice failed");
    }
    Ok(())
}

/// One line naming the machine: CPU model, cores, load average at the start.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(cores);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, load {load} at start")
}

//! Several edgegate nodes forming one relay mesh on this machine (the `cross-region`
//! scenario): cluster certificates from `edgegate certs cluster` in a temporary directory,
//! one child per region started like the single target (`serve --dev`, the same lifted
//! publish-rate and admission limits, pinned with `taskset`, `nice`), and optionally a WAN
//! relay ([`crate::wanrelay`]) in front of every node's mesh port.
//!
//! With relays, every node *advertises* its relay's address and the seeds name relays, so
//! whichever side dials, a link's packets cross exactly one relay: the one in front of the
//! node that was dialed. Every inter-region link then has the emulated one-way delay.
//!
//! Dropping a [`Mesh`] stops every node: SIGTERM to all, then SIGKILL for any still running
//! after a grace period (as `Target` does for one), and removes the certificates.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::target::Target;
use crate::wanrelay::{Relays, Wan};

/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on one `/api/mesh` request (connect, send, read).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest `/api/mesh` response read.
const MAX_RESPONSE: u64 = 1 << 20;

/// What to start.
pub struct Spec {
    /// One node per region, in order; the first is where the publisher connects.
    pub regions: Vec<String>,
    /// Core every node is pinned to (`None`: no pinning).
    pub core: Option<usize>,
    /// Niceness of every node (0: left alone).
    pub nice: i32,
    /// The edgegate binary (default: `target/release/edgegate`).
    pub bin: Option<PathBuf>,
    /// Emulated WAN on every mesh link (`None`: nodes dial each other directly).
    pub wan: Option<Wan>,
}

/// One running node.
pub struct Node {
    /// Its region.
    pub region: String,
    /// Its node id (`<region>-1`).
    pub id: String,
    /// Clients reach it through this (the process is owned by the [`Mesh`]).
    pub target: Target,
    /// Process id, for CPU.
    pub pid: u32,
    /// API key from the ready line.
    pub api_key: Option<String>,
    /// The node's own mesh address.
    pub mesh_addr: SocketAddr,
    /// The address the other nodes dial for it (its relay, or `mesh_addr`).
    pub dial_addr: SocketAddr,
    /// Its log (stderr).
    pub log: PathBuf,
}

/// The nodes, their relays and their certificates.
pub struct Mesh {
    /// In region order.
    pub nodes: Vec<Node>,
    /// The WAN relays, when emulating one.
    pub relays: Option<Relays>,
    children: Vec<Child>,
    certs: PathBuf,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // SIGTERM to every node at once, then one shared grace period, then SIGKILL.
        for c in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let mut running = 0;
            for c in &mut self.children {
                if !matches!(c.try_wait(), Ok(Some(_))) {
                    running += 1;
                }
            }
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in &mut self.children {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.certs);
    }
}

/// A UDP port free on 127.0.0.1 right now (a node binds it a moment later).
fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A TOML string (for `--set key=value`): JSON's quoting is TOML's basic string.
fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Mesh {
    /// Makes the certificates, starts the relays and the nodes, and returns once every node
    /// has printed its ready line (the links come up after: see [`Mesh::wait_linked`]).
    /// Whatever was started is stopped again if a later step fails.
    pub fn start(spec: &Spec) -> anyhow::Result<Mesh> {
        if spec.regions.len() < 2 {
            bail!("a mesh needs at least two regions");
        }
        let bin = crate::target::edgegate_bin(spec.bin.clone())?;
        let ids: Vec<String> = spec.regions.iter().map(|r| format!("{r}-1")).collect();
        let certs = std::env::temp_dir().join(format!("edgegate-load-mesh-{}", std::process::id()));
        let mut mesh = Mesh {
            nodes: Vec::new(),
            relays: None,
            children: Vec::new(),
            certs: certs.clone(),
        };
        let out = Command::new(&bin)
            .args(["certs", "cluster", "--out"])
            .arg(&certs)
            .args(["--nodes", &ids.join(",")])
            .stdin(Stdio::null())
            .output()
            .context("running edgegate certs cluster")?;
        if !out.status.success() {
            bail!(
                "edgegate certs cluster failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut mesh_addrs = Vec::new();
        for _ in &ids {
            mesh_addrs.push(SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)));
        }
        let dial: Vec<SocketAddr> = match spec.wan {
            Some(wan) => {
                let r = Relays::start(&mesh_addrs, wan)?;
                let d = r.relays.iter().map(|r| r.addr).collect();
                mesh.relays = Some(r);
                d
            }
            None => mesh_addrs.clone(),
        };
        for (i, (region, id)) in spec.regions.iter().zip(&ids).enumerate() {
            // Every node but the first seeds the first; the others are learned from it
            // (membership spreads) and dialed at their advertised address.
            let seeds = if i == 0 {
                "[]".to_string()
            } else {
                format!("[{}]", toml_str(&dial[0].to_string()))
            };
            let mut sets = vec![
                // As the single-node target: the publisher is one session sending thousands
                // of messages a second, and every generated session comes from one host.
                "session.publish_rate=10000000".to_string(),
                "session.publish_burst=10000000".into(),
                "limits.max_connections_per_ip=1000000".into(),
                "limits.new_connections_per_sec=1000000".into(),
                // Short drain on SIGTERM: the run is over when nodes are stopped.
                "shutdown.lame_duck_secs=1".into(),
                "shutdown.deadline_secs=5".into(),
                format!("cluster.listen={}", toml_str(&mesh_addrs[i].to_string())),
                format!("cluster.seeds={seeds}"),
                format!(
                    "cluster.ca={}",
                    toml_str(&certs.join("ca.pem").display().to_string())
                ),
                format!(
                    "cluster.cert={}",
                    toml_str(&certs.join(format!("{id}.pem")).display().to_string())
                ),
                format!(
                    "cluster.key={}",
                    toml_str(&certs.join(format!("{id}.key")).display().to_string())
                ),
            ];
            if spec.wan.is_some() {
                sets.push(format!(
                    "cluster.advertise={}",
                    toml_str(&dial[i].to_string())
                ));
            }
            let node =
                mesh.spawn_node(&bin, spec, (region, id), (mesh_addrs[i], dial[i]), &sets)?;
            mesh.nodes.push(node);
        }
        Ok(mesh)
    }

    /// Starts one node and reads its ready line; the child is owned by `self` from the
    /// moment it exists.
    fn spawn_node(
        &mut self,
        bin: &std::path::Path,
        spec: &Spec,
        (region, id): (&str, &str),
        (mesh_addr, dial_addr): (SocketAddr, SocketAddr),
        sets: &[String],
    ) -> anyhow::Result<Node> {
        // taskset [-c CORE] nice -n N PROG ARGS: each wrapper execs the next, so the pid is
        // the node's.
        let mut argv: Vec<String> = Vec::new();
        if let Some(c) = spec.core {
            argv.extend(["taskset".into(), "-c".into(), c.to_string()]);
        }
        if spec.nice != 0 {
            argv.extend(["nice".into(), "-n".into(), spec.nice.to_string()]);
        }
        argv.push(bin.display().to_string());
        argv.extend(
            [
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                id,
                "--region",
                region,
            ]
            .map(String::from),
        );
        for s in sets {
            argv.extend(["--set".into(), s.clone()]);
        }
        let log = std::env::temp_dir().join(format!("edgegate-load-mesh-{id}.log"));
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("node log file")?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        self.children.push(child);
        let stdout = stdout.context("node stdout")?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(l))) => l,
            _ => bail!(
                "node {id} did not print its ready line (log: {})",
                log.display()
            ),
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let addr: SocketAddr = field("http=http://")
            .with_context(|| format!("http= in {id}'s ready line"))?
            .parse()?;
        Ok(Node {
            region: region.to_string(),
            id: id.to_string(),
            target: Target::external(addr, pid, field("cert_sha256=")),
            pid,
            api_key: field("api_key=").filter(|k| k != "-"),
            mesh_addr,
            dial_addr,
            log,
        })
    }

    /// Polls every node's `/api/mesh` until each has a link up to every other node. Returns
    /// the last views; fails after `timeout` naming what each node saw.
    pub async fn wait_linked(&self, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            let mut missing = Vec::new();
            for n in &self.nodes {
                let v = self.view(n).await;
                let peers: Vec<String> = match &v {
                    Ok(v) => links(v)
                        .into_iter()
                        .filter(|l| l["state"] == "up")
                        .filter_map(|l| l["peer"].as_str().map(str::to_string))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let absent: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|o| o.id != n.id && !peers.contains(&o.id))
                    .map(|o| o.id.as_str())
                    .collect();
                if !absent.is_empty() {
                    let why = match &v {
                        Ok(_) => format!("no link to {}", absent.join(", ")),
                        Err(e) => format!("/api/mesh: {e:#}"),
                    };
                    missing.push(format!("{}: {why}", n.id));
                }
                views.push(v.unwrap_or(Value::Null));
            }
            if missing.is_empty() {
                return Ok(views);
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| n.log.display().to_string())
                    .collect();
                bail!(
                    "mesh not up after {:.0} s ({}); logs: {}",
                    timeout.as_secs_f64(),
                    missing.join("; "),
                    logs.join(" ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One node's `/api/mesh`.
    pub async fn view(&self, n: &Node) -> anyhow::Result<Value> {
        let body = get(n.target.addr, "/api/mesh", n.api_key.as_deref()).await?;
        serde_json::from_slice(&body).context("/api/mesh is not JSON")
    }
}

/// The `links` array of a `/api/mesh` view.
pub fn links(view: &Value) -> Vec<&Value> {
    view["links"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// A bounded HTTP/1.0 GET on plain HTTP (a dev node's TCP port): the body of a 200.
async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path} timed out"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    Ok(raw[split + 4..].to_vec())
}

//! Assembles a node from a [`Config`]: binds UDP and TCP on one port, builds the hub, the
//! verifier and the shared session state, and runs every part until shutdown.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use edgegate::{config::{Config, Sources}, gateway::Gateway};
//! let config = Config::load(&Sources::default())?; // a dev node
//! let gw = Gateway::load(config).await?;
//! println!("{}", gw.ready_line());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! gw.run(shutdown).await
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use wtransport::Endpoint;
use wtransport::endpoint::endpoint_side::Server;

use crate::api::{self, ApiState};
use crate::auth::Verifier;
use crate::config::Config;
use crate::hub::{Counters, Hub, Namespaces, Publish};
use crate::mesh::Mesh;
use crate::protocol::Mode;
use crate::session::{Node, Shared, now_ms};
use crate::tls;
use crate::transport::{tcp, websocket, webtransport};

/// A node, bound and ready to run.
pub struct Gateway {
    config: Config,
    mesh: Option<Mesh>,
    mesh_stop: CancellationToken,
    shared: Arc<Shared>,
    api: Arc<ApiState>,
    endpoint: Endpoint<Server>,
    tcp: tokio::net::TcpListener,
    certs: Arc<tls::Certs>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Loads certificates and keys, binds the sockets, builds the node.
    pub async fn load(config: Config) -> anyhow::Result<Gateway> {
        let certs = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => tls::Certs::from_files(cert, key).with_context(|| {
                format!("tls: loading {} and {}", cert.display(), key.display())
            })?,
            _ => tls::Certs::from_identity(&tls::dev_identity(&config.tls.dev_names)?)
                .context("tls: the dev certificate")?,
        };
        let cert_sha256 = certs.sha256();
        let verifier = Verifier::new(&config.auth).context("auth")?;
        let counters = Arc::new(Counters::default());
        let mesh_stop = CancellationToken::new();
        let (hub, mesh_seed) = if config.cluster.listen.is_some() {
            let (hooks, seed) = Mesh::hooks();
            let hub = Hub::with_observer(
                Namespaces::new(config.namespace.clone()),
                counters,
                Some(hooks),
            );
            (hub, Some(seed))
        } else {
            (
                Hub::new(Namespaces::new(config.namespace.clone()), counters),
                None,
            )
        };
        let node = Node {
            id: config.node.id.clone(),
            region: config.node.region.clone(),
        };
        let shared = Shared::with_limits(
            hub,
            verifier,
            config.session.clone(),
            node,
            config.limits.clone(),
        );
        let api_key = config.api.key.clone().or_else(|| {
            config
                .is_dev()
                .then(|| hex::encode(rand::random::<[u8; 16]>()))
        });
        if api_key.is_none() {
            warn!("no api.key configured: the HTTP API refuses every call");
        }
        let mesh = match mesh_seed {
            Some(seed) => {
                let m = Mesh::start(
                    seed,
                    &config.cluster,
                    &config.node.id,
                    &config.node.region,
                    shared.hub.clone(),
                    mesh_stop.clone(),
                )
                .context("cluster")?;
                m.attach(&shared);
                let _ = shared.relay.set(Arc::new(m.clone()));
                Some(m)
            }
            None => None,
        };
        let (udp, tcp) = bind_pair(config.listen)?;
        let local_addr = tcp.local_addr()?;
        let idle = Duration::from_secs(config.session.idle_timeout_secs);
        let endpoint = webtransport::endpoint(udp, &certs, idle)?;
        let api = Arc::new(ApiState {
            shared: shared.clone(),
            key: api_key,
            cert_sha256: RwLock::new(cert_sha256),
            ready: AtomicBool::new(true),
            open_reads: config.is_dev(),
            metrics: RwLock::new(Vec::new()),
            drain: CancellationToken::new(),
            mesh: RwLock::new(
                mesh.clone()
                    .map(|m| Arc::new(m) as Arc<dyn crate::api::MeshView>),
            ),
        });
        if let Some(m) = &mesh {
            api.metrics.write().push(Arc::new(m.clone()));
        }
        Ok(Gateway {
            config,
            mesh,
            mesh_stop,
            shared,
            api,
            endpoint,
            tcp: tokio::net::TcpListener::from_std(tcp)?,
            certs,
            local_addr,
        })
    }

    /// The relay mesh, when `[cluster]` is configured.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// The address bound (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shared session state (hub, registry).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The API key in force (generated on a dev node).
    pub fn api_key(&self) -> Option<&str> {
        self.api.key.as_deref()
    }

    /// Hex SHA-256 of the WebTransport certificate.
    pub fn cert_sha256(&self) -> String {
        self.api.cert_sha256.read().clone()
    }

    /// Whether the TCP port speaks TLS (HTTPS, WSS): when a certificate is configured.
    pub fn tls_on_tcp(&self) -> bool {
        self.config.tls.cert.is_some()
    }

    /// The certificates in force; [`tls::Certs::reload`] swaps them (as `SIGHUP` does).
    pub fn certs(&self) -> &Arc<tls::Certs> {
        &self.certs
    }

    /// The line `serve` prints when ready: URLs, certificate hash, API key.
    pub fn ready_line(&self) -> String {
        let host = match self.local_addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let port = self.local_addr.port();
        let (http, ws) = if self.tls_on_tcp() {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        format!(
            "ready http={http}://{host}:{port} wt=https://{host}:{port}/wt ws={ws}://{host}:{port}/ws cert_sha256={} api_key={}",
            self.cert_sha256(),
            self.api_key().unwrap_or("-"),
        )
    }

    /// Runs until `shutdown` fires, then drains: readiness goes false, every session gets
    /// `GoingAway`, and the node waits for them to leave up to `shutdown.deadline_secs`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Gateway {
            config,
            mesh: _mesh,
            mesh_stop,
            shared,
            api,
            endpoint,
            tcp,
            certs,
            local_addr,
        } = self;
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let endpoint = Arc::new(endpoint);
        tracker.spawn(webtransport::serve(
            endpoint.clone(),
            shared.clone(),
            stop.clone(),
            tracker.clone(),
        ));
        let app = api::router(api.clone()).merge(websocket::router(shared.clone()));
        let tls_tcp = config
            .tls
            .cert
            .is_some()
            .then(|| Arc::new(certs.tcp_server_config()));
        tracker.spawn(tcp::serve(
            tcp,
            app,
            tls_tcp,
            Duration::from_secs(config.session.handshake_timeout_secs),
            shared.hub.counters().clone(),
            stop.clone(),
            tracker.clone(),
        ));
        {
            let api = api.clone();
            tracker.spawn(tls::watch(
                certs,
                Duration::from_secs(config.tls.reload_poll_secs),
                move |r| {
                    let c = api.shared.hub.counters();
                    match r {
                        Ok(sha) => {
                            *api.cert_sha256.write() = sha.to_string();
                            c.cert_reloads
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => {
                            c.cert_reload_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                },
                stop.clone(),
            ));
        }
        tracker.spawn(sweep(shared.clone(), stop.clone()));
        if config.is_dev() {
            tracker.spawn(demo_ticker(shared.clone(), stop.clone()));
        }
        info!(
            addr = %local_addr,
            node = %config.node.id,
            region = %config.node.region,
            dev = config.is_dev(),
            "edgegate serving WebTransport (UDP) and WebSocket + HTTP (TCP)"
        );

        tokio::select! {
            _ = shutdown.cancelled() => info!("drain: shutdown requested"),
            _ = api.drain.cancelled() => info!("drain: requested over the API"),
        }
        // Drain: not ready, new sessions sent away, open ones told to go spread over the
        // lame-duck window, exit when empty or at the deadline.
        api.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        let hint = config
            .shutdown
            .reconnect_to
            .clone()
            .or_else(|| shared.relay.get().and_then(|r| r.reconnect_hint()));
        shared.start_draining(hint.clone());
        let deadline = Duration::from_secs(config.shutdown.deadline_secs);
        let lame_duck = Duration::from_secs(config.shutdown.lame_duck_secs);
        let drained = async {
            let told = shared
                .going_away_spread("node draining", hint, lame_duck)
                .await;
            info!(sessions = told, "drain: every session told to go away");
            shared.wait_empty().await;
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            warn!(
                left = shared.session_count(),
                "drain deadline reached with sessions open"
            );
        }
        stop.cancel();
        mesh_stop.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(2), tracker.wait())
            .await
            .is_err()
        {
            warn!("tasks still running at exit");
        }
        endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        info!("stopped");
        Ok(())
    }
}

/// Binds UDP and TCP on the same port. With port 0, retries until a port free for both is
/// found.
fn bind_pair(addr: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let attempts = if addr.port() == 0 { 32 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = webtransport::bind_udp(addr).with_context(|| format!("binding UDP {addr}"))?;
        let port = udp.local_addr()?.port();
        match bind_tcp(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "binding TCP {addr}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // A restarted node rebinds while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Expires history and forgets idle channels once a second.
async fn sweep(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.hub.sweep(now_ms()),
            _ = stop.cancelled() => return,
        }
    }
}

/// Symbols of the dev node's demo ticker, with starting prices.
const TICKER: &[(&str, f64)] = &[
    ("BTC-USD", 64_000.0),
    ("ETH-USD", 3_200.0),
    ("SOL-USD", 150.0),
    ("EUR-USD", 1.08),
];

/// Dev node only: publishes a random-walk price per symbol to `prices:ticker` every 250 ms
/// (`latest`, key = symbol), so the demo page has a server-side feed.
async fn demo_ticker(shared: Arc<Shared>, stop: CancellationToken) {
    let mut prices: Vec<f64> = TICKER.iter().map(|(_, p)| *p).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (i, (symbol, _)) in TICKER.iter().enumerate() {
            let step: f64 = rand::random::<f64>() - 0.5;
            prices[i] *= 1.0 + step * 0.002;
            let data = format!(
                "{{\"s\":\"{symbol}\",\"p\":{:.4},\"t\":{}}}",
                prices[i],
                now_ms()
            );
            let _ = shared.hub.publish(
                Publish {
                    channel: "prices:ticker",
                    mode: Mode::Latest,
                    key: Some(symbol),
                    publisher: None,
                    data: data.into(),
                },
                now_ms(),
            );
        }
    }
}

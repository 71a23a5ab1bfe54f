//! The mesh node: links, membership, interest, homes, forwarding and resynchronisation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wtransport::quinn;

use super::link::Link;
use crate::hub::{self, Applied, Entry, Hub, Observer};
use crate::protocol::{ErrorCode, Member, PeerEntry, PeerFrame, PeerInfo, Position, encode_peer};
use crate::session::{Shared, now_ms};

/// `[cluster]`: the relay mesh. Off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// UDP address for mesh links (QUIC), e.g. `[::]:4434`. Unset: no mesh.
    pub listen: Option<SocketAddr>,
    /// Address other nodes dial for this one (`host:port`). Default: `listen`, with
    /// `127.0.0.1` for an unspecified IP.
    pub advertise: Option<String>,
    /// Nodes to dial at start (`host:port`); the rest are learned through them.
    pub seeds: Vec<String>,
    /// Cluster CA certificate (PEM); peers must present a certificate it issued.
    pub ca: Option<PathBuf>,
    /// This node's cluster certificate (PEM), issued by `ca`.
    pub cert: Option<PathBuf>,
    /// Key of `cert`.
    pub key: Option<PathBuf>,
    /// URL clients use for this node; drained clients of other nodes of the region are sent
    /// here.
    pub client_url: Option<String>,
}

/// Events from the hub, handled off its locks by the mesh worker.
pub(super) enum Event {
    Interest(String, bool),
    Sequenced(Arc<str>, u64, Entry),
    Presence(String, Member, bool),
}

/// Events queued for the worker; past this, events are dropped and counted (a replica that
/// misses an entry finds the gap at the next one and syncs).
const EVENT_QUEUE: usize = 64 * 1024;

/// The hub's observer: forwards to the mesh without ever blocking the hub.
#[derive(Debug)]
pub struct Hooks {
    tx: mpsc::Sender<Event>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

impl Hooks {
    fn push(&self, e: Event) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Observer for Hooks {
    fn interest(&self, channel: &str, on: bool) {
        self.push(Event::Interest(channel.to_string(), on));
    }
    fn sequenced(&self, channel: &str, epoch: u64, entry: &Entry) {
        self.push(Event::Sequenced(channel.into(), epoch, entry.clone()));
    }
    fn presence(&self, channel: &str, member: &Member, join: bool) {
        self.push(Event::Presence(channel.to_string(), member.clone(), join));
    }
}

/// A running mesh node.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub(super) core: Arc<Core>,
}

#[derive(Debug)]
pub(super) struct Core {
    pub(super) me: PeerInfo,
    pub(super) hub: Hub,
    pub(super) endpoint: quinn::Endpoint,
    pub(super) links: Mutex<HashMap<String, Arc<Link>>>,
    pub(super) members: Mutex<HashMap<String, PeerInfo>>,
    /// Addresses being dialed now (no second dial to the same place).
    pub(super) dialing: Mutex<HashSet<String>>,
    /// Channels this node has sequenced in their current epoch.
    pub(super) homed: Mutex<HashSet<String>>,
    pub(super) pending: Mutex<HashMap<u64, (String, Answer)>>,
    pub(super) next_req: AtomicU64,
    pub(super) seeds: Vec<String>,
    /// Seed address → node id, once dialed (a linked seed is not dialed again).
    pub(super) seed_ids: Mutex<HashMap<String, String>>,
    /// Connections refused: bad certificate, bad Hello, garbage.
    pub(super) refused: AtomicU64,
    pub(super) stop: CancellationToken,
    pub(super) hooks: Arc<Hooks>,
    /// Subscribes waiting for this replica to reach a position: channel → (wanted, waiter).
    pub(super) waiting: Mutex<HashMap<String, Vec<Waiter>>>,
    /// The session state, for presence reads (set once the gateway is built).
    pub(super) shared: OnceLock<Weak<Shared>>,
}

/// A subscribe waiting for the replica to reach a position.
pub(super) type Waiter = (Position, oneshot::Sender<()>);

/// Where the home's answer to a forwarded publish goes.
type Answer = oneshot::Sender<Result<Position, hub::Error>>;

/// Where a channel's home is.
pub(super) enum Home {
    Local,
    Remote(Arc<Link>),
}

/// FNV-1a: a hash every node computes the same way, whatever its build.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Mesh {
    /// The observer to build the hub with (before the mesh itself exists).
    pub fn hooks() -> (Arc<dyn Observer>, MeshSeed) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let hooks = Arc::new(Hooks {
            tx,
            dropped: AtomicU64::new(0),
        });
        (hooks.clone(), MeshSeed { hooks, rx })
    }

    /// Binds the mesh endpoint and starts linking.
    pub fn start(
        seed: MeshSeed,
        config: &ClusterConfig,
        node_id: &str,
        region: &str,
        hub: Hub,
        stop: CancellationToken,
    ) -> anyhow::Result<Mesh> {
        let listen = config
            .listen
            .ok_or_else(|| anyhow::anyhow!("cluster.listen is not set"))?;
        let (ca, cert, key) = match (&config.ca, &config.cert, &config.key) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => anyhow::bail!(
                "cluster.ca, cluster.cert and cluster.key are required with cluster.listen"
            ),
        };
        let (server, client) = super::tls::quic_configs(ca, cert, key)?;
        let mut endpoint = quinn::Endpoint::server(server, listen)?;
        endpoint.set_default_client_config(client);
        let bound = endpoint.local_addr()?;
        let cluster_addr = config.advertise.clone().unwrap_or_else(|| {
            let ip = if bound.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                bound.ip()
            };
            SocketAddr::new(ip, bound.port()).to_string()
        });
        let me = PeerInfo {
            node_id: node_id.to_string(),
            region: region.to_string(),
            cluster_addr,
            client_url: config.client_url.clone(),
        };
        let core = Arc::new(Core {
            me,
            hub,
            endpoint,
            links: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            homed: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            seeds: config.seeds.clone(),
            seed_ids: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            stop,
            hooks: seed.hooks,
            shared: OnceLock::new(),
            waiting: Mutex::new(HashMap::new()),
        });
        tokio::spawn(super::net::accept_loop(core.clone()));
        tokio::spawn(super::net::dial_loop(core.clone()));
        tokio::spawn(super::net::worker(core.clone(), seed.rx));
        info!(node = %core.me.node_id, region = %core.me.region, %listen, "mesh listening");
        Ok(Mesh { core })
    }

    /// The local address of the mesh endpoint.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.core.endpoint.local_addr()
    }

    /// Connects the session state (for presence and drain hints).
    pub fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.core.shared.set(Arc::downgrade(shared));
    }

    /// Live links.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.core.links.lock().values().cloned().collect()
    }

    /// Node ids known (members), this one included.
    pub fn members(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self.core.members.lock().values().cloned().collect();
        v.push(self.core.me.clone());
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// The node id of a channel's home as this node sees it.
    pub fn home_of(&self, channel: &str) -> String {
        match self.core.home(channel) {
            Home::Local => self.core.me.node_id.clone(),
            Home::Remote(l) => l.peer.node_id.clone(),
        }
    }

    /// Connections refused (certificate, Hello or framing).
    pub fn refused(&self) -> u64 {
        self.core.refused.load(Ordering::Relaxed)
    }

    /// Hub events dropped because the worker queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.core.hooks.dropped.load(Ordering::Relaxed)
    }

    /// The `/api/mesh` view.
    pub fn view(&self) -> serde_json::Value {
        let links: Vec<serde_json::Value> = self
            .links()
            .iter()
            .map(|l| {
                l.sample_rtt();
                let s = &l.stats;
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                serde_json::json!({
                    "peer": l.peer.node_id,
                    "region": l.peer.region,
                    "state": "up",
                    "rtt_ms": g(&s.rtt_us) as f64 / 1000.0,
                    "bytes_in": g(&s.bytes_in), "bytes_out": g(&s.bytes_out),
                    "msgs_in": g(&s.msgs_in), "msgs_out": g(&s.msgs_out),
                    "replayed": g(&s.replayed),
                    "interest": l.interest.lock().len(),
                })
            })
            .collect();
        let linked = self.links();
        let nodes: Vec<serde_json::Value> = self
            .members()
            .iter()
            .map(|m| {
                let mut v = serde_json::json!({ "id": m.node_id, "region": m.region, "client_url": m.client_url });
                if let Some(l) = linked.iter().find(|l| l.peer.node_id == m.node_id) {
                    v["sessions"] = l.stats.peer_sessions.load(Ordering::Relaxed).into();
                    v["deliveries"] = l.stats.peer_deliveries.load(Ordering::Relaxed).into();
                }
                v
            })
            .collect();
        serde_json::json!({
            "node": { "id": self.core.me.node_id, "region": self.core.me.region },
            "nodes": nodes,
            "links": links,
            "dropped_events": self.dropped_events(),
            "refused": self.refused(),
        })
    }
}

/// The parts made before the hub: its observer and the worker's queue.
#[derive(Debug)]
pub struct MeshSeed {
    hooks: Arc<Hooks>,
    rx: mpsc::Receiver<Event>,
}

impl Core {
    /// Rendezvous hashing over live nodes, within the pinned region if any node is there.
    pub(super) fn home(&self, channel: &str) -> Home {
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        let pinned = channel
            .rsplit_once('@')
            .map(|(_, r)| r.to_string())
            .or_else(|| {
                self.hub
                    .policy(channel)
                    .ok()
                    .and_then(|p| p.home_region.clone())
            });
        let in_region = |region: &str| pinned.as_deref().is_none_or(|p| p == region);
        let any_in_region = pinned.is_none()
            || in_region(&self.me.region)
            || links.iter().any(|l| in_region(&l.peer.region));
        let score = |id: &str| fnv(&[id.as_bytes(), channel.as_bytes()]);
        let mut best: Option<(u64, Option<Arc<Link>>)> = None;
        if !any_in_region || in_region(&self.me.region) {
            best = Some((score(&self.me.node_id), None));
        }
        for l in links {
            if any_in_region && !in_region(&l.peer.region) {
                continue;
            }
            let s = score(&l.peer.node_id);
            if best.as_ref().is_none_or(|(b, _)| s > *b) {
                best = Some((s, Some(l)));
            }
        }
        match best {
            Some((_, Some(l))) => Home::Remote(l),
            _ => Home::Local,
        }
    }

    /// This node is about to sequence `channel`: if it held a replica of another home's
    /// epoch, it starts a new one (it cannot know what the old home sequenced last).
    pub(super) fn take_home(&self, channel: &str) {
        if self.homed.lock().insert(channel.to_string())
            && self.hub.position(channel).is_some_and(|p| p.offset > 0)
        {
            match self.hub.new_epoch(channel) {
                Ok(p) => info!(
                    channel,
                    epoch = p.epoch,
                    "became the channel's home: new epoch"
                ),
                Err(e) => warn!(channel, error = %e.reason, "new epoch failed"),
            }
        }
    }

    fn broadcast(&self, frame: &PeerFrame) {
        let encoded = encode_peer(frame);
        for l in self.links.lock().values() {
            l.send_encoded(&encoded);
        }
    }

    fn members_frame(&self) -> PeerFrame {
        let mut nodes: Vec<PeerInfo> = self.members.lock().values().cloned().collect();
        nodes.push(self.me.clone());
        PeerFrame::Members { nodes }
    }

    /// Asks `channel`'s home for what follows this replica's position.
    pub(super) fn sync(&self, channel: &str) {
        if let Home::Remote(l) = self.home(channel) {
            let from = self.hub.position(channel).unwrap_or(Position {
                epoch: 0,
                offset: 0,
            });
            l.send(&PeerFrame::Sync {
                channel: channel.to_string(),
                from,
            });
        }
    }

    /// Registers a link (keeping one per pair) and says hello with state.
    pub(super) fn up(self: &Arc<Self>, link: Arc<Link>) -> bool {
        let id = link.peer.node_id.clone();
        {
            let mut links = self.links.lock();
            if let Some(old) = links.get(&id) {
                let keep_old = old.dialer == self.me.node_id.clone().min(id.clone());
                if keep_old {
                    debug!(peer = %id, "duplicate link: keeping the older one");
                    link.close("duplicate");
                    return false;
                }
                old.close("replaced");
            }
            links.insert(id.clone(), link.clone());
        }
        self.members.lock().insert(id.clone(), link.peer.clone());
        info!(peer = %id, region = %link.peer.region, "mesh link up");
        // Membership spreads: everyone linked hears of the newcomer (and it of everyone).
        self.broadcast(&self.members_frame());
        link.send(&PeerFrame::InterestSet {
            channels: self.hub.interested(),
        });
        // Catch up on everything we replicate from it.
        for ch in self.hub.interested() {
            if matches!(self.home(&ch), Home::Remote(ref l) if l.peer.node_id == id) {
                self.sync(&ch);
            }
        }
        // Homes may have moved: channels we sequenced are no longer ours if it wins them.
        self.homed
            .lock()
            .retain(|ch| matches!(self.home(ch), Home::Local));
        true
    }

    pub(super) fn down(&self, link: &Arc<Link>) {
        let id = &link.peer.node_id;
        let removed = {
            let mut links = self.links.lock();
            match links.get(id) {
                Some(l) if Arc::ptr_eq(l, link) => links.remove(id).is_some(),
                _ => false,
            }
        };
        if !removed {
            return;
        }
        warn!(peer = %id, "mesh link down");
        self.hub.drop_remote_presence(id);
        let failed: Vec<_> = {
            let mut p = self.pending.lock();
            let ids: Vec<u64> = p
                .iter()
                .filter(|(_, (n, _))| n == id)
                .map(|(k, _)| *k)
                .collect();
            ids.into_iter().filter_map(|k| p.remove(&k)).collect()
        };
        for (_, tx) in failed {
            let _ = tx.send(Err(hub::Error::new(
                ErrorCode::Unavailable,
                "the channel's home became unreachable; publish again",
            )));
        }
    }

    /// Handles one frame from `link`.
    pub(super) fn handle(self: &Arc<Self>, link: &Arc<Link>, frame: PeerFrame) {
        match frame {
            PeerFrame::Hello { .. } => {}
            PeerFrame::Ping { nonce } => {
                link.send(&PeerFrame::Pong { nonce });
            }
            PeerFrame::Pong { .. } => {}
            PeerFrame::Stats {
                sessions,
                deliveries,
            } => {
                link.stats.peer_sessions.store(sessions, Ordering::Relaxed);
                link.stats
                    .peer_deliveries
                    .store(deliveries, Ordering::Relaxed);
            }
            PeerFrame::Members { nodes } => {
                let mut m = self.members.lock();
                for n in nodes {
                    if n.node_id != self.me.node_id {
                        m.insert(n.node_id.clone(), n);
                    }
                }
            }
            PeerFrame::InterestSet { channels } => {
                let set: HashSet<String> = channels.into_iter().collect();
                for ch in &set {
                    self.send_presence(link, ch);
                }
                *link.interest.lock() = set;
            }
            PeerFrame::Interest { channel, on } => {
                if on {
                    self.send_presence(link, &channel);
                    link.interest.lock().insert(channel);
                } else {
                    link.interest.lock().remove(&channel);
                }
            }
            PeerFrame::Publish {
                req,
                channel,
                mode,
                key,
                publisher,
                data,
                trace,
            } => {
                let span =
                    tracing::info_span!("relay.sequence", %channel, from = %link.peer.node_id);
                if let Some(t) = &trace {
                    crate::telemetry::otel::with_remote_parent(&span, t);
                }
                let _e = span.enter();
                self.take_home(&channel);
                let result = self
                    .hub
                    .publish(
                        hub::Publish {
                            channel: &channel,
                            mode,
                            key: key.as_deref(),
                            publisher: publisher.as_deref(),
                            data,
                        },
                        now_ms(),
                    )
                    .map_err(|e| (e.code.code(), e.reason));
                link.send(&PeerFrame::Published { req, result });
            }
            PeerFrame::Published { req, result } => {
                if let Some((_, tx)) = self.pending.lock().remove(&req) {
                    let _ = tx.send(result.map_err(|(c, r)| {
                        hub::Error::new(ErrorCode::from_code(c).unwrap_or(ErrorCode::Internal), r)
                    }));
                }
            }
            PeerFrame::Entry {
                channel,
                epoch,
                entry,
                trace,
            } => {
                let span =
                    tracing::debug_span!("relay.deliver", %channel, from = %link.peer.node_id);
                if let Some(t) = &trace {
                    crate::telemetry::otel::with_remote_parent(&span, t);
                }
                let _e = span.enter();
                self.homed.lock().remove(&channel);
                let applied = self.hub.apply_remote(&channel, epoch, entry, now_ms());
                self.wake_waiting(&channel);
                match applied {
                    Ok(Applied::Gap { have }) => {
                        debug!(%channel, ?have, "gap: asking the home");
                        link.send(&PeerFrame::Sync {
                            channel,
                            from: have,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => debug!(%channel, error = %e.reason, "entry refused"),
                }
            }
            PeerFrame::Sync { channel, from } => self.answer_sync(link, &channel, from),
            PeerFrame::Reset { channel, position } => {
                if let Err(e) = self.hub.reset_remote(&channel, position) {
                    debug!(%channel, error = %e.reason, "reset refused");
                }
                self.wake_waiting(&channel);
            }
            PeerFrame::Datagram {
                channel,
                key,
                publisher,
                data,
            } => {
                let _ = self.hub.deliver_remote_datagram(
                    &channel,
                    key.as_deref(),
                    publisher.as_deref(),
                    data,
                    now_ms(),
                );
            }
            PeerFrame::Presence {
                channel,
                member,
                join,
            } => self
                .hub
                .remote_presence(&link.peer.node_id, &channel, member, join),
        }
    }

    /// Tells every peer this node's load (the mesh page shows it).
    pub(super) fn send_stats(&self) {
        let c = self.hub.counters();
        let sessions = (c.sessions_wt.load(Ordering::Relaxed)
            + c.sessions_ws.load(Ordering::Relaxed))
        .max(0) as u64;
        self.broadcast(&PeerFrame::Stats {
            sessions,
            deliveries: c.deliveries.load(Ordering::Relaxed),
        });
    }

    /// Resolves waiting subscribes the replica can now serve, or never will (another epoch).
    fn wake_waiting(&self, channel: &str) {
        let mut w = self.waiting.lock();
        let Some(list) = w.get_mut(channel) else {
            return;
        };
        let Some(pos) = self.hub.position(channel) else {
            return;
        };
        let (done, keep): (Vec<_>, Vec<_>) =
            std::mem::take(list).into_iter().partition(|(want, tx)| {
                tx.is_closed() || pos.epoch != want.epoch || pos.offset >= want.offset
            });
        for (_, tx) in done {
            let _ = tx.send(());
        }
        if keep.is_empty() {
            w.remove(channel);
        } else {
            *list = keep;
        }
    }

    /// Sends what follows `from` on `channel`, or a reset and the history there is.
    fn answer_sync(&self, link: &Link, channel: &str, from: Position) {
        let since = (from.epoch != 0).then_some(from);
        let Ok((pos, complete, msgs)) = self.hub.history(channel, since, usize::MAX) else {
            return;
        };
        if pos.epoch == 0 {
            return; // no state here
        }
        if since.is_none() || !complete {
            let start = msgs.first().map(|m| m.offset - 1).unwrap_or(pos.offset);
            link.send(&PeerFrame::Reset {
                channel: channel.to_string(),
                position: Position {
                    epoch: pos.epoch,
                    offset: start,
                },
            });
        }
        let n = msgs.len() as u64;
        for m in msgs {
            link.send(&PeerFrame::Entry {
                channel: channel.to_string(),
                epoch: pos.epoch,
                entry: PeerEntry {
                    offset: m.offset,
                    time_ms: m.time_ms,
                    mode: m.mode,
                    key: m.key,
                    publisher: m.publisher,
                    data: m.data,
                },
                trace: None,
            });
        }
        link.stats.replayed.fetch_add(n, Ordering::Relaxed);
    }

    /// Tells `link` about the local presence members of `channel`.
    fn send_presence(&self, link: &Link, channel: &str) {
        for member in self.hub.local_presence(channel) {
            link.send(&PeerFrame::Presence {
                channel: channel.to_string(),
                member,
                join: true,
            });
        }
    }

    pub(super) fn on_event(&self, e: Event) {
        match e {
            Event::Interest(channel, on) => {
                self.broadcast(&PeerFrame::Interest {
                    channel: channel.clone(),
                    on,
                });
                if on {
                    self.sync(&channel);
                }
            }
            Event::Sequenced(channel, epoch, entry) => {
                let frame = encode_peer(&PeerFrame::Entry {
                    channel: channel.to_string(),
                    epoch,
                    entry: PeerEntry {
                        offset: entry.offset,
                        time_ms: entry.time_ms,
                        mode: entry.mode,
                        key: entry.key.as_deref().map(str::to_string),
                        publisher: entry.publisher.as_deref().map(str::to_string),
                        data: entry.data.clone(),
                    },
                    trace: None,
                });
                // Only the home forwards: a replica applying entries does not sequence.
                for l in self.links.lock().values() {
                    if l.wants(&channel) {
                        l.send_encoded(&frame);
                    }
                }
            }
            Event::Presence(channel, member, join) => {
                let frame = encode_peer(&PeerFrame::Presence {
                    channel: channel.clone(),
                    member,
                    join,
                });
                for l in self.links.lock().values() {
                    if l.wants(&channel) {
                        l.send_encoded(&frame);
                    }
                }
            }
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"stopped");
    }
}

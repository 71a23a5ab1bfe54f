//! The mesh's network loops: accepting and dialing links, reading frames, and the worker
//! that turns hub events into peer frames.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};

use super::link::{self, Incoming, Link};
use super::node::{Core, Event};

pub(super) async fn worker(core: Arc<Core>, mut rx: mpsc::Receiver<Event>) {
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => core.on_event(e),
                None => return,
            },
            _ = stats.tick() => core.send_stats(),
            _ = core.stop.cancelled() => return,
        }
    }
}

async fn run_link(core: Arc<Core>, link: Arc<Link>, mut incoming: Incoming) {
    if !core.up(link.clone()) {
        return;
    }
    let span = tracing::info_span!("relay.link", peer = %link.peer.node_id);
    async {
        loop {
            tokio::select! {
                f = incoming.next(&link.stats) => match f {
                    Ok(Some(frame)) => {
                        // Every frame this read brought in one inline-write scope (see
                        // `hub::outbox`): a burst of entries is one write per subscriber.
                        let _scope = crate::hub::outbox::InlineFlush::begin();
                        core.handle(&link, frame);
                        let mut bad = None;
                        while let Some(next) = incoming.try_next(&link.stats) {
                            match next {
                                Ok(frame) => core.handle(&link, frame),
                                Err(e) => {
                                    bad = Some(e);
                                    break;
                                }
                            }
                        }
                        if let Some(e) = bad {
                            core.refused.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = %link.peer.node_id, error = %e, "peer sent a bad frame: closing the link");
                            link.close("bad frame");
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        core.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %link.peer.node_id, error = %e, "peer sent a bad frame: closing the link");
                        link.close("bad frame");
                        break;
                    }
                },
                _ = core.stop.cancelled() => {
                    link.close("shutdown");
                    break;
                }
            }
        }
    }
    .instrument(span)
    .await;
    core.down(&link);
}

pub(super) async fn accept_loop(core: Arc<Core>) {
    loop {
        let incoming = tokio::select! {
            i = core.endpoint.accept() => match i { Some(i) => i, None => return },
            _ = core.stop.cancelled() => return,
        };
        let core = core.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match tokio::time::timeout(link::HELLO_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    core.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, error = %e, "mesh connection refused (TLS: not a cluster certificate?)");
                    return;
                }
                Err(_) => {
                    core.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            match link::establish(conn, &core.me, false).await {
                Ok((l, inc)) => run_link(core, l, inc).await,
                Err(e) => {
                    core.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, error = %e, "mesh peer refused");
                }
            }
        });
    }
}

/// Keeps a link to every seed and member: redials with capped exponential backoff + jitter.
pub(super) async fn dial_loop(core: Arc<Core>) {
    let mut backoff: HashMap<String, (Duration, tokio::time::Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = core.stop.cancelled() => return,
        }
        let linked: HashSet<String> = core.links.lock().keys().cloned().collect();
        let mut targets: Vec<String> = {
            let ids = core.seed_ids.lock();
            core.seeds
                .iter()
                .filter(|a| ids.get(*a).is_none_or(|id| !linked.contains(id)))
                .cloned()
                .collect()
        };
        for m in core.members.lock().values() {
            // Of two members, the smaller id dials (the other side would only make a
            // duplicate); seeds are always dialed, their ids unknown.
            if !linked.contains(&m.node_id) && core.me.node_id < m.node_id {
                targets.push(m.cluster_addr.clone());
            }
        }
        let linked_addrs: HashSet<String> = core
            .links
            .lock()
            .values()
            .map(|l| l.peer.cluster_addr.clone())
            .collect();
        let now = tokio::time::Instant::now();
        for addr in targets {
            if addr == core.me.cluster_addr || linked_addrs.contains(&addr) {
                backoff.remove(&addr);
                continue;
            }
            if backoff.get(&addr).is_some_and(|(_, at)| *at > now) {
                continue;
            }
            if !core.dialing.lock().insert(addr.clone()) {
                continue;
            }
            let (delay, _) = backoff
                .get(&addr)
                .copied()
                .unwrap_or((Duration::from_millis(50), now));
            let next = (delay * 2).min(Duration::from_secs(5));
            let jittered = next.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            backoff.insert(addr.clone(), (next, now + jittered));
            tokio::spawn(dial(core.clone(), addr));
        }
    }
}

async fn dial(core: Arc<Core>, addr: String) {
    let result = async {
        let sock: SocketAddr = tokio::net::lookup_host(&addr)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{addr}: no address"))?;
        let conn = core
            .endpoint
            .connect(sock, super::tls::CLUSTER_SNI)?
            .await?;
        link::establish(conn, &core.me, true).await
    }
    .await;
    core.dialing.lock().remove(&addr);
    match result {
        Ok((l, inc)) => {
            if core.seeds.contains(&addr) {
                core.seed_ids
                    .lock()
                    .insert(addr.clone(), l.peer.node_id.clone());
            }
            run_link(core, l, inc).await
        }
        Err(e) => debug!(%addr, error = %e, "mesh dial failed"),
    }
}

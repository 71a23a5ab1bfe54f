//! The mesh as sessions and the HTTP API use it: forwarding publishes to channel homes,
//! datagrams to interested nodes, recovery waits, drain hints, and the `/api/mesh` view.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::node::{Home, Mesh};
use crate::hub;
use crate::protocol::{ErrorCode, PeerFrame, Position, encode_peer};
use crate::session::Relay;

impl crate::api::MeshView for Mesh {
    fn json(&self) -> serde_json::Value {
        self.view()
    }
}

impl Relay for Mesh {
    fn forward(
        &self,
        p: &hub::Publish<'_>,
    ) -> Option<oneshot::Receiver<Result<Position, hub::Error>>> {
        let core = &self.core;
        match core.home(p.channel) {
            Home::Local => {
                core.take_home(p.channel);
                None
            }
            Home::Remote(link) => {
                core.homed.lock().remove(p.channel);
                let req = core.next_req.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                core.pending
                    .lock()
                    .insert(req, (link.peer.node_id.clone(), tx));
                let sent = link.send(&PeerFrame::Publish {
                    req,
                    channel: p.channel.to_string(),
                    mode: p.mode,
                    key: p.key.map(str::to_string),
                    publisher: p.publisher.map(str::to_string),
                    data: p.data.clone(),
                    trace: crate::telemetry::otel::traceparent(),
                });
                if !sent && let Some((_, tx)) = core.pending.lock().remove(&req) {
                    let _ = tx.send(Err(hub::Error::new(
                        ErrorCode::Unavailable,
                        "the channel's home is unreachable; publish again",
                    )));
                }
                Some(rx)
            }
        }
    }

    fn datagram(&self, p: &hub::Publish<'_>) {
        let frame = encode_peer(&PeerFrame::Datagram {
            channel: p.channel.to_string(),
            key: p.key.map(str::to_string),
            publisher: p.publisher.map(str::to_string),
            data: p.data.clone(),
        });
        for l in self.core.links.lock().values() {
            if l.wants(p.channel) {
                l.send_encoded(&frame);
            }
        }
    }

    fn prepare(&self, channel: &str, want: Position) -> Option<oneshot::Receiver<()>> {
        let core = &self.core;
        if !matches!(core.home(channel), Home::Remote(_)) {
            return None;
        }
        if core
            .hub
            .position(channel)
            .is_some_and(|p| p.epoch == want.epoch && p.offset >= want.offset)
        {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let mut w = core.waiting.lock();
        let list = w.entry(channel.to_string()).or_default();
        // Waiters whose subscribe gave up (timed out) are dropped here.
        list.retain(|(_, t)| !t.is_closed());
        list.push((want, tx));
        drop(w);
        core.sync(channel);
        Some(rx)
    }

    fn reconnect_hint(&self) -> Option<String> {
        let me = &self.core.me;
        self.core
            .links
            .lock()
            .values()
            .filter(|l| l.peer.region == me.region)
            .find_map(|l| l.peer.client_url.clone())
    }
}

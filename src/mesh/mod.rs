//! The relay mesh: nodes in many regions acting as one gateway.
//!
//! - **Links**: QUIC with mutual TLS against the cluster CA ([`tls`]), one per pair of nodes
//!   (when both dial at once, the link dialed by the smaller node id stays). Seeds are dialed
//!   at start; membership spreads with `Members` frames; lost links are redialed with capped
//!   exponential backoff and jitter.
//! - **Interest**: a node tells every peer when a channel gets its first local subscriber and
//!   when the last leaves (`Interest`), and sends its whole set when a link comes up.
//!   Traffic for a channel goes only to interested peers, one copy per peer.
//! - **Homes**: each channel has a home, chosen by rendezvous hashing over the live nodes
//!   (restricted to a region by a `@region` suffix or the namespace's `home_region`).
//!   Reliable and latest publishes go to the home, which sequences them and sends each entry
//!   to the interested peers; every node keeps a replica of recent history and the snapshot,
//!   so subscribing and recovering stay local. `datagram` publishes go from their origin
//!   straight to interested peers.
//! - **Gaps**: a replica that sees an entry beyond the next offset, or a link that comes
//!   back, asks the home with `Sync`; the home answers with the missing entries, or `Reset`
//!   (new epoch, clients told to resync) when its history cannot cover the hole.
//! - **Home changes**: a node that becomes a channel's home (the old one died, or
//!   membership moved it) starts a new epoch; subscribers are told to resync.

mod link;
mod net;
mod node;
mod relay;
pub mod tls;

pub use link::{Link, LinkStats};
pub use node::{ClusterConfig, Mesh};

impl crate::telemetry::metrics::MetricsSource for Mesh {
    fn render(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;

        use crate::telemetry::metrics::family;
        let links = self.links();
        family(out, "edgegate_relay_links", "gauge", "Mesh links by state.")
            .labeled(&[("state", "up")], links.len());
        let mut rtt = family(
            out,
            "edgegate_relay_rtt_seconds",
            "gauge",
            "Smoothed RTT of each mesh link.",
        );
        for l in &links {
            l.sample_rtt();
            rtt.labeled(
                &[("peer", &l.peer.node_id)],
                l.stats.rtt_us.load(Relaxed) as f64 / 1e6,
            );
        }
        let mut bytes = family(
            out,
            "edgegate_relay_bytes_total",
            "counter",
            "Bytes on mesh links.",
        );
        for l in &links {
            bytes.labeled(
                &[("peer", &l.peer.node_id), ("direction", "in")],
                l.stats.bytes_in.load(Relaxed),
            );
            bytes.labeled(
                &[("peer", &l.peer.node_id), ("direction", "out")],
                l.stats.bytes_out.load(Relaxed),
            );
        }
        let mut msgs = family(
            out,
            "edgegate_relay_messages_total",
            "counter",
            "Frames on mesh links.",
        );
        for l in &links {
            msgs.labeled(
                &[("peer", &l.peer.node_id), ("direction", "in")],
                l.stats.msgs_in.load(Relaxed),
            );
            msgs.labeled(
                &[("peer", &l.peer.node_id), ("direction", "out")],
                l.stats.msgs_out.load(Relaxed),
            );
        }
        let mut rep = family(
            out,
            "edgegate_relay_replayed_total",
            "counter",
            "Entries sent again to fill a peer's gap.",
        );
        for l in &links {
            rep.labeled(&[("peer", &l.peer.node_id)], l.stats.replayed.load(Relaxed));
        }
        family(
            out,
            "edgegate_relay_dropped_events_total",
            "counter",
            "Hub events the mesh worker could not queue.",
        )
        .value(self.dropped_events());
    }
}

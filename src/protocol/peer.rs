//! Frames between nodes of the relay mesh. Same encoding as client frames (bincode 2
//! `standard()`, 4-byte LE length prefix on the link's stream), versioned separately.
//!
//! A link is one QUIC connection with mutual TLS against the cluster CA, carrying one
//! bidirectional stream opened by the dialer. Both sides send `Hello` first, then any frame.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Member, Mode, Position};

/// Version of the inter-node protocol.
pub const PEER_PROTOCOL_VERSION: u16 = 2;

/// A node as membership spreads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Node id (unique in the cluster).
    pub node_id: String,
    /// Region.
    pub region: String,
    /// Address other nodes dial for the mesh (`host:port`).
    pub cluster_addr: String,
    /// URL clients use for this node (drain hints), if configured.
    pub client_url: Option<String>,
}

/// One sequenced message as the channel's home sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Offset within `epoch`.
    pub offset: u64,
    /// Home's time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Delivery mode (`Reliable` or `Latest`).
    pub mode: Mode,
    /// Conflation key.
    pub key: Option<String>,
    /// Publisher's user id, if exposed.
    pub publisher: Option<String>,
    /// Payload.
    pub data: Bytes,
}

/// Frames between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// First frame on a link, both ways.
    Hello {
        /// Must equal [`PEER_PROTOCOL_VERSION`].
        protocol_version: u16,
        /// The sender.
        node: PeerInfo,
    },
    /// Heartbeat (RTT).
    Ping {
        /// Opaque value echoed back.
        nonce: u64,
    },
    /// Heartbeat answer.
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// Every node the sender knows (membership spreads through links).
    Members {
        /// Known nodes, the sender included.
        nodes: Vec<PeerInfo>,
    },
    /// The sender's full interest set (after a link comes up).
    InterestSet {
        /// Channels with local subscribers.
        channels: Vec<String>,
    },
    /// The sender got its first local subscriber (`on`) or lost its last.
    Interest {
        /// Channel.
        channel: String,
        /// Interested or not.
        on: bool,
    },
    /// A reliable or latest publish for the channel's home to sequence.
    Publish {
        /// Request id, echoed in `Published`.
        req: u64,
        /// Channel.
        channel: String,
        /// Mode.
        mode: Mode,
        /// Conflation key.
        key: Option<String>,
        /// Publisher's user id.
        publisher: Option<String>,
        /// Payload.
        data: Bytes,
        /// W3C traceparent of the publishing span, if traced.
        trace: Option<String>,
    },
    /// The home's answer to `Publish`.
    Published {
        /// Request id.
        req: u64,
        /// Position assigned, or the error (code, reason).
        result: Result<Position, (u16, String)>,
    },
    /// A sequenced entry, from the home to each interested node (one copy per node).
    Entry {
        /// Channel.
        channel: String,
        /// Epoch of the channel at the home.
        epoch: u64,
        /// The entry.
        entry: PeerEntry,
        /// W3C traceparent of the sequencing span, if traced.
        trace: Option<String>,
    },
    /// A replica asks the home for what follows `from` (after a link returns, a gap, or its
    /// first subscriber).
    Sync {
        /// Channel.
        channel: String,
        /// The replica's position (`epoch` 0: none).
        from: Position,
    },
    /// The home cannot continue the replica's history: start over at `position` (a new
    /// epoch, or history no longer covers the gap). Entries after it follow.
    Reset {
        /// Channel.
        channel: String,
        /// Position just before the entries that follow.
        position: Position,
    },
    /// A datagram publish, from its origin straight to each interested node.
    Datagram {
        /// Channel.
        channel: String,
        /// Conflation key.
        key: Option<String>,
        /// Publisher's user id.
        publisher: Option<String>,
        /// Payload.
        data: Bytes,
    },
    /// The sender's load, once a second (for the operators' mesh view).
    Stats {
        /// Client sessions open.
        sessions: u64,
        /// Messages handed to subscriber queues since start.
        deliveries: u64,
    },
    /// Presence on the sender for a channel the receiver is interested in.
    Presence {
        /// Channel.
        channel: String,
        /// Member.
        member: Member,
        /// Joined (`true`) or left.
        join: bool,
    },
}

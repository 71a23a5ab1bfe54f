//! Frame types. Field order is wire order: never reorder fields or variants, only append
//! variants at the end (and bump [`super::PROTOCOL_VERSION`] for any other change).
//!
//! Serde features that break bincode are banned here: internally/adjacently tagged or untagged
//! enums, `flatten`, `skip_serializing_if`, skipped variants.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How a message is delivered. Chosen per publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Every message, in order, gap-free per channel and epoch, recoverable from history.
    Reliable,
    /// Best effort: one QUIC datagram, never retransmitted, not kept in history. Over
    /// WebSocket it is a normal message and the first thing dropped under backpressure.
    Datagram,
    /// Conflated per key: a slow subscriber skips intermediate values and always ends on the
    /// newest one. Sequenced and kept in the snapshot like reliable messages.
    Latest,
}

impl Mode {
    /// Bit of this mode in a [`crate::protocol::Limits::modes`]-style mask.
    pub fn bit(self) -> u8 {
        match self {
            Mode::Reliable => 1,
            Mode::Datagram => 2,
            Mode::Latest => 4,
        }
    }
}

/// A point in a channel's history: offsets are comparable only within one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Identifies one continuous history of the channel.
    pub epoch: u64,
    /// Offset of the last message seen (0 = none yet).
    pub offset: u64,
}

/// Limits the server enforces for this session, told to the client in `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest encoded frame accepted, in bytes.
    pub max_frame: u32,
    /// Largest payload of a `datagram` publish, in bytes.
    pub max_datagram_payload: u32,
    /// Most channels one session may subscribe to at once.
    pub max_subscriptions: u32,
    /// Sustained publishes per second per session (token bucket rate).
    pub publish_rate: u32,
    /// Publish burst allowed above the rate (token bucket depth).
    pub publish_burst: u32,
}

/// One member of a channel's presence set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The session id of the member's connection.
    pub session_id: String,
    /// The authenticated user id (empty for anonymous).
    pub user: String,
    /// Application-defined info attached at subscribe time.
    pub info: Bytes,
}

/// One entry of a channel snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Conflation key (`latest` channels); `None` for the single latest message.
    pub key: Option<String>,
    /// Offset of the message this entry came from.
    pub offset: u64,
    /// Server time of that message, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The payload.
    pub data: Bytes,
}

/// A message delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The channel it was published to.
    pub channel: String,
    /// Delivery mode chosen by the publisher.
    pub mode: Mode,
    /// Epoch of the channel's history (0 for `datagram`, which is not sequenced).
    pub epoch: u64,
    /// Gap-free offset within the epoch (0 for `datagram`).
    pub offset: u64,
    /// Server time at sequencing, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Conflation key (`latest`), if any.
    pub key: Option<String>,
    /// User id of the publisher, if the namespace exposes it.
    pub publisher: Option<String>,
    /// Opaque payload.
    pub data: Bytes,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame of every session.
    Hello {
        /// Must equal [`super::PROTOCOL_VERSION`].
        protocol_version: u16,
        /// Credential (JWT); empty for anonymous.
        token: String,
        /// Free-form client name for logs (SDK name and version).
        client_name: String,
        /// Session id of a previous session of this client, to keep presence continuous.
        resume: Option<String>,
        /// Ask for every reliable frame on the control stream instead of one server-opened
        /// stream per channel (for browsers that mishandle server-opened streams).
        single_stream: bool,
    },
    /// Subscribe to a channel.
    Subscribe {
        /// Request id.
        id: u32,
        /// Channel name, `namespace:rest`.
        channel: String,
        /// Resume after this position: recovered from history if it can be, all or nothing.
        recover: Option<Position>,
        /// Join the channel's presence set with this info.
        presence: Option<Bytes>,
        /// Receive presence join/leave events for this channel.
        presence_events: bool,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// Request id.
        id: u32,
        /// Channel name.
        channel: String,
    },
    /// Publish a message. `id = 0` asks for no reply on success (errors are still sent).
    Publish {
        /// Request id, or 0 for fire-and-forget.
        id: u32,
        /// Channel name.
        channel: String,
        /// Delivery mode.
        mode: Mode,
        /// Conflation key, required for `latest`.
        key: Option<String>,
        /// Payload.
        data: Bytes,
    },
    /// Ask for a channel's presence set.
    Presence {
        /// Request id.
        id: u32,
        /// Channel name.
        channel: String,
    },
    /// Ask for a channel's history after a position.
    History {
        /// Request id.
        id: u32,
        /// Channel name.
        channel: String,
        /// Messages after this position; `None` for the newest `limit` messages.
        since: Option<Position>,
        /// Most messages to return.
        limit: u32,
    },
    /// Heartbeat or RTT probe; the server answers `Pong` with the same nonce.
    Ping {
        /// Opaque value echoed back.
        nonce: u64,
    },
    /// Answer to a server `Ping`.
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// Replace the session's credential before it expires.
    Refresh {
        /// Request id.
        id: u32,
        /// New credential.
        token: String,
    },
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Handshake accepted.
    Welcome {
        /// This session's id (for `resume` and presence).
        session_id: String,
        /// The node's id.
        node_id: String,
        /// The node's region.
        region: String,
        /// Limits in force for this session.
        limits: Limits,
        /// Interval of server pings, milliseconds.
        heartbeat_ms: u32,
    },
    /// Generic success reply (unsubscribe, refresh).
    Ok {
        /// Request id.
        id: u32,
    },
    /// Subscription in place. Precedes the snapshot and messages of that subscription.
    Subscribed {
        /// Request id.
        id: u32,
        /// Channel name.
        channel: String,
        /// Current position of the channel (last sequenced offset in its epoch).
        position: Position,
        /// `true` if every message after the requested `recover` position follows; `false` if
        /// history could not cover it (or the epoch changed) and the client must resync from
        /// the snapshot. Always `true` when no recovery was asked.
        recovered: bool,
    },
    /// Publish sequenced (reliable/latest) or fanned out (datagram).
    Published {
        /// Request id.
        id: u32,
        /// Position assigned (offset 0 for datagram).
        position: Position,
    },
    /// A channel message.
    Message(Message),
    /// A channel's current state, sent to a new subscriber before live messages.
    Snapshot {
        /// Channel name.
        channel: String,
        /// Position the snapshot reflects.
        position: Position,
        /// The entries (one for plain channels, one per key for `latest` channels).
        entries: Vec<SnapshotEntry>,
    },
    /// Reply to `Presence`.
    PresenceList {
        /// Request id.
        id: u32,
        /// Channel name.
        channel: String,
        /// Current members.
        members: Vec<Member>,
    },
    /// Someone joined a channel's presence set.
    Join {
        /// Channel name.
        channel: String,
        /// The member.
        member: Member,
    },
    /// Someone left a channel's presence set.
    Leave {
        /// Channel name.
        channel: String,
        /// The member.
        member: Member,
    },
    /// Reply to `History`.
    HistoryPage {
        /// Request id.
        id: u32,
        /// Channel name.
        channel: String,
        /// Current position of the channel.
        position: Position,
        /// `false` if the requested start is no longer in history.
        complete: bool,
        /// The messages, oldest first.
        messages: Vec<Message>,
    },
    /// Messages of a channel were dropped for this subscriber (datagram or latest
    /// backpressure). Reliable messages are never dropped silently: the session is closed.
    Dropped {
        /// Channel name.
        channel: String,
        /// How many messages were dropped since the previous `Dropped` notice.
        count: u64,
    },
    /// The channel's history broke (home change, node restart): resubscribe or resync from
    /// the snapshot. The subscription stays active on the new epoch.
    Resync {
        /// Channel name.
        channel: String,
        /// The new position.
        position: Position,
    },
    /// The server ended a subscription (permission revoked, channel closed).
    Unsubscribed {
        /// Channel name.
        channel: String,
        /// Why, as an [`super::ErrorCode`] value.
        code: u16,
        /// Readable reason.
        reason: String,
    },
    /// A request failed, or (with `fatal`) the session is being closed.
    Error {
        /// Request id, or 0 for the session.
        id: u32,
        /// Stable [`super::ErrorCode`] value.
        code: u16,
        /// Readable reason, for humans and logs.
        reason: String,
        /// The server closes the session after this frame.
        fatal: bool,
    },
    /// Heartbeat or RTT probe; the client answers `Pong` with the same nonce.
    Ping {
        /// Opaque value echoed back.
        nonce: u64,
    },
    /// Answer to a client `Ping`.
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// The server is draining: reconnect (to `reconnect_to` if given) after `after_ms`.
    GoingAway {
        /// Readable reason.
        reason: String,
        /// Another node to use, as a URL, if the server knows one.
        reconnect_to: Option<String>,
        /// Suggested delay before reconnecting, milliseconds.
        after_ms: u32,
    },
    /// The session's credential expires soon: send `Refresh` within `grace_ms`.
    TokenExpiring {
        /// Milliseconds before the session is closed with `TokenExpired`.
        grace_ms: u32,
    },
}

impl ServerFrame {
    /// Shorthand for a non-fatal request error.
    pub fn error(id: u32, code: super::ErrorCode, reason: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code: code as u16,
            reason: reason.into(),
            fatal: false,
        }
    }

    /// Shorthand for an error that ends the session.
    pub fn fatal(code: super::ErrorCode, reason: impl Into<String>) -> Self {
        ServerFrame::Error {
            id: 0,
            code: code as u16,
            reason: reason.into(),
            fatal: true,
        }
    }
}

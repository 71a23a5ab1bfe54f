//! Wire protocol: frame types, error codes, limits and the codec. No I/O, no runtime.
//!
//! This module must not import anything else from the crate, nor tokio, wtransport or axum:
//! it is the contract shared by the server, the Rust client, the browser SDK and any other
//! client, and it must stay readable on its own.
//!
//! # Encoding rules (normative, for writing a client in another language)
//!
//! Every frame is a Rust enum value serialized by bincode 2.0.1 with `config::standard()`
//! (serde path). That configuration gives these rules, which are all a codec needs:
//!
//! | Rust type | bytes on the wire |
//! |---|---|
//! | `u8`, `bool` | one raw byte (`bool`: 0 or 1; anything else is malformed) |
//! | `u16`, `u32`, `u64` | *varint*: a value `< 251` is one byte; otherwise a tag byte `251` followed by 2 bytes LE (`u16`), `252` + 4 bytes LE (`u32`), `253` + 8 bytes LE (`u64`). The smallest form is always used; a decoder accepts any form whose value fits the type. |
//! | `String` | varint `u64` byte length, then UTF-8 bytes |
//! | `Bytes` (payloads) | varint `u64` length, then raw bytes |
//! | `Option<T>` | one byte `0` (None) or `1` followed by `T` |
//! | `Vec<T>` | varint `u64` count, then each element |
//! | struct | its fields in declaration order, no names, no padding |
//! | enum | varint `u32` variant index (declaration order, from 0), then the variant's fields |
//!
//! Integers in this protocol are unsigned (no zigzag is ever needed).
//!
//! # Framing
//!
//! - **Streams** (WebTransport bidirectional control stream and server-opened unidirectional
//!   channel streams): each frame is preceded by its byte length as a 4-byte little-endian
//!   `u32`. A length of 0 or above the negotiated `max_frame` is a protocol error.
//! - **Datagrams**: exactly one frame per datagram, no length prefix.
//! - **WebSocket**: exactly one frame per binary message, no length prefix. Text messages are a
//!   protocol error.
//!
//! A decoder must consume the whole frame: trailing bytes are a protocol error
//! ([`DecodeError::Trailing`]).
//!
//! # Conversation
//!
//! 1. The client sends [`ClientFrame::Hello`] first (on the control stream or as the first
//!    WebSocket message). The server answers [`ServerFrame::Welcome`], or
//!    [`ServerFrame::Error`] followed by a close.
//! 2. Requests carry a client-chosen `id` (`u32`, non-zero); the reply carries the same id.
//!    `id = 0` in a reply means "not tied to a request".
//! 3. Subscribing answers [`ServerFrame::Subscribed`], then (if the namespace keeps one) a
//!    [`ServerFrame::Snapshot`], then recovered messages, then live messages. On WebTransport all
//!    of these travel on the channel's own unidirectional stream (unless the client asked for
//!    `single_stream` in `Hello`), so the client must route replies by `id`, not by stream.
//! 4. The server sends [`ServerFrame::Ping`] every `heartbeat_ms`; the client answers
//!    [`ClientFrame::Pong`] with the same nonce. Clients may ping the server too.
//!
//! See `tests/golden/frames.json` for one vector per frame variant (value as serde JSON,
//! externally tagged, payload bytes as arrays of numbers; and the encoded bytes as hex).

mod codec;
mod error;
mod frames;
mod peer;

pub use codec::{
    DECODE_LIMIT, DecodeError, EncodeError, LEN_PREFIX, StreamDecoder, decode_client, decode_peer,
    decode_server, encode_client, encode_peer, encode_server, encode_with_prefix, frame_len,
};
pub use error::ErrorCode;
pub use frames::*;
pub use peer::{PEER_PROTOCOL_VERSION, PeerEntry, PeerFrame, PeerInfo};

/// Version of the client protocol. Bumped on any incompatible change to the frames.
///
/// A server refuses a `Hello` with another version with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Default maximum size of one encoded frame, in bytes (64 KiB).
///
/// Large enough for a chat message with metadata or a 1000-entry presence list, small enough
/// that one client cannot make the server buffer megabytes per frame.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

/// Default largest payload accepted for a `datagram` publish, in bytes.
///
/// A QUIC datagram must fit one packet. With the 1200-byte minimum QUIC MTU, minus QUIC and
/// WebTransport headers (~40 bytes) and the `Message` frame's own fields (channel name up to
/// 64 bytes, offsets, timestamp), 1000 bytes of payload always fits.
pub const DEFAULT_MAX_DATAGRAM_PAYLOAD: u32 = 1000;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

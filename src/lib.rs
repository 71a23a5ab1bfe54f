//! edgegate: a real-time gateway for the edge.
//!
//! Clients connect over WebTransport (HTTP/3 over QUIC) or, as a fallback, WebSocket, and
//! subscribe and publish to channels; backends publish over HTTP. See `DESIGN.md` in the
//! project's shared docs for the architecture and the guarantees.
//!
//! # Layout
//!
//! Modules in order of dependence; nothing imports a module listed after it.
//!
//! - [`protocol`]: wire frames, error codes, limits and the bincode codec. No I/O.
//! - [`hub`]: channels, sequencing, history, snapshots, presence, fan-out and backpressure.
//!   No sockets; time comes in as an argument.
//! - [`auth`]: credentials to grants; pure.
//! - [`session`]: one transport-agnostic client session: handshake, requests, outbound writer.
//! - [`transport`]: WebTransport and WebSocket adapters that drive a [`session`].
//! - [`api`]: HTTP: publish API, channel and presence queries, health, the dev certificate hash.
//! - [`tls`]: certificates: dev self-signed identity, files.
//! - [`config`]: TOML + env + flags into one typed [`config::Config`].
//! - [`telemetry`]: tracing subscriber set-up.
//! - [`mesh`]: the inter-region relay mesh over QUIC (links, interest, homes, replay).
//! - [`gateway`]: assembles a node from a config (`Gateway::load` / `run`).
//! - [`client`]: Rust client (WebTransport, or WebSocket), depending on [`protocol`] only.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod gateway;
pub mod hub;
pub mod mesh;
pub mod protocol;
pub mod session;
pub mod telemetry;
pub mod tls;
pub mod transport;

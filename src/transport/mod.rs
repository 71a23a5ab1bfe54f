//! Transport adapters: each turns its connections into [`crate::session`] runs. They hold no
//! business rules: anything both need belongs in `session`.

pub mod tcp;
pub mod websocket;
pub mod webtransport;

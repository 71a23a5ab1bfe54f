//! Per-namespace policy and channel-name rules.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::protocol::{ErrorCode, MAX_CHANNEL_LEN, Mode};

/// What a new subscriber receives before live messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Nothing.
    None,
    /// The latest message.
    Last,
    /// The latest value of every key (`latest` publishes).
    Keyed,
}

/// Policy of one namespace (`[[namespace]]` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Namespace name: the part of a channel name before `:`. `""` for channels without one;
    /// `"*"` is the fallback for namespaces not listed.
    pub name: String,
    /// Messages kept in history per channel.
    pub history_len: usize,
    /// Bytes of payload kept in history per channel.
    pub history_bytes: usize,
    /// How long history is kept, seconds.
    pub history_ttl_secs: u64,
    /// What new subscribers get first.
    pub snapshot: SnapshotMode,
    /// Delivery modes allowed to publishers.
    pub modes: Vec<ModeName>,
    /// Largest payload accepted, bytes.
    pub max_payload: usize,
    /// Whether presence is kept for channels of this namespace.
    pub presence: bool,
    /// Anonymous connections may subscribe.
    pub anonymous_subscribe: bool,
    /// Anonymous connections may publish.
    pub anonymous_publish: bool,
    /// Anonymous connections may join and read presence.
    pub anonymous_presence: bool,
    /// Deliveries carry the publisher's user id.
    pub expose_publisher: bool,
    /// Pin channel homes to this region (mesh).
    pub home_region: Option<String>,
}

/// A delivery mode as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// `reliable`.
    Reliable,
    /// `datagram`.
    Datagram,
    /// `latest`.
    Latest,
}

impl From<ModeName> for Mode {
    fn from(m: ModeName) -> Mode {
        match m {
            ModeName::Reliable => Mode::Reliable,
            ModeName::Datagram => Mode::Datagram,
            ModeName::Latest => Mode::Latest,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            name: "*".into(),
            // 1000 messages / 1 MiB / 10 min: enough to ride out a reconnect or a short
            // outage, small enough that 10k channels fit in a few GiB at worst.
            history_len: 1000,
            history_bytes: 1024 * 1024,
            history_ttl_secs: 600,
            snapshot: SnapshotMode::Last,
            modes: vec![ModeName::Reliable, ModeName::Datagram, ModeName::Latest],
            max_payload: 64 * 1024,
            presence: true,
            anonymous_subscribe: false,
            anonymous_publish: false,
            anonymous_presence: false,
            expose_publisher: true,
            home_region: None,
        }
    }
}

impl Policy {
    /// Whether publishers may use `mode`.
    pub fn allows(&self, mode: Mode) -> bool {
        self.modes.iter().any(|m| Mode::from(*m) == mode)
    }
}

/// The namespaces of a node, looked up by channel name.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    by_name: HashMap<String, Arc<Policy>>,
    fallback: Option<Arc<Policy>>,
}

impl Namespaces {
    /// Builds the lookup; a policy named `*` becomes the fallback.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut ns = Namespaces::default();
        for p in policies {
            if p.name == "*" {
                ns.fallback = Some(Arc::new(p));
            } else {
                ns.by_name.insert(p.name.clone(), Arc::new(p));
            }
        }
        ns
    }

    /// The policy for a (valid) channel name.
    pub fn lookup(&self, channel: &str) -> Result<&Arc<Policy>, ErrorCode> {
        let ns = namespace_of(channel);
        self.by_name
            .get(ns)
            .or(self.fallback.as_ref())
            .ok_or(ErrorCode::UnknownNamespace)
    }

    /// Every configured policy (fallback last).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.by_name.values().chain(self.fallback.iter())
    }
}

/// The namespace part of a channel name (before the first `:`), or `""`.
pub fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map(|(ns, _)| ns).unwrap_or("")
}

/// Checks a channel name: 1–200 bytes of `A–Z a–z 0–9 _ - : . @ / = + ,`.
pub fn validate_channel(channel: &str) -> Result<(), (ErrorCode, String)> {
    if channel.is_empty() {
        return Err((ErrorCode::BadChannel, "channel name is empty".into()));
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err((
            ErrorCode::BadChannel,
            format!("channel name longer than {MAX_CHANNEL_LEN} bytes"),
        ));
    }
    if let Some(c) = channel
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-:.@/=+,".contains(*c)))
    {
        return Err((
            ErrorCode::BadChannel,
            format!("channel name has a character outside [A-Za-z0-9_-:.@/=+,]: {c:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(validate_channel("room:eu-west/42").is_ok());
        assert!(validate_channel("prices:BTC-USD@eu").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("a b").is_err());
        assert!(validate_channel("é").is_err());
        assert!(validate_channel(&"x".repeat(201)).is_err());
        assert_eq!(namespace_of("chat:lobby:x"), "chat");
        assert_eq!(namespace_of("plain"), "");
    }

    #[test]
    fn lookup_falls_back() {
        let ns = Namespaces::new([
            Policy {
                name: "chat".into(),
                ..Policy::default()
            },
            Policy {
                name: "*".into(),
                history_len: 7,
                ..Policy::default()
            },
        ]);
        assert_eq!(ns.lookup("chat:x").expect("chat").name, "chat");
        assert_eq!(ns.lookup("other:x").expect("fallback").history_len, 7);
        let strict = Namespaces::new([Policy {
            name: "chat".into(),
            ..Policy::default()
        }]);
        assert_eq!(
            strict.lookup("x:y").err(),
            Some(ErrorCode::UnknownNamespace)
        );
    }
}

//! Channels, subscriptions, sequencing, history, snapshots, presence, fan-out and
//! backpressure. No sockets and no tokio I/O: every call is synchronous, never awaits a
//! subscriber, and takes the time as an argument, so the hub is tested deterministically.
//!
//! May import `protocol` and `tokio::sync` only.
//!
//! # Concurrency
//!
//! Channels live in [`SHARDS`] shards, each behind its own mutex, chosen by a hash of the
//! channel name: publishes to different channels rarely contend, and a publish holds one
//! shard lock while it sequences, stores and fans out. Fan-out is a `push` into each
//! subscriber's [`Outbox`] (its own short lock), so a slow subscriber costs the publisher
//! nothing beyond that push and its own policy (see [`outbox`]).
//!
//! # Hooks for the mesh
//!
//! An [`Observer`] sees interest changes (first local subscriber, last one gone) and every
//! sequenced entry, under the shard lock; it must not block. The relay uses it to tell peers
//! and to forward.

mod channel;
pub mod counters;
pub mod outbox;
pub mod policy;
mod replica;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::Mutex;

pub use channel::Entry;
use channel::{Channel, Recovery, Sub};
pub use counters::Counters;
pub use outbox::{Item, Lane, Outbox};
pub use policy::{Namespaces, Policy, SnapshotMode, namespace_of, validate_channel};
pub use replica::Applied;

use crate::protocol::{ErrorCode, Member, Message, Mode, Position, ServerFrame};

/// Number of channel shards (a power of two well above the core count, so two publishers
/// rarely hit the same lock).
pub const SHARDS: usize = 64;

/// A request the hub refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Error {
    /// Wire error code.
    pub code: ErrorCode,
    /// Readable reason.
    pub reason: String,
}

impl Error {
    /// An error with a code and a reason.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Error {
            code,
            reason: reason.into(),
        }
    }
}

/// Who is subscribing or publishing.
#[derive(Debug, Clone)]
pub struct SessionRef {
    /// Node-unique numeric id.
    pub id: u64,
    /// Session id as sent to clients.
    pub sid: Arc<str>,
    /// Authenticated user id (empty for anonymous).
    pub user: Arc<str>,
}

/// A subscription request.
#[derive(Debug)]
pub struct Subscribe<'a> {
    /// The subscriber.
    pub who: &'a SessionRef,
    /// Its outbox.
    pub outbox: &'a Arc<Outbox>,
    /// The lane its frames for this channel go on.
    pub lane: Lane,
    /// Request id for the `Subscribed` reply.
    pub id: u32,
    /// Channel name (validated).
    pub channel: &'a str,
    /// Recover after this position.
    pub recover: Option<Position>,
    /// Join presence with this info.
    pub presence: Option<Bytes>,
    /// Receive join/leave events.
    pub presence_events: bool,
}

/// A publish request.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// Channel name (validated).
    pub channel: &'a str,
    /// Delivery mode.
    pub mode: Mode,
    /// Conflation key (required for `latest`).
    pub key: Option<&'a str>,
    /// Publisher's user id.
    pub publisher: Option<&'a str>,
    /// Payload.
    pub data: Bytes,
}

/// Summary of a channel for the HTTP API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelInfo {
    /// Channel name.
    pub name: String,
    /// Local subscribers.
    pub subscribers: usize,
    /// Presence members.
    pub presence: usize,
    /// Current epoch.
    pub epoch: u64,
    /// Last offset.
    pub offset: u64,
    /// Messages in history.
    pub history: usize,
}

/// Sees interest changes and sequenced entries (the mesh's hook). Called under a shard lock:
/// must not block or call back into the hub.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// `channel` got its first local subscriber (`true`) or lost its last (`false`).
    fn interest(&self, channel: &str, on: bool);
    /// `entry` was sequenced on `channel` in `epoch`.
    fn sequenced(&self, channel: &str, epoch: u64, entry: &Entry);
    /// A local session joined (`true`) or left `channel`'s presence.
    fn presence(&self, _channel: &str, _member: &Member, _join: bool) {}
}

#[derive(Debug, Default)]
struct Shard {
    channels: HashMap<Arc<str>, Channel>,
}

/// The node's channel registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    namespaces: Namespaces,
    counters: Arc<Counters>,
    observer: Option<Arc<dyn Observer>>,
}

/// A fresh epoch: random, below 2^53 so JavaScript can hold it in a `Number`, never 0.
fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

impl Hub {
    /// A hub with these namespaces.
    pub fn new(namespaces: Namespaces, counters: Arc<Counters>) -> Self {
        Self::with_observer(namespaces, counters, None)
    }

    /// A hub whose interest and sequencing events go to `observer`.
    pub fn with_observer(
        namespaces: Namespaces,
        counters: Arc<Counters>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        Hub {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::new(),
                namespaces,
                counters,
                observer,
            }),
        }
    }

    /// The node-wide counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// The namespace policies.
    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        let h = self.inner.hasher.hash_one(channel) as usize;
        &self.inner.shards[h % SHARDS]
    }

    /// The policy for a channel, after validating its name.
    pub fn policy(&self, channel: &str) -> Result<&Arc<Policy>, Error> {
        validate_channel(channel).map_err(|(c, r)| Error::new(c, r))?;
        self.inner
            .namespaces
            .lookup(channel)
            .map_err(|c| Error::new(c, format!("no namespace policy matches {channel:?}")))
    }

    fn with_channel<R>(
        &self,
        channel: &str,
        f: impl FnOnce(&mut Channel, &Inner) -> R,
    ) -> Result<R, Error> {
        let policy = self.policy(channel)?.clone();
        let mut shard = self.shard(channel).lock();
        let ch = match shard.channels.get_mut(channel) {
            Some(c) => c,
            None => {
                let name: Arc<str> = channel.into();
                shard
                    .channels
                    .entry(name.clone())
                    .or_insert_with(|| Channel::new(name, policy, new_epoch()))
            }
        };
        Ok(f(ch, &self.inner))
    }

    /// Subscribes: queues `Subscribed`, the snapshot (unless recovery covered the gap), the
    /// recovered messages, then adds the subscriber, all under the channel's lock so no live
    /// message can slip between them.
    pub fn subscribe(&self, req: Subscribe<'_>, now_ms: u64) -> Result<Position, Error> {
        let res = self.with_channel(req.channel, |ch, inner| {
            ch.expire(now_ms);
            if ch.subs.iter().any(|s| s.session == req.who.id) {
                return Err(Error::new(
                    ErrorCode::AlreadySubscribed,
                    format!("already subscribed to {}", req.channel),
                ));
            }
            let (recovered, replay) = match ch.recover(req.recover) {
                Recovery::None => (true, None),
                Recovery::Hit(v) => (true, Some(v)),
                Recovery::Miss => (false, None),
            };
            let pos = ch.position();
            req.outbox.push_frame(
                req.lane,
                &ServerFrame::Subscribed {
                    id: req.id,
                    channel: req.channel.to_string(),
                    position: pos,
                    recovered,
                },
            );
            match replay {
                Some(entries) => {
                    for e in entries {
                        req.outbox.push(req.lane, e.frame.clone());
                    }
                }
                None => {
                    if let Some(snap) = ch.snapshot() {
                        req.outbox.push_frame(req.lane, &snap);
                    }
                }
            }
            ch.subs.push(Sub {
                session: req.who.id,
                outbox: req.outbox.clone(),
                lane: req.lane,
                presence_events: req.presence_events,
            });
            if let (Some(info), true) = (req.presence, ch.policy.presence) {
                ch.join(req.who, info.clone());
                if let Some(o) = &inner.observer {
                    let m = Member {
                        session_id: req.who.sid.to_string(),
                        user: req.who.user.to_string(),
                        info,
                    };
                    o.presence(&ch.name, &m, true);
                }
            }
            if ch.subs.len() == 1
                && let Some(o) = &inner.observer
            {
                o.interest(&ch.name, true);
            }
            Ok(pos)
        })?;
        if res.is_ok() {
            self.inner
                .counters
                .subscriptions
                .fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// Removes a session's subscription (and presence) from a channel. Returns whether it
    /// was subscribed.
    pub fn unsubscribe(&self, session: u64, channel: &str) -> bool {
        let mut shard = self.shard(channel).lock();
        let Some(ch) = shard.channels.get_mut(channel) else {
            return false;
        };
        let (removed, left) = ch.remove(session);
        if let (Some(m), Some(o)) = (&left, &self.inner.observer) {
            o.presence(channel, m, false);
        }
        if removed {
            self.inner
                .counters
                .subscriptions
                .fetch_sub(1, Ordering::Relaxed);
            if ch.subs.is_empty()
                && let Some(o) = &self.inner.observer
            {
                o.interest(channel, false);
            }
        }
        if ch.is_idle() {
            shard.channels.remove(channel);
        }
        removed
    }

    /// Publishes: sequences (`reliable`, `latest`) and fans out to local subscribers.
    /// Returns the position assigned (`offset` 0 for `datagram`).
    pub fn publish(&self, p: Publish<'_>, now_ms: u64) -> Result<Position, Error> {
        // Declared first so it ends last: frames are written inline once the shard lock is
        // released (see `outbox`).
        let _flush = outbox::InlineFlush::begin();
        let policy = self.policy(p.channel)?;
        if !policy.allows(p.mode) {
            return Err(Error::new(
                ErrorCode::ModeNotAllowed,
                format!("namespace {:?} does not allow {:?}", policy.name, p.mode),
            ));
        }
        if p.data.len() > policy.max_payload {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes over the namespace limit of {}",
                    p.data.len(),
                    policy.max_payload
                ),
            ));
        }
        if p.mode == Mode::Latest && p.key.is_none() {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "a latest publish needs a key",
            ));
        }
        let publisher: Option<Arc<str>> = if policy.expose_publisher {
            p.publisher.filter(|u| !u.is_empty()).map(Arc::from)
        } else {
            None
        };
        let counters = &self.inner.counters;
        match p.mode {
            Mode::Reliable => counters.published_reliable.fetch_add(1, Ordering::Relaxed),
            Mode::Datagram => counters.published_datagram.fetch_add(1, Ordering::Relaxed),
            Mode::Latest => counters.published_latest.fetch_add(1, Ordering::Relaxed),
        };
        let key: Option<Arc<str>> = p.key.map(Arc::from);
        if p.mode == Mode::Datagram {
            // Not sequenced and not stored: encode once and fan out, if anyone listens.
            let shard = self.shard(p.channel).lock();
            if let Some(ch) = shard.channels.get(p.channel) {
                let msg = Message {
                    channel: p.channel.to_string(),
                    mode: Mode::Datagram,
                    epoch: 0,
                    offset: 0,
                    time_ms: now_ms,
                    key: p.key.map(str::to_string),
                    publisher: publisher.as_deref().map(str::to_string),
                    data: p.data,
                };
                let frame = crate::protocol::encode_server(&ServerFrame::Message(msg));
                ch.fan_out(Mode::Datagram, None, &frame, counters);
            }
            return Ok(Position {
                epoch: 0,
                offset: 0,
            });
        }
        self.with_channel(p.channel, |ch, inner| {
            let entry = ch.sequence(p.mode, key, publisher, p.data, now_ms);
            ch.fan_out(p.mode, entry.key.as_ref(), &entry.frame, &inner.counters);
            if let Some(o) = &inner.observer {
                o.sequenced(&ch.name, ch.epoch, &entry);
            }
            ch.position()
        })
    }

    /// The presence members of a channel.
    pub fn presence(&self, channel: &str) -> Result<Vec<Member>, Error> {
        self.policy(channel)?;
        let shard = self.shard(channel).lock();
        Ok(shard
            .channels
            .get(channel)
            .map(|c| {
                c.presence
                    .iter()
                    .map(|p| p.member.clone())
                    .chain(c.remote_presence.iter().map(|(_, m)| m.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Messages after `since` (or the newest `limit`), oldest first; `complete` is `false`
    /// when history no longer reaches back to `since`.
    pub fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
    ) -> Result<(Position, bool, Vec<Message>), Error> {
        self.policy(channel)?;
        let shard = self.shard(channel).lock();
        let Some(ch) = shard.channels.get(channel) else {
            return Ok((
                Position {
                    epoch: 0,
                    offset: 0,
                },
                since.is_none(),
                Vec::new(),
            ));
        };
        let (complete, entries): (bool, Vec<_>) = match ch.recover(since) {
            Recovery::None => {
                let skip = ch.history.len().saturating_sub(limit);
                (true, ch.history.iter().skip(skip).collect())
            }
            Recovery::Hit(v) => (true, v.into_iter().take(limit).collect()),
            Recovery::Miss => (false, ch.history.iter().take(limit).collect()),
        };
        let msgs = entries
            .into_iter()
            .map(|e| e.message(&ch.name, ch.epoch))
            .collect();
        Ok((ch.position(), complete, msgs))
    }

    /// Every channel with state on this node.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let s = shard.lock();
            out.extend(s.channels.values().map(|c| ChannelInfo {
                name: c.name.to_string(),
                subscribers: c.subs.len(),
                presence: c.presence.len(),
                epoch: c.epoch,
                offset: c.offset,
                history: c.history.len(),
            }));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Expires old history and forgets idle channels. Call periodically.
    pub fn sweep(&self, now_ms: u64) {
        for shard in self.inner.shards.iter() {
            let mut s = shard.lock();
            s.channels.retain(|_, c| {
                c.expire(now_ms);
                !c.is_idle()
            });
        }
    }
}

#[cfg(test)]
mod tests;

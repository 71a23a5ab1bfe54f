//! One channel's state: sequencing, history, snapshot, subscribers and presence. Plain data,
//! driven by [`super::Hub`] under its shard lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::outbox::{Lane, Outbox, Pushed};
use super::policy::{Policy, SnapshotMode};
use super::{Counters, SessionRef};
use crate::protocol::{Member, Message, Mode, Position, ServerFrame, SnapshotEntry, encode_server};

/// A sequenced message kept in history and snapshots.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Offset within the epoch.
    pub offset: u64,
    /// Server time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Delivery mode.
    pub mode: Mode,
    /// Conflation key.
    pub key: Option<Arc<str>>,
    /// Publisher's user id, if exposed.
    pub publisher: Option<Arc<str>>,
    /// Payload.
    pub data: Bytes,
    /// The encoded `ServerFrame::Message`, shared by every delivery.
    pub frame: Bytes,
}

impl Entry {
    pub(crate) fn message(&self, channel: &str, epoch: u64) -> Message {
        Message {
            channel: channel.to_string(),
            mode: self.mode,
            epoch,
            offset: self.offset,
            time_ms: self.time_ms,
            key: self.key.as_deref().map(str::to_string),
            publisher: self.publisher.as_deref().map(str::to_string),
            data: self.data.clone(),
        }
    }

    fn snapshot_entry(&self) -> SnapshotEntry {
        SnapshotEntry {
            key: self.key.as_deref().map(str::to_string),
            offset: self.offset,
            time_ms: self.time_ms,
            data: self.data.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Sub {
    pub session: u64,
    pub outbox: Arc<Outbox>,
    pub lane: Lane,
    pub presence_events: bool,
}

#[derive(Debug)]
pub(crate) struct Present {
    pub session: u64,
    pub member: Member,
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub name: Arc<str>,
    pub policy: Arc<Policy>,
    pub epoch: u64,
    /// Last offset assigned (0 = none yet).
    pub offset: u64,
    pub history: VecDeque<Entry>,
    pub history_bytes: usize,
    pub last: Option<Entry>,
    pub keyed: BTreeMap<Arc<str>, Entry>,
    pub subs: Vec<Sub>,
    pub presence: Vec<Present>,
    /// Presence on other nodes of the mesh: (node id, member).
    pub remote_presence: Vec<(Arc<str>, Member)>,
}

/// Outcome of a recovery request against history.
pub(crate) enum Recovery<'a> {
    /// Nothing asked.
    None,
    /// Every message after the position is in history (possibly none).
    Hit(Vec<&'a Entry>),
    /// History cannot cover it.
    Miss,
}

impl Channel {
    pub fn new(name: Arc<str>, policy: Arc<Policy>, epoch: u64) -> Self {
        Channel {
            name,
            policy,
            epoch,
            offset: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            last: None,
            keyed: BTreeMap::new(),
            subs: Vec::new(),
            presence: Vec::new(),
            remote_presence: Vec::new(),
        }
    }

    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }

    /// Nothing worth keeping: no subscribers, no presence, no history, no snapshot.
    pub fn is_idle(&self) -> bool {
        self.subs.is_empty()
            && self.presence.is_empty()
            && self.remote_presence.is_empty()
            && self.history.is_empty()
            && self.last.is_none()
            && self.keyed.is_empty()
    }

    /// All-or-nothing recovery after `from`.
    pub fn recover(&self, from: Option<Position>) -> Recovery<'_> {
        let Some(p) = from else {
            return Recovery::None;
        };
        if p.epoch != self.epoch || p.offset > self.offset {
            return Recovery::Miss;
        }
        if p.offset == self.offset {
            return Recovery::Hit(Vec::new());
        }
        match self.history.front() {
            Some(first) if first.offset <= p.offset + 1 => {
                let skip = (p.offset + 1 - first.offset) as usize;
                Recovery::Hit(self.history.iter().skip(skip).collect())
            }
            _ => Recovery::Miss,
        }
    }

    /// The snapshot frame for new subscribers, if the policy keeps one and there is state.
    pub fn snapshot(&self) -> Option<ServerFrame> {
        let entries: Vec<SnapshotEntry> = match self.policy.snapshot {
            SnapshotMode::None => return None,
            SnapshotMode::Last => self.last.iter().map(Entry::snapshot_entry).collect(),
            SnapshotMode::Keyed => {
                let mut v: Vec<SnapshotEntry> =
                    self.keyed.values().map(Entry::snapshot_entry).collect();
                // Unkeyed messages on a keyed channel still count as its last state.
                if let Some(l) = &self.last
                    && l.key.is_none()
                {
                    v.push(l.snapshot_entry());
                }
                v
            }
        };
        Some(ServerFrame::Snapshot {
            channel: self.name.to_string(),
            position: self.position(),
            entries,
        })
    }

    /// Assigns the next offset, stores the entry, and returns it.
    pub fn sequence(
        &mut self,
        mode: Mode,
        key: Option<Arc<str>>,
        publisher: Option<Arc<str>>,
        data: Bytes,
        now_ms: u64,
    ) -> Entry {
        self.offset += 1;
        let msg = Message {
            channel: self.name.to_string(),
            mode,
            epoch: self.epoch,
            offset: self.offset,
            time_ms: now_ms,
            key: key.as_deref().map(str::to_string),
            publisher: publisher.as_deref().map(str::to_string),
            data: data.clone(),
        };
        let entry = Entry {
            offset: self.offset,
            time_ms: now_ms,
            mode,
            key,
            publisher,
            data,
            frame: encode_server(&ServerFrame::Message(msg)),
        };
        if self.policy.history_len > 0 {
            self.history_bytes += entry.data.len();
            self.history.push_back(entry.clone());
            while self.history.len() > self.policy.history_len
                || (self.history_bytes > self.policy.history_bytes && self.history.len() > 1)
            {
                self.pop_history();
            }
        }
        match (&entry.key, self.policy.snapshot) {
            (Some(k), SnapshotMode::Keyed) => {
                self.keyed.insert(k.clone(), entry.clone());
            }
            (_, SnapshotMode::None) => {}
            _ => self.last = Some(entry.clone()),
        }
        entry
    }

    fn pop_history(&mut self) {
        if let Some(e) = self.history.pop_front() {
            self.history_bytes -= e.data.len();
        }
    }

    /// Drops history older than the policy's TTL.
    pub fn expire(&mut self, now_ms: u64) {
        let ttl = self.policy.history_ttl_secs.saturating_mul(1000);
        while let Some(e) = self.history.front() {
            if now_ms.saturating_sub(e.time_ms) > ttl {
                self.pop_history();
            } else {
                break;
            }
        }
    }

    /// Hands an entry's frame to every subscriber according to its mode.
    pub fn fan_out(&self, mode: Mode, key: Option<&Arc<str>>, frame: &Bytes, counters: &Counters) {
        for s in &self.subs {
            match (mode, key) {
                (Mode::Datagram, _) => s.outbox.push_datagram(s.lane, &self.name, frame.clone()),
                (Mode::Latest, Some(k)) => {
                    s.outbox.push_latest(s.lane, &self.name, k, frame.clone())
                }
                _ => {
                    // An overflow closes that subscriber's session (and only it); the
                    // session's guard removes the subscription.
                    let _: Pushed = s.outbox.push(s.lane, frame.clone());
                }
            }
        }
        let n = self.subs.len() as u64;
        counters.deliveries.fetch_add(n, Ordering::Relaxed);
        match mode {
            Mode::Reliable => &counters.deliveries_reliable,
            Mode::Datagram => &counters.deliveries_datagram,
            Mode::Latest => &counters.deliveries_latest,
        }
        .fetch_add(n, Ordering::Relaxed);
    }

    /// Sends a presence event to the subscribers that asked for them, except `except`.
    pub fn presence_event(&self, frame: &ServerFrame, except: u64) {
        let mut encoded: Option<Bytes> = None;
        for s in self
            .subs
            .iter()
            .filter(|s| s.presence_events && s.session != except)
        {
            let b = encoded.get_or_insert_with(|| encode_server(frame));
            let _ = s.outbox.push(s.lane, b.clone());
        }
    }

    /// Adds a presence member and announces it.
    pub fn join(&mut self, who: &SessionRef, info: Bytes) {
        let member = Member {
            session_id: who.sid.to_string(),
            user: who.user.to_string(),
            info,
        };
        self.presence.retain(|p| p.session != who.id);
        self.presence_event(
            &ServerFrame::Join {
                channel: self.name.to_string(),
                member: member.clone(),
            },
            who.id,
        );
        self.presence.push(Present {
            session: who.id,
            member,
        });
    }

    /// Removes a session's subscription and presence; returns whether it was subscribed,
    /// and the presence member that left, if any.
    pub fn remove(&mut self, session: u64) -> (bool, Option<Member>) {
        let before = self.subs.len();
        self.subs.retain(|s| s.session != session);
        let removed = self.subs.len() != before;
        let mut left = None;
        if let Some(i) = self.presence.iter().position(|p| p.session == session) {
            let p = self.presence.swap_remove(i);
            self.presence_event(
                &ServerFrame::Leave {
                    channel: self.name.to_string(),
                    member: p.member.clone(),
                },
                session,
            );
            left = Some(p.member);
        }
        (removed, left)
    }
}

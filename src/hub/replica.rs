//! The hub's side of the relay mesh: applying entries sequenced by a channel's home on
//! another node, starting a channel over (new epoch, or history that cannot be bridged),
//! and presence held by other nodes. No sockets here; the mesh calls these.

use std::sync::Arc;

use bytes::Bytes;

use super::{Error, Hub, new_epoch, outbox};
use crate::protocol::{Member, Mode, PeerEntry, Position, ServerFrame};

/// What applying a home's entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored and delivered.
    Applied,
    /// Already had it (a replay overlapping what arrived live).
    Duplicate,
    /// Entries are missing before it: ask the home for what follows `have`.
    Gap {
        /// The replica's position.
        have: Position,
    },
}

impl Hub {
    /// Applies an entry the channel's home sequenced in `epoch`. A different epoch than the
    /// replica's starts it over at that entry (subscribers told with `Resync` if they had
    /// seen anything of the old one).
    pub fn apply_remote(
        &self,
        channel: &str,
        epoch: u64,
        e: PeerEntry,
        now_ms: u64,
    ) -> Result<Applied, Error> {
        // Written inline after the shard lock is released (see `outbox`).
        let _flush = outbox::InlineFlush::begin();
        self.with_channel(channel, |ch, inner| {
            ch.expire(now_ms);
            if ch.epoch != epoch {
                if ch.offset > 0 {
                    // A replica that has seen the old epoch cannot splice: it must be reset
                    // explicitly (the mesh does so on `Reset`), so entries of an unknown
                    // epoch are a gap.
                    return Applied::Gap {
                        have: ch.position(),
                    };
                }
                // Nothing seen yet: adopt the home's epoch where it stands.
                ch.epoch = epoch;
                ch.offset = e.offset.saturating_sub(1);
            }
            if e.offset <= ch.offset {
                return Applied::Duplicate;
            }
            if e.offset > ch.offset + 1 {
                return Applied::Gap {
                    have: ch.position(),
                };
            }
            let key = e.key.map(Arc::<str>::from);
            let publisher = e.publisher.map(Arc::<str>::from);
            let entry = ch.sequence(e.mode, key, publisher, e.data, e.time_ms);
            debug_assert_eq!(entry.offset, e.offset);
            ch.fan_out(e.mode, entry.key.as_ref(), &entry.frame, &inner.counters);
            Applied::Applied
        })
    }

    /// Starts the replica of `channel` over at `position`: history and snapshot dropped, and
    /// subscribers that saw anything told to resync.
    pub fn reset_remote(&self, channel: &str, position: Position) -> Result<(), Error> {
        self.with_channel(channel, |ch, _| {
            if ch.position() == position {
                return;
            }
            let saw_something = ch.offset > 0;
            ch.epoch = position.epoch;
            ch.offset = position.offset;
            ch.history.clear();
            ch.history_bytes = 0;
            ch.last = None;
            ch.keyed.clear();
            if saw_something {
                resync(ch);
            }
        })
    }

    /// Gives `channel` a fresh epoch (this node just became its home and cannot know what a
    /// previous home sequenced last). Subscribers that saw anything are told to resync.
    /// Returns the new position.
    pub fn new_epoch(&self, channel: &str) -> Result<Position, Error> {
        self.with_channel(channel, |ch, _| {
            let saw_something = ch.offset > 0;
            ch.epoch = new_epoch();
            ch.offset = 0;
            ch.history.clear();
            ch.history_bytes = 0;
            ch.last = None;
            ch.keyed.clear();
            if saw_something {
                resync(ch);
            }
            ch.position()
        })
    }

    /// The channel's position, if it has state here.
    pub fn position(&self, channel: &str) -> Option<Position> {
        let shard = self.shard(channel).lock();
        shard.channels.get(channel).map(|c| c.position())
    }

    /// Channels with at least one local subscriber.
    pub fn interested(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let s = shard.lock();
            out.extend(
                s.channels
                    .values()
                    .filter(|c| !c.subs.is_empty())
                    .map(|c| c.name.to_string()),
            );
        }
        out
    }

    /// Local presence members of a channel (what other nodes are told).
    pub fn local_presence(&self, channel: &str) -> Vec<Member> {
        let shard = self.shard(channel).lock();
        shard
            .channels
            .get(channel)
            .map(|c| c.presence.iter().map(|p| p.member.clone()).collect())
            .unwrap_or_default()
    }

    /// A member on node `node` joined or left `channel`; local subscribers that asked for
    /// presence events hear of it.
    pub fn remote_presence(&self, node: &str, channel: &str, member: Member, join: bool) {
        let _ = self.with_channel(channel, |ch, _| {
            let same =
                |(n, m): &(Arc<str>, Member)| &**n == node && m.session_id == member.session_id;
            let was = ch.remote_presence.iter().position(same);
            match (join, was) {
                (true, Some(_)) => return,
                (true, None) => ch.remote_presence.push((node.into(), member.clone())),
                (false, Some(i)) => {
                    ch.remote_presence.swap_remove(i);
                }
                (false, None) => return,
            }
            let channel = ch.name.to_string();
            let frame = if join {
                ServerFrame::Join { channel, member }
            } else {
                ServerFrame::Leave { channel, member }
            };
            ch.presence_event(&frame, 0);
        });
    }

    /// Node `node` is gone: its presence members leave every channel.
    pub fn drop_remote_presence(&self, node: &str) {
        for shard in self.inner.shards.iter() {
            let mut s = shard.lock();
            for ch in s.channels.values_mut() {
                let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut ch.remote_presence)
                    .into_iter()
                    .partition(|(n, _)| &**n == node);
                ch.remote_presence = kept;
                for (_, member) in gone {
                    let frame = ServerFrame::Leave {
                        channel: ch.name.to_string(),
                        member,
                    };
                    ch.presence_event(&frame, 0);
                }
            }
        }
    }

    /// Delivers a datagram published on another node to local subscribers (not sequenced,
    /// not stored).
    pub fn deliver_remote_datagram(
        &self,
        channel: &str,
        key: Option<&str>,
        publisher: Option<&str>,
        data: Bytes,
        now_ms: u64,
    ) -> Result<(), Error> {
        self.publish(
            super::Publish {
                channel,
                mode: Mode::Datagram,
                key,
                publisher,
                data,
            },
            now_ms,
        )
        .map(|_| ())
    }
}

/// Tells every subscriber of `ch` to resync at its current position.
fn resync(ch: &super::channel::Channel) {
    let frame = crate::protocol::encode_server(&ServerFrame::Resync {
        channel: ch.name.to_string(),
        position: ch.position(),
    });
    for s in &ch.subs {
        let _ = s.outbox.push(s.lane, frame.clone());
    }
}

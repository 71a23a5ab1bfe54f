//! A client that survives its connection: on `GoingAway` (drain) or a lost connection it
//! reconnects — to the node's hint if it gave one — with capped exponential backoff and
//! jitter, resumes every subscription from its last position, and drops duplicates. A hole
//! history cannot cover is reported as [`Event::Resync`], never silently.

use std::collections::HashMap;
use std::time::Duration;

use super::{Client, Error, Event, Options, SubscribeOptions};
use crate::protocol::{Mode, Position};

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Attempts before [`Resilient::next_event`] gives up and returns `None`.
pub const MAX_ATTEMPTS: u32 = 30;

struct Sub {
    opts: SubscribeOptions,
    /// Last reliable/latest position delivered to the application.
    last: Option<Position>,
}

/// A reconnecting client. See the module doc.
pub struct Resilient {
    opts: Options,
    /// The URL first given: where to go back to when a hinted node fails.
    home: String,
    client: Option<Client>,
    subs: HashMap<String, Sub>,
    pending: std::collections::VecDeque<Event>,
    reconnects: u32,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("url", &self.opts.url)
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

impl Resilient {
    /// Connects (once; an error here is returned, not retried).
    pub async fn connect(opts: Options) -> Result<Resilient, Error> {
        let client = Client::connect(opts.clone()).await?;
        Ok(Resilient {
            home: opts.url.clone(),
            opts,
            client: Some(client),
            subs: HashMap::new(),
            pending: std::collections::VecDeque::new(),
            reconnects: 0,
        })
    }

    /// Base URL of the node serving the client now.
    pub fn url(&self) -> &str {
        &self.opts.url
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The current connection, if any.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Subscribes; the subscription is resumed after every reconnect.
    pub async fn subscribe(&mut self, channel: &str, opts: SubscribeOptions) -> Result<(), Error> {
        let c = self.client.as_ref().ok_or(Error::Closed)?;
        let s = c.subscribe(channel, opts.clone()).await?;
        // Everything after the position at subscribe time is (or will be) delivered, so a
        // reconnect resumes from there even before the first message arrives.
        self.subs.insert(
            channel.to_string(),
            Sub {
                opts,
                last: Some(s.position),
            },
        );
        Ok(())
    }

    /// Publishes on the current connection (an error while reconnecting: retry later).
    pub async fn publish(
        &self,
        channel: &str,
        mode: Mode,
        key: Option<&str>,
        data: impl Into<bytes::Bytes>,
    ) -> Result<Position, Error> {
        let c = self.client.as_ref().ok_or(Error::Closed)?;
        c.publish(channel, mode, key, data).await
    }

    /// The next event. Reconnects as needed; `None` after [`MAX_ATTEMPTS`] failed attempts.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let hint = match self.client.as_mut() {
                None => None,
                Some(c) => match c.next_event().await {
                    Some(Event::Message(m)) => {
                        if let Some(e) = self.accept(m) {
                            return Some(e);
                        }
                        continue;
                    }
                    Some(Event::GoingAway { reconnect_to, .. }) => reconnect_to,
                    Some(Event::Closed) | None => None,
                    Some(e) => return Some(e),
                },
            };
            self.client = None;
            if !self.reconnect(hint).await {
                return None;
            }
        }
    }

    /// Passes a message on unless it repeats one already delivered; tracks positions.
    fn accept(&mut self, m: crate::protocol::Message) -> Option<Event> {
        if m.mode != Mode::Datagram
            && let Some(sub) = self.subs.get_mut(&m.channel)
        {
            if let Some(last) = sub.last
                && last.epoch == m.epoch
                && m.offset <= last.offset
            {
                return None;
            }
            sub.last = Some(Position {
                epoch: m.epoch,
                offset: m.offset,
            });
        }
        Some(Event::Message(m))
    }

    /// Reconnects (hint first, then the first URL), resubscribing everything. Queues
    /// `Reconnected` and any `Resync`s. False when every attempt failed.
    async fn reconnect(&mut self, mut hint: Option<String>) -> bool {
        let mut delay = MIN_BACKOFF;
        for attempt in 0..MAX_ATTEMPTS {
            let url = hint.take().unwrap_or_else(|| {
                if attempt == 0 {
                    self.opts.url.clone()
                } else {
                    self.home.clone()
                }
            });
            let mut opts = self.opts.clone();
            opts.url = url.clone();
            match self.resume(opts).await {
                Ok(()) => {
                    self.reconnects += 1;
                    self.pending.push_front(Event::Reconnected { url });
                    return true;
                }
                Err(Error::GoingAway { reconnect_to, .. }) => {
                    // Another draining node: follow its hint at once.
                    hint = reconnect_to;
                    continue;
                }
                Err(_) => {}
            }
            // Full jitter: spreads a region's reconnects after a node loss.
            let sleep = delay.mul_f64(rand::random::<f64>().max(0.1));
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        false
    }

    async fn resume(&mut self, opts: Options) -> Result<(), Error> {
        let client = Client::connect(opts.clone()).await?;
        let mut resyncs = Vec::new();
        for (channel, sub) in &self.subs {
            let mut so = sub.opts.clone();
            so.recover = sub.last;
            let s = client.subscribe(channel, so).await?;
            if sub.last.is_some() && !s.recovered {
                resyncs.push(Event::Resync {
                    channel: channel.clone(),
                    position: s.position,
                });
            }
        }
        for r in resyncs {
            if let Event::Resync { channel, position } = &r
                && let Some(sub) = self.subs.get_mut(channel)
            {
                sub.last = Some(*position);
            }
            self.pending.push_back(r);
        }
        self.opts = opts;
        self.client = Some(client);
        Ok(())
    }
}

//! Client requests of one session: permissions, limits and the hub calls behind each frame.

use super::*;

/// Token bucket for publishes.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(super) struct State<'a> {
    pub(super) start: Instant,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) who: &'a SessionRef,
    pub(super) outbox: &'a Arc<Outbox>,
    pub(super) grant: Box<Grant>,
    pub(super) subs: &'a Arc<Mutex<HashMap<String, Lane>>>,
    pub(super) next_lane: Lane,
    pub(super) bucket: Bucket,
    pub(super) violations: u32,
    pub(super) expires: &'a AtomicU64,
}

type Fatal = (ErrorCode, String);

impl State<'_> {
    fn allowed(&self, cap: Cap, channel: &str, policy: &hub::Policy) -> bool {
        let anon = match cap {
            Cap::Subscribe => policy.anonymous_subscribe,
            Cap::Publish => policy.anonymous_publish,
            Cap::Presence => policy.anonymous_presence,
        };
        anon || self.grant.allows(cap, channel)
    }

    /// Replies with an error; too many in a row closes the session.
    fn refuse(&mut self, id: u32, code: ErrorCode, reason: impl Into<String>) -> Result<(), Fatal> {
        self.shared
            .hub
            .counters()
            .request_errors
            .fetch_add(1, Ordering::Relaxed);
        self.violations += 1;
        let reason = reason.into();
        if self.violations > self.shared.config.max_violations {
            return Err((
                code,
                format!("{reason} ({} refused requests in a row)", self.violations),
            ));
        }
        self.outbox
            .push_frame(CONTROL, &ServerFrame::error(id, code, reason));
        Ok(())
    }

    pub(super) fn handle(&mut self, b: &[u8]) -> Result<(), Fatal> {
        let cfg = &self.shared.config;
        let frame = decode_client(b, cfg.max_frame as usize).map_err(|e| {
            let code = match e {
                crate::protocol::DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                _ => ErrorCode::Malformed,
            };
            (code, e.to_string())
        })?;
        // One span per request (exported as an OpenTelemetry span when tracing is on);
        // heartbeats are not worth one.
        let span = if matches!(frame, ClientFrame::Ping { .. } | ClientFrame::Pong { .. }) {
            tracing::Span::none()
        } else {
            tracing::debug_span!("request", kind = frame_name(&frame))
        };
        let _e = span.enter();
        let now = now_ms();
        match frame {
            ClientFrame::Hello { .. } => {
                return Err(fail(ErrorCode::UnexpectedFrame, "Hello sent twice"));
            }
            ClientFrame::Ping { nonce } => {
                self.outbox
                    .push_frame(CONTROL, &ServerFrame::Pong { nonce });
            }
            ClientFrame::Pong { nonce } => {
                // Our nonces are elapsed microseconds; a client's garbage nonce is ignored.
                let now = self.start.elapsed().as_micros() as u64;
                if let Some(rtt) = now.checked_sub(nonce).filter(|r| *r < 60_000_000) {
                    self.shared
                        .hub
                        .counters()
                        .rtt
                        .observe(Duration::from_micros(rtt));
                    debug!(rtt_us = rtt, "heartbeat");
                }
            }
            ClientFrame::Subscribe {
                id,
                channel,
                recover,
                presence,
                presence_events,
            } => {
                let policy = match self.shared.hub.policy(&channel) {
                    Ok(p) => p.clone(),
                    Err(e) => return self.refuse(id, e.code, e.reason),
                };
                if !self.allowed(Cap::Subscribe, &channel, &policy) {
                    return self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!("not allowed to subscribe to {channel}"),
                    );
                }
                if presence.is_some() && !self.allowed(Cap::Presence, &channel, &policy) {
                    return self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!("not allowed to join presence of {channel}"),
                    );
                }
                if presence
                    .as_ref()
                    .is_some_and(|p| p.len() > cfg.max_presence_info)
                {
                    return self.refuse(
                        id,
                        ErrorCode::PresenceTooLarge,
                        format!("presence info over {} bytes", cfg.max_presence_info),
                    );
                }
                if self.subs.lock().len() >= cfg.max_subscriptions as usize {
                    return self.refuse(
                        id,
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "at most {} subscriptions per session",
                            cfg.max_subscriptions
                        ),
                    );
                }
                let lane = self.next_lane;
                // Recovering on a node that does not replicate this channel yet: first let the
                // mesh fetch the home's history (bounded wait), then subscribe, so recovery
                // works on whichever node the client reconnects to.
                if let Some(want) = recover
                    && let Some(relay) = self.shared.relay.get()
                    && let Some(ready) = relay.prepare(&channel, want)
                {
                    self.next_lane = self.next_lane.wrapping_add(1).max(1);
                    let (shared, who, outbox, subs) = (
                        self.shared.clone(),
                        self.who.clone(),
                        self.outbox.clone(),
                        self.subs.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(PREPARE_TIMEOUT, ready).await;
                        let r = shared.hub.subscribe(
                            hub::Subscribe {
                                who: &who,
                                outbox: &outbox,
                                lane,
                                id,
                                channel: &channel,
                                recover,
                                presence,
                                presence_events,
                            },
                            now_ms(),
                        );
                        match r {
                            Ok(_) => {
                                subs.lock().insert(channel.clone(), lane);
                                if !shared.registry.lock().contains_key(&who.id) {
                                    subs.lock().remove(&channel);
                                    shared.hub.unsubscribe(who.id, &channel);
                                }
                            }
                            Err(e) => {
                                outbox
                                    .push_frame(CONTROL, &ServerFrame::error(id, e.code, e.reason));
                            }
                        }
                    });
                    return Ok(());
                }
                let r = self.shared.hub.subscribe(
                    hub::Subscribe {
                        who: self.who,
                        outbox: self.outbox,
                        lane,
                        id,
                        channel: &channel,
                        recover,
                        presence,
                        presence_events,
                    },
                    now,
                );
                match r {
                    Ok(_) => {
                        self.next_lane = self.next_lane.wrapping_add(1).max(1);
                        self.subs.lock().insert(channel, lane);
                    }
                    Err(e) => return self.refuse(id, e.code, e.reason),
                }
            }
            ClientFrame::Unsubscribe { id, channel } => {
                let lane = self.subs.lock().remove(&channel);
                match lane {
                    Some(lane) => {
                        self.shared.hub.unsubscribe(self.who.id, &channel);
                        self.outbox.finish(lane);
                        self.outbox.push_frame(CONTROL, &ServerFrame::Ok { id });
                    }
                    None => {
                        return self.refuse(
                            id,
                            ErrorCode::NotSubscribed,
                            format!("not subscribed to {channel}"),
                        );
                    }
                }
            }
            ClientFrame::Publish {
                id,
                channel,
                mode,
                key,
                data,
            } => {
                let policy = match self.shared.hub.policy(&channel) {
                    Ok(p) => p.clone(),
                    Err(e) => return self.refuse(id, e.code, e.reason),
                };
                if !self.allowed(Cap::Publish, &channel, &policy) {
                    return self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!("not allowed to publish to {channel}"),
                    );
                }
                if !self.bucket.take(Instant::now()) {
                    return self.refuse(
                        id,
                        ErrorCode::RateLimited,
                        format!("over {} publishes per second", cfg.publish_rate),
                    );
                }
                if mode == Mode::Datagram && data.len() > cfg.max_datagram_payload as usize {
                    return self.refuse(
                        id,
                        ErrorCode::DatagramTooLarge,
                        format!(
                            "datagram payload of {} bytes over {}",
                            data.len(),
                            cfg.max_datagram_payload
                        ),
                    );
                }
                let user = (!self.who.user.is_empty()).then_some(&*self.who.user);
                let r = self.shared.publish(
                    hub::Publish {
                        channel: &channel,
                        mode,
                        key: key.as_deref(),
                        publisher: user,
                        data,
                    },
                    now,
                );
                match r {
                    Published::Done(Ok(position)) => {
                        if id != 0 {
                            self.outbox
                                .push_frame(CONTROL, &ServerFrame::Published { id, position });
                        }
                    }
                    Published::Done(Err(e)) => return self.refuse(id, e.code, e.reason),
                    forwarded @ Published::Forwarded(_) => {
                        // The channel's home answers; its reply reaches the client when it
                        // comes (bounded wait), other requests go on meanwhile.
                        let outbox = self.outbox.clone();
                        let counters = self.shared.hub.counters().clone();
                        tokio::spawn(async move {
                            match forwarded.wait().await {
                                Ok(position) if id != 0 => {
                                    outbox.push_frame(
                                        CONTROL,
                                        &ServerFrame::Published { id, position },
                                    );
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    counters.request_errors.fetch_add(1, Ordering::Relaxed);
                                    outbox.push_frame(
                                        CONTROL,
                                        &ServerFrame::error(id, e.code, e.reason),
                                    );
                                }
                            }
                        });
                    }
                }
            }
            ClientFrame::Presence { id, channel } => {
                let policy = match self.shared.hub.policy(&channel) {
                    Ok(p) => p.clone(),
                    Err(e) => return self.refuse(id, e.code, e.reason),
                };
                if !self.allowed(Cap::Presence, &channel, &policy) {
                    return self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!("not allowed to read presence of {channel}"),
                    );
                }
                match self.shared.hub.presence(&channel) {
                    Ok(members) => {
                        self.outbox.push_frame(
                            CONTROL,
                            &ServerFrame::PresenceList {
                                id,
                                channel,
                                members,
                            },
                        );
                    }
                    Err(e) => return self.refuse(id, e.code, e.reason),
                }
            }
            ClientFrame::History {
                id,
                channel,
                since,
                limit,
            } => {
                let policy = match self.shared.hub.policy(&channel) {
                    Ok(p) => p.clone(),
                    Err(e) => return self.refuse(id, e.code, e.reason),
                };
                if !self.allowed(Cap::Subscribe, &channel, &policy) {
                    return self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!("not allowed to read history of {channel}"),
                    );
                }
                // Keep the page inside one frame: at most 100 messages.
                let limit = (limit as usize).min(100);
                match self.shared.hub.history(&channel, since, limit) {
                    Ok((position, complete, messages)) => {
                        self.outbox.push_frame(
                            CONTROL,
                            &ServerFrame::HistoryPage {
                                id,
                                channel,
                                position,
                                complete,
                                messages,
                            },
                        );
                    }
                    Err(e) => return self.refuse(id, e.code, e.reason),
                }
            }
            ClientFrame::Refresh { id, token } => {
                match self.shared.verifier.verify(&token, now / 1000) {
                    Ok(g) if g.user == self.grant.user => {
                        self.expires
                            .store(g.expires_at.unwrap_or(u64::MAX), Ordering::Relaxed);
                        *self.grant = g;
                        self.outbox.push_frame(CONTROL, &ServerFrame::Ok { id });
                    }
                    Ok(_) => {
                        return self.refuse(
                            id,
                            ErrorCode::Unauthorized,
                            "a refreshed token must be for the same user",
                        );
                    }
                    Err(e) => return self.refuse(id, e.code(), e.to_string()),
                }
            }
        }
        self.violations = 0;
        Ok(())
    }
}

fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello { .. } => "hello",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Publish { .. } => "publish",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::History { .. } => "history",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Pong { .. } => "pong",
        ClientFrame::Refresh { .. } => "refresh",
    }
}

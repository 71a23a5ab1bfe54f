//! Node-wide admission of client connections (`[limits]`): at most `max_connections` open
//! on the node, at most `max_connections_per_ip` from one source address, and at most
//! `new_connections_per_sec` new ones per second (token bucket, two seconds of burst).
//!
//! A transport asks [`Admission::admit`] as early as it knows the peer's address (a QUIC
//! `Initial` on the UDP socket, the `/ws` upgrade request on TCP) and holds the returned
//! [`Permit`] for the whole life of the connection; dropping it releases the slot. A refused
//! connection is told why with [`ErrorCode::TooManyConnections`] while that stays cheap: at
//! most [`REFUSALS_IN_FLIGHT`] refusals are explained at once ([`Admission::refusal_slot`]),
//! and beyond that refused connections are dropped without a word (a flood must not make the
//! node do a TLS handshake per refused packet).
//!
//! Pure bookkeeping: no sockets, time comes in as an argument. Imports `protocol` and the
//! hub's counters only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::hub::Counters;
use crate::protocol::ErrorCode;

/// Refused connections that may be answered with a readable error at the same time (each
/// costs a TLS handshake and up to a handshake timeout). 64 explains refusals to a whole
/// office behind one NAT while a flood from one host gets silence past the first few.
pub const REFUSALS_IN_FLIGHT: usize = 64;

/// `[limits]`: node-wide admission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most client sessions on this node.
    pub max_connections: usize,
    /// Most client sessions from one source address (IPv4 address, or IPv6 /64 prefix).
    pub max_connections_per_ip: usize,
    /// New sessions accepted per second, node-wide (token bucket; burst = 2 s worth).
    pub new_connections_per_sec: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            // WebTransport sessions share one socket; 100k is a memory budget (~3 GiB),
            // not a descriptor one.
            max_connections: 100_000,
            // Enough for a NAT with many players; a single abuser cannot take the node.
            max_connections_per_ip: 1_000,
            // A whole region reconnecting after a restart spreads over a few seconds.
            new_connections_per_sec: 5_000,
        }
    }
}

/// Why a connection was refused. Every variant maps to [`ErrorCode::TooManyConnections`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The source address already holds its share.
    PerAddress {
        /// The limit in force.
        max: usize,
    },
    /// The node holds `max_connections`.
    NodeFull {
        /// The limit in force.
        max: usize,
    },
    /// Over the node's new-connection rate.
    Rate {
        /// The limit in force, per second.
        per_sec: u32,
    },
}

impl Refusal {
    /// The error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::TooManyConnections
    }

    /// A readable reason for the client.
    pub fn reason(&self) -> String {
        match self {
            Refusal::PerAddress { max } => {
                format!("too many connections from your address (at most {max})")
            }
            Refusal::NodeFull { max } => {
                format!("this node is full ({max} connections); try another node or later")
            }
            Refusal::Rate { per_sec } => format!(
                "this node accepts at most {per_sec} new connections per second; retry with backoff"
            ),
        }
    }

    /// Metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::PerAddress { .. } => "per_address",
            Refusal::NodeFull { .. } => "node_full",
            Refusal::Rate { .. } => "rate",
        }
    }
}

/// The key connections are counted under: an IPv4 address (also when it arrives
/// IPv4-mapped on a dual-stack socket), or an IPv6 /64, which is what one subscriber usually
/// gets, so rotating addresses inside it gains nothing.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
struct State {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    tokens: f64,
    at: Instant,
}

/// Connection admission for one node. Shared by both transports.
#[derive(Debug)]
pub struct Admission {
    config: LimitsConfig,
    state: Mutex<State>,
    counters: Arc<Counters>,
    refusals: Arc<Semaphore>,
}

/// One admitted connection; dropping it frees its slot.
#[derive(Debug)]
#[must_use = "the slot is released when the permit is dropped"]
pub struct Permit {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.admission.state.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                s.per_address.remove(&self.key);
            }
        }
        self.admission
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// Admission with these limits, counting into `counters`.
    pub fn new(config: LimitsConfig, counters: Arc<Counters>) -> Arc<Self> {
        let burst = Self::burst_of(&config);
        Arc::new(Admission {
            config,
            state: Mutex::new(State {
                total: 0,
                per_address: HashMap::new(),
                tokens: burst,
                at: Instant::now(),
            }),
            counters,
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
        })
    }

    fn burst_of(config: &LimitsConfig) -> f64 {
        (f64::from(config.new_connections_per_sec) * 2.0).max(1.0)
    }

    /// The limits in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Admits a connection from `ip` at `now`, or says why not (and counts the refusal).
    /// Checks the address first, then the node, then the rate, so a flooding address does
    /// not spend the node's new-connection tokens.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        let key = address_key(ip);
        let refused = {
            let mut s = self.state.lock();
            let rate = f64::from(self.config.new_connections_per_sec);
            let dt = now.saturating_duration_since(s.at).as_secs_f64();
            s.at = s.at.max(now);
            s.tokens = (s.tokens + dt * rate).min(Self::burst_of(&self.config));
            let from = s.per_address.get(&key).copied().unwrap_or(0);
            if from >= self.config.max_connections_per_ip {
                Some(Refusal::PerAddress {
                    max: self.config.max_connections_per_ip,
                })
            } else if s.total >= self.config.max_connections {
                Some(Refusal::NodeFull {
                    max: self.config.max_connections,
                })
            } else if s.tokens < 1.0 {
                Some(Refusal::Rate {
                    per_sec: self.config.new_connections_per_sec,
                })
            } else {
                s.tokens -= 1.0;
                s.total += 1;
                *s.per_address.entry(key).or_insert(0) += 1;
                None
            }
        };
        match refused {
            None => {
                self.counters
                    .connections_open
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Permit {
                    admission: self.clone(),
                    key,
                })
            }
            Some(r) => {
                let c = match r {
                    Refusal::PerAddress { .. } => &self.counters.refused_per_address,
                    Refusal::NodeFull { .. } => &self.counters.refused_node_full,
                    Refusal::Rate { .. } => &self.counters.refused_rate,
                };
                c.fetch_add(1, Ordering::Relaxed);
                Err(r)
            }
        }
    }

    /// A slot to explain a refusal to the client, or `None` when [`REFUSALS_IN_FLIGHT`]
    /// are already being explained: then drop the connection silently (counted).
    pub fn refusal_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.refusals.clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.counters
                .refused_silently
                .fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// Connections admitted and open now.
    pub fn admitted(&self) -> usize {
        self.state.lock().total
    }

    /// Connections open now under `ip`'s key.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.state
            .lock()
            .per_address
            .get(&address_key(ip))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn adm(total: usize, per_ip: usize, rate: u32) -> Arc<Admission> {
        Admission::new(
            LimitsConfig {
                max_connections: total,
                max_connections_per_ip: per_ip,
                new_connections_per_sec: rate,
            },
            Arc::new(Counters::default()),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_address_limit_is_released_on_drop() {
        let a = adm(100, 2, 1000);
        let now = Instant::now();
        let p1 = a.admit(ip("10.0.0.1"), now).expect("first");
        let _p2 = a.admit(ip("10.0.0.1"), now).expect("second");
        let r = a.admit(ip("10.0.0.1"), now).expect_err("third");
        assert_eq!(r, Refusal::PerAddress { max: 2 });
        assert_eq!(r.code(), ErrorCode::TooManyConnections);
        // Another address is unaffected; the mapped form of the same one is not.
        let _o = a.admit(ip("10.0.0.2"), now).expect("other address");
        a.admit(ip("::ffff:10.0.0.1"), now)
            .expect_err("IPv4-mapped counts as the same address");
        drop(p1);
        assert_eq!(a.open_from(ip("10.0.0.1")), 1);
        let _p3 = a.admit(ip("10.0.0.1"), now).expect("slot released");
        assert_eq!(a.admitted(), 3);
        assert_eq!(Counters::get(&a.counters.refused_per_address), 2);
        assert_eq!(a.counters.connections_open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = adm(100, 1, 1000);
        let now = Instant::now();
        let _p = a.admit(ip("2001:db8:1:2::1"), now).expect("first");
        a.admit(ip("2001:db8:1:2:ffff::9"), now)
            .expect_err("same /64");
        let _q = a.admit(ip("2001:db8:1:3::1"), now).expect("other /64");
    }

    #[test]
    fn node_limit() {
        let a = adm(2, 10, 1000);
        let now = Instant::now();
        let _p = (a.admit(ip("10.0.0.1"), now), a.admit(ip("10.0.0.2"), now));
        assert_eq!(
            a.admit(ip("10.0.0.3"), now).expect_err("full"),
            Refusal::NodeFull { max: 2 }
        );
    }

    #[test]
    fn rate_bucket_refills() {
        let a = adm(1000, 1000, 5);
        let t0 = Instant::now();
        let mut held = Vec::new();
        for i in 0..10 {
            held.push(
                a.admit(ip("10.0.0.1"), t0)
                    .unwrap_or_else(|_| panic!("{i}")),
            );
        }
        assert_eq!(
            a.admit(ip("10.0.0.1"), t0).expect_err("burst spent"),
            Refusal::Rate { per_sec: 5 }
        );
        // 200 ms later one token is back.
        let t1 = t0 + Duration::from_millis(200);
        held.push(a.admit(ip("10.0.0.1"), t1).expect("refilled"));
        a.admit(ip("10.0.0.1"), t1).expect_err("only one");
        // A refused address does not spend tokens.
        let b = adm(1000, 1, 1);
        let _p = b.admit(ip("10.0.0.1"), t0).expect("first");
        for _ in 0..10 {
            b.admit(ip("10.0.0.1"), t0).expect_err("per address");
        }
        let _q = b.admit(ip("10.0.0.2"), t0).expect("a token is left");
    }

    #[test]
    fn refusal_slots_are_bounded() {
        let a = adm(1, 1, 1);
        let slots: Vec<_> = (0..REFUSALS_IN_FLIGHT)
            .map(|_| a.refusal_slot().expect("slot"))
            .collect();
        assert!(a.refusal_slot().is_none());
        assert_eq!(Counters::get(&a.counters.refused_silently), 1);
        drop(slots);
        assert!(a.refusal_slot().is_some());
    }
}

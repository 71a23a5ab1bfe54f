//! Node-wide admission: most sessions in all, most per source IP, and a token bucket on new
//! sessions per second. A refused connection gets `TooManyConnections` (3004) with a reason
//! naming the limit; an admitted one holds a [`Ticket`] that gives its place back on drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Deserialize;

use crate::protocol::ErrorCode;

/// `[limits]`: node-wide admission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most client sessions on this node.
    pub max_connections: usize,
    /// Most client sessions from one IP address.
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

#[derive(Debug)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    tokens: f64,
    refilled: Instant,
}

/// The admission counters of a node.
#[derive(Debug)]
pub struct Admission {
    limits: LimitsConfig,
    state: Mutex<State>,
}

/// A place taken by an admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.admission.state.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// Admission with these limits.
    pub fn new(limits: LimitsConfig) -> Arc<Self> {
        let burst = f64::from(limits.new_connections_per_sec) * 2.0;
        Arc::new(Admission {
            limits,
            state: Mutex::new(State {
                total: 0,
                per_ip: HashMap::new(),
                tokens: burst,
                refilled: Instant::now(),
            }),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, (ErrorCode, String)> {
        let l = &self.limits;
        let mut s = self.state.lock();
        let now = Instant::now();
        let rate = f64::from(l.new_connections_per_sec);
        s.tokens = (s.tokens + now.duration_since(s.refilled).as_secs_f64() * rate).min(rate * 2.0);
        s.refilled = now;
        let refuse = |why: String| Err((ErrorCode::TooManyConnections, why));
        if s.total >= l.max_connections {
            return refuse(format!(
                "node full: {} sessions (limits.max_connections)",
                l.max_connections
            ));
        }
        let from_ip = s.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= l.max_connections_per_ip {
            return refuse(format!(
                "{} sessions from {ip} already (limits.max_connections_per_ip)",
                l.max_connections_per_ip
            ));
        }
        if s.tokens < 1.0 {
            return refuse(format!(
                "more than {} new sessions per second (limits.new_connections_per_sec); retry with backoff",
                l.new_connections_per_sec
            ));
        }
        s.tokens -= 1.0;
        s.total += 1;
        *s.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// Sessions admitted now.
    pub fn admitted(&self) -> usize {
        self.state.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn per_ip_and_total_limits_release_on_drop() {
        let a = Admission::new(LimitsConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            new_connections_per_sec: 1000,
        });
        let t1 = a.admit(ip(1)).expect("1");
        let _t2 = a.admit(ip(1)).expect("2");
        let (code, why) = a.admit(ip(1)).expect_err("per ip");
        assert_eq!(code, ErrorCode::TooManyConnections);
        assert!(why.contains("max_connections_per_ip"), "{why}");
        let _t3 = a.admit(ip(2)).expect("other ip");
        let (_, why) = a.admit(ip(3)).expect_err("total");
        assert!(why.contains("limits.max_connections"), "{why}");
        drop(t1);
        assert_eq!(a.admitted(), 2);
        a.admit(ip(1)).expect("a place was given back");
    }

    #[test]
    fn new_connection_rate_is_a_token_bucket() {
        let a = Admission::new(LimitsConfig {
            max_connections: 1000,
            max_connections_per_ip: 1000,
            new_connections_per_sec: 5,
        });
        // Burst of two seconds' worth, then refused (the test runs far faster than 1/5 s).
        let tickets: Vec<_> = (0..10).map(|_| a.admit(ip(1)).expect("burst")).collect();
        let (_, why) = a.admit(ip(1)).expect_err("rate");
        assert!(why.contains("new_connections_per_sec"), "{why}");
        drop(tickets);
    }
}

//! A UDP relay the test controls, the project's WAN emulator (this kernel has no netem):
//! forwards datagrams between clients and one target with a one-way delay, jitter and loss,
//! and drops everything while cut.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A task aborted when dropped.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Delay, jitter (uniform, ±) and loss applied to every datagram, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wan {
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub loss: f64,
}

/// Sends `buf` after the WAN's delay (or drops it), without holding up the relay loop.
fn shape(wan: Wan, buf: &[u8], send: impl FnOnce(Vec<u8>) + Send + 'static) {
    if wan.loss > 0.0 && rand::random::<f64>() < wan.loss {
        return;
    }
    if wan.delay_ms == 0 && wan.jitter_ms == 0 {
        send(buf.to_vec());
        return;
    }
    let j = wan.jitter_ms as f64 * (rand::random::<f64>() * 2.0 - 1.0);
    let d = std::time::Duration::from_micros(((wan.delay_ms as f64 + j).max(0.0) * 1000.0) as u64);
    let data = buf.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        send(data);
    });
}

/// A running relay; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Datagrams dropped while cut (not every test reads it).
    #[allow(dead_code)]
    pub dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Starts relaying to `target` with no delay.
    pub async fn start(target: SocketAddr) -> Relay {
        Self::with_wan(target, Wan::default()).await
    }

    /// Starts relaying to `target` through an emulated WAN.
    pub async fn with_wan(target: SocketAddr, wan: Wan) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (c, d) = (cut.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, (Arc<UdpSocket>, Aborting)> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if c.load(Ordering::Relaxed) {
                    d.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let back = match backs.get(&from) {
                    Some((s, _)) => s.clone(),
                    None => {
                        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind back"));
                        s.connect(target).await.expect("connect back");
                        let (s2, f2, c2, d2) = (s.clone(), front.clone(), c.clone(), d.clone());
                        let t = tokio::spawn(async move {
                            let mut b = vec![0u8; 65536];
                            while let Ok(n) = s2.recv(&mut b).await {
                                if c2.load(Ordering::Relaxed) {
                                    d2.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                let f3 = f2.clone();
                                shape(wan, &b[..n], move |d| {
                                    let _ = f3.try_send_to(&d, from);
                                });
                            }
                        });
                        backs.insert(from, (s.clone(), Aborting(t)));
                        s
                    }
                };
                shape(wan, &buf[..n], move |d| {
                    let _ = back.try_send(&d);
                });
            }
        });
        Relay {
            addr,
            cut,
            dropped,
            task,
        }
    }

    /// Drops every datagram from now on (both ways), or relays again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

//! A UDP relay the test controls: forwards datagrams between clients and one target, and
//! drops everything while cut. How the mesh tests cut a link for real (no netem here).

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

/// A running relay; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    pub dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
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
                                let _ = f2.send_to(&b[..n], from).await;
                            }
                        });
                        backs.insert(from, (s.clone(), Aborting(t)));
                        s
                    }
                };
                let _ = back.send(&buf[..n]).await;
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

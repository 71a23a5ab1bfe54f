//! One link to a peer: a QUIC connection (mutual TLS), one bidirectional stream opened by the
//! dialer, length-prefixed peer frames both ways. A bounded queue feeds the writer; a link
//! whose queue overflows is closed (the peer resynchronises from offsets when it returns).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use wtransport::quinn;

use crate::protocol::{
    PEER_PROTOCOL_VERSION, PeerFrame, PeerInfo, StreamDecoder, decode_peer, encode_peer,
    encode_with_prefix,
};

/// Frames queued for one peer before the link is declared overloaded and closed.
pub const LINK_QUEUE: usize = 64 * 1024;

/// Largest peer frame accepted (8 MiB: a replay batch of large messages).
pub const MAX_PEER_FRAME: usize = 8 * 1024 * 1024;

/// Longest wait for the peer's `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Traffic and health of one link.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Smoothed RTT, microseconds (QUIC's estimate).
    pub rtt_us: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Frames sent.
    pub msgs_out: AtomicU64,
    /// Frames received.
    pub msgs_in: AtomicU64,
    /// Entries sent again to fill a gap (sync answers).
    pub replayed: AtomicU64,
    /// The peer's client sessions, as it last reported.
    pub peer_sessions: AtomicU64,
    /// The peer's deliveries since start, as it last reported.
    pub peer_deliveries: AtomicU64,
}

/// A live link.
#[derive(Debug)]
pub struct Link {
    /// The peer.
    pub peer: PeerInfo,
    /// Node id of the side that dialed (decides which of two simultaneous links stays).
    pub dialer: String,
    /// Channels the peer has local subscribers for.
    pub interest: Mutex<HashSet<String>>,
    /// Counters.
    pub stats: LinkStats,
    conn: quinn::Connection,
    tx: mpsc::Sender<Bytes>,
}

impl Link {
    /// Queues an encoded (unprefixed) frame. False when the link is closed or overloaded; an
    /// overloaded link is closed.
    pub fn send_encoded(&self, frame: &Bytes) -> bool {
        let prefixed = encode_with_prefix(frame);
        match self.tx.try_send(prefixed) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(peer = %self.peer.node_id, "link queue full: closing the link");
                self.close("overloaded");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Encodes and queues a frame.
    pub fn send(&self, frame: &PeerFrame) -> bool {
        self.send_encoded(&encode_peer(frame))
    }

    /// Whether the peer is interested in `channel`.
    pub fn wants(&self, channel: &str) -> bool {
        self.interest.lock().contains(channel)
    }

    /// Closes the connection.
    pub fn close(&self, why: &str) {
        self.conn.close(0u32.into(), why.as_bytes());
    }

    /// Refreshes the RTT estimate from QUIC.
    pub fn sample_rtt(&self) {
        self.stats
            .rtt_us
            .store(self.conn.rtt().as_micros() as u64, Ordering::Relaxed);
    }

    /// Resolves when the connection is closed.
    pub async fn closed(&self) {
        self.conn.closed().await;
    }
}

/// The reading half handed to the mesh.
pub struct Incoming {
    recv: quinn::RecvStream,
    decoder: StreamDecoder,
    buf: BytesMut,
}

impl Incoming {
    /// The next frame if one is already complete in the buffer (no I/O).
    pub fn try_next(&mut self, stats: &LinkStats) -> Option<anyhow::Result<PeerFrame>> {
        let f = match self.decoder.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => return Some(Err(anyhow::anyhow!("framing: {e}"))),
        };
        stats.msgs_in.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_in
            .fetch_add(f.len() as u64 + 4, Ordering::Relaxed);
        Some(decode_peer(&f, MAX_PEER_FRAME).map_err(|e| anyhow::anyhow!("bad peer frame: {e}")))
    }

    /// The next frame; `Ok(None)` when the peer closed.
    pub async fn next(&mut self, stats: &LinkStats) -> anyhow::Result<Option<PeerFrame>> {
        loop {
            if let Some(f) = self
                .decoder
                .next_frame()
                .map_err(|e| anyhow::anyhow!("framing: {e}"))?
            {
                stats.msgs_in.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_in
                    .fetch_add(f.len() as u64 + 4, Ordering::Relaxed);
                return decode_peer(&f, MAX_PEER_FRAME)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("bad peer frame: {e}"));
            }
            self.buf.resize(64 * 1024, 0);
            match self.recv.read(&mut self.buf).await? {
                Some(n) => self.decoder.extend(&self.buf[..n]),
                None => return Ok(None),
            }
        }
    }
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>, link: Arc<Link>) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(256);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        let n: u64 = batch.iter().map(|b| b.len() as u64).sum();
        link.stats
            .msgs_out
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        link.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}

/// Exchanges `Hello` on a fresh connection and starts the writer. `dialer` is the node id of
/// the side that dialed, or `None` when we accepted (then it is the peer).
pub async fn establish(
    conn: quinn::Connection,
    me: &PeerInfo,
    we_dialed: bool,
) -> anyhow::Result<(Arc<Link>, Incoming)> {
    let (mut send, recv) = if we_dialed {
        conn.open_bi().await.context("opening the link stream")?
    } else {
        tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
            .await
            .context("no link stream in time")?
            .context("accepting the link stream")?
    };
    let hello = encode_with_prefix(&encode_peer(&PeerFrame::Hello {
        protocol_version: PEER_PROTOCOL_VERSION,
        node: me.clone(),
    }));
    send.write_all(&hello).await.context("sending Hello")?;
    let mut incoming = Incoming {
        recv,
        decoder: StreamDecoder::new(MAX_PEER_FRAME),
        buf: BytesMut::new(),
    };
    let stats = LinkStats::default();
    let first = tokio::time::timeout(HELLO_TIMEOUT, incoming.next(&stats))
        .await
        .context("no Hello in time")??;
    let peer = match first {
        Some(PeerFrame::Hello {
            protocol_version,
            node,
        }) => {
            if protocol_version != PEER_PROTOCOL_VERSION {
                bail!(
                    "peer {} speaks mesh protocol {protocol_version}, this node {PEER_PROTOCOL_VERSION}",
                    node.node_id
                );
            }
            node
        }
        Some(other) => bail!("expected Hello, got {other:?}"),
        None => bail!("closed before Hello"),
    };
    if peer.node_id == me.node_id {
        bail!("connected to itself ({})", me.node_id);
    }
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let dialer = if we_dialed {
        me.node_id.clone()
    } else {
        peer.node_id.clone()
    };
    let link = Arc::new(Link {
        peer,
        dialer,
        interest: Mutex::new(HashSet::new()),
        stats,
        conn,
        tx,
    });
    tokio::spawn(write_loop(send, rx, link.clone()));
    Ok((link, incoming))
}

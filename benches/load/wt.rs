//! WebTransport sessions for the generator: a pool of a few client endpoints (one UDP socket
//! each) that carries every QUIC connection, and one task per session that reads its channel
//! stream, its datagrams (through quinn directly, as the Rust client does) and its control
//! stream (answering pings), and optionally publishes datagrams at a fixed rate.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use edgegate::protocol::{Mode, ServerFrame, StreamDecoder, decode_server, encode_with_prefix};
use tokio_util::sync::CancellationToken;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use crate::proto;
use crate::stats::{Run, Tally};

/// Largest frame accepted from the server.
const MAX_FRAME: usize = 1 << 20;

/// A few client endpoints sharing the generator's sessions round-robin.
pub struct Pool {
    eps: Vec<Endpoint<Client>>,
    url: String,
}

impl Pool {
    /// `sockets` endpoints, each on its own UDP socket with large buffers, trusting the
    /// server certificate with this SHA-256.
    pub fn new(
        sockets: usize,
        server: std::net::SocketAddr,
        cert_sha256: &str,
    ) -> anyhow::Result<Pool> {
        let hash: [u8; 32] = hex::decode(cert_sha256.trim())
            .context("cert hash")?
            .try_into()
            .map_err(|_| anyhow::anyhow!("a SHA-256 is 32 bytes"))?;
        let mut eps = Vec::new();
        for _ in 0..sockets.max(1) {
            let sock = edgegate::transport::webtransport::bind_udp("127.0.0.1:0".parse()?)?;
            let cfg = ClientConfig::builder()
                .with_bind_socket(sock)
                .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
                .max_idle_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| anyhow::anyhow!("idle timeout: {e}"))?
                .build();
            eps.push(Endpoint::client(cfg)?);
        }
        Ok(Pool {
            eps,
            url: format!("https://{server}/wt"),
        })
    }

    /// Opens session number `i` (spread over the endpoints) and subscribes to `channel`.
    pub async fn open(&self, i: usize, channel: Option<&str>) -> anyhow::Result<Session> {
        let ep = &self.eps[i % self.eps.len()];
        let conn = ep.connect(&self.url).await.context("connect")?;
        let (mut send, recv) = conn.open_bi().await?.await?;
        send.write_all(&encode_with_prefix(&proto::hello())).await?;
        let mut s = Session {
            conn,
            send,
            recv,
            ctrl: StreamDecoder::new(MAX_FRAME),
            uni: None,
            buf: vec![0; 4096],
        };
        match s.next_control().await? {
            ServerFrame::Welcome { .. } => {}
            ServerFrame::Error { code, reason, .. } => bail!("refused {code}: {reason}"),
            other => bail!("expected Welcome, got {other:?}"),
        }
        if let Some(ch) = channel {
            s.send
                .write_all(&encode_with_prefix(&proto::subscribe(1, ch)))
                .await?;
            // `Subscribed` arrives on the channel's own stream (or an error on control).
            let conn = s.conn.clone();
            let uni = tokio::select! {
                u = conn.accept_uni() => u?,
                f = s.next_control() => bail!("subscribe refused: {:?}", f?),
            };
            let mut dec = StreamDecoder::new(MAX_FRAME);
            let mut uni = uni;
            loop {
                if let Some(f) = dec.next_frame()? {
                    match decode_server(&f, MAX_FRAME)? {
                        ServerFrame::Subscribed { .. } => break,
                        other => bail!("expected Subscribed, got {other:?}"),
                    }
                }
                match uni.read(&mut s.buf).await? {
                    Some(n) => dec.extend(&s.buf[..n]),
                    None => bail!("channel stream ended"),
                }
            }
            s.uni = Some((uni, dec));
        }
        Ok(s)
    }
}

/// One open session.
pub struct Session {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    ctrl: StreamDecoder,
    uni: Option<(RecvStream, StreamDecoder)>,
    buf: Vec<u8>,
}

/// A session's own publishing: datagrams to `channel` at `hz`, starting after `offset`.
pub struct Publishing {
    /// Channel.
    pub channel: String,
    /// Messages per second.
    pub hz: f64,
    /// Start delay, to spread publishers over the period.
    pub offset: Duration,
    /// Payload size.
    pub size: usize,
    /// Counts sent messages.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether sends are in the measured window (read on every send).
    pub measuring: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Strips the WebTransport quarter-stream-id varint from a raw QUIC datagram.
fn strip_session_prefix(d: &[u8]) -> Option<&[u8]> {
    let first = *d.first()?;
    d.get(1usize << (first >> 6)..)
}

impl Session {
    async fn next_control(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            if let Some(f) = self.ctrl.next_frame()? {
                return Ok(decode_server(&f, MAX_FRAME)?);
            }
            match self.recv.read(&mut self.buf).await? {
                Some(n) => self.ctrl.extend(&self.buf[..n]),
                None => bail!("control stream ended"),
            }
        }
    }

    /// Writes frames on the control stream, each length-prefixed, in one write.
    pub async fn send_frames(&mut self, frames: &[Bytes]) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(frames.iter().map(|f| f.len() + 4).sum());
        for f in frames {
            out.extend_from_slice(&encode_with_prefix(f));
        }
        self.send.write_all(&out).await?;
        Ok(())
    }

    /// Sends one frame as a datagram.
    pub fn send_datagram(&self, frame: &[u8]) -> anyhow::Result<()> {
        self.conn.send_datagram(frame)?;
        Ok(())
    }

    /// Reads everything the session receives until `stop` (or the server ends it), counting
    /// payloads into `run`; publishes datagrams if asked. Returns whether the server ended it.
    pub async fn run(
        self,
        run: &Run,
        publishing: Option<Publishing>,
        stop: CancellationToken,
    ) -> bool {
        let Session {
            conn,
            mut send,
            mut recv,
            mut ctrl,
            mut uni,
            mut buf,
        } = self;
        let mut tally = Tally::new(run);
        let mut ubuf = vec![0u8; 16 * 1024];
        let q = conn.quic_connection().clone();
        let mut tick = publishing.as_ref().map(|p| {
            let period = Duration::from_secs_f64(1.0 / p.hz.max(0.001));
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p.offset, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            i
        });
        let mut seq = 0u64;
        let ended = loop {
            let uni_read = async {
                match &mut uni {
                    Some((u, _)) => u.read(&mut ubuf).await,
                    None => std::future::pending().await,
                }
            };
            let ticked = async {
                match &mut tick {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break false,
                r = uni_read => match r {
                    Ok(Some(n)) => {
                        let Some((_, dec)) = &mut uni else { break true };
                        dec.extend(&ubuf[..n]);
                        loop {
                            match dec.next_frame() {
                                Ok(Some(f)) => match proto::message_data(&f) {
                                    Some(d) => tally.payload(d),
                                    None => {
                                        if let Ok(ServerFrame::Dropped { count, .. }) = decode_server(&f, MAX_FRAME) {
                                            tally.dropped(count);
                                        }
                                    }
                                },
                                Ok(None) => break,
                                Err(_) => {
                                    tally.bad();
                                    break;
                                }
                            }
                        }
                        tally.flush_if_due();
                    }
                    _ => break true,
                },
                d = q.read_datagram() => match d {
                    Ok(d) => {
                        match strip_session_prefix(&d).and_then(proto::message_data) {
                            Some(p) => tally.payload(p),
                            None => tally.bad(),
                        }
                        tally.flush_if_due();
                    }
                    Err(_) => break true,
                },
                r = recv.read(&mut buf) => match r {
                    Ok(Some(n)) => {
                        ctrl.extend(&buf[..n]);
                        let mut pongs = Vec::new();
                        while let Ok(Some(f)) = ctrl.next_frame() {
                            match decode_server(&f, MAX_FRAME) {
                                Ok(ServerFrame::Ping { nonce }) => pongs.push(proto::pong(nonce)),
                                Ok(ServerFrame::Dropped { count, .. }) => tally.dropped(count),
                                Ok(ServerFrame::Error { fatal: true, .. }) => break,
                                _ => {}
                            }
                        }
                        for p in pongs {
                            if send.write_all(&encode_with_prefix(&p)).await.is_err() {
                                break;
                            }
                        }
                    }
                    _ => break true,
                },
                _ = ticked => {
                    if let Some(p) = &publishing {
                        let phase = if p.measuring.load(std::sync::atomic::Ordering::Relaxed) {
                            proto::MEASURED
                        } else {
                            proto::WARMUP
                        };
                        let data = proto::payload(p.size, phase, seq, run.now_us());
                        seq += 1;
                        let f = proto::publish(&p.channel, Mode::Datagram, data);
                        if conn.send_datagram(&f).is_ok() && phase == proto::MEASURED {
                            p.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        };
        tally.flush();
        conn.close(0u32.into(), b"done");
        ended
    }
}

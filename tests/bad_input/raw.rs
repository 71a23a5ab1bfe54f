//! What the catalogue needs besides the common harness: raw WebTransport and WebSocket
//! clients that send arbitrary bytes and report how the server answered, a healthy
//! publisher/subscriber pair that must not notice any of it, and tokens.

use std::time::Duration;

use bytes::Bytes;
use edgegate::client::{Client, SubscribeOptions, TransportChoice};
use edgegate::protocol::{
    ClientFrame, ErrorCode, Mode, PROTOCOL_VERSION, ServerFrame, StreamDecoder, decode_server,
    encode_client,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{TestNode, WAIT, next_message};

/// How the server answered a raw connection.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames received, in order.
    pub frames: Vec<ServerFrame>,
    /// WebSocket close code, or WebTransport application close code.
    pub close: Option<u64>,
}

impl Outcome {
    /// The code of the fatal `Error` frame, if one came.
    pub fn fatal(&self) -> Option<ErrorCode> {
        self.frames.iter().find_map(|f| match f {
            ServerFrame::Error {
                code, fatal: true, ..
            } => ErrorCode::from_code(*code),
            _ => None,
        })
    }

    /// Asserts the session was closed with `want`: a fatal `Error` frame and the matching
    /// close code.
    pub fn assert_closed_with(&self, want: ErrorCode, transport: TransportChoice) {
        assert_eq!(self.fatal(), Some(want), "fatal error frame: {self:?}");
        let close = match transport {
            TransportChoice::WebSocket => u64::from(want.ws_close_code()),
            _ => u64::from(want.code()),
        };
        assert_eq!(self.close, Some(close), "close code: {self:?}");
    }
}

/// A `Hello` with a token.
pub fn hello(token: &str) -> Bytes {
    hello_version(PROTOCOL_VERSION, token)
}

/// A `Hello` with any protocol version.
pub fn hello_version(protocol_version: u16, token: &str) -> Bytes {
    encode_client(&ClientFrame::Hello {
        protocol_version,
        token: token.into(),
        client_name: "bad-input".into(),
        resume: None,
        single_stream: true,
    })
}

/// A raw WebTransport connection: the control stream, unframed.
pub struct RawWt {
    conn: wtransport::Connection,
    send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

/// The client config that trusts `node`'s certificate.
pub fn wt_client_config(node: &TestNode) -> wtransport::ClientConfig {
    let hash: [u8; 32] = hex::decode(&node.cert_sha256)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build()
}

impl RawWt {
    /// Connects to `path` and opens the control stream (which the server sees only once
    /// bytes are written on it).
    pub async fn connect(node: &TestNode) -> RawWt {
        Self::try_connect(node, "/wt").await.expect("wt connect")
    }

    /// Connects to any path.
    pub async fn try_connect(node: &TestNode, path: &str) -> Result<RawWt, String> {
        let endpoint = wtransport::Endpoint::client(wt_client_config(node)).expect("endpoint");
        let url = format!("https://{}{path}", node.addr);
        let conn = tokio::time::timeout(WAIT, endpoint.connect(&url))
            .await
            .expect("connect in time")
            .map_err(|e| e.to_string())?;
        let (send, recv) = conn
            .open_bi()
            .await
            .expect("open bi")
            .await
            .expect("bi stream");
        Ok(RawWt {
            conn,
            send,
            recv,
            _endpoint: endpoint,
        })
    }

    /// Writes raw bytes on the control stream.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    /// Writes one frame with its length prefix.
    pub async fn frame(&mut self, body: &[u8]) {
        self.write(&edgegate::protocol::encode_with_prefix(body))
            .await;
    }

    /// Ends the control stream.
    pub async fn finish(&mut self) {
        let _ = self.send.finish().await;
    }

    /// Reads frames until one matches `stop`, without waiting for the end.
    pub async fn until(&mut self, stop: impl Fn(&ServerFrame) -> bool) -> Vec<ServerFrame> {
        let mut dec = StreamDecoder::new(1 << 20);
        let mut buf = vec![0u8; 64 * 1024];
        let mut frames = Vec::new();
        loop {
            while let Ok(Some(b)) = dec.next_frame() {
                let f = decode_server(&b, 1 << 20).expect("server frame");
                let done = stop(&f);
                frames.push(f);
                if done {
                    return frames;
                }
            }
            match tokio::time::timeout(WAIT, self.recv.read(&mut buf))
                .await
                .expect("frame in time")
            {
                Ok(Some(n)) => dec.extend(&buf[..n]),
                _ => panic!("stream ended before the expected frame: {frames:?}"),
            }
        }
    }

    /// Reads until the server ends the stream and closes the connection.
    pub async fn outcome(mut self) -> Outcome {
        let mut out = Outcome::default();
        let mut dec = StreamDecoder::new(1 << 20);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Ok(Some(b)) = dec.next_frame() {
                out.frames
                    .push(decode_server(&b, 1 << 20).expect("server frame"));
            }
            match tokio::time::timeout(WAIT, self.recv.read(&mut buf))
                .await
                .expect("server ends the stream in time")
            {
                Ok(Some(n)) => dec.extend(&buf[..n]),
                _ => break,
            }
        }
        out.close = wt_close_code(&self.conn).await;
        out
    }
}

/// The application close code of a WebTransport connection, once it is closed.
pub async fn wt_close_code(conn: &wtransport::Connection) -> Option<u64> {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("server closes in time")
    {
        wtransport::error::ConnectionError::ApplicationClosed(c) => Some(c.code().into_inner()),
        _ => None,
    }
}

/// A raw WebSocket connection.
pub struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl RawWs {
    /// Connects to `/ws`.
    pub async fn connect(node: &TestNode) -> RawWs {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr)),
        )
        .await
        .expect("connect in time")
        .expect("ws connect");
        RawWs { ws }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: Ws) {
        self.ws.send(m).await.expect("send");
    }

    /// Sends one binary frame.
    pub async fn frame(&mut self, body: &[u8]) {
        self.send(Ws::Binary(Bytes::copy_from_slice(body))).await;
    }

    /// Reads frames until one matches `stop`.
    pub async fn until(&mut self, stop: impl Fn(&ServerFrame) -> bool) -> Vec<ServerFrame> {
        let mut frames = Vec::new();
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame in time");
            match m {
                Some(Ok(Ws::Binary(b))) => {
                    let f = decode_server(&b, 1 << 20).expect("server frame");
                    let done = stop(&f);
                    frames.push(f);
                    if done {
                        return frames;
                    }
                }
                Some(Ok(_)) => {}
                _ => panic!("closed before the expected frame: {frames:?}"),
            }
        }
    }

    /// Reads until the server closes.
    pub async fn outcome(mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some(m) = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("server closes in time")
        {
            match m {
                Ok(Ws::Binary(b)) => out
                    .frames
                    .push(decode_server(&b, 1 << 20).expect("server frame")),
                Ok(Ws::Close(Some(c))) => out.close = Some(u64::from(u16::from(c.code))),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }
}

/// Is this frame the `Welcome`?
pub fn is_welcome(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Welcome { .. })
}

/// A publisher sending a reliable message every 20 ms (well inside the default rate) and a
/// subscriber on the same node that must receive every one, in order, with no gap, while a
/// bad client does its worst.
pub struct Healthy {
    stop: oneshot::Sender<()>,
    publisher: JoinHandle<Client>,
    received: watch::Receiver<u64>,
    subscriber: JoinHandle<()>,
    channel: String,
}

impl Healthy {
    /// Starts the pair with anonymous clients (a dev node).
    pub async fn start(node: &TestNode) -> Healthy {
        Self::start_with(node, "").await
    }

    /// Starts the pair with `token`.
    pub async fn start_with(node: &TestNode, token: &str) -> Healthy {
        let channel = format!("chat:healthy-{}", rand::random::<u32>());
        let connect = |t| {
            let opts = node.options(t).token(token);
            async move {
                tokio::time::timeout(WAIT, Client::connect(opts))
                    .await
                    .expect("connect in time")
                    .expect("healthy client connects")
            }
        };
        let mut sub = connect(TransportChoice::WebTransport).await;
        sub.subscribe(&channel, SubscribeOptions::default())
            .await
            .expect("healthy subscribe");
        let publisher = connect(TransportChoice::WebSocket).await;
        let (tx, received) = watch::channel(0u64);
        let subscriber = tokio::spawn(async move {
            let mut expected = 1;
            loop {
                let m = next_message(&mut sub).await;
                assert_eq!(m.offset, expected, "healthy subscriber: gap or reorder");
                tx.send_replace(m.offset);
                expected += 1;
            }
        });
        let (stop, mut stopped) = oneshot::channel();
        let ch = channel.clone();
        let publisher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = &mut stopped => return publisher,
                    _ = tick.tick() => {}
                }
                i += 1;
                publisher
                    .publish_nowait(&ch, Mode::Reliable, None, i.to_string())
                    .await
                    .expect("healthy publish");
            }
        });
        Healthy {
            stop,
            publisher,
            received,
            subscriber,
            channel,
        }
    }

    /// Stops the publisher and asserts the subscriber got every message it sent.
    pub async fn check(mut self) {
        let _ = self.stop.send(());
        let publisher = self.publisher.await.expect("publisher task");
        let last = publisher
            .publish(&self.channel, Mode::Reliable, None, "last")
            .await
            .expect("healthy publisher still served")
            .offset;
        assert!(last > 1, "the publisher published meanwhile");
        let deadline = tokio::time::Instant::now() + WAIT;
        while *self.received.borrow() < last {
            tokio::select! {
                r = self.received.changed() => if r.is_err() {
                    // The subscriber task ended: surface its panic.
                    match (&mut self.subscriber).await {
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        other => panic!("healthy subscriber ended: {other:?}"),
                    }
                },
                _ = tokio::time::sleep_until(deadline) => panic!(
                    "healthy subscriber stuck at {} of {last}", *self.received.borrow()
                ),
            }
        }
        self.subscriber.abort();
    }
}

/// HS256 secret of the authenticated test nodes.
pub const SECRET: &str = "bad-input-test-secret-0123456789abcdef";

/// Unix time now, seconds.
pub fn now() -> u64 {
    edgegate::session::now_ms() / 1000
}

/// A token with explicit claims, signed with `secret`.
pub fn token_with(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// A token for `sub` allowing everything on `allow`, valid for `ttl` seconds.
pub fn token(sub: &str, allow: &[&str], ttl: u64) -> String {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    edgegate::auth::mint_hs256(SECRET, sub, &allow, ttl, now()).expect("mint")
}

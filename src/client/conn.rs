//! Connection set-up (WebTransport, WebSocket), the handshake and the stream readers.

use super::*;

fn client_config(cert: &CertCheck) -> wtransport::ClientConfig {
    let b = wtransport::ClientConfig::builder().with_bind_default();
    let b = match cert {
        CertCheck::System => b.with_native_certs(),
        CertCheck::Sha256(h) => {
            b.with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(*h)])
        }
        CertCheck::Insecure => b.with_no_cert_validation(),
    };
    b.keep_alive_interval(Some(Duration::from_secs(5))).build()
}

/// TLS for `wss://`, checking the server as WebTransport does: system roots, a pinned
/// SHA-256 (same rules as `serverCertificateHashes`: ECDSA, at most 14 days), or nothing.
fn wss_client_config(cert: &CertCheck) -> rustls::ClientConfig {
    use wtransport::tls::client::{NoServerVerification, ServerHashVerification};
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("invariant: ring supports the default TLS versions");
    let mut c = match cert {
        CertCheck::System => b
            .with_root_certificates(wtransport::tls::build_native_cert_store())
            .with_no_client_auth(),
        CertCheck::Sha256(h) => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerHashVerification::new([
                wtransport::tls::Sha256Digest::new(*h),
            ])))
            .with_no_client_auth(),
        CertCheck::Insecure => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification::new()))
            .with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// A refused upgrade whose body is the server's JSON error (`{code, reason}`, e.g. a `429`
/// with `TooManyConnections`) becomes [`Error::Server`]; anything else a connect error.
fn refused_upgrade(e: tokio_tungstenite::tungstenite::Error) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        code: u16,
        reason: String,
    }
    if let tokio_tungstenite::tungstenite::Error::Http(resp) = &e
        && let Some(b) = resp.body()
        && let Ok(Body { code, reason }) = serde_json::from_slice::<Body>(b)
    {
        return Error::Server { code, reason };
    }
    Error::Connect(e.to_string())
}

/// Strips the WebTransport quarter-stream-id varint from a raw QUIC datagram.
fn strip_session_prefix(d: &[u8]) -> Option<&[u8]> {
    let first = *d.first()?;
    let len = 1usize << (first >> 6);
    d.get(len..)
}

impl Client {
    fn hello(opts: &Options) -> ClientFrame {
        ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            token: opts.token.clone(),
            client_name: opts.client_name.clone(),
            resume: opts.resume.clone(),
            single_stream: opts.single_stream,
        }
    }

    pub(super) async fn connect_wt(opts: &Options) -> Result<Client, Error> {
        let (_, hostport) = opts.parts()?;
        let endpoint = wtransport::Endpoint::client(client_config(&opts.cert))
            .map_err(|e| Error::Connect(e.to_string()))?;
        let url = format!("https://{hostport}/wt");
        let conn = tokio::time::timeout(REQUEST_TIMEOUT, endpoint.connect(&url))
            .await
            .map_err(|_| Error::Connect("WebTransport connect timed out".into()))?
            .map_err(|e| Error::Connect(e.to_string()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            sender: Sender::Wt {
                conn: conn.clone(),
                control: tokio::sync::Mutex::new(send),
            },
            pending: Mutex::new(HashMap::new()),
            events: tx,
            max_frame: 16 * 1024 * 1024,
        });
        inner.send(&Self::hello(opts), false).await?;
        let (wtx, wrx) = oneshot::channel();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(read_stream(inner.clone(), recv, Some(wtx))));
        // Server-opened streams, one per subscription.
        let (i2, c2) = (inner.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(s) = c2.accept_uni().await {
                tokio::spawn(read_stream(i2.clone(), s, None));
            }
        }));
        // Datagrams, read through quinn directly (cheaper than wtransport's path).
        let (i3, q) = (inner.clone(), conn.quic_connection().clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(d) = q.read_datagram().await {
                if let Some(body) = strip_session_prefix(&d)
                    && let Ok(f) = decode_server(body, i3.max_frame)
                    && i3.dispatch(f).await.is_err()
                {
                    break;
                }
            }
        }));
        let welcome = Self::await_welcome(wrx).await?;
        // Keep the endpoint alive as long as the connection.
        let _ = endpoint;
        Ok(Client {
            inner,
            events: rx,
            next_id: AtomicU32::new(1),
            welcome,
            transport: TransportChoice::WebTransport,
            tasks,
        })
    }

    pub(super) async fn connect_ws(opts: &Options) -> Result<Client, Error> {
        let (secure, hostport) = opts.parts()?;
        let url = format!("{}://{hostport}/ws", if secure { "wss" } else { "ws" });
        let connector = secure
            .then(|| tokio_tungstenite::Connector::Rustls(Arc::new(wss_client_config(&opts.cert))));
        let connect = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector);
        let (ws, _) = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| Error::Connect("WebSocket connect timed out".into()))?
            .map_err(refused_upgrade)?;
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            sender: Sender::Ws(tokio::sync::Mutex::new(sink)),
            pending: Mutex::new(HashMap::new()),
            events: tx,
            max_frame: 16 * 1024 * 1024,
        });
        inner.send(&Self::hello(opts), false).await?;
        let (wtx, wrx) = oneshot::channel();
        let i2 = inner.clone();
        let task = tokio::spawn(async move {
            let mut welcome = Some(wtx);
            while let Some(Ok(m)) = stream.next().await {
                let b = match m {
                    WsMessage::Binary(b) => b,
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                let Ok(f) = decode_server(&b, i2.max_frame) else {
                    break;
                };
                if let Some(w) = welcome.take() {
                    let _ = w.send(f);
                    continue;
                }
                if i2.dispatch(f).await.is_err() {
                    break;
                }
            }
            let _ = i2.events.send(Event::Closed).await;
        });
        let welcome = Self::await_welcome(wrx).await?;
        Ok(Client {
            inner,
            events: rx,
            next_id: AtomicU32::new(1),
            welcome,
            transport: TransportChoice::WebSocket,
            tasks: vec![task],
        })
    }

    async fn await_welcome(rx: oneshot::Receiver<ServerFrame>) -> Result<Welcome, Error> {
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(ServerFrame::Welcome {
                session_id,
                node_id,
                region,
                limits,
                heartbeat_ms,
            })) => Ok(Welcome {
                session_id,
                node_id,
                region,
                limits,
                heartbeat_ms,
            }),
            Ok(Ok(ServerFrame::Error { code, reason, .. })) => Err(Error::Server { code, reason }),
            Ok(Ok(ServerFrame::GoingAway {
                reason,
                reconnect_to,
                ..
            })) => Err(Error::GoingAway {
                reason,
                reconnect_to,
            }),
            Ok(Ok(other)) => Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
        }
    }
}

async fn read_stream(
    inner: Arc<Inner>,
    recv: wtransport::RecvStream,
    welcome: Option<oneshot::Sender<ServerFrame>>,
) {
    let control = welcome.is_some();
    read_frames(&inner, recv, welcome).await;
    if control {
        let _ = inner.events.send(Event::Closed).await;
    }
}

async fn read_frames(
    inner: &Inner,
    mut recv: wtransport::RecvStream,
    mut welcome: Option<oneshot::Sender<ServerFrame>>,
) {
    let mut dec = StreamDecoder::new(inner.max_frame);
    let mut buf = BytesMut::zeroed(64 * 1024);
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(b)) => {
                    let Ok(f) = decode_server(&b, inner.max_frame) else {
                        return;
                    };
                    if let Some(w) = welcome.take() {
                        let _ = w.send(f);
                        continue;
                    }
                    if inner.dispatch(f).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.extend(&buf[..n]),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_varint_session_prefix() {
        assert_eq!(
            super::strip_session_prefix(&[0x00, 7, 8]),
            Some(&[7u8, 8][..])
        );
        assert_eq!(
            super::strip_session_prefix(&[0x40, 0x01, 9]),
            Some(&[9u8][..])
        );
        assert_eq!(
            super::strip_session_prefix(&[0x80, 0, 0, 1, 5]),
            Some(&[5u8][..])
        );
        assert_eq!(super::strip_session_prefix(&[0x80, 0]), None);
        assert_eq!(super::strip_session_prefix(&[]), None);
    }
}

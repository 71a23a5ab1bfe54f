//! The TCP listener: HTTP/1.1 (the API, the web assets, the `/ws` upgrade), in plain text on
//! a dev node and over TLS (HTTPS/WSS) when a certificate is configured. No business rules.
//!
//! Our own accept loop instead of `axum::serve`, for three limits it lacks:
//! - the TLS handshake runs in the connection's own task, never in the accept loop, and is
//!   cut at the handshake timeout;
//! - a client that does not finish its request headers within the handshake timeout is
//!   closed (slowloris on HTTP);
//! - at most [`MAX_HTTP_CONNECTIONS`] connections are handshaking or being served at once;
//!   past that new ones are closed at once. (An upgraded WebSocket leaves this count: client
//!   sessions are bounded by `[limits]`, see [`crate::session::admission`].)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::hub::Counters;

/// TCP connections handshaking or serving HTTP requests at once (not upgraded WebSockets).
/// A few thousand covers API clients and connects in flight; each costs a task and buffers.
pub const MAX_HTTP_CONNECTIONS: usize = 4096;

/// The router as a hyper service for one connection: every request carries the peer address
/// (`ConnectInfo`), as `axum::serve` would add it.
#[derive(Clone)]
struct PerConnection {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PerConnection {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<hyper::Request<Incoming>>>::Future;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, req)
    }
}

/// Serves `app` on `listener` until `stop`, TLS if `tls` is given. Connections run on
/// `tracker`; on `stop` they finish the request in progress and close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    counters: Arc<Counters>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a reset before accept: wait a moment rather than
                    // spin, and keep serving.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.handshake_failed("http_connections_full");
            continue;
        };
        // Small frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let (app, acceptor, counters, stop) = (
            app.clone(),
            acceptor.clone(),
            counters.clone(),
            stop.clone(),
        );
        tracker.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => http(tcp, peer, app, handshake_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => http(tls, peer, app, handshake_timeout, stop).await,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            counters.handshake_failed("tls_handshake");
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            counters.handshake_failed("tls_handshake_timeout");
                        }
                    }
                }
            }
        });
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), PerConnection { app, peer })
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

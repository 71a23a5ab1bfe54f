//! WebSocket fallback (HTTP/1.1 upgrade on `/ws`, axum): the same session as WebTransport,
//! one frame per binary message. No business rules here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tracing::debug;

use crate::hub::Item;
use crate::protocol::{ErrorCode, ServerFrame, encode_server};
use crate::session::admission::Refusal;
use crate::session::{self, FrameRead, FrameWrite, Kind, Shared, TransportError, WriteReport};

/// tungstenite's read buffer per connection, bytes. Its default (128 KiB) is zero-filled up to
/// capacity on every read attempt and so is resident for every connection: 1 KiB is the
/// largest share of an idle connection's memory that is still one read for a burst of
/// requests (clients publish at most `publish_rate`/s). A larger frame still arrives: the
/// buffer grows for it.
const READ_BUFFER: usize = 1024;

/// The `/ws` route.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(shared)
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let max = shared.config.max_frame as usize;
    let permit = match shared.admission.admit(peer.ip(), std::time::Instant::now()) {
        Ok(p) => p,
        Err(refusal) => return refuse(ws, &shared, refusal),
    };
    // tungstenite's own limit sits above ours so an oversize frame reaches the session and
    // gets a clear FrameTooLarge error; far larger ones are cut off by tungstenite.
    ws.max_message_size(max * 2)
        .max_frame_size(max * 2)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let reader = Reader { stream, max };
            let writer = Writer { sink };
            session::run(shared, Kind::WebSocket, peer, reader, writer).await;
            drop(permit);
        })
}

/// Tells a refused client why. While refusal slots last, the upgrade completes and the
/// client gets a fatal `Error` frame and close code 4204 (`TooManyConnections`), which a
/// browser can read (it cannot read the status of a failed upgrade). Past that, a plain
/// `429` with the same JSON error body as the HTTP API: cheap, and still readable by
/// non-browser clients.
fn refuse(ws: WebSocketUpgrade, shared: &Shared, refusal: Refusal) -> Response {
    let code = refusal.code();
    let reason = refusal.reason();
    debug!(reason = %reason, "refused: {}", refusal.label());
    let Some(slot) = shared.admission.refusal_slot() else {
        let body =
            serde_json::json!({ "code": code.code(), "name": code.name(), "reason": reason });
        return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    };
    ws.on_upgrade(move |socket| async move {
        let (sink, _stream) = socket.split();
        let mut writer = Writer { sink };
        let frame = encode_server(&ServerFrame::fatal(code, reason.clone()));
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            writer.close(code, &reason, Some(frame)),
        )
        .await;
        drop(slot);
    })
}

struct Reader {
    stream: SplitStream<WebSocket>,
    max: usize,
}

impl FrameRead for Reader {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            match self.stream.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(read_error(e, self.max)),
                Some(Ok(Message::Binary(b))) => {
                    if b.len() > self.max {
                        return Err(TransportError::Protocol {
                            code: ErrorCode::FrameTooLarge,
                            reason: format!(
                                "frame of {} bytes exceeds the {}-byte limit",
                                b.len(),
                                self.max
                            ),
                        });
                    }
                    return Ok(Some(b));
                }
                Some(Ok(Message::Text(_))) => {
                    return Err(TransportError::Protocol {
                        code: ErrorCode::BadTransport,
                        reason: "text messages are not part of the protocol; send binary frames"
                            .into(),
                    });
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                // Pings are answered by tungstenite.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            }
        }
    }
}

/// A message over tungstenite's own cap (twice `max_frame`) fails inside tungstenite; it is
/// still an oversize frame to the client, not a broken connection.
fn read_error(e: axum::Error, max: usize) -> TransportError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(c)) => TransportError::Protocol {
            code: ErrorCode::FrameTooLarge,
            reason: format!("frame exceeds the {max}-byte limit ({c})"),
        },
        _ => TransportError::Io(inner.to_string()),
    }
}

struct Writer {
    sink: SplitSink<WebSocket, Message>,
}

fn io(e: axum::Error) -> TransportError {
    TransportError::Io(e.to_string())
}

impl FrameWrite for Writer {
    async fn write(
        &mut self,
        items: &[Item],
        datagrams: &[Bytes],
    ) -> Result<WriteReport, TransportError> {
        // `feed` queues without flushing; one flush writes the whole batch.
        for item in items {
            if let Item::Frame(_, b) = item {
                self.sink
                    .feed(Message::Binary(b.clone()))
                    .await
                    .map_err(io)?;
            }
        }
        for d in datagrams {
            self.sink
                .feed(Message::Binary(d.clone()))
                .await
                .map_err(io)?;
        }
        self.sink.flush().await.map_err(io)?;
        Ok(WriteReport::default())
    }

    async fn close(&mut self, code: ErrorCode, reason: &str, error_frame: Option<Bytes>) {
        if let Some(f) = error_frame {
            let _ = self.sink.feed(Message::Binary(f)).await;
        }
        // Close reasons are limited to 123 bytes by RFC 6455.
        let mut r = reason.to_string();
        while r.len() > 123 {
            r.pop();
        }
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: code.ws_close_code(),
                reason: r.into(),
            })))
            .await;
        let _ = self.sink.close().await;
    }
}

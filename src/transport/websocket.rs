//! WebSocket fallback (HTTP/1.1 upgrade on `/ws`, axum): the same session as WebTransport,
//! one frame per binary message. No business rules here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};

use crate::hub::Item;
use crate::protocol::ErrorCode;
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
                Some(Err(e)) => return Err(TransportError::Io(e.to_string())),
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

//! HTTP on the TCP port: health, the dev certificate hash, the embedded web assets, and the
//! backend API (`/api/*`, Bearer API key).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 when accepting sessions, 503 while draining |
//! | GET | `/cert.sha256` | hex SHA-256 of the WebTransport certificate |
//! | GET | `/metrics` | Prometheus text format |
//! | POST | `/api/publish` | `{channel, data \| data_b64, mode?, key?}` → `{epoch, offset}` |
//! | GET | `/api/channels` | channels with subscribers, presence, position |
//! | GET | `/api/channels/{name}/presence` | members |
//! | GET | `/api/channels/{name}/history?limit=` | newest messages |
//! | POST | `/api/drain` | drain: refuse new sessions, `GoingAway` spread over the lame-duck window, exit |
//! | POST | `/api/disconnect` | `{reason?}`: every session gets `GoingAway` and reconnects |
//! | GET | `/api/mesh` | mesh members and links (RTT, traffic, replays) |
//! | GET | `/api/stats` | node counters (no key needed on a dev node) |
//! | GET | `/mesh` | live view of the nodes and links (page; its data needs the key unless dev) |
//!
//! Errors are JSON `{code, name, reason}` with the protocol's stable error codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::auth::constant_time_eq;
use crate::hub::{Counters, Publish};
use crate::protocol::{ErrorCode, Message, Mode};
use crate::session::{Shared, now_ms};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Largest request body accepted by the API (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// The mesh as `/api/mesh` shows it.
pub trait MeshView: Send + Sync + std::fmt::Debug {
    /// Members, links and their counters.
    fn json(&self) -> serde_json::Value;
}

/// What the HTTP handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// Sessions and hub.
    pub shared: Arc<Shared>,
    /// Bearer key; `None` refuses every `/api` call.
    pub key: Option<String>,
    /// Hex SHA-256 of the current certificate (changes on reload).
    pub cert_sha256: RwLock<String>,
    /// False while draining.
    pub ready: AtomicBool,
    /// Read-only operator views (`/api/stats`, the `/mesh` page's data) need no key (dev node).
    pub open_reads: bool,
    /// Cancelled by `POST /api/drain`: the node drains and exits.
    pub drain: tokio_util::sync::CancellationToken,
    /// The mesh's view for `/api/mesh` (none without a mesh).
    pub mesh: RwLock<Option<Arc<dyn MeshView>>>,
    /// More series for `/metrics` (the mesh registers its own).
    pub metrics: RwLock<Vec<Arc<dyn crate::telemetry::metrics::MetricsSource>>>,
}

/// The HTTP routes (without `/ws`, which the transport adds).
pub fn router(state: Arc<ApiState>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/cert.sha256", get(cert_sha256))
        .route("/metrics", get(metrics))
        .route("/api/publish", post(publish))
        .route("/api/channels", get(channels))
        .route("/api/channels/{name}/presence", get(presence))
        .route("/api/channels/{name}/history", get(history))
        .route("/api/disconnect", post(disconnect))
        .route("/api/drain", post(drain))
        .route("/api/stats", get(stats))
        .route("/api/mesh", get(mesh));
    for (path, ctype, body) in ASSETS {
        let ctype: &'static str = ctype;
        let body: &'static [u8] = body;
        r = r.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, ctype),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
            }),
        );
    }
    r.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An API error: a stable code, its name and a readable reason.
#[derive(Debug, Serialize)]
pub struct ApiError {
    /// Numeric error code.
    pub code: u16,
    /// Error name.
    pub name: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl ApiError {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        ApiError {
            code: code.code(),
            name: code.name(),
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = ErrorCode::from_code(self.code)
            .map(|c| c.status())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self)).into_response()
    }
}

impl From<crate::hub::Error> for ApiError {
    fn from(e: crate::hub::Error) -> Self {
        ApiError::new(e.code, e.reason)
    }
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.key else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the HTTP API is disabled: no api.key is configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer <api key>",
            )
        })?;
    if constant_time_eq(given.trim(), key) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "wrong API key"))
    }
}

/// Read-only operator data: open on a dev node, the API key otherwise.
fn authorize_read(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.open_reads {
        return Ok(());
    }
    authorize(state, headers)
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    let extra = s.metrics.read().clone();
    let body =
        crate::telemetry::metrics::render(&s.shared, !s.ready.load(Ordering::Relaxed), &extra);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn cert_sha256(State(s): State<Arc<ApiState>>) -> Response {
    let hash = s.cert_sha256.read().clone();
    let mut r = (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        hash + "\n",
    )
        .into_response();
    // Pages served from another origin (a dev front end on another port) need it too.
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// Body of `POST /api/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Channel name.
    pub channel: String,
    /// Payload as UTF-8 text.
    pub data: Option<String>,
    /// Payload as base64 (standard alphabet, padded).
    pub data_b64: Option<String>,
    /// `reliable` (default), `datagram` or `latest`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Conflation key (`latest`).
    pub key: Option<String>,
}

/// Answer of `POST /api/publish`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishReply {
    /// Channel epoch, as a decimal string (u64 does not fit a JavaScript number).
    pub epoch: String,
    /// Offset assigned (0 for `datagram`).
    pub offset: u64,
}

async fn publish(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PublishReply>, ApiError> {
    authorize(&s, &headers)?;
    let Json(req) = body.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let data = match (req.data, req.data_b64) {
        (Some(t), None) => Bytes::from(t),
        (None, Some(b)) => Bytes::from(
            B64.decode(b.as_bytes())
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("data_b64: {e}")))?,
        ),
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give exactly one of data (text) or data_b64",
            ));
        }
    };
    let mode = match req.mode.as_deref().unwrap_or("reliable") {
        "reliable" => Mode::Reliable,
        "datagram" => Mode::Datagram,
        "latest" => Mode::Latest,
        other => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("mode {other:?}: expected reliable, datagram or latest"),
            ));
        }
    };
    crate::hub::validate_channel(&req.channel).map_err(|(c, r)| ApiError::new(c, r))?;
    let pos = s
        .shared
        .publish(
            Publish {
                channel: &req.channel,
                mode,
                key: req.key.as_deref(),
                publisher: None,
                data,
            },
            now_ms(),
        )
        .wait()
        .await?;
    Ok(Json(PublishReply {
        epoch: pos.epoch.to_string(),
        offset: pos.offset,
    }))
}

#[derive(Debug, Serialize)]
struct ChannelJson {
    name: String,
    subscribers: usize,
    presence: usize,
    epoch: String,
    offset: u64,
    history: usize,
}

async fn channels(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ChannelJson>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(
        s.shared
            .hub
            .channels()
            .into_iter()
            .map(|c| ChannelJson {
                name: c.name,
                subscribers: c.subscribers,
                presence: c.presence,
                epoch: c.epoch.to_string(),
                offset: c.offset,
                history: c.history,
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize)]
struct MemberJson {
    session_id: String,
    user: String,
    /// Info as UTF-8 text when it is valid UTF-8.
    info: Option<String>,
    info_b64: String,
}

async fn presence(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<MemberJson>>, ApiError> {
    authorize(&s, &headers)?;
    crate::hub::validate_channel(&name).map_err(|(c, r)| ApiError::new(c, r))?;
    let members = s.shared.hub.presence(&name)?;
    Ok(Json(
        members
            .into_iter()
            .map(|m| MemberJson {
                info: std::str::from_utf8(&m.info).ok().map(str::to_string),
                info_b64: B64.encode(&m.info),
                session_id: m.session_id,
                user: m.user,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct MessageJson {
    offset: u64,
    time_ms: u64,
    mode: &'static str,
    key: Option<String>,
    publisher: Option<String>,
    data: Option<String>,
    data_b64: String,
}

#[derive(Debug, Serialize)]
struct HistoryJson {
    epoch: String,
    offset: u64,
    messages: Vec<MessageJson>,
}

fn message_json(m: Message) -> MessageJson {
    MessageJson {
        offset: m.offset,
        time_ms: m.time_ms,
        mode: match m.mode {
            Mode::Reliable => "reliable",
            Mode::Datagram => "datagram",
            Mode::Latest => "latest",
        },
        data: std::str::from_utf8(&m.data).ok().map(str::to_string),
        data_b64: B64.encode(&m.data),
        key: m.key,
        publisher: m.publisher,
    }
}

async fn history(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryJson>, ApiError> {
    authorize(&s, &headers)?;
    crate::hub::validate_channel(&name).map_err(|(c, r)| ApiError::new(c, r))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let (pos, _, msgs) = s.shared.hub.history(&name, None, limit)?;
    Ok(Json(HistoryJson {
        epoch: pos.epoch.to_string(),
        offset: pos.offset,
        messages: msgs.into_iter().map(message_json).collect(),
    }))
}

#[derive(Debug, Default, Deserialize)]
struct DisconnectRequest {
    reason: Option<String>,
    reconnect_to: Option<String>,
}

async fn disconnect(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Option<Json<DisconnectRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let reason = req
        .reason
        .as_deref()
        .unwrap_or("disconnected by the operator");
    let n = s.shared.going_away(reason, req.reconnect_to, 0);
    Ok(Json(serde_json::json!({ "disconnected": n })))
}

async fn drain(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    s.drain.cancel();
    Ok(Json(serde_json::json!({
        "draining": true,
        "sessions": s.shared.session_count(),
    })))
}

async fn mesh(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&s, &headers)?;
    let view = s.mesh.read().clone();
    Ok(Json(match view {
        Some(m) => m.json(),
        None => serde_json::json!({
            "node": { "id": s.shared.node.id, "region": s.shared.node.region },
            "nodes": [],
            "links": [],
        }),
    }))
}

async fn stats(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_read(&s, &headers)?;
    let c: &Counters = s.shared.hub.counters();
    let (wt, ws) = s.shared.session_counts();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok(Json(serde_json::json!({
        "node": s.shared.node.id,
        "region": s.shared.node.region,
        "draining": !s.ready.load(Ordering::Relaxed),
        "sessions": { "webtransport": wt, "websocket": ws },
        "subscriptions": c.subscriptions.load(Ordering::Relaxed),
        "channels": s.shared.hub.channels().len(),
        "published": {
            "reliable": g(&c.published_reliable),
            "datagram": g(&c.published_datagram),
            "latest": g(&c.published_latest),
        },
        "deliveries": g(&c.deliveries),
        "dropped": {
            "slow_consumer": g(&c.slow_consumers),
            "conflated": g(&c.conflated),
            "latest_no_room": g(&c.dropped_latest),
            "datagram_queue_full": g(&c.dropped_datagrams),
            "datagram_send": g(&c.dropped_datagram_send),
        },
        "request_errors": g(&c.request_errors),
        "handshake_failures": g(&c.handshake_failures),
        "sessions_total": g(&c.sessions_total),
    })))
}

//! WebSocket sessions: `GET /ws`.
//!
//! The upgrade is done by hand over hyper's upgrade (so tungstenite's buffers can be sized:
//! its default 128 KiB read buffer per socket would dominate idle memory). Each session is one
//! task that owns the socket and its [`Connection`], and runs a `select!` over: the connection's
//! cancellation token (slow consumer, shutdown), socket reads (requests, turned into calls on
//! the connection), the connection's bounded outbound queue (drained up to a batch, written,
//! flushed once per wake-up) and the heartbeat timer. Every check and every piece of state is
//! the connection core's; this module only reads and writes frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use herald_broker::Payload;
use herald_protocol::frame::{self, ClientFrame, HistoryReply};
use herald_protocol::{CloseCode, ProtocolError};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::connection::{Connection, ConnectionOptions, Event, RateCheck};
use crate::error::EdgeError;
use crate::hub::{Delivery, Outbound};
use crate::identity::{self, IdentifyRequest, Identity, RequestContext};
use crate::listener;
use crate::metrics::Transport;
use crate::node::{ConnectionSlot, Node};

/// Longest close handshake with a slow consumer (4008).
const SLOW_CLOSE: Duration = Duration::from_millis(500);

/// Most queued items written per wake-up before yielding to reads and timers.
const BATCH: usize = 64;

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct WsParams {
    /// Display name shown in presence (not authenticated; only without an identity source).
    user: Option<String>,
    /// The connection token, for clients that cannot set a header.
    token: Option<String>,
}

/// A server WebSocket. Boxed: the stream (about 900 bytes with tungstenite's state) would otherwise be stored again
/// in every async layer it passes through (the upgrade task, the session closure, the session),
/// since a moved-from local keeps its place in an async state machine; each idle socket paid
/// for those copies (issue 15: heaptrack showed ~6.4 KiB per WebSocket task).
pub(crate) type Socket = Box<WebSocketStream<listener::UpgradedIo>>;

/// What the upgrade decided before the socket exists.
enum Admission {
    /// Refused: close with this code at once.
    Refused(CloseCode),
    /// Admitted and identified.
    Ready(Box<ConnectionOptions>, ConnectionSlot),
    /// Admitted; the identity comes in a first `connect` frame within `auth_timeout_secs`.
    AwaitConnect(Box<ConnectionOptions>, ConnectionSlot),
}

/// `GET /ws`: checks the handshake, admits and identifies, answers 101 and spawns the session.
pub(crate) async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<WsParams>,
    mut req: Request<Body>,
) -> Response {
    let key = match upgrade_key(&req) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let headers = req.headers();
    // Refusals after the handshake carry a close code a browser can read; a malformed request
    // (a bad display name) is an HTTP error.
    let admission = match admit(&node, params, headers, peer).await {
        Ok(a) => a,
        Err(e @ EdgeError::Http { .. }) => return e.into_response(),
        Err(e) => Admission::Refused(e.close_code()),
    };
    let task_node = node.clone();
    accept(&node, &mut req, &key, move |mut socket| {
        let opening = async move {
            let opened = match admission {
                Admission::Ready(options, slot) => Ok((*options, slot)),
                // Boxed, as every rarely taken await below: a task's future is as large as its
                // largest state, and every idle socket would pay for this one (token
                // verification, JWKS, proxy hooks) for its whole life.
                Admission::AwaitConnect(options, slot) => {
                    Box::pin(await_connect(&task_node, &mut socket, *options, slot)).await
                }
                Admission::Refused(code) => Err(code),
            };
            match opened.and_then(|(options, slot)| {
                Connection::open_admitted(&task_node, slot, options).map_err(|e| e.close_code())
            }) {
                Ok(conn) => Ok((socket, conn)),
                Err(code) => Err((task_node, socket, code)),
            }
        };
        // `then`, not one async block: its two stages share their storage, where an async
        // block would keep the dead `Result<Connection, _>` (656 bytes) beside the session's
        // future for the socket's whole life.
        opening.then(|opened| match opened {
            Ok((socket, conn)) => Either::Left(run(socket, conn)),
            Err((node, mut socket, code)) => {
                Either::Right(Box::pin(
                    async move { refuse(&node, &mut socket, code).await },
                ))
            }
        })
    })
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (GET, `Connection: upgrade`,
/// `Upgrade: websocket`, version 13), or the 400 error to answer.
pub(crate) fn upgrade_key(req: &Request<Body>) -> Result<HeaderValue, EdgeError> {
    let headers = req.headers();
    let is_upgrade = header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (Some(key), true, true) = (key, is_upgrade, req.method() == axum::http::Method::GET) else {
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        ));
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v != "13")
    {
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version",
        ));
    }
    Ok(key)
}

/// Answers 101 and runs `session` on the upgraded socket (buffers sized by [`ws_config`]) as a
/// task the node's drain waits for.
pub(crate) fn accept<F, Fut>(
    node: &Arc<Node>,
    req: &mut Request<Body>,
    key: &HeaderValue,
    session: F,
) -> Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    let config = ws_config(node);
    node.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(err) => {
                tracing::debug!(cause = %err, "websocket upgrade failed");
                return;
            }
        };
        // Straight on the listener's socket (see `listener::UpgradedIo`); bytes the client
        // sent right behind its request (an early first frame) are read first.
        let (io, early) = listener::upgraded_io(upgraded);
        let socket = Box::new(if early.is_empty() {
            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
        } else {
            WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await
        });
        session(socket).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("101 response")
}

/// Counts a refused connection and closes its socket with `code` (waiting at most 5 s).
pub(crate) async fn refuse(node: &Node, socket: &mut Socket, code: CloseCode) {
    node.metrics.disconnect(code);
    let _ = tokio::time::timeout(Duration::from_secs(5), close(socket, code)).await;
}

/// The origin rule, a connection slot, and the identity when the upgrade carries one.
async fn admit(
    node: &Arc<Node>,
    params: WsParams,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Admission, EdgeError> {
    if !node.origin_allowed(headers) {
        return Ok(Admission::Refused(CloseCode::Policy));
    }
    let address = node.limits.client_ip(peer.ip(), headers);
    let slot = match node.admit(Transport::Ws, Some(address)) {
        Ok(slot) => slot,
        Err(e @ EdgeError::RateLimited { .. }) => return Ok(Admission::Refused(e.close_code())),
        Err(_) if node.is_draining() => return Ok(Admission::Refused(CloseCode::Restart)),
        Err(_) => return Ok(Admission::Refused(CloseCode::TryAgainLater)),
    };
    let token = identity::token_from(
        headers,
        params.token.as_deref(),
        &node.config.auth.token_cookie,
    );
    let client = node.new_client_id();
    let context = RequestContext::new(node, Some(address), headers);
    let has_proxy = node.proxy.as_ref().is_some_and(|p| p.has_connect());
    if token.is_none() && !has_proxy && !node.config.auth.anonymous_allowed() {
        let options = ConnectionOptions {
            transport: Transport::Ws,
            client,
            identity: Identity::anonymous(String::new()),
            context,
            presence: true,
        };
        return Ok(Admission::AwaitConnect(Box::new(options), slot));
    }
    let identity = identity::identify(
        node,
        IdentifyRequest {
            token: token.as_deref(),
            display: params.user,
            client: &client,
            transport: Transport::Ws,
            context: &context,
        },
    )
    .await?;
    let options = ConnectionOptions {
        transport: Transport::Ws,
        client,
        identity,
        context,
        presence: true,
    };
    Ok(Admission::Ready(Box::new(options), slot))
}

/// Waits for the first frame, `{"op":"connect","token":…}`, within `auth_timeout_secs`; no
/// other frame is accepted before it.
async fn await_connect(
    node: &Node,
    socket: &mut Socket,
    mut options: ConnectionOptions,
    slot: ConnectionSlot,
) -> Result<(ConnectionOptions, ConnectionSlot), CloseCode> {
    let wait = Duration::from_secs(node.config.auth.auth_timeout_secs);
    let first = loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Err(_) => {
                node.metrics.auth("missing");
                return Err(CloseCode::Unauthorized);
            }
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(_) => {
                node.metrics.auth("missing");
                return Err(CloseCode::Unauthorized);
            }
        }
    };
    let token = match ClientFrame::parse(&first) {
        Ok(ClientFrame::Connect { token, .. }) => token,
        _ => {
            node.metrics.auth("missing");
            return Err(CloseCode::Unauthorized);
        }
    };
    match identity::verify_connection_token(node, &token).await {
        Ok(identity) => {
            options.identity = identity;
            Ok((options, slot))
        }
        Err(err) => Err(err.close_code()),
    }
}

pub(crate) async fn pong_deadline(ping_sent: Option<Instant>, timeout: Duration) {
    match ping_sent {
        Some(sent) => tokio::time::sleep_until(sent + timeout).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

pub(crate) fn ws_config(node: &Node) -> WebSocketConfig {
    let l = &node.config.limits;
    WebSocketConfig::default()
        .read_buffer_size(l.ws_read_buffer)
        .write_buffer_size(l.ws_write_buffer)
        .max_write_buffer_size(l.ws_write_buffer.max(l.max_message_size) * 64)
        .max_message_size(Some(l.max_message_size))
        .max_frame_size(Some(l.max_message_size))
}

async fn close(socket: &mut Socket, code: CloseCode) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
    // Wait briefly for the client's close reply so the frame is not lost to a reset.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(msg)) = socket.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// One WebSocket session: the socket and the connection it carries.
struct Session {
    socket: Socket,
    conn: Connection,
    /// The connection's cancellation token (slow consumer, shutdown): ends the session.
    closing: tokio_util::sync::CancellationToken,
    /// When a ping was sent and no pong has come back yet.
    ping_sent: Option<Instant>,
    /// Bytes written since the last flush of the counter.
    bytes_out: u64,
    /// Events of the batch being written (kept to reuse its allocation).
    events: Vec<Event>,
    /// A write timed out (`limits.write_timeout_secs`).
    stalled: bool,
}

/// The session's future. Not an `async fn`: the session is built here, before the future
/// exists, so the socket and the connection are stored once in it rather than once as
/// arguments and again in the session (see [`Socket`]).
fn run(socket: Socket, conn: Connection) -> impl std::future::Future<Output = ()> + Send {
    let node = conn.node().clone();
    let span = tracing::debug_span!("conn", client = %conn.client(), transport = "ws", node = %node.config.node_id);
    let mut session = Session {
        socket,
        closing: conn.closing(),
        conn,
        ping_sent: None,
        bytes_out: 0,
        events: Vec::new(),
        stalled: false,
    };
    async move {
        let code = tracing::Instrument::instrument(session.serve(), span.clone()).await;
        tracing::debug!(parent: &span, code = code.code(), "websocket closed");
        node.metrics.disconnect(code);
        // Dropping the session drops the connection: it leaves its channels and frees its slot.
    }
}

enum Flow {
    Continue,
    Close(CloseCode),
    Gone,
}

impl Session {
    fn node(&self) -> &Arc<Node> {
        self.conn.node()
    }

    async fn serve(&mut self) -> CloseCode {
        let config = &self.node().config;
        let welcome = frame::encode_welcome(
            self.conn.client(),
            &config.node_id,
            config.limits.ping_interval_secs,
            &self.conn.identity().user,
        );
        let interval = config.ping_interval();
        let timeout = Duration::from_secs(config.limits.ping_timeout_secs);
        if self.send_text(welcome).await.is_err() {
            return CloseCode::Normal;
        }
        if let Err(flow) = Box::pin(self.subscribe_granted()).await {
            match flow {
                Flow::Close(code) => return code,
                _ => return CloseCode::Normal,
            }
        }
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        let closing = self.closing.clone();
        let outcome = loop {
            let deadline = self.conn.deadline();
            let flow = tokio::select! {
                biased;
                _ = closing.cancelled() => Flow::Close(self.conn.close_code()),
                _ = crate::transport::sleep_until(deadline) => Flow::Close(CloseCode::TokenExpired),
                // Boxed (a client command: subscribe with recovery, history, publish...) so that
                // the session's future, alive as long as the socket, stays small (see `upgrade`).
                msg = self.socket.next() => Box::pin(self.on_inbound(msg)).await,
                item = self.conn.recv() => match item {
                    Some(item) => self.on_outbound(item).await,
                    None => Flow::Close(CloseCode::Internal),
                },
                // When nothing else is ready: the next page of a channel still catching up.
                _ = std::future::ready(()), if self.conn.is_catching_up() => {
                    Box::pin(self.on_catch_up()).await
                }
                _ = ticker.tick() => Box::pin(self.on_tick()).await,
                _ = pong_deadline(self.ping_sent, timeout) => Flow::Close(CloseCode::HeartbeatTimeout),
            };
            match flow {
                Flow::Continue => {}
                Flow::Close(code) => break Some(code),
                Flow::Gone => break None,
            }
        };
        self.flush_metrics();
        match outcome {
            Some(code) => {
                if code == CloseCode::Restart {
                    crate::transport::spread_restart(self.node().config.shutdown_grace()).await;
                }
                // A slow consumer's socket is likely full: try the close handshake briefly, so
                // its queue and slot are released quickly either way.
                let limit = match code {
                    CloseCode::SlowConsumer => timeout.min(SLOW_CLOSE),
                    _ => timeout,
                };
                let _ = Box::pin(tokio::time::timeout(limit, close(&mut self.socket, code))).await;
                code
            }
            None if self.stalled => CloseCode::SlowConsumer,
            None => CloseCode::Normal,
        }
    }

    /// Subscribes the channels the connection's token grants (`channels` claim), each
    /// answered with a `subscribed` frame without an id.
    async fn subscribe_granted(&mut self) -> Result<(), Flow> {
        let granted = self.conn.identity().channels.clone();
        for channel in granted {
            let result = match self.conn.subscribe_granted(&channel, None).await {
                Ok(subscribed) => self.write_subscribed(None, &channel, subscribed).await,
                Err(err) => Err(SessionError::Edge(err)),
            };
            match result {
                Ok(()) => {}
                Err(SessionError::Gone) => return Err(Flow::Gone),
                Err(SessionError::Edge(err)) => {
                    if let Flow::Gone = self.reply_error(None, err).await {
                        return Err(Flow::Gone);
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Flow {
        if self.ping_sent.is_some() {
            return Flow::Continue; // the pong deadline decides
        }
        self.ping_sent = Some(Instant::now());
        match self.write(Message::Ping(Bytes::new())).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    async fn on_inbound(&mut self, msg: Option<Result<Message, WsError>>) -> Flow {
        let msg = match msg {
            None => return Flow::Gone,
            Some(Ok(m)) => m,
            Some(Err(WsError::Capacity(_))) => {
                self.node()
                    .metrics
                    .limit_rejected(crate::metrics::Limit::MessageSize);
                return Flow::Close(CloseCode::TooBig);
            }
            Some(Err(WsError::Utf8(_))) => return Flow::Close(CloseCode::InvalidPayload),
            Some(Err(WsError::Protocol(err))) => {
                tracing::debug!(cause = %err, "websocket protocol error");
                return Flow::Close(CloseCode::BadProtocol);
            }
            Some(Err(_)) => return Flow::Gone,
        };
        // Any frame proves the peer is alive.
        self.ping_sent = None;
        let bytes_in = self.node().metrics.bytes_in.with_label_values(&["ws"]);
        match msg {
            Message::Text(text) => {
                bytes_in.inc_by(text.len() as u64);
                self.on_text(&text).await
            }
            Message::Binary(data) => {
                bytes_in.inc_by(data.len() as u64);
                self.on_binary(&data).await
            }
            Message::Close(_) => {
                // tungstenite has queued the close reply (RFC 6455 5.5.1); send it, or the
                // client sees an unclean close (a browser's `onclose` gets 1006).
                let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
                Flow::Gone
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        }
    }

    /// Counts one frame against the connection's rates: `Some(flow)` when it must not be
    /// served (refused with error 112, or the connection closes with 4029).
    async fn over_rate(&mut self, id: Option<u64>, publish: bool) -> Option<Flow> {
        match self.conn.count_command(publish) {
            RateCheck::Allow => None,
            RateCheck::Refuse(err) => Some(self.reply_error(id, err).await),
            RateCheck::Close => Some(Flow::Close(CloseCode::RateLimited)),
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let request = match ClientFrame::parse(text) {
            Ok(r) => r,
            Err(err) => {
                let id = frame::salvage_id(text);
                if let Some(flow) = self.over_rate(id, false).await {
                    return flow;
                }
                return self.reply_error(id, err.into()).await;
            }
        };
        let publish = matches!(request, ClientFrame::Publish { .. });
        if let Some(flow) = self.over_rate(request.id(), publish).await {
            return flow;
        }
        let (id, result) = match request {
            ClientFrame::Subscribe {
                id,
                channel,
                since,
                token,
            } => (
                id,
                self.subscribe(id, &channel, since, token.as_deref()).await,
            ),
            ClientFrame::Connect { id, .. } => (
                id,
                Err(SessionError::Edge(EdgeError::Protocol(
                    herald_protocol::ProtocolError::BadRequest(
                        "already connected: `connect` is only a first frame".into(),
                    ),
                ))),
            ),
            ClientFrame::Refresh { id, token } => (id, self.refresh(id, &token).await),
            ClientFrame::Unsubscribe { id, channel } => (id, self.unsubscribe(id, &channel).await),
            ClientFrame::Publish {
                id,
                channel,
                data,
                skip_self,
            } => {
                let payload = Payload::Json(data.to_owned());
                (id, self.publish(id, &channel, payload, skip_self).await)
            }
            ClientFrame::Presence { id, channel, token } => {
                (id, self.presence(id, &channel, token.as_deref()).await)
            }
            ClientFrame::History {
                id,
                channel,
                since,
                limit,
                token,
            } => {
                let token = token.as_deref();
                (id, self.history(id, &channel, since, limit, token).await)
            }
            ClientFrame::Ping { id } => (id, self.send_text(frame::encode_pong(id)).await),
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(SessionError::Gone) => Flow::Gone,
            Err(SessionError::Edge(err)) => self.reply_error(id, err).await,
        }
    }

    async fn on_binary(&mut self, data: &Bytes) -> Flow {
        if let Some(flow) = self.over_rate(binary_request_id(data), true).await {
            return flow;
        }
        let publish = match herald_protocol::binary::parse_binary_publish(data) {
            Ok(p) => p,
            Err(err) => return self.reply_error(binary_request_id(data), err.into()).await,
        };
        let payload = Payload::Binary(data.slice_ref(publish.payload));
        let channel = publish.channel.to_owned();
        match self.publish(publish.id, &channel, payload, false).await {
            Ok(()) => Flow::Continue,
            Err(SessionError::Gone) => Flow::Gone,
            Err(SessionError::Edge(err)) => self.reply_error(publish.id, err).await,
        }
    }

    async fn reply_error(&mut self, id: Option<u64>, err: EdgeError) -> Flow {
        self.node().metrics.error(err.code(), err.source_tag());
        match self.send_text(err.frame(id)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<herald_protocol::StreamPosition>,
        token: Option<&str>,
    ) -> Result<(), SessionError> {
        let subscribed = self.conn.subscribe(channel, since.as_ref(), token).await?;
        self.write_subscribed(id, channel, subscribed).await
    }

    async fn refresh(&mut self, id: Option<u64>, token: &str) -> Result<(), SessionError> {
        let exp = self.conn.refresh(token).await?;
        self.send_text(frame::encode_refreshed(id, exp)).await
    }

    async fn write_subscribed(
        &mut self,
        id: Option<u64>,
        channel: &str,
        subscribed: crate::connection::Subscribed,
    ) -> Result<(), SessionError> {
        self.feed(Message::Text(Utf8Bytes::from(frame::encode_subscribed(
            id,
            channel,
            &subscribed.position,
            subscribed.recovered,
        ))))
        .await?;
        for d in &subscribed.publications {
            self.write_delivery(d).await?;
        }
        self.conn.count_delivered(&subscribed.publications);
        self.flush().await
    }

    async fn unsubscribe(&mut self, id: Option<u64>, channel: &str) -> Result<(), SessionError> {
        self.conn.unsubscribe(channel).await?;
        self.send_text(frame::encode_unsubscribed(id, channel))
            .await
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        channel: &str,
        payload: Payload,
        skip_self: bool,
    ) -> Result<(), SessionError> {
        let position = self.conn.publish(channel, payload, skip_self).await?;
        self.send_text(frame::encode_ack(id, channel, &position))
            .await
    }

    async fn presence(
        &mut self,
        id: Option<u64>,
        channel: &str,
        token: Option<&str>,
    ) -> Result<(), SessionError> {
        let clients = self.conn.presence(channel, token).await?;
        self.send_text(frame::encode_presence(id, channel, &clients))
            .await
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<herald_protocol::StreamPosition>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<(), SessionError> {
        let page = self.conn.history(channel, since, limit, token).await?;
        let more = crate::node::page_has_more(&page);
        let frames: Vec<Delivery> = page.publications.into_iter().map(Delivery::new).collect();
        let reply = HistoryReply {
            channel,
            position: &page.position,
            recovered: page.recovered,
            more,
            messages: frames.iter().map(|d| d.text().as_str()),
        };
        self.send_text(reply.encode_frame(id)).await
    }

    async fn on_outbound(&mut self, first: Outbound) -> Flow {
        let mut events = std::mem::take(&mut self.events);
        self.conn.absorb_batch(first, BATCH, &mut events).await;
        self.write_events(events).await
    }

    /// Writes a batch of events, then flushes once; keeps the batch's allocation.
    async fn write_events(&mut self, mut events: Vec<Event>) -> Flow {
        let mut result = Ok(());
        for event in events.drain(..) {
            result = self.write_event(event).await;
            if result.is_err() {
                break;
            }
        }
        events.clear();
        self.events = events;
        match result {
            Ok(()) => match self.flush().await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Gone,
            },
            Err(SessionError::Gone) => Flow::Gone,
            Err(SessionError::Edge(_)) => Flow::Close(CloseCode::Internal),
        }
    }

    async fn on_catch_up(&mut self) -> Flow {
        let mut events = std::mem::take(&mut self.events);
        self.conn.catch_up(&mut events).await;
        self.write_events(events).await
    }

    async fn write_event(&mut self, event: Event) -> Result<(), SessionError> {
        match event {
            Event::Publication(d) => self.write_delivery(&d).await,
            Event::Notice(_, text) => self.feed(Message::Text(text)).await,
            Event::Reset { channel, position } => {
                let text = frame::encode_subscribed(None, &channel, &position, false);
                self.feed(Message::Text(Utf8Bytes::from(text))).await
            }
        }
    }

    async fn write_delivery(&mut self, d: &Delivery) -> Result<(), SessionError> {
        let msg = match d.binary() {
            Some(b) => Message::Binary(b.clone()),
            None => Message::Text(d.text().clone()),
        };
        self.feed(msg).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), SessionError> {
        self.feed(Message::Text(Utf8Bytes::from(text))).await?;
        self.flush().await
    }

    async fn write(&mut self, msg: Message) -> Result<(), SessionError> {
        self.feed(msg).await?;
        self.flush().await
    }

    async fn feed(&mut self, msg: Message) -> Result<(), SessionError> {
        self.bytes_out += msg.len() as u64;
        // Biased, socket first: when the write is ready at once (the common case) the
        // cancellation future is never polled, which would take the token's lock per message.
        tokio::select! {
            biased;
            r = self.socket.feed(msg) => r.map_err(|e| self.gone(e)),
            _ = self.closing.cancelled() => Ok(()),
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        self.flush_metrics();
        tokio::select! {
            biased;
            r = self.socket.flush() => r.map_err(|e| self.gone(e)),
            _ = self.closing.cancelled() => Ok(()),
        }
    }

    /// A failed write: the socket is gone, or it accepted nothing for `write_timeout_secs`
    /// (then the session ends as a slow consumer, 4008, without a close handshake it could
    /// not take either).
    fn gone(&mut self, err: WsError) -> SessionError {
        if let WsError::Io(io) = &err {
            if io.kind() == std::io::ErrorKind::TimedOut {
                self.stalled = true;
            }
        }
        SessionError::Gone
    }

    fn flush_metrics(&mut self) {
        self.conn.flush_metrics();
        if self.bytes_out > 0 {
            self.conn
                .count_bytes_out(std::mem::take(&mut self.bytes_out) as usize);
        }
    }
}

/// The request id of a binary frame that could not be parsed (e.g. a bad channel), when its
/// bytes are there, so the error frame can echo it: `[len][channel][4-byte id]…`.
fn binary_request_id(frame: &[u8]) -> Option<u64> {
    let n = usize::from(*frame.first()?);
    let id = frame.get(1 + n..1 + n + 4)?;
    let id = u32::from_be_bytes(id.try_into().ok()?);
    (n > 0 && id != 0).then_some(u64::from(id))
}

/// Why a request inside a session failed.
enum SessionError {
    /// The socket is gone.
    Gone,
    /// The request failed; answer with an error frame.
    Edge(EdgeError),
}

impl From<EdgeError> for SessionError {
    fn from(e: EdgeError) -> Self {
        SessionError::Edge(e)
    }
}

impl From<ProtocolError> for SessionError {
    fn from(e: ProtocolError) -> Self {
        SessionError::Edge(e.into())
    }
}

//! One identified `/connection/websocket` session: the socket and its [`Connection`].
//!
//! One task runs a `select!` over the connection's cancellation token, the session deadline
//! (token `exp`), socket reads (a frame of newline-separated commands, each counted against
//! the connection's command rate, at most `limits.max_commands_per_frame` per frame), the
//! outbound queue (drained up to a batch and written as one frame of newline-separated
//! pushes), the catch-up of channels still recovering, and the heartbeat: a `{}` every
//! `ping_interval_secs` that the client answers with `{}` (any frame counts) within
//! `ping_timeout_secs`, else the session ends with 3012.
//!
//! Replies to the commands of one frame are written as one frame, in command order.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_broker::Payload;
use herald_protocol::centrifugo::command::{self, HistoryRequest, Line, Method, SubscribeRequest};
use herald_protocol::centrifugo::reply::{self, ClientInfo, ConnectResult, SubscribeResult};
use herald_protocol::centrifugo::{Code, UNSUBSCRIBE_INSUFFICIENT_STATE};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::{CloseCode, StreamPosition};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{Connected, Socket};
use crate::connection::{Connection, Event, RateCheck, Subscribed};
use crate::error::EdgeError;
use crate::hub::{Delivery, EventKind, Outbound};
use crate::metrics::Limit;
use crate::node::Node;

/// Most queued items written per wake-up before yielding to reads and timers.
const BATCH: usize = 64;

/// A frame of joined lines is written once it reaches this many bytes.
const FRAME_BYTES: usize = 64 * 1024;

/// The server version in connect and refresh results.
const VERSION: &str = concat!("herald ", env!("CARGO_PKG_VERSION"));

/// How a step of the session ended.
enum Flow {
    Continue,
    Close(CloseCode),
    Gone,
}

/// Why a command failed.
enum Failure {
    /// Answer with this error.
    Edge(EdgeError),
    /// Answer with this Centrifugo code (no Herald equivalent).
    Reply(Code, &'static str),
}

impl From<EdgeError> for Failure {
    fn from(e: EdgeError) -> Self {
        Failure::Edge(e)
    }
}

struct Session {
    socket: Socket,
    conn: Connection,
    /// The connection's cancellation token (slow consumer, shutdown): ends the session.
    closing: CancellationToken,
    /// When a ping was sent and nothing has come back yet.
    ping_sent: Option<Instant>,
    /// Lines written as the next frame, joined with `\n`.
    lines: Vec<Utf8Bytes>,
    line_bytes: usize,
    /// Bytes written since the last flush of the counter.
    bytes_out: u64,
    /// Events of the batch being written (kept to reuse its allocation).
    events: Vec<Event>,
    /// A write timed out (`limits.write_timeout_secs`).
    stalled: bool,
}

pub(super) async fn run(socket: Socket, conn: Connection, connected: Connected) {
    let node = conn.node().clone();
    let span = tracing::debug_span!("conn", client = %conn.client(), transport = "centrifugo", node = %node.config.node_id);
    let mut session = Session {
        socket,
        closing: conn.closing(),
        conn,
        ping_sent: None,
        lines: Vec::new(),
        line_bytes: 0,
        bytes_out: 0,
        events: Vec::new(),
        stalled: false,
    };
    let code = tracing::Instrument::instrument(session.serve(connected), span.clone()).await;
    tracing::debug!(parent: &span, code = code.code(), "centrifugo connection closed");
    node.metrics.disconnect(code);
}

impl Session {
    fn node(&self) -> &Arc<Node> {
        self.conn.node()
    }

    async fn serve(&mut self, connected: Connected) -> CloseCode {
        let config = &self.node().config;
        let interval = config.ping_interval();
        let timeout = Duration::from_secs(config.limits.ping_timeout_secs);
        let mut flow = self.on_connected(&connected).await;
        if let Flow::Continue = flow {
            flow = self.on_lines(&connected.rest).await;
        }
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        let closing = self.closing.clone();
        while let Flow::Continue = flow {
            let deadline = self.conn.deadline();
            flow = tokio::select! {
                biased;
                _ = closing.cancelled() => Flow::Close(self.conn.close_code()),
                _ = crate::transport::sleep_until(deadline) => Flow::Close(CloseCode::TokenExpired),
                msg = self.socket.next() => self.on_inbound(msg).await,
                item = self.conn.recv() => match item {
                    Some(item) => self.on_outbound(item).await,
                    None => Flow::Close(CloseCode::Internal),
                },
                _ = std::future::ready(()), if self.conn.is_catching_up() => {
                    let mut events = std::mem::take(&mut self.events);
                    self.conn.catch_up(&mut events).await;
                    self.write_events(events).await
                }
                _ = ticker.tick() => self.on_tick().await,
                _ = super::super::ws::pong_deadline(self.ping_sent, timeout) => {
                    Flow::Close(CloseCode::HeartbeatTimeout)
                }
            };
        }
        self.flush_metrics();
        match flow {
            Flow::Close(code) => {
                if code == CloseCode::Restart {
                    crate::transport::spread_restart(self.node().config.shutdown_grace()).await;
                }
                let limit = match code {
                    CloseCode::SlowConsumer => timeout.min(Duration::from_millis(500)),
                    _ => timeout,
                };
                let _ = tokio::time::timeout(limit, super::close(&mut self.socket, code)).await;
                code
            }
            _ if self.stalled => CloseCode::SlowConsumer,
            _ => CloseCode::Normal,
        }
    }

    /// Subscribes the token's channels (recovering where `connect.subs` asks) and writes the
    /// connect reply with them.
    async fn on_connected(&mut self, connected: &Connected) -> Flow {
        let granted = self.conn.identity().channels.clone();
        let mut subs = Vec::new();
        let mut delivered = Vec::new();
        for channel in granted {
            let since = match connected.recover.get(&channel) {
                Some(p) => {
                    Some(resolve(self.node().clone(), &channel, p.epoch.clone(), p.offset).await)
                }
                None => None,
            };
            match self.conn.subscribe_granted(&channel, since.as_ref()).await {
                Ok(s) => {
                    subs.push((channel.clone(), self.result(&channel, &s, since.is_some())));
                    delivered.extend(s.publications);
                }
                Err(err) => {
                    tracing::debug!(cause = %err, %channel, "server-side subscription refused");
                }
            }
        }
        self.conn.count_delivered(&delivered);
        let node = self.node();
        let ttl = self.conn.identity().exp.map(ttl_of);
        let result = ConnectResult {
            client: self.conn.client(),
            version: VERSION,
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or(0),
            ping: node.config.limits.ping_interval_secs as u32,
            pong: true,
            node: &node.config.node_id,
        };
        let text = result.encode(connected.id, &subs);
        self.line(text).await
    }

    async fn on_tick(&mut self) -> Flow {
        if self.ping_sent.is_some() {
            return Flow::Continue; // the pong deadline decides
        }
        self.ping_sent = Some(Instant::now());
        match self.line(reply::PING).await {
            Flow::Continue => self.send_lines().await,
            other => other,
        }
    }

    async fn on_inbound(&mut self, msg: Option<Result<Message, WsError>>) -> Flow {
        let msg = match msg {
            None => return Flow::Gone,
            Some(Ok(m)) => m,
            Some(Err(WsError::Capacity(_))) => {
                self.node().metrics.limit_rejected(Limit::MessageSize);
                return Flow::Close(CloseCode::TooBig);
            }
            Some(Err(WsError::Utf8(_) | WsError::Protocol(_))) => {
                return Flow::Close(CloseCode::BadProtocol)
            }
            Some(Err(_)) => return Flow::Gone,
        };
        // Any frame proves the peer is alive.
        self.ping_sent = None;
        let bytes_in = self
            .node()
            .metrics
            .bytes_in
            .with_label_values(&["centrifugo"]);
        match msg {
            Message::Text(text) => {
                bytes_in.inc_by(text.len() as u64);
                self.on_lines(&text).await
            }
            // Binary frames are Centrifugo's protobuf framing, which Herald does not speak.
            Message::Binary(_) => Flow::Close(CloseCode::BadProtocol),
            Message::Close(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.flush()).await;
                Flow::Gone
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        }
    }

    /// Serves the commands of one frame and writes their replies as one frame.
    async fn on_lines(&mut self, text: &str) -> Flow {
        let max = self.node().config.limits.max_commands_per_frame;
        if command::lines(text).nth(max).is_some() {
            self.node().metrics.limit_rejected(Limit::CommandsPerFrame);
            tracing::debug!(max, "too many commands in one frame");
            return Flow::Close(CloseCode::BadProtocol);
        }
        for line in command::lines(text) {
            let flow = match command::parse_line(line) {
                Ok(Line::Pong) => Flow::Continue,
                Ok(Line::Command(c)) => self.on_command(c).await,
                Err(e) => match e.id {
                    None => Flow::Close(CloseCode::BadProtocol),
                    Some(id) => match self.over_rate(id, false).await {
                        Some(flow) => flow,
                        None => self.reply_error(id, e.error.into()).await,
                    },
                },
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        self.send_lines().await
    }

    /// Counts one command: `Some(flow)` when it must not be served (error 111, or 3013).
    async fn over_rate(&mut self, id: u32, publish: bool) -> Option<Flow> {
        match self.conn.count_command(publish) {
            RateCheck::Allow => None,
            RateCheck::Refuse(err) => Some(self.reply_error(id, err).await),
            RateCheck::Close => Some(Flow::Close(CloseCode::RateLimited)),
        }
    }

    async fn on_command(&mut self, c: command::Command<'_>) -> Flow {
        let id = c.id;
        let publish = matches!(c.method, Method::Publish { .. });
        if let Some(flow) = self.over_rate(id, publish).await {
            return flow;
        }
        let result = match c.method {
            Method::Connect(_) => Err(Failure::Reply(Code::BadRequest, "already connected")),
            Method::Subscribe(request) => self
                .subscribe(request)
                .await
                .map(|r| reply::encode_result(id, "subscribe", &r)),
            Method::Unsubscribe { channel } => match self.conn.unsubscribe(&channel).await {
                // Unsubscribing is idempotent in Centrifugo.
                Ok(()) | Err(EdgeError::NotSubscribed(_)) => Ok("{}".to_owned()),
                Err(e) => Err(e.into()),
            }
            .map(|r| reply::encode_result(id, "unsubscribe", &r)),
            Method::Publish { channel, data } => {
                let payload = Payload::Json(data.to_owned());
                match self.conn.publish(&channel, payload, false).await {
                    Ok(_) => Ok(reply::encode_result(id, "publish", "{}")),
                    Err(e) => Err(e.into()),
                }
            }
            Method::Presence { channel } => match self.conn.presence(&channel, None).await {
                Ok(entries) => Ok(reply::encode_presence(id, &entries)),
                Err(e) => Err(e.into()),
            },
            Method::PresenceStats { channel } => match self.conn.presence(&channel, None).await {
                Ok(entries) => Ok(reply::encode_presence_stats(id, &entries)),
                Err(e) => Err(e.into()),
            },
            Method::History(request) => self.history(id, request).await,
            Method::Ping => Ok(reply::encode_result(id, "ping", "{}")),
            Method::Send if id == 0 => return Flow::Continue,
            Method::Send => Err(Failure::Reply(
                Code::NotAvailable,
                "send is not available on Herald",
            )),
            Method::Rpc { .. } => Err(Failure::Reply(
                Code::NotAvailable,
                "rpc is not available on Herald",
            )),
            Method::Refresh { token } => match self.conn.refresh(&token).await {
                Ok(exp) => Ok(reply::encode_refresh(
                    id,
                    self.conn.client(),
                    VERSION,
                    exp.map(ttl_of),
                )),
                Err(e) => Err(e.into()),
            },
            Method::SubRefresh { channel, token } => {
                let user = self.conn.identity().user.clone();
                let node = self.node().clone();
                match crate::identity::verify_channel_token(&node, &token, &user, &channel).await {
                    Ok(()) => Ok(reply::encode_sub_refresh(id, None)),
                    Err(e) => Err(e.into()),
                }
            }
        };
        match result {
            Ok(text) => self.line(text).await,
            Err(Failure::Edge(err)) => self.reply_error(id, err).await,
            Err(Failure::Reply(code, message)) => {
                self.line(reply::encode_error(id, code, message)).await
            }
        }
    }

    async fn reply_error(&mut self, id: u32, err: EdgeError) -> Flow {
        self.node().metrics.error(err.code(), err.source_tag());
        let code = Code::from_herald(err.code());
        self.line(reply::encode_error(id, code, &err.to_string()))
            .await
    }

    /// The subscribe result object of `channel`.
    fn result(&self, channel: &str, s: &Subscribed, was_recovering: bool) -> String {
        let ns = self.node().config.namespace(channel);
        let result = SubscribeResult {
            expires: false,
            ttl: 0,
            recoverable: ns.history_size > 0,
            positioned: true,
            epoch: &s.position.epoch,
            offset: s.position.offset,
            recovered: was_recovering && s.recovered,
            was_recovering,
        };
        result.encode(s.publications.iter().map(|d| d.centrifugo().0.as_str()))
    }

    /// Returns the subscribe result object (not a whole reply).
    async fn subscribe(&mut self, request: SubscribeRequest<'_>) -> Result<String, Failure> {
        let channel = &*request.channel;
        let since = if request.recover {
            let position = StreamPosition {
                epoch: request.epoch.to_string(),
                offset: request.offset,
            };
            if !position.epoch.is_empty() {
                position.validate().map_err(EdgeError::from)?;
            }
            Some(
                resolve(
                    self.node().clone(),
                    channel,
                    position.epoch,
                    position.offset,
                )
                .await,
            )
        } else {
            None
        };
        let token = Some(&*request.token).filter(|t| !t.is_empty());
        let subscribed = self.conn.subscribe(channel, since.as_ref(), token).await?;
        if since.is_some()
            && !subscribed.recovered
            && request.flag & command::FLAG_REJECT_UNRECOVERED != 0
        {
            let _ = self.conn.unsubscribe(channel).await;
            return Err(Failure::Reply(
                Code::UnrecoverablePosition,
                "unrecoverable position",
            ));
        }
        let result = self.result(channel, &subscribed, since.is_some());
        self.conn.count_delivered(&subscribed.publications);
        Ok(result)
    }

    async fn history(&mut self, id: u32, request: HistoryRequest<'_>) -> Result<String, Failure> {
        let channel = &*request.channel;
        // Negative: as many as the namespace keeps.
        let limit = usize::try_from(request.limit).ok();
        let since = match request.since {
            Some(s) => {
                let p = resolve(self.node().clone(), channel, s.epoch.to_string(), s.offset).await;
                if !p.epoch.is_empty() {
                    p.validate().map_err(EdgeError::from)?;
                }
                Some(p)
            }
            None => None,
        };
        let unrecoverable = Failure::Reply(Code::UnrecoverablePosition, "unrecoverable position");
        let (page, before) = match (since, request.reverse) {
            // Oldest first from the start of the stream (the newest ones when it is trimmed).
            (None, false) => {
                let start = StreamPosition {
                    epoch: String::new(),
                    offset: 0,
                };
                let page = self.conn.history(channel, Some(start), limit, None).await?;
                if page.recovered {
                    (page, None)
                } else {
                    (self.conn.history(channel, None, limit, None).await?, None)
                }
            }
            (None, true) => (self.conn.history(channel, None, limit, None).await?, None),
            (Some(since), false) => {
                let page = self.conn.history(channel, Some(since), limit, None).await?;
                if !page.recovered {
                    return Err(unrecoverable);
                }
                (page, None)
            }
            // Newest first, before `since`: the `limit` offsets just under it.
            (Some(since), true) => {
                let n = limit.unwrap_or(self.node().config.namespace(channel).history_size);
                let from = StreamPosition {
                    epoch: since.epoch.clone(),
                    offset: since.offset.saturating_sub(n as u64 + 1),
                };
                let page = self
                    .conn
                    .history(channel, Some(from), Some(n), None)
                    .await?;
                if !page.recovered {
                    return Err(unrecoverable);
                }
                (page, Some(since.offset))
            }
        };
        let mut publications: Vec<Delivery> = page
            .publications
            .into_iter()
            .filter(|p| before.map_or(true, |b| p.offset < b))
            .map(Delivery::new)
            .collect();
        if request.reverse {
            publications.reverse();
        }
        Ok(reply::encode_history(
            id,
            &page.position.epoch,
            page.position.offset,
            publications.iter().map(|d| d.centrifugo().0.as_str()),
        ))
    }

    async fn on_outbound(&mut self, first: Outbound) -> Flow {
        let mut events = std::mem::take(&mut self.events);
        self.conn.absorb_batch(first, BATCH, &mut events).await;
        self.write_events(events).await
    }

    /// Writes a batch of events as one frame (or a few, past `FRAME_BYTES`).
    async fn write_events(&mut self, mut events: Vec<Event>) -> Flow {
        let mut flow = Flow::Continue;
        for event in events.drain(..) {
            flow = self.write_event(event).await;
            if !matches!(flow, Flow::Continue) {
                break;
            }
        }
        events.clear();
        self.events = events;
        match flow {
            Flow::Continue => self.send_lines().await,
            other => other,
        }
    }

    async fn write_event(&mut self, event: Event) -> Flow {
        match event {
            Event::Publication(d) => self.line(d.centrifugo().1.clone()).await,
            Event::Notice(kind, text) => match notice(kind, &text) {
                Some(push) => self.line(push).await,
                None => Flow::Continue,
            },
            Event::Reset { channel, .. } => {
                // Centrifugo's way to say "position lost": the SDK resubscribes, recovering
                // from where it is, and gets `recovered: false` with the new position.
                let _ = self.conn.unsubscribe(&channel).await;
                let push = reply::encode_unsubscribe_push(
                    &channel,
                    UNSUBSCRIBE_INSUFFICIENT_STATE,
                    "insufficient state",
                );
                self.line(push).await
            }
        }
    }

    /// Adds a line to the next frame; writes the frame when it is large.
    async fn line(&mut self, text: impl Into<Utf8Bytes>) -> Flow {
        let text = text.into();
        self.line_bytes += text.len() + 1;
        self.lines.push(text);
        if self.line_bytes >= FRAME_BYTES {
            return self.feed_lines().await;
        }
        Flow::Continue
    }

    /// Feeds the pending lines to the socket as one frame.
    async fn feed_lines(&mut self) -> Flow {
        let msg = match self.lines.len() {
            0 => return Flow::Continue,
            1 => Message::Text(self.lines.pop().expect("one line")),
            _ => {
                let mut joined = String::with_capacity(self.line_bytes);
                for (i, l) in self.lines.drain(..).enumerate() {
                    if i > 0 {
                        joined.push('\n');
                    }
                    joined.push_str(l.as_str());
                }
                Message::Text(Utf8Bytes::from(joined))
            }
        };
        self.line_bytes = 0;
        self.bytes_out += msg.len() as u64;
        let result = tokio::select! {
            biased;
            r = self.socket.feed(msg) => r,
            _ = self.closing.cancelled() => Ok(()),
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(e) => self.gone(e),
        }
    }

    /// Writes the pending lines and flushes.
    async fn send_lines(&mut self) -> Flow {
        if let flow @ (Flow::Gone | Flow::Close(_)) = self.feed_lines().await {
            return flow;
        }
        self.flush_metrics();
        let result = tokio::select! {
            biased;
            r = self.socket.flush() => r,
            _ = self.closing.cancelled() => Ok(()),
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(e) => self.gone(e),
        }
    }

    /// A failed write: the socket is gone, or it accepted nothing for `write_timeout_secs`.
    fn gone(&mut self, err: WsError) -> Flow {
        if let WsError::Io(io) = &err {
            if io.kind() == std::io::ErrorKind::TimedOut {
                self.stalled = true;
            }
        }
        Flow::Gone
    }

    fn flush_metrics(&mut self) {
        self.conn.flush_metrics();
        if self.bytes_out > 0 {
            self.conn
                .count_bytes_out(std::mem::take(&mut self.bytes_out) as usize);
        }
    }
}

/// Where a client that says `epoch` + `offset` is. The SDKs keep the epoch of their
/// subscribe result, which is empty for a channel nobody had published to then (Herald
/// creates nothing on read), and count offsets from publications since: that position
/// is taken to be in the channel's current epoch.
async fn resolve(node: Arc<Node>, channel: &str, epoch: String, offset: u64) -> StreamPosition {
    if epoch.is_empty() && offset > 0 {
        if let Ok(page) = node.history(channel, None, Some(0)).await {
            return StreamPosition {
                epoch: page.position.epoch,
                offset,
            };
        }
    }
    StreamPosition { epoch, offset }
}

/// Seconds from now until `exp` (Unix seconds), at least 1.
fn ttl_of(exp: u64) -> u32 {
    let now = herald_broker::now_ms() / 1000;
    u32::try_from(exp.saturating_sub(now).max(1)).unwrap_or(u32::MAX)
}

/// A join, leave or broadcast notice (Herald's JSON, encoded once by the hub) as a push.
fn notice(kind: EventKind, text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct JoinLeave {
        channel: String,
        #[serde(flatten)]
        entry: PresenceEntry,
    }
    #[derive(Deserialize)]
    struct Broadcast {
        data: Box<serde_json::value::RawValue>,
    }
    match kind {
        EventKind::Join | EventKind::Leave => {
            let n: JoinLeave = serde_json::from_str(text).ok()?;
            let info = ClientInfo::of(&n.entry);
            Some(reply::encode_join_leave_push(
                kind == EventKind::Join,
                &n.channel,
                info,
            ))
        }
        EventKind::Broadcast => {
            let b: Broadcast = serde_json::from_str(text).ok()?;
            Some(reply::encode_message_push(&b.data))
        }
    }
}

//! Server-Sent Events: `GET /sse?channel=a&channel=b[&since=<cursor>]`.
//!
//! The response body is a stream owned by the connection: each time hyper can write, the
//! stream takes what the hub queued (up to a batch), checks it against the connection's
//! positions, and writes SSE events. Every message carries `id: <cursor>` for all channels of
//! the stream, so the browser's `Last-Event-ID` on reconnect resumes every channel at once.
//! When the stream is dropped (client gone), its cleanup leaves the channels.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut as _, Bytes, BytesMut};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::{CloseCode, Cursor};
use tokio::sync::mpsc;

use crate::error::EdgeError;
use crate::hub::{ConnHandle, Delivery, EventKind, Outbound};
use crate::metrics::Transport;
use crate::node::{ConnectionSlot, Node};
use crate::subscriptions::{Emit, Subscriptions};

const BATCH: usize = 64;

/// Channels and resume point read from the query string.
pub struct StreamParams {
    /// Channels, in the order given, without duplicates.
    pub channels: Vec<String>,
    /// Resume point (`since=` or `cursor=`).
    pub cursor: Option<Cursor>,
    /// Display name.
    pub user: Option<String>,
    /// Long-poll timeout, seconds.
    pub timeout: Option<String>,
}

/// Parses `channel=…` (repeatable), `since`/`cursor`, `user` and `timeout`.
pub fn parse_params(query: Option<&str>, max_channels: usize) -> Result<StreamParams, EdgeError> {
    let mut params = StreamParams {
        channels: Vec::new(),
        cursor: None,
        user: None,
        timeout: None,
    };
    let mut since = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "channel" => {
                for ch in v.split(',').filter(|c| !c.is_empty()) {
                    herald_protocol::validate_channel(ch)?;
                    if !params.channels.iter().any(|c| c == ch) {
                        params.channels.push(ch.to_owned());
                    }
                }
            }
            "since" | "cursor" if !v.is_empty() => since = Some(v.into_owned()),
            "user" => params.user = Some(v.into_owned()),
            "timeout" => params.timeout = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(since) = since {
        params.cursor = Some(decode_since(&since, &params.channels)?);
    }
    if params.channels.is_empty() {
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            "at least one channel=… is required",
        ));
    }
    if params.channels.len() > max_channels {
        return Err(EdgeError::Limit(format!(
            "at most {max_channels} channels per connection"
        )));
    }
    Ok(params)
}

/// Reads a resume point: a cursor this server made, or, for a stream of exactly one channel,
/// `<epoch>:<offset>` (what a WebSocket client knows, so it can switch transports).
fn decode_since(text: &str, channels: &[String]) -> Result<Cursor, EdgeError> {
    match (text.split_once(':'), channels) {
        (Some(_), [only]) => {
            let mut cursor = Cursor::new();
            if let Some(pos) = crate::api::parse_since(only, text)? {
                cursor.set(only, pos);
            }
            Ok(cursor)
        }
        (Some(_), _) => Err(EdgeError::from(herald_protocol::ProtocolError::BadCursor(
            "`epoch:offset` names a position in one channel; use a cursor for several".into(),
        ))),
        (None, _) => Ok(Cursor::decode(text)?),
    }
}

/// `GET /sse`.
pub async fn handler(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // One span per connection; `client` is recorded once the connection is admitted, and the
    // stream keeps the span for the life of the response body.
    let span = tracing::info_span!("conn", client = tracing::field::Empty, transport = "sse",
        node = %node.config.node_id);
    match tracing::Instrument::instrument(open(node.clone(), query, headers), span).await {
        Ok(r) => r,
        Err(e) => {
            refused(&node, &e);
            e.into_response()
        }
    }
}

/// What SSE and polls check before anything else: the origin, the query, and that the client
/// may subscribe to every channel it names.
pub(crate) fn read_request(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<StreamParams, EdgeError> {
    if !crate::server::origin_allowed(node, headers) {
        return Err(EdgeError::PermissionDenied("origin not allowed".into()));
    }
    let params = parse_params(query, node.config.limits.max_channels_per_connection)?;
    for ch in &params.channels {
        node.check_subscribe(ch)?;
    }
    Ok(params)
}

/// Counts a refused SSE or poll request (errors by code, and the per-connection channel cap).
pub(crate) fn refused(node: &Node, err: &EdgeError) {
    node.metrics.error(err.code(), err.source_tag());
    // On these paths a `Limit` error only ever comes from `parse_params`'s channel cap.
    if matches!(err, EdgeError::Limit(_)) {
        node.metrics
            .limit_rejected(crate::metrics::Limit::ChannelsPerConnection);
    }
}

async fn open(
    node: Arc<Node>,
    query: Option<String>,
    headers: HeaderMap,
) -> Result<Response, EdgeError> {
    let mut params = read_request(&node, query.as_deref(), &headers)?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().map_err(|_| {
            EdgeError::from(herald_protocol::ProtocolError::BadCursor(
                "Last-Event-ID is not text".into(),
            ))
        })?;
        if !text.is_empty() {
            params.cursor = Some(Cursor::decode(text)?);
        }
    }
    let user = crate::transport::ws::sanitize_user(params.user.take())?;
    let slot = node.admit(Transport::Sse)?;
    let client = node.new_client_id();
    let span = tracing::Span::current();
    span.record("client", &*client);
    let (handle, queue) = node
        .hub
        .connect(client.clone(), Transport::Sse, &node.shutdown);
    let entry = PresenceEntry {
        client: client.to_string(),
        user,
        node: node.config.node_id.clone(),
    };
    let mut stream = SseStream {
        node: node.clone(),
        handle,
        queue,
        subs: Subscriptions::default(),
        cursor: Cursor::new(),
        entry,
        pending: VecDeque::new(),
        heartbeat: tokio::time::interval_at(
            tokio::time::Instant::now()
                + Duration::from_secs(node.config.limits.sse_heartbeat_secs),
            Duration::from_secs(node.config.limits.sse_heartbeat_secs),
        ),
        done: false,
        span,
        _slot: slot,
        emits: Vec::new(),
        latency: node.metrics.delivery_latency.with_label_values(&["sse"]),
    };
    stream.start(&params).await?;
    tracing::debug!(channels = params.channels.len(), "sse stream opened");
    let body = futures_util::stream::unfold(stream, |mut st| async move {
        let span = st.span.clone();
        tracing::Instrument::instrument(st.next_chunk(), span)
            .await
            .map(|b| (Ok::<Bytes, Infallible>(b), st))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .expect("sse response"))
}

/// One SSE connection; the response body.
struct SseStream {
    node: Arc<Node>,
    /// The hub's handle: fan-out sends to `queue`'s other end; `handle.cancel` ends the stream.
    handle: Arc<ConnHandle>,
    /// Receives what the hub fans out here. Bounded; when full the stream ends (4008).
    queue: mpsc::Receiver<Outbound>,
    subs: Subscriptions,
    cursor: Cursor,
    entry: PresenceEntry,
    /// Encoded events waiting to be written (welcome and recovered messages).
    pending: VecDeque<Bytes>,
    heartbeat: tokio::time::Interval,
    done: bool,
    /// The connection's span (client, transport, node): every poll of the body enters it.
    span: tracing::Span,
    _slot: ConnectionSlot,
    emits: Vec<Emit>,
    /// This transport's latency histogram, looked up once (not per delivery).
    latency: prometheus::Histogram,
}

impl SseStream {
    async fn start(&mut self, params: &StreamParams) -> Result<(), EdgeError> {
        let mut buf = BytesMut::new();
        buf.put_slice(b"retry: 2000\n");
        let welcome = serde_json::json!({"client": self.entry.client, "node": self.node.config.node_id,
            "channels": params.channels});
        put_event(
            &mut buf,
            Some("welcome"),
            None,
            welcome.to_string().as_bytes(),
        );
        for channel in &params.channels {
            let since = params.cursor.as_ref().and_then(|c| c.get(channel));
            let joined = match self.node.join(channel, &self.handle, since).await {
                Ok(j) => j,
                Err(e) => {
                    self.leave_all();
                    return Err(e);
                }
            };
            self.subs.insert(channel, &joined.position);
            self.cursor.set(channel, joined.position.clone());
            let info = serde_json::json!({"channel": channel, "epoch": joined.position.epoch,
                "offset": joined.position.offset, "recovered": joined.recovered});
            for p in joined.publications {
                let d = Delivery::new(p);
                self.cursor
                    .advance(channel, &d.publication.epoch, d.publication.offset);
                put_event(
                    &mut buf,
                    None,
                    Some(&self.cursor.encode()),
                    d.text().as_bytes(),
                );
            }
            let id = self.cursor.encode();
            put_event(
                &mut buf,
                Some("subscribed"),
                Some(&id),
                info.to_string().as_bytes(),
            );
            self.node.presence_join(channel, &self.entry).await;
        }
        self.pending.push_back(buf.freeze());
        Ok(())
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(b) = self.pending.pop_front() {
            self.count_out(b.len());
            return Some(b);
        }
        if self.done {
            return None;
        }
        let mut buf = BytesMut::new();
        tokio::select! {
            biased;
            _ = self.handle.cancel.cancelled() => {
                let code = self.handle.close_code().unwrap_or(CloseCode::Restart);
                self.node.metrics.disconnect(code);
                let data = serde_json::json!({"code": code.code(), "reason": code.reason()});
                put_event(&mut buf, Some("close"), None, data.to_string().as_bytes());
                self.done = true;
            }
            item = self.queue.recv() => {
                let mut next = Some(item?);
                let mut n = 0;
                while let Some(item) = next.take() {
                    self.write_item(item, &mut buf).await;
                    n += 1;
                    if n < BATCH {
                        next = self.queue.try_recv().ok();
                    }
                }
            }
            _ = self.heartbeat.tick() => buf.put_slice(b": ping\n\n"),
        }
        self.count_out(buf.len());
        Some(buf.freeze())
    }

    fn count_out(&self, n: usize) {
        self.node
            .metrics
            .bytes_out
            .with_label_values(&["sse"])
            .inc_by(n as u64);
    }

    async fn write_item(&mut self, item: Outbound, buf: &mut BytesMut) {
        let mut emits = std::mem::take(&mut self.emits);
        match item {
            Outbound::Publication(d) => self.subs.on_live(&self.node, d, &mut emits).await,
            Outbound::Event(kind, text) => {
                put_event(buf, Some(kind.name()), None, text.as_bytes());
                if kind == EventKind::Broadcast {
                    self.node
                        .metrics
                        .delivered
                        .with_label_values(&["sse"])
                        .inc();
                }
            }
            Outbound::Resync => self.subs.resync(&self.node, &mut emits).await,
        }
        let mut delivered = 0;
        for emit in emits.drain(..) {
            match emit {
                Emit::Publication(d) => {
                    let p = &d.publication;
                    self.cursor.advance(&p.channel, &p.epoch, p.offset);
                    put_event(buf, None, Some(&self.cursor.encode()), d.text().as_bytes());
                    let age_ms = herald_broker::now_ms().saturating_sub(p.ts_ms);
                    self.latency.observe(age_ms as f64 / 1000.0);
                    delivered += 1;
                }
                Emit::Reset { channel, position } => {
                    self.cursor.set(&channel, position.clone());
                    let info = serde_json::json!({"channel": &*channel, "epoch": position.epoch,
                        "offset": position.offset, "recovered": false});
                    put_event(
                        buf,
                        Some("subscribed"),
                        Some(&self.cursor.encode()),
                        info.to_string().as_bytes(),
                    );
                }
            }
        }
        if delivered > 0 {
            self.node
                .metrics
                .delivered
                .with_label_values(&["sse"])
                .inc_by(delivered);
        }
        self.emits = emits;
    }

    fn leave_all(&mut self) {
        let node = self.node.clone();
        let entry = self.entry.clone();
        let channels = self.subs.names();
        for ch in &channels {
            node.hub.unsubscribe(ch, &self.handle);
        }
        self.subs = Subscriptions::default();
        node.hub.disconnect(&self.handle);
        if !channels.is_empty() {
            tokio::spawn(async move {
                for ch in channels {
                    node.presence_leave(&ch, &entry).await;
                }
            });
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let _span = self.span.clone().entered();
        tracing::debug!(ended_by_server = self.done, "sse stream closed");
        if !self.done {
            self.node.metrics.disconnect(CloseCode::Normal);
        }
        self.leave_all();
    }
}

/// Writes one SSE event. Raw JSON may hold line breaks only as whitespace (never inside a
/// string), so they are written as spaces: the JSON means the same and the event stays whole.
fn put_event(buf: &mut BytesMut, event: Option<&str>, id: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        buf.put_slice(b"event: ");
        buf.put_slice(event.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    if data.iter().any(|b| *b == b'\n' || *b == b'\r') {
        buf.extend(data.iter().map(|b| match b {
            b'\n' | b'\r' => b' ',
            other => *other,
        }));
    } else {
        buf.put_slice(data);
    }
    buf.put_slice(b"\n\n");
}

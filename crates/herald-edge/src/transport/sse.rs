//! Server-Sent Events: `GET /sse?channel=a&channel=b[&since=<cursor>]`.
//!
//! The response body is a stream that owns its [`Connection`]: each time hyper can write, the
//! stream takes what the connection queued (up to a batch), lets the connection check it
//! against its positions, and writes SSE events (encoded by [`herald_protocol::sse`]). Every
//! message carries `id: <cursor>` for all channels of the stream, so the browser's
//! `Last-Event-ID` on reconnect resumes every channel at once. When the stream is dropped
//! (client gone), the connection goes with it and leaves its channels.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};
use herald_protocol::{sse, Cursor};

use crate::connection::{Connection, ConnectionOptions, Event};
use crate::error::EdgeError;
use crate::listener::{self, Takeover};
use crate::metrics::Transport;
use crate::node::Node;
use crate::transport::request::{self, StreamRequest};

/// Most queued items written per wake-up.
const BATCH: usize = 64;

/// The reconnection delay told to `EventSource`, milliseconds: a random one in this range per
/// stream, so the browsers of a draining edge do not all come back at the same moment.
const RETRY_MS: std::ops::RangeInclusive<u64> = 1000..=3000;

/// `GET /sse`.
pub(crate) async fn handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    version: Version,
    takeover: Option<Extension<Takeover>>,
    headers: HeaderMap,
) -> Response {
    // HTTP/1.1: the stream is written off hyper once its head is out (see `listener`), which
    // keeps an idle stream at a few KiB; HTTP/1.0 (no chunked encoding) stays with hyper.
    let takeover = takeover
        .map(|Extension(t)| t)
        .filter(|_| version == Version::HTTP_11);
    // One span per connection; `client` is recorded once the connection is admitted, and the
    // stream keeps the span for the life of the response body.
    let span = tracing::debug_span!("conn", client = tracing::field::Empty, transport = "sse",
        node = %node.config.node_id);
    let opened = open(node.clone(), query, headers, peer, takeover);
    match tracing::Instrument::instrument(opened, span).await {
        Ok(r) => r,
        Err(e) => {
            request::refused(&node, &e);
            e.into_response()
        }
    }
}

async fn open(
    node: Arc<Node>,
    query: Option<String>,
    headers: HeaderMap,
    peer: SocketAddr,
    takeover: Option<Takeover>,
) -> Result<Response, EdgeError> {
    let mut req = request::read(&node, query.as_deref(), &headers, Some(peer))?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().map_err(|_| {
            EdgeError::from(herald_protocol::ProtocolError::BadCursor(
                "Last-Event-ID is not text".into(),
            ))
        })?;
        if !text.is_empty() {
            req.cursor = Some(Cursor::decode(text)?);
        }
    }
    let client = node.new_client_id();
    let identity = request::identify(&node, &mut req, &client, Transport::Sse).await?;
    let options = ConnectionOptions {
        transport: Transport::Sse,
        client,
        identity,
        context: std::mem::take(&mut req.context),
        presence: true,
    };
    let conn = Connection::open(&node, options)?;
    let span = tracing::Span::current();
    span.record("client", &**conn.client());
    let heartbeat = Duration::from_secs(node.config.limits.sse_heartbeat_secs);
    let mut stream = SseStream {
        conn,
        cursor: Cursor::new(),
        pending: VecDeque::new(),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        done: false,
        span,
        events: Vec::new(),
    };
    stream.start(&req).await?;
    tracing::debug!(channels = req.channels.len(), "sse stream opened");
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
        .body(listener::detachable(
            Body::from_stream(body),
            takeover,
            &node.tracker,
        ))
        .expect("sse response"))
}

/// One SSE connection; the response body.
struct SseStream {
    conn: Connection,
    /// Every channel's position, written as each event's `id:`.
    cursor: Cursor,
    /// Encoded events waiting to be written (welcome and recovered messages).
    pending: VecDeque<Bytes>,
    heartbeat: tokio::time::Interval,
    /// The `close` event was written; the body ends.
    done: bool,
    /// The connection's span (client, transport, node): every poll of the body enters it.
    span: tracing::Span,
    /// Events of the batch being written (kept to reuse its allocation).
    events: Vec<Event>,
}

impl SseStream {
    async fn start(&mut self, req: &StreamRequest) -> Result<(), EdgeError> {
        let mut buf = BytesMut::new();
        let retry = {
            use rand::Rng as _;
            rand::rng().random_range(RETRY_MS)
        };
        sse::put_retry(&mut buf, retry);
        let node = self.conn.node().clone();
        let welcome = sse::encode_welcome(
            self.conn.client(),
            &node.config.node_id,
            &req.channels,
            &self.conn.identity().user,
            node.config.limits.sse_heartbeat_secs,
        );
        sse::put_event(&mut buf, Some(sse::WELCOME), None, welcome.as_bytes());
        let all = self.conn.subscribe_all(&req.stream_channels()).await?;
        for (channel, subscribed) in req.channels.iter().zip(all) {
            self.cursor.set(channel, subscribed.position.clone());
            for d in &subscribed.publications {
                let p = &d.publication;
                self.cursor.advance(channel, &p.epoch, p.offset);
                let id = self.cursor.encode();
                sse::put_event(&mut buf, None, Some(&id), d.text().as_bytes());
            }
            self.conn.count_delivered(&subscribed.publications);
            let info = sse::encode_subscribed(channel, &subscribed.position, subscribed.recovered);
            let id = self.cursor.encode();
            sse::put_event(&mut buf, Some(sse::SUBSCRIBED), Some(&id), info.as_bytes());
        }
        self.pending.push_back(buf.freeze());
        Ok(())
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(b) = self.pending.pop_front() {
            self.conn.count_bytes_out(b.len());
            return Some(b);
        }
        if self.done {
            return None;
        }
        let mut buf = BytesMut::new();
        let closing = self.conn.closing();
        if self.conn.is_catching_up() && !closing.is_cancelled() {
            // Live items first (so the queue does not overflow while history is paged), then
            // the next page of a channel still catching up.
            let mut events = std::mem::take(&mut self.events);
            let mut n = 0;
            while n < BATCH {
                let Some(item) = self.conn.try_recv() else {
                    break;
                };
                self.conn.absorb(item, &mut events).await;
                n += 1;
            }
            self.conn.catch_up(&mut events).await;
            for event in events.drain(..) {
                self.write_event(event, &mut buf);
            }
            self.events = events;
            self.conn.flush_metrics();
            self.conn.count_bytes_out(buf.len());
            return Some(buf.freeze());
        }
        let deadline = self.conn.deadline();
        tokio::select! {
            biased;
            _ = closing.cancelled() => {
                let code = self.conn.close_code();
                if code == herald_protocol::CloseCode::Restart {
                    let grace = self.conn.node().config.shutdown_grace();
                    crate::transport::spread_restart(grace).await;
                }
                self.close(code, &mut buf);
            }
            _ = crate::transport::sleep_until(deadline) => {
                self.close(herald_protocol::CloseCode::TokenExpired, &mut buf);
            }
            item = self.conn.recv() => {
                let mut next = Some(item?);
                let mut events = std::mem::take(&mut self.events);
                let mut n = 0;
                while let Some(item) = next.take() {
                    self.conn.absorb(item, &mut events).await;
                    n += 1;
                    if n < BATCH {
                        next = self.conn.try_recv();
                    }
                }
                for event in events.drain(..) {
                    self.write_event(event, &mut buf);
                }
                self.events = events;
                self.conn.flush_metrics();
            }
            _ = self.heartbeat.tick() => buf.extend_from_slice(sse::KEEPALIVE),
        }
        self.conn.count_bytes_out(buf.len());
        Some(buf.freeze())
    }

    /// Writes the `close` event; the stream ends after it.
    fn close(&mut self, code: herald_protocol::CloseCode, buf: &mut BytesMut) {
        self.conn.node().metrics.disconnect(code);
        let data = sse::encode_close(code);
        sse::put_event(buf, Some(sse::CLOSE), None, data.as_bytes());
        self.done = true;
    }

    fn write_event(&mut self, event: Event, buf: &mut BytesMut) {
        match event {
            Event::Publication(d) => {
                let p = &d.publication;
                self.cursor.advance(&p.channel, &p.epoch, p.offset);
                let id = self.cursor.encode();
                sse::put_event(buf, None, Some(&id), d.text().as_bytes());
            }
            Event::Notice(kind, text) => {
                sse::put_event(buf, Some(kind.name()), None, text.as_bytes());
            }
            Event::Reset { channel, position } => {
                self.cursor.set(&channel, position.clone());
                let info = sse::encode_subscribed(&channel, &position, false);
                let id = self.cursor.encode();
                sse::put_event(buf, Some(sse::SUBSCRIBED), Some(&id), info.as_bytes());
            }
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let _span = self.span.clone().entered();
        tracing::debug!(ended_by_server = self.done, "sse stream closed");
        if !self.done {
            self.conn
                .node()
                .metrics
                .disconnect(herald_protocol::CloseCode::Normal);
        }
    }
}

//! Herald's client side (ARCHITECTURE.md): WebSocket `/ws` with JSON `op` frames, SSE
//! `/sse?channel=..`, and long-poll `/poll?channel=..&cursor=..`.
//!
//! Every frame sent is built, and every frame read is parsed, by `herald_protocol::client`,
//! so the loadtest speaks exactly the contract the edge parses and writes. Parsing borrows
//! from the received text: reading a message allocates nothing.

use std::collections::VecDeque;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::SinkExt;
use herald_protocol::client::{self, PollReply, ServerFrame};
use herald_protocol::{ErrorCode, StreamPosition};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::http::{BoxFut, Pending};
use super::sse::SseStream;
use super::{ws_config, Delivery, SubscribeSpec};
use crate::clock::now_us;
use crate::errors::Failure;
use crate::net::connect_tcp;
use crate::payload;

/// What a subscribe reply said.
#[derive(Debug, Clone)]
pub(crate) struct Subscribed {
    /// Whether the server resumed from the requested position without a gap.
    pub(crate) recovered: bool,
}

/// A Herald WebSocket connection with its subscriptions.
pub(crate) struct WsSession {
    /// The socket; owned by this session alone.
    ws: WebSocketStream<TcpStream>,
    /// Which channels, and where each one stands (updated by every message).
    spec: SubscribeSpec,
    /// Last known position per channel, parallel to `spec.channels`.
    positions: Vec<Option<StreamPosition>>,
    /// Subscribe replies, parallel to `spec.channels`.
    subscribed: Vec<Option<Subscribed>>,
    /// Messages that arrived while subscribing.
    early: VecDeque<Delivery>,
    /// The next request id.
    next_id: u64,
    /// Publish acks received.
    acked: u64,
    /// Error replies received.
    rejected: u64,
}

impl WsSession {
    /// Connects, waits for `welcome`, subscribes every channel (with `since` where given)
    /// and waits for every `subscribed` reply.
    pub(crate) async fn connect(spec: SubscribeSpec) -> Result<Self> {
        let tcp = connect_tcp(spec.endpoint.addr, spec.source).await?;
        let url = spec.endpoint.ws_url("/ws");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
            .await
            .context("WebSocket handshake")?;
        let n = spec.channels.len();
        let mut s = Self {
            ws,
            positions: spec.since.clone(),
            spec,
            subscribed: vec![None; n],
            early: VecDeque::new(),
            next_id: 1,
            acked: 0,
            rejected: 0,
        };
        s.positions.resize(n, None);
        let first = s.read_text().await?;
        let frame = ServerFrame::parse(&first).context("welcome frame")?;
        if !matches!(frame, ServerFrame::Welcome { .. }) {
            bail!(Failure::Protocol(format!(
                "first frame is {:?}",
                frame.op()
            )));
        }
        for k in 0..n {
            let req = client::encode_subscribe(
                Some(k as u64 + 1),
                &s.spec.channels[k].1,
                s.positions[k].as_ref(),
            );
            s.ws.send(Message::text(req)).await?;
        }
        s.next_id = n as u64 + 1;
        while s.subscribed.iter().any(Option::is_none) {
            let text = s.read_text().await?;
            let mut early = Vec::new();
            s.handle(&text, &mut early)?;
            s.early.extend(early);
        }
        Ok(s)
    }

    /// Reads the next text frame; an error when the socket closes.
    async fn read_text(&mut self) -> Result<Utf8Bytes> {
        super::read_text(&mut self.ws).await
    }

    /// Applies one frame: messages go to `out`, replies update the session.
    fn handle(&mut self, text: &str, out: &mut Vec<Delivery>) -> Result<()> {
        let recv_us = now_us();
        let frame = match ServerFrame::parse(text) {
            Ok(frame) => frame,
            // An op this client does not know (one the server added) is skipped.
            Err(e) if e.code() == ErrorCode::UnknownOp => return Ok(()),
            Err(e) => bail!(Failure::Protocol(format!("bad frame: {e}"))),
        };
        match frame {
            ServerFrame::Message(m) => {
                let Some(k) = self
                    .spec
                    .channels
                    .iter()
                    .position(|(_, n)| *n == *m.channel)
                else {
                    return Ok(());
                };
                // The position is the message's: its epoch too (a channel nobody had published
                // to when we subscribed answered with the empty epoch).
                match self.positions[k].as_mut() {
                    Some(pos) if *pos.epoch == *m.epoch => pos.offset = m.offset,
                    _ => {
                        self.positions[k] = Some(StreamPosition {
                            epoch: m.epoch.to_string(),
                            offset: m.offset,
                        })
                    }
                }
                let stamp = payload::decode(m.data.get().as_bytes())?;
                out.push(Delivery {
                    channel: self.spec.channels[k].0,
                    stamp,
                    recv_us,
                });
            }
            ServerFrame::Subscribed {
                id,
                epoch,
                offset,
                recovered,
                ..
            } => {
                let k = id.and_then(|id| id.checked_sub(1)).unwrap_or(u64::MAX) as usize;
                if k >= self.subscribed.len() {
                    bail!(Failure::Protocol(format!("subscribed with id {id:?}")));
                }
                self.subscribed[k] = Some(Subscribed { recovered });
                // Resuming: keep our own offset (recovered messages follow this reply);
                // fresh or not recovered: start from the server's position.
                let keep =
                    recovered && self.positions[k].as_ref().is_some_and(|p| p.epoch == epoch);
                if !keep {
                    self.positions[k] = Some(StreamPosition {
                        epoch: epoch.into_owned(),
                        offset,
                    });
                }
            }
            ServerFrame::Ack { .. } => self.acked += 1,
            ServerFrame::Error { id, message, .. } => {
                if id.is_some_and(|id| id as usize <= self.spec.channels.len()) {
                    bail!(Failure::Rejected(message.into_owned()));
                }
                self.rejected += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Waits for the next message(s). Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        if !self.early.is_empty() {
            out.extend(self.early.drain(..));
            return Ok(());
        }
        let start = out.len();
        while out.len() == start {
            let text = self.read_text().await?;
            self.handle(&text, out)?;
        }
        Ok(())
    }

    /// Sends a publish request (its ack is counted when read by [`WsSession::next`]).
    pub(crate) async fn publish(&mut self, channel: &str, data: Box<RawValue>) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = client::encode_publish(Some(id), channel, &data, false);
        self.ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// (acks, error replies) to publishes so far.
    pub(crate) fn publish_replies(&self) -> (u64, u64) {
        (self.acked, self.rejected)
    }

    /// The last known position per channel (to resume from after a reconnect).
    pub(crate) fn positions(&self) -> &[Option<StreamPosition>] {
        &self.positions
    }

    /// The subscribe replies, parallel to the channels.
    pub(crate) fn subscribed(&self) -> &[Option<Subscribed>] {
        &self.subscribed
    }

    /// Sends a normal close.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The delivery of one SSE or long-poll message (None for a channel not subscribed).
fn delivery(
    spec: &SubscribeSpec,
    message: &client::Message<'_>,
    recv_us: u64,
) -> Result<Option<Delivery>> {
    let Some(channel) = spec.channel_index(&message.channel) else {
        return Ok(None);
    };
    let stamp = payload::decode(message.data.get().as_bytes())?;
    Ok(Some(Delivery {
        channel,
        stamp,
        recv_us,
    }))
}

fn channel_query(spec: &SubscribeSpec) -> String {
    spec.channels
        .iter()
        .map(|(_, n)| format!("channel={}", urlencode(n)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes a query value (channel names and cursors).
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A Herald SSE stream.
pub(crate) struct SseSession {
    /// The channels.
    spec: SubscribeSpec,
    /// The event stream.
    events: SseStream,
}

impl SseSession {
    /// Opens `/sse?channel=..` and waits for the `welcome` event.
    pub(crate) async fn connect(spec: SubscribeSpec, http: &reqwest::Client) -> Result<Self> {
        let url = spec
            .endpoint
            .http_url(&format!("/sse?{}", channel_query(&spec)));
        let resp = http
            .get(url)
            .header("Accept", "text/event-stream")
            .send()
            .await?
            .error_for_status()?;
        let mut events = SseStream::new(resp);
        loop {
            let ev = events.next_event().await?;
            if ev.event.as_deref() == Some("welcome") {
                break;
            }
        }
        Ok(Self { spec, events })
    }

    /// Waits for the next message. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        loop {
            let ev = self.events.next_event().await?;
            if ev.event.is_some() {
                continue;
            }
            let recv_us = now_us();
            let message = client::Message::parse(&ev.data)
                .map_err(|e| Failure::Protocol(format!("bad message envelope: {e}")))?;
            if let Some(d) = delivery(&self.spec, &message, recv_us)? {
                out.push(d);
                return Ok(());
            }
        }
    }
}

/// A Herald long-poll reader.
pub(crate) struct PollSession {
    /// The channels.
    spec: SubscribeSpec,
    /// Reused client.
    http: reqwest::Client,
    /// Where the next poll resumes.
    cursor: String,
    /// The poll in flight; its answer is the reply body, parsed by [`parse_poll`].
    pending: Pending<Bytes>,
}

impl PollSession {
    /// Takes a cursor for "now" with a short poll (`timeout=0`), so nothing published after
    /// this returns can be missed.
    pub(crate) async fn connect(spec: SubscribeSpec, http: &reqwest::Client) -> Result<Self> {
        let url = spec
            .endpoint
            .http_url(&format!("/poll?{}&timeout=0", channel_query(&spec)));
        let body = poll(http.clone(), url).await?;
        let cursor = parse_poll(&body)?.cursor.into_owned();
        Ok(Self {
            spec,
            http: http.clone(),
            cursor,
            pending: Pending::default(),
        })
    }

    /// Polls until at least one message arrives. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        loop {
            let url = self.spec.endpoint.http_url(&format!(
                "/poll?{}&cursor={}&timeout=25",
                channel_query(&self.spec),
                urlencode(&self.cursor)
            ));
            let http = self.http.clone();
            let body = self.pending.run(|| poll(http, url)).await?;
            let reply = parse_poll(&body)?;
            let recv_us = now_us();
            self.cursor.clear();
            self.cursor.push_str(&reply.cursor);
            let before = out.len();
            for m in &reply.messages {
                if let Some(d) = delivery(&self.spec, m, recv_us)? {
                    out.push(d);
                }
            }
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

/// One poll: the reply body of a 2xx answer.
fn poll(http: reqwest::Client, url: String) -> BoxFut<Bytes> {
    Box::pin(async move {
        let resp = http.get(url).send().await?.error_for_status()?;
        Ok(resp.bytes().await?)
    })
}

/// Reads a poll reply body (borrowed from it).
fn parse_poll(body: &[u8]) -> Result<PollReply<'_>> {
    PollReply::parse(body).map_err(|e| Failure::Protocol(format!("bad poll reply: {e}")).into())
}

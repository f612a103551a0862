//! Herald's client side of the wire contract (ARCHITECTURE.md): WebSocket `/ws` with JSON
//! `op` frames, SSE `/sse?channel=..`, and long-poll `/poll?channel=..&cursor=..`.

use std::collections::VecDeque;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::http::{BoxFut, Pending};
use super::sse::SseStream;
use super::{ws_config, Delivery, Position, SubscribeSpec};
use crate::clock::now_us;
use crate::errors::Failure;
use crate::net::connect_tcp;
use crate::payload;

/// A server frame, parsed without copying the data.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    op: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    channel: Option<&'a str>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    epoch: Option<&'a RawValue>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    message: Option<String>,
}

/// A message as SSE and long-poll carry it.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    channel: &'a str,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow)]
    data: &'a RawValue,
}

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
    positions: Vec<Option<Position>>,
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
        let frame: Frame<'_> = serde_json::from_str(&first).context("welcome frame")?;
        if frame.op != "welcome" {
            bail!(Failure::Protocol(format!("first frame is {:?}", frame.op)));
        }
        for k in 0..n {
            let name = &s.spec.channels[k].1;
            let mut req = serde_json::json!({"op":"subscribe","channel":name,"id":(k as u64) + 1});
            if let Some(pos) = &s.positions[k] {
                let epoch: serde_json::Value =
                    serde_json::from_str(&pos.epoch).context("stored epoch")?;
                req["since"] = serde_json::json!({"epoch": epoch, "offset": pos.offset});
            }
            s.ws.send(Message::text(req.to_string())).await?;
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
        loop {
            match self.ws.next().await {
                None => bail!(Failure::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(f))) => {
                    bail!(Failure::Closed(f.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Applies one frame: messages go to `out`, replies update the session.
    fn handle(&mut self, text: &str, out: &mut Vec<Delivery>) -> Result<()> {
        let recv_us = now_us();
        let f: Frame<'_> =
            serde_json::from_str(text).map_err(|e| Failure::Protocol(format!("bad frame: {e}")))?;
        match f.op {
            "message" => {
                let (Some(name), Some(data)) = (f.channel, f.data) else {
                    bail!(Failure::Protocol("message without channel or data".into()));
                };
                let Some(k) = self.spec.channels.iter().position(|(_, n)| n == name) else {
                    return Ok(());
                };
                if let (Some(off), Some(pos)) = (f.offset, self.positions[k].as_mut()) {
                    pos.offset = off;
                }
                let stamp = payload::decode(data.get().as_bytes())?;
                out.push(Delivery {
                    channel: self.spec.channels[k].0,
                    stamp,
                    recv_us,
                });
            }
            "subscribed" => {
                let k = f.id.and_then(|id| id.checked_sub(1)).unwrap_or(u64::MAX) as usize;
                if k >= self.subscribed.len() {
                    bail!(Failure::Protocol(format!("subscribed with id {:?}", f.id)));
                }
                self.subscribed[k] = Some(Subscribed {
                    recovered: f.recovered.unwrap_or(true),
                });
                let epoch = f.epoch.map(|e| e.get().to_owned()).unwrap_or_default();
                let offset = f.offset.unwrap_or(0);
                // Resuming: keep our own offset (recovered messages follow this reply);
                // fresh or not recovered: start from the server's position.
                let keep = f.recovered == Some(true)
                    && self.positions[k].as_ref().is_some_and(|p| p.epoch == epoch);
                if !keep {
                    self.positions[k] = Some(Position { epoch, offset });
                }
            }
            "ack" => self.acked += 1,
            "error" => {
                if f.id
                    .is_some_and(|id| id as usize <= self.spec.channels.len())
                {
                    bail!(Failure::Rejected(f.message.unwrap_or_default()));
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
    pub(crate) async fn publish(&mut self, channel: &str, data: String) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let name = serde_json::to_string(channel)?;
        let frame = format!(r#"{{"op":"publish","channel":{name},"data":{data},"id":{id}}}"#);
        self.ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// (acks, error replies) to publishes so far.
    pub(crate) fn publish_replies(&self) -> (u64, u64) {
        (self.acked, self.rejected)
    }

    /// The last known position per channel (to resume from after a reconnect).
    pub(crate) fn positions(&self) -> &[Option<Position>] {
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

/// Parses one SSE or long-poll message envelope into a delivery.
fn envelope(spec: &SubscribeSpec, text: &str, recv_us: u64) -> Result<Option<Delivery>> {
    let env: Envelope<'_> = serde_json::from_str(text)
        .map_err(|e| Failure::Protocol(format!("bad message envelope: {e}")))?;
    let _ = env.offset;
    let Some(channel) = spec.channel_index(env.channel) else {
        return Ok(None);
    };
    let stamp = payload::decode(env.data.get().as_bytes())?;
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
            if let Some(d) = envelope(&self.spec, &ev.data, now_us())? {
                out.push(d);
                return Ok(());
            }
        }
    }
}

/// A long-poll reply.
#[derive(Debug, Deserialize)]
struct PollReply {
    messages: Vec<Box<RawValue>>,
    cursor: String,
}

/// A Herald long-poll reader.
pub(crate) struct PollSession {
    /// The channels.
    spec: SubscribeSpec,
    /// Reused client.
    http: reqwest::Client,
    /// Where the next poll resumes.
    cursor: String,
    /// The poll in flight.
    pending: Pending<PollReply>,
}

impl PollSession {
    /// Takes a cursor for "now" with a short poll (`timeout=0`), so nothing published after
    /// this returns can be missed.
    pub(crate) async fn connect(spec: SubscribeSpec, http: &reqwest::Client) -> Result<Self> {
        let url = spec
            .endpoint
            .http_url(&format!("/poll?{}&timeout=0", channel_query(&spec)));
        let reply = poll(http.clone(), url).await?;
        Ok(Self {
            spec,
            http: http.clone(),
            cursor: reply.cursor,
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
            let reply = self.pending.run(|| Box::pin(poll(http, url))).await?;
            let recv_us = now_us();
            self.cursor = reply.cursor;
            let before = out.len();
            for m in &reply.messages {
                if let Some(d) = envelope(&self.spec, m.get(), recv_us)? {
                    out.push(d);
                }
            }
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

fn poll(http: reqwest::Client, url: String) -> BoxFut<PollReply> {
    Box::pin(async move {
        let resp = http.get(url).send().await?.error_for_status()?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Protocol(format!("bad poll reply: {e}")).into())
    })
}

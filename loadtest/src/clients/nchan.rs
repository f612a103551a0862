//! nchan's client side (bench/nchan/nginx.conf): one channel per connection, message bodies
//! are the raw data. `/sub/<ch>` subscribes (WebSocket, EventSource or long-poll),
//! `/ps/<ch>` is a pub/sub WebSocket (a text frame sent is a publish), `/pub/<ch>` takes
//! HTTP POSTs.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::herald::urlencode;
use super::http::{BoxFut, Pending};
use super::sse::SseStream;
use super::{ws_config, Delivery, SubscribeSpec};
use crate::clock::now_us;
use crate::errors::Failure;
use crate::net::connect_tcp;
use crate::payload;

/// The only channel of an nchan connection: (index, name).
fn single_channel(spec: &SubscribeSpec) -> Result<(usize, String)> {
    match spec.channels.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("an nchan connection subscribes exactly one channel"),
    }
}

fn delivery(channel: usize, body: &[u8], recv_us: u64) -> Result<Delivery> {
    Ok(Delivery {
        channel,
        stamp: payload::decode(body)?,
        recv_us,
    })
}

/// An nchan WebSocket subscriber (or pub/sub socket).
pub(crate) struct WsSession {
    /// The socket; owned by this session alone.
    ws: WebSocketStream<TcpStream>,
    /// The channel's index.
    channel: usize,
}

impl WsSession {
    /// Connects; nchan subscribes on the upgrade itself.
    pub(crate) async fn connect(spec: SubscribeSpec) -> Result<Self> {
        let (channel, name) = single_channel(&spec)?;
        let tcp = connect_tcp(spec.endpoint.addr, spec.source).await?;
        let loc = if spec.pubsub { "ps" } else { "sub" };
        let url = spec
            .endpoint
            .ws_url(&format!("/{loc}/{}", urlencode(&name)));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
            .await
            .context("WebSocket handshake")?;
        Ok(Self { ws, channel })
    }

    /// Waits for the next message. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        loop {
            match self.ws.next().await {
                None => bail!(Failure::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => {
                    out.push(delivery(self.channel, t.as_bytes(), now_us())?);
                    return Ok(());
                }
                Some(Ok(Message::Binary(b))) => {
                    out.push(delivery(self.channel, &b, now_us())?);
                    return Ok(());
                }
                Some(Ok(Message::Close(f))) => {
                    bail!(Failure::Closed(f.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Publishes `data` on this socket's channel (pub/sub location only).
    pub(crate) async fn publish(&mut self, data: String) -> Result<()> {
        self.ws.send(Message::text(data)).await?;
        Ok(())
    }

    /// Sends a normal close.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// An nchan EventSource subscriber.
pub(crate) struct SseSession {
    /// The channel's index.
    channel: usize,
    /// The event stream.
    events: SseStream,
}

impl SseSession {
    /// Opens the stream; subscribed once the response headers arrive.
    pub(crate) async fn connect(spec: SubscribeSpec, http: &reqwest::Client) -> Result<Self> {
        let (channel, name) = single_channel(&spec)?;
        let url = spec
            .endpoint
            .http_url(&format!("/sub/{}", urlencode(&name)));
        let resp = http
            .get(url)
            .header("Accept", "text/event-stream")
            .send()
            .await?
            .error_for_status()?;
        Ok(Self {
            channel,
            events: SseStream::new(resp),
        })
    }

    /// Waits for the next message. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        loop {
            let ev = self.events.next_event().await?;
            if ev.event.is_some() || ev.data.is_empty() {
                continue;
            }
            out.push(delivery(self.channel, ev.data.as_bytes(), now_us())?);
            return Ok(());
        }
    }
}

/// One long-poll answer: the body and the headers that name the next message.
struct PollAnswer {
    /// None on 304 (nothing new before the timeout).
    body: Option<bytes::Bytes>,
    last_modified: Option<String>,
    etag: Option<String>,
}

/// An nchan long-poll subscriber (`nchan_longpoll_multipart_response raw`: several
/// messages per answer, one per line).
pub(crate) struct PollSession {
    /// The channel's index.
    channel: usize,
    /// The subscriber URL.
    url: String,
    /// Reused client.
    http: reqwest::Client,
    /// `Last-Modified` / `Etag` of the last answer: nchan's message id.
    last: Option<(String, String)>,
    /// The poll in flight.
    pending: Pending<PollAnswer>,
}

impl PollSession {
    /// Prepares the poller; the first poll reads from the oldest buffered message
    /// (`nchan_subscriber_first_message oldest`), so nothing published later is missed.
    pub(crate) async fn connect(spec: SubscribeSpec, http: &reqwest::Client) -> Result<Self> {
        let (channel, name) = single_channel(&spec)?;
        Ok(Self {
            channel,
            url: spec
                .endpoint
                .http_url(&format!("/sub/{}", urlencode(&name))),
            http: http.clone(),
            last: None,
            pending: Pending::default(),
        })
    }

    /// Polls until at least one message arrives. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        loop {
            let mut req = self.http.get(&self.url);
            if let Some((lm, etag)) = &self.last {
                req = req
                    .header("If-Modified-Since", lm)
                    .header("If-None-Match", etag);
            }
            let answer = self.pending.run(|| poll(req)).await?;
            let recv_us = now_us();
            if let (Some(lm), Some(etag)) = (answer.last_modified, answer.etag) {
                self.last = Some((lm, etag));
            }
            let Some(body) = answer.body else { continue };
            let before = out.len();
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                out.push(delivery(self.channel, line, recv_us)?);
            }
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

fn poll(req: reqwest::RequestBuilder) -> BoxFut<PollAnswer> {
    Box::pin(async move {
        let resp = req.send().await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (last_modified, etag) = (header("last-modified"), header("etag"));
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(PollAnswer {
                body: None,
                last_modified,
                etag,
            });
        }
        let resp = resp.error_for_status()?;
        Ok(PollAnswer {
            body: Some(resp.bytes().await?),
            last_modified,
            etag,
        })
    })
}

//! Clients of the systems under test: one [`Subscriber`] type over every (target, transport)
//! pair, and the HTTP [`publish::HttpPublisher`]. sockudo speaks the Pusher protocol
//! ([`pusher`]) over WebSocket only.
//!
//! Every subscriber's [`Subscriber::next`] is cancel-safe (all state lives in `self`), so the
//! scenario loops can `select!` on it together with timers and cancellation.

pub(crate) mod herald;
pub(crate) mod http;
pub(crate) mod nchan;
pub(crate) mod publish;
pub(crate) mod pusher;
pub(crate) mod sockudo;
pub(crate) mod sse;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use herald_protocol::StreamPosition;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cli::{Target, Transport};
use crate::net::Endpoint;
use crate::payload::Stamp;

/// One message received by a subscriber.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    /// Index of the channel in the subscriber's [`SubscribeSpec::channels`] numbering.
    pub(crate) channel: usize,
    /// What the sender stamped into the data.
    pub(crate) stamp: Stamp,
    /// When it was read, µs since the process epoch.
    pub(crate) recv_us: u64,
}

/// What a subscriber connects to and subscribes.
#[derive(Debug, Clone)]
pub(crate) struct SubscribeSpec {
    /// The edge (or nginx) to connect to.
    pub(crate) endpoint: Endpoint,
    /// Source address to bind before connecting.
    pub(crate) source: Option<IpAddr>,
    /// Channels as (index, name).
    pub(crate) channels: Vec<(usize, String)>,
    /// Positions to resume from, parallel to `channels` (Herald WebSocket only).
    pub(crate) since: Vec<Option<StreamPosition>>,
    /// nchan WebSocket: use the pub/sub location `/ps/<channel>` (to publish over the
    /// socket) instead of `/sub/<channel>`; sockudo: subscribe `private-<channel>`, where
    /// client events may be sent.
    pub(crate) pubsub: bool,
    /// Bound on connecting + handshake + subscribing.
    pub(crate) timeout: Duration,
    /// sockudo: the Pusher app whose key names the WebSocket path.
    pub(crate) app: Arc<pusher::App>,
}

impl SubscribeSpec {
    /// The index of the channel called `name`.
    pub(crate) fn channel_index(&self, name: &str) -> Option<usize> {
        self.channels
            .iter()
            .find(|(_, n)| n == name)
            .map(|(i, _)| *i)
    }
}

/// The WebSocket settings of every client socket: small buffers, since a load generator
/// holds many idle sockets (tungstenite's default read buffer is 128 KiB per socket).
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// A subscribed connection of any target and transport.
pub(crate) enum Subscriber {
    /// Herald over WebSocket (can also publish).
    HeraldWs(Box<herald::WsSession>),
    /// Herald over SSE.
    HeraldSse(herald::SseSession),
    /// Herald over long-poll.
    HeraldPoll(herald::PollSession),
    /// nchan over WebSocket (pub/sub location: can also publish).
    NchanWs(Box<nchan::WsSession>),
    /// nchan over EventSource.
    NchanSse(nchan::SseSession),
    /// nchan over long-poll.
    NchanPoll(nchan::PollSession),
    /// sockudo over WebSocket (Pusher protocol 7).
    SockudoWs(Box<sockudo::WsSession>),
}

impl Subscriber {
    /// Connects and subscribes; returns once the subscription is in place.
    /// `http` is the HTTP client to use for SSE and long-poll.
    pub(crate) async fn connect(
        target: Target,
        transport: Transport,
        spec: SubscribeSpec,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let timeout = spec.timeout;
        let fut = async {
            Ok(match (target, transport) {
                (Target::Herald, Transport::Ws) => {
                    Subscriber::HeraldWs(Box::new(herald::WsSession::connect(spec).await?))
                }
                (Target::Herald, Transport::Sse) => {
                    Subscriber::HeraldSse(herald::SseSession::connect(spec, http).await?)
                }
                (Target::Herald, Transport::Longpoll) => {
                    Subscriber::HeraldPoll(herald::PollSession::connect(spec, http).await?)
                }
                (Target::Nchan, Transport::Ws) => {
                    Subscriber::NchanWs(Box::new(nchan::WsSession::connect(spec).await?))
                }
                (Target::Nchan, Transport::Sse) => {
                    Subscriber::NchanSse(nchan::SseSession::connect(spec, http).await?)
                }
                (Target::Nchan, Transport::Longpoll) => {
                    Subscriber::NchanPoll(nchan::PollSession::connect(spec, http).await?)
                }
                (Target::Sockudo, Transport::Ws) => {
                    let app = spec.app.clone();
                    Subscriber::SockudoWs(Box::new(sockudo::WsSession::connect(spec, &app).await?))
                }
                (Target::Sockudo, _) => {
                    bail!("sockudo is measured over WebSocket only (--transport ws)")
                }
            })
        };
        tokio::time::timeout(timeout, fut).await?
    }

    /// Waits for the next message(s) and appends them to `out`. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        match self {
            Subscriber::HeraldWs(s) => s.next(out).await,
            Subscriber::HeraldSse(s) => s.next(out).await,
            Subscriber::HeraldPoll(s) => s.next(out).await,
            Subscriber::NchanWs(s) => s.next(out).await,
            Subscriber::NchanSse(s) => s.next(out).await,
            Subscriber::NchanPoll(s) => s.next(out).await,
            Subscriber::SockudoWs(s) => s.next(out).await,
        }
    }

    /// Publishes over this connection (WebSocket only; Herald with an `id` whose ack is
    /// counted by [`Subscriber::next`]).
    pub(crate) async fn publish(&mut self, channel: &str, data: Box<RawValue>) -> Result<()> {
        match self {
            Subscriber::HeraldWs(s) => s.publish(channel, data).await,
            Subscriber::NchanWs(s) => s.publish(Box::<str>::from(data).into_string()).await,
            Subscriber::SockudoWs(s) => s.publish(channel, data.get()).await,
            _ => bail!("only WebSocket connections publish over their own socket"),
        }
    }

    /// Publishes this connection's requests answered so far: (acked, rejected).
    pub(crate) fn publish_replies(&self) -> (u64, u64) {
        match self {
            Subscriber::HeraldWs(s) => s.publish_replies(),
            _ => (0, 0),
        }
    }

    /// The Herald WebSocket session, for resume positions.
    pub(crate) fn herald_ws(&self) -> Option<&herald::WsSession> {
        match self {
            Subscriber::HeraldWs(s) => Some(s),
            _ => None,
        }
    }

    /// Closes the connection politely (best effort, at most one second).
    pub(crate) async fn close(self) {
        let close = async {
            match self {
                Subscriber::HeraldWs(s) => (*s).close().await,
                Subscriber::NchanWs(s) => (*s).close().await,
                Subscriber::SockudoWs(s) => (*s).close().await,
                _ => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }
}

/// Reads the next text frame of a WebSocket client (Herald's or sockudo's), skipping pings and
/// binary frames; an error naming the close code when the socket closes.
pub(crate) async fn read_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await {
            None => bail!(crate::errors::Failure::Closed(None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(f))) => {
                bail!(crate::errors::Failure::Closed(f.map(|f| u16::from(f.code))))
            }
            Some(Ok(_)) => continue,
        }
    }
}

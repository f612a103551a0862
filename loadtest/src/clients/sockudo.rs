//! sockudo's client side: a Pusher protocol 7 WebSocket on `/app/<key>` (frames in
//! [`super::pusher`]). Subscribers use public channels; pub/sub sockets (rooms) use the
//! private channel `private-<name>`, signed by the loadtest itself, because Pusher relays
//! client events only there, and never back to the sender (rooms accounts for that).
//!
//! sockudo keeps no offsets and no history, so a subscriber has nothing to resume from:
//! loss, duplicates and order come from the payload's sequence numbers alone (as for nchan).

use std::collections::VecDeque;

use anyhow::{bail, Context, Result};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::pusher::{self, App, ServerFrame};
use super::{ws_config, Delivery, SubscribeSpec};
use crate::clock::now_us;
use crate::errors::Failure;
use crate::net::connect_tcp;
use crate::payload;

/// A sockudo WebSocket subscriber.
pub(crate) struct WsSession {
    /// The socket; owned by this session alone.
    ws: WebSocketStream<TcpStream>,
    /// Which channels, by (index, name).
    spec: SubscribeSpec,
    /// The prefix of every channel's name on the wire: "" or `private-` (pub/sub).
    wire_prefix: &'static str,
    /// Messages that arrived while subscribing.
    early: VecDeque<Delivery>,
    /// A `pusher:ping` is unanswered. Kept here so the pong survives a cancelled `next`
    /// (sent again at worst, which is harmless).
    pong_due: bool,
}

impl WsSession {
    /// Connects, waits for `pusher:connection_established`, subscribes every channel and
    /// waits for each `subscription_succeeded`.
    pub(crate) async fn connect(spec: SubscribeSpec, app: &App) -> Result<Self> {
        let tcp = connect_tcp(spec.endpoint.addr, spec.source).await?;
        let url = spec.endpoint.ws_url(&pusher::ws_path(app));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
            .await
            .context("WebSocket handshake")?;
        let wire_prefix = if spec.pubsub { pusher::PRIVATE } else { "" };
        let mut s = Self {
            ws,
            spec,
            wire_prefix,
            early: VecDeque::new(),
            pong_due: false,
        };
        let first = s.read_text().await?;
        let socket_id = match ServerFrame::parse(&first)? {
            ServerFrame::Established { socket_id } => socket_id,
            ServerFrame::Error { code, message } => {
                bail!(Failure::Rejected(format!("{code:?} {message}")))
            }
            other => bail!(Failure::Protocol(format!("first frame is {other:?}"))),
        };
        for (_, name) in &s.spec.channels {
            let wire = format!("{wire_prefix}{name}");
            let auth = s
                .spec
                .pubsub
                .then(|| pusher::channel_auth(app, &socket_id, &wire));
            let sub = pusher::encode_subscribe(&wire, auth.as_deref());
            s.ws.send(Message::text(sub)).await?;
        }
        let mut pending: Vec<bool> = vec![true; s.spec.channels.len()];
        while pending.iter().any(|p| *p) {
            let text = s.read_text().await?;
            if let ServerFrame::Subscribed { channel } = ServerFrame::parse(&text)? {
                let name = channel.strip_prefix(wire_prefix).unwrap_or(&channel);
                if let Some(k) = s.spec.channels.iter().position(|(_, n)| n == name) {
                    pending[k] = false;
                }
                continue;
            }
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

    /// Applies one frame: events go to `out`, pings set `pong_due`, errors end the session.
    fn handle(&mut self, text: &str, out: &mut Vec<Delivery>) -> Result<()> {
        let recv_us = now_us();
        match ServerFrame::parse(text)? {
            ServerFrame::Event { channel, data, .. } => {
                let name = channel.strip_prefix(self.wire_prefix).unwrap_or(&channel);
                let Some(index) = self.spec.channel_index(name) else {
                    return Ok(());
                };
                out.push(Delivery {
                    channel: index,
                    stamp: payload::decode(data.as_bytes())?,
                    recv_us,
                });
            }
            ServerFrame::Ping => self.pong_due = true,
            ServerFrame::Error { code, message } => {
                bail!(Failure::Rejected(format!("{code:?} {message}")))
            }
            ServerFrame::Established { .. } | ServerFrame::Subscribed { .. } => {}
            ServerFrame::Other => {}
        }
        Ok(())
    }

    /// Waits for the next message(s), answering pings on the way. Cancel-safe.
    pub(crate) async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        if !self.early.is_empty() {
            out.extend(self.early.drain(..));
            return Ok(());
        }
        let start = out.len();
        while out.len() == start {
            if self.pong_due {
                self.ws.send(Message::text(pusher::encode_pong())).await?;
                self.pong_due = false;
            }
            let text = self.read_text().await?;
            self.handle(&text, out)?;
        }
        Ok(())
    }

    /// Publishes `data` (JSON text) on `channel` as a client event (pub/sub sockets only:
    /// the channel must be one of this socket's private channels).
    pub(crate) async fn publish(&mut self, channel: &str, data: &str) -> Result<()> {
        if !self.spec.pubsub {
            bail!("a sockudo subscriber publishes only on private channels (pub/sub sockets)");
        }
        let wire = format!("{}{channel}", self.wire_prefix);
        let frame = pusher::encode_client_event(&wire, data);
        self.ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Sends a normal close.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt as _;

    use super::*;
    use crate::net::Endpoint;

    /// A one-connection stand-in for sockudo: handshake, subscribe, a ping, one event.
    #[tokio::test]
    async fn subscribes_answers_pings_and_reads_events() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let est = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#;
            ws.send(Message::text(est)).await.unwrap();
            let sub = ws.next().await.unwrap().unwrap().into_text().unwrap();
            assert!(sub.contains("pusher:subscribe") && sub.contains("bench-c3"));
            let ok = r#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-c3","data":"{}"}"#;
            ws.send(Message::text(ok)).await.unwrap();
            ws.send(Message::text(r#"{"event":"pusher:ping","data":{}}"#))
                .await
                .unwrap();
            let ev = r#"{"event":"m","channel":"bench-c3","data":"{\"seq\":5,\"t\":1,\"s\":0}"}"#;
            ws.send(Message::text(ev)).await.unwrap();
            ws.send(Message::text(ev.replace("\"seq\\\":5", "\"seq\\\":6")))
                .await
                .unwrap();
            // The client's pong, sent before it reads the second event.
            let pong = ws.next().await.unwrap().unwrap().into_text().unwrap();
            assert_eq!(pong.as_str(), pusher::encode_pong());
        });
        let spec = SubscribeSpec {
            endpoint: Endpoint::resolve(&format!("http://{addr}")).await.unwrap(),
            source: None,
            channels: vec![(3, "bench-c3".into())],
            since: Vec::new(),
            pubsub: false,
            timeout: Duration::from_secs(5),
            app: Arc::new(App {
                id: "1".into(),
                key: "k".into(),
                secret: "s".into(),
            }),
        };
        let app = spec.app.clone();
        let mut s = WsSession::connect(spec, &app).await.unwrap();
        let mut out = Vec::new();
        s.next(&mut out).await.unwrap();
        s.next(&mut out).await.unwrap();
        let seqs: Vec<_> = out.iter().map(|d| (d.channel, d.stamp.seq)).collect();
        assert_eq!(seqs, vec![(3, 5), (3, 6)]);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}

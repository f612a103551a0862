//! Test harness: start edges on 127.0.0.1:0 and talk to them with real clients.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_broker::memory::MemoryBroker;
use herald_broker::Broker;
use herald_edge::metrics::Metrics;
use herald_edge::{Edge, EdgeConfig};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for anything awaited in tests (loaded 2-core CI machines).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that must NOT happen.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn config() -> EdgeConfig {
    let mut c = EdgeConfig {
        node_id: "test".into(),
        ..EdgeConfig::default()
    };
    c.limits.unsubscribe_delay_ms = 50;
    c.limits.shutdown_grace_secs = 1.0;
    // Tests drive bursts far above a real client's rates from one address; the rate limits
    // have their own tests (tests/abuse.rs) with their own settings.
    c.limits.command_rate = 1_000_000;
    c.limits.publish_rate = 1_000_000;
    c.limits.connect_rate_per_ip = 1_000_000;
    c
}

pub async fn start(config: EdgeConfig) -> Edge {
    Edge::start(config).await.expect("edge starts")
}

/// Several nodes over one shared memory broker (a multi-node test in one process).
pub async fn start_on(config: EdgeConfig, broker: Arc<MemoryBroker>) -> Edge {
    let b: Arc<dyn Broker> = broker;
    Edge::start_with(config, b, Arc::new(Metrics::new()))
        .await
        .expect("edge starts")
}

pub fn http(edge: &Edge) -> String {
    format!("http://{}", edge.addr)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that has read its welcome frame.
pub struct Client {
    pub ws: Ws,
    pub id: String,
    pub node: String,
}

pub async fn connect(edge: &Edge) -> Client {
    connect_url(&format!("ws://{}/ws", edge.addr)).await
}

pub async fn connect_url(url: &str) -> Client {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut c = Client {
        ws,
        id: String::new(),
        node: String::new(),
    };
    let welcome = c.next_json().await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    c.id = welcome["client"].as_str().unwrap().to_owned();
    c.node = welcome["node"].as_str().unwrap().to_owned();
    c
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next frame of any kind (pings are answered by tungstenite and skipped).
    pub async fn next_msg(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame ok");
            match m {
                Message::Ping(_) | Message::Pong(_) => continue,
                m => return m,
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_msg().await {
            Message::Text(t) => serde_json::from_str(&t).expect("json frame"),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// The next frame with this `op`, skipping others (join/leave etc.).
    pub async fn next_op(&mut self, op: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Sends a request and returns the reply echoing its id.
    pub async fn request(&mut self, mut v: Value, id: u64) -> Value {
        v["id"] = id.into();
        self.send(v).await;
        loop {
            let r = self.next_json().await;
            if r["id"] == id {
                return r;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .request(
                serde_json::json!({"op":"subscribe","channel":channel}),
                9_000_001,
            )
            .await;
        assert_eq!(r["op"], "subscribed", "{r}");
        r
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        let r = self
            .request(
                serde_json::json!({"op":"publish","channel":channel,"data":data}),
                9_000_002,
            )
            .await;
        assert_eq!(r["op"], "ack", "{r}");
        r
    }

    /// Asserts that no frame (other than pings) arrives for a short while.
    pub async fn assert_quiet(&mut self) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(QUIET, self.ws.next()).await {
            assert!(
                matches!(m, Message::Ping(_) | Message::Pong(_)),
                "unexpected {m:?}"
            );
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed_with(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

pub async fn api_publish(edge: &Edge, channel: &str, data: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/api/publish", http(edge)))
        .json(&serde_json::json!({"channel": channel, "data": data}))
        .send()
        .await
        .expect("publish");
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

pub async fn poll(edge: &Edge, query: &str) -> Value {
    let r = reqwest::get(format!("{}/poll?{query}", http(edge)))
        .await
        .expect("poll");
    assert!(
        r.status().is_success(),
        "{}: {}",
        r.status(),
        r.text().await.unwrap()
    );
    r.json().await.unwrap()
}

/// One SSE event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is json")
    }
}

/// An SSE stream read with a real HTTP client.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

pub async fn sse(edge: &Edge, query: &str, last_event_id: Option<&str>) -> Sse {
    let mut req = reqwest::Client::new().get(format!("{}/sse?{query}", http(edge)));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.expect("sse");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    Sse {
        resp,
        buf: String::new(),
    }
}

impl Sse {
    /// An SSE stream from a response the caller made (its own headers, cookies).
    pub fn from_response(resp: reqwest::Response) -> Sse {
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments are skipped); None when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event::default();
                let mut data_lines = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data_lines.push(v.to_owned());
                    }
                }
                if data_lines.is_empty() {
                    continue; // comment or retry-only block
                }
                ev.data = data_lines.join("\n");
                return Some(ev);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("sse data in time")
                .ok()??;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    }

    /// The next unnamed (message) event.
    pub async fn next_message(&mut self) -> Event {
        loop {
            let ev = self.next().await.expect("stream open");
            if ev.event.is_none() {
                return ev;
            }
        }
    }

    pub async fn next_named(&mut self, name: &str) -> Event {
        loop {
            let ev = self.next().await.expect("stream open");
            if ev.event.as_deref() == Some(name) {
                return ev;
            }
        }
    }
}

/// Waits until `cond` holds (state that has no event to await, e.g. a gauge), with a deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A WebSocket that has not read anything yet (for refusals after the handshake).
pub async fn connect_raw(edge: &Edge) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", edge.addr))
        .await
        .expect("connect");
    Client {
        ws,
        id: String::new(),
        node: String::new(),
    }
}

/// Holds tokio's paused clock: while alive, paused time moves only through
/// `tokio::time::advance` (a pending blocking task keeps the runtime from auto-advancing while
/// real sockets do their work). If a test hangs, the hold lapses after two minutes, time runs
/// again and the test's own timeouts fail it.
pub struct HeldClock {
    _tx: std::sync::mpsc::Sender<()>,
}

pub fn hold_clock() -> HeldClock {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    drop(tokio::task::spawn_blocking(move || {
        let _ = rx.recv_timeout(Duration::from_secs(120));
    }));
    HeldClock { _tx: tx }
}

//! SSE streams written off hyper (`listener::detachable`): once hyper has flushed the response
//! head, the stream's own task writes the chunks. Read here with a raw HTTP/1.1 client, so the
//! framing itself is checked: on a fresh connection, after a keep-alive request on the same
//! connection, behind a pipelined request (whose response must not be lost), over HTTP/1.0
//! (left with hyper), and what ends a detached stream (client closes or sends bytes, node
//! drains).

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 connection with its unread bytes.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(edge: &herald_edge::Edge) -> Raw {
        Raw {
            tcp: TcpStream::connect(edge.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, text: &str) {
        self.tcp.write_all(text.as_bytes()).await.unwrap();
    }

    /// Reads more bytes; false on EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("the edge answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next `\r\n`-terminated line, without it.
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "connection closed mid-line");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// A response head: status code and lower-cased headers.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let status = self.line().await;
        let code = status.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (code, headers);
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }

    /// One chunk of a chunked body; None for the last (zero) chunk.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = usize::from_str_radix(&self.line().await, 16).expect("chunk size line");
        let data = self.take(size).await;
        assert_eq!(self.take(2).await, b"\r\n", "chunk ends with CRLF");
        (size > 0).then_some(data)
    }

    /// Reads chunks until `text` has appeared in the body; returns everything read.
    async fn body_until(&mut self, text: &str) -> String {
        let mut body = String::new();
        while !body.contains(text) {
            let chunk = self.chunk().await.expect("stream goes on");
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        body
    }

    /// True once the edge has closed the connection (EOF, or a reset).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn sse_request(channel: &str) -> String {
    format!("GET /sse?channel={channel} HTTP/1.1\r\nHost: edge\r\n\r\n")
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n";

/// Reads a whole fixed-length response (healthz) and returns its body.
async fn sized_response(raw: &mut Raw) -> String {
    let (code, headers) = raw.head().await;
    assert_eq!(code, 200);
    let len: usize = header(&headers, "content-length")
        .expect("healthz has a length")
        .parse()
        .unwrap();
    String::from_utf8(raw.take(len).await).unwrap()
}

/// Reads an SSE head and the stream up to its `subscribed` event.
async fn sse_opened(raw: &mut Raw) -> String {
    let (code, headers) = raw.head().await;
    assert_eq!(code, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(
        header(&headers, "x-herald-node"),
        Some("test"),
        "middleware headers kept"
    );
    raw.body_until("event: subscribed").await
}

fn data_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn detached_stream_delivers_in_valid_chunks_and_ends_with_the_last_chunk() {
    let edge = start(config()).await;
    let mut raw = Raw::connect(&edge).await;
    raw.send(&sse_request("d1")).await;
    let opened = sse_opened(&mut raw).await;
    assert!(opened.contains("event: welcome"), "{opened}");
    for i in 0..5 {
        api_publish(&edge, "d1", json!({ "i": i })).await;
    }
    let body = raw.body_until("\"i\":4").await;
    let got: Vec<i64> = data_lines(&body)
        .iter()
        .map(|m| m["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);

    // Draining ends the stream with a close event, then the last chunk.
    let node = edge.node.clone();
    let shutdown = tokio::spawn(edge.shutdown());
    let close = raw.body_until("event: close").await;
    assert!(close.contains("1012"), "{close}");
    assert_eq!(raw.chunk().await, None, "the zero chunk ends the body");
    assert!(raw.closed().await);
    shutdown.await.unwrap();
    assert_eq!(node.connection_count(), 0);
}

#[tokio::test]
async fn sse_after_a_keepalive_request_on_the_same_connection() {
    let edge = start(config()).await;
    let mut raw = Raw::connect(&edge).await;
    raw.send(HEALTHZ).await;
    sized_response(&mut raw).await;
    raw.send(&sse_request("d2")).await;
    sse_opened(&mut raw).await;
    api_publish(&edge, "d2", json!("after keep-alive")).await;
    let body = raw.body_until("after keep-alive").await;
    assert_eq!(
        data_lines(&body).last().unwrap()["data"],
        "after keep-alive"
    );
}

#[tokio::test]
async fn a_pipelined_response_before_the_stream_is_not_lost() {
    // Both requests in one write: hyper parses the second while the first's response may
    // still sit unflushed in its buffer. The stream is taken over only after hyper flushed,
    // so the healthz response must arrive whole, then the stream. Repeated: the in-process
    // broker answers the subscribe at once, the case where a too-early takeover would lose
    // the first response.
    let edge = start(config()).await;
    for round in 0..20 {
        let mut raw = Raw::connect(&edge).await;
        raw.send(&format!("{HEALTHZ}{}", sse_request(&format!("p{round}"))))
            .await;
        let health = sized_response(&mut raw).await;
        assert!(!health.is_empty(), "round {round}: healthz body");
        sse_opened(&mut raw).await;
        api_publish(&edge, &format!("p{round}"), json!(round)).await;
        let body = raw.body_until(&format!("\"data\":{round}}}")).await;
        assert_eq!(data_lines(&body).last().unwrap()["data"], round);
    }
}

#[tokio::test]
async fn a_detached_stream_ends_when_the_client_closes_or_sends_anything() {
    let edge = start(config()).await;
    let node = edge.node.clone();

    let mut closing = Raw::connect(&edge).await;
    closing.send(&sse_request("e1")).await;
    sse_opened(&mut closing).await;
    let mut talking = Raw::connect(&edge).await;
    talking.send(&sse_request("e2")).await;
    sse_opened(&mut talking).await;
    wait_until("both streams open", || node.connection_count() == 2).await;

    drop(closing);
    wait_until("the closed client's stream is gone", || {
        node.connection_count() == 1
    })
    .await;

    // Nothing may follow an endless response: a client that sends bytes is disconnected.
    talking.send("GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(talking.closed().await, "the edge closes the stream");
    wait_until("no stream left", || node.connection_count() == 0).await;
}

#[tokio::test]
async fn http10_streams_stay_with_hyper_and_are_not_chunked() {
    let edge = start(config()).await;
    let mut raw = Raw::connect(&edge).await;
    raw.send("GET /sse?channel=h10 HTTP/1.0\r\nHost: edge\r\n\r\n")
        .await;
    let (code, headers) = raw.head().await;
    assert_eq!(code, 200);
    assert_eq!(header(&headers, "transfer-encoding"), None);
    api_publish(&edge, "h10", json!("plain")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&raw.buf).contains("\"data\":\"plain\"") {
        assert!(tokio::time::Instant::now() < deadline, "message in time");
        assert!(raw.fill().await, "stream open");
    }
    let text = String::from_utf8_lossy(&raw.buf).to_string();
    assert!(text.starts_with("retry: "), "raw event stream: {text}");
}

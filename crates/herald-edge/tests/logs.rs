//! The `herald` binary's logs: `--log-format json` writes one JSON object per line; every
//! connection (WebSocket, SSE, poll) logs inside a `conn` span (debug level) naming its client, transport and
//! node; and traffic writes nothing per message at info level.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A running `herald` binary and its stdout, read line by line.
struct Herald {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The client listener, from the "edge listening" line.
    addr: String,
}

impl Herald {
    async fn start(filter: &str, node: &str) -> Herald {
        // These tests publish in bursts far above a real client's rate limits.
        let config =
            std::env::temp_dir().join(format!("herald-logs-{}-{node}.toml", std::process::id()));
        std::fs::write(
            &config,
            "[limits]\ncommand_rate = 1000000\npublish_rate = 1000000\n",
        )
        .expect("write the test config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--log-format", "json", "--node-id", node])
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("HERALD_LOG", filter)
            .env_remove("HERALD_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run the herald binary");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut h = Herald {
            child,
            lines,
            addr: String::new(),
        };
        let listening = h
            .next_matching(|v| v["fields"]["message"] == "edge listening")
            .await;
        h.addr = listening["fields"]["addr"].as_str().unwrap().to_owned();
        h
    }

    /// The next stdout line, which must be a JSON object.
    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a log line in time")
            .expect("read stdout")?;
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key:?} in {line}");
        }
        Some(v)
    }

    async fn next_matching(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await.expect("stdout open");
            if pred(&v) {
                return v;
            }
        }
    }

    /// SIGTERM, then every remaining line until exit.
    async fn stop(mut self) -> Vec<Value> {
        let pid = self.child.id().expect("running") as i32;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut rest = Vec::new();
        while let Some(v) = self.next().await {
            rest.push(v);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert!(status.success(), "{status}");
        rest
    }
}

fn span_of(v: &Value) -> &Value {
    &v["span"]
}

#[tokio::test]
async fn json_logs_with_one_span_per_connection_on_every_transport() {
    let mut h = Herald::start("info,herald_edge=debug", "logs-node").await;
    let base = format!("http://{}", h.addr);

    // WebSocket: connect, subscribe, close.
    let mut ws = connect_url(&format!("ws://{}/ws", h.addr)).await;
    ws.subscribe("l:a").await;
    let ws_id = ws.id.clone();
    ws.ws.close(None).await.unwrap();
    let closed = h
        .next_matching(|v| v["fields"]["message"] == "websocket closed")
        .await;
    let span = span_of(&closed);
    assert_eq!(span["name"], "conn", "{closed}");
    assert_eq!(
        (
            span["client"].clone(),
            span["transport"].clone(),
            span["node"].clone()
        ),
        (json!(ws_id), json!("ws"), json!("logs-node")),
        "{closed}"
    );

    // SSE: the stream opens and closes inside its span.
    let resp = reqwest::get(format!("{base}/sse?channel=l:b"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let opened = h
        .next_matching(|v| v["fields"]["message"] == "sse stream opened")
        .await;
    let span = span_of(&opened);
    assert_eq!(
        (
            span["name"].clone(),
            span["transport"].clone(),
            span["node"].clone()
        ),
        (json!("conn"), json!("sse"), json!("logs-node")),
        "{opened}"
    );
    let sse_client = span["client"].as_str().expect("client recorded").to_owned();
    assert!(!sse_client.is_empty());
    drop(resp);
    let closed = h
        .next_matching(|v| v["fields"]["message"] == "sse stream closed")
        .await;
    assert_eq!(span_of(&closed)["client"], sse_client.as_str(), "{closed}");

    // Short and long poll: one span each, transport told apart.
    for (timeout, transport) in [(0, "poll"), (1, "longpoll")] {
        let r = reqwest::get(format!("{base}/poll?channel=l:c&timeout={timeout}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answered = h
            .next_matching(|v| v["fields"]["message"] == "poll answered")
            .await;
        let span = span_of(&answered);
        assert_eq!(
            (
                span["name"].clone(),
                span["transport"].clone(),
                span["node"].clone()
            ),
            (json!("conn"), json!(transport), json!("logs-node")),
            "{answered}"
        );
        assert!(span["client"].as_str().is_some_and(|c| !c.is_empty()));
    }
    h.stop().await;
}

#[tokio::test]
async fn no_info_line_per_message() {
    let h = Herald::start("info", "quiet-node").await;
    let base = format!("http://{}", h.addr);
    let mut sub = connect_url(&format!("ws://{}/ws", h.addr)).await;
    sub.subscribe("q:a").await;
    let mut pubr = connect_url(&format!("ws://{}/ws", h.addr)).await;
    let mut sse_c = {
        let resp = reqwest::get(format!("{base}/sse?channel=q:a"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp
    };
    for i in 0..200 {
        pubr.publish("q:a", json!(i)).await;
    }
    for _ in 0..200 {
        sub.next_op("message").await;
    }
    for i in 0..20 {
        let r = reqwest::Client::new()
            .post(format!("{base}/publish"))
            .json(&json!({"channel":"q:a","data":i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        reqwest::get(format!("{base}/poll?channel=q:a&timeout=0"))
            .await
            .unwrap();
    }
    // Let the SSE stream drain what it was sent.
    let _ = tokio::time::timeout(Duration::from_millis(200), sse_c.chunk()).await;
    drop(sse_c);
    drop(sub);
    drop(pubr);
    let rest = h.stop().await;
    // After "edge listening": the drain and stop lines, a handful at most, never one per
    // message (220 publishes, 420 deliveries).
    assert!(
        rest.len() < 10,
        "{} lines at info level after traffic: {rest:#?}",
        rest.len()
    );
    for v in &rest {
        assert_ne!(v["level"], "DEBUG", "{v}");
    }
}

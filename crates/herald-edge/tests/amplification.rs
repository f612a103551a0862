//! The history amplification attack of issue 11, scaled to a test, against the `herald` binary
//! with a real Redis: many channels with full histories, then concurrent polls with a forged
//! cursor over all of them. The edge's RSS may grow by at most what its config allows — the
//! concurrent requests × (`max_reply_bytes` + `max_message_size`), with room for encoding and
//! the allocator — not by the channels' histories (which are several times that).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use herald_testkit::redis::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

const CHANNELS: usize = 20;
const PER_CHANNEL: usize = 50;
const SIZE: usize = 20_000;
const POLLS: usize = 8;
const MAX_REPLY: usize = 256 * 1024;
const MAX_MESSAGE: usize = 32 * 1024;

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cursor_polls_cost_pages_not_histories() {
    let redis = RedisServer::start();
    let config = std::env::temp_dir().join(format!("herald-amp-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[limits]\nmax_reply_bytes = {MAX_REPLY}\nmax_message_size = {MAX_MESSAGE}\n\
             [default_namespace]\nhistory_size = 1000\nhistory_ttl_secs = 600\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--node-id", "amp", "--redis-url", &redis.url()])
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the herald binary");
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a log line in time")
            .unwrap()
            .expect("the edge starts");
        if let Some(rest) = line.split(" addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let base = format!("http://{addr}");
    // Fill: CHANNELS × PER_CHANNEL × SIZE = 20 MB of history, in Redis.
    let client = reqwest::Client::new();
    let data = "h".repeat(SIZE);
    let mut cursor = herald_protocol::Cursor::new();
    for k in 0..CHANNELS {
        let ch = format!("amp{k}");
        for _ in 0..PER_CHANNEL {
            let r: Value = client
                .post(format!("{base}/api/publish"))
                .json(&json!({"channel": ch, "data": data}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // A position at offset 0 of a foreign epoch: the forged cursor of the issue.
            assert!(r["epoch"].is_string(), "{r}");
        }
        cursor.set(
            &ch,
            herald_protocol::StreamPosition {
                epoch: "forged".into(),
                offset: 0,
            },
        );
    }
    let query: String = (0..CHANNELS).map(|k| format!("channel=amp{k}&")).collect();
    let url = format!("{base}/poll?{query}cursor={}&timeout=0", cursor.encode());
    let before = rss(pid);
    // Sample the edge's RSS while the polls run.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let mut polls = Vec::new();
    for _ in 0..POLLS {
        let (client, url) = (client.clone(), url.clone());
        polls.push(tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        }));
    }
    for p in polls {
        let len = p.await.unwrap();
        assert!(
            len <= MAX_REPLY + MAX_MESSAGE + 4096,
            "one page: {len} bytes"
        );
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let growth = peak.saturating_sub(before);
    let history = (CHANNELS * PER_CHANNEL * SIZE) as u64;
    // Per request one page, encoded at most twice over, plus 16 MiB for the allocator's arenas.
    let bound = (POLLS * (MAX_REPLY + MAX_MESSAGE) * 3 + (16 << 20)) as u64;
    assert!(
        growth <= bound,
        "RSS grew by {growth} bytes, more than the config allows ({bound}); the history is {history}"
    );
    assert!(
        bound < history * 2,
        "the test must be able to tell pages from histories"
    );
    drop(child);
    let _ = std::fs::remove_file(config);
}

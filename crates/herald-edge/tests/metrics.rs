//! The Prometheus exposition of an edge over a real redis-server, after traffic on every
//! transport: `promtool check metrics` accepts it, the series an operator needs exist with
//! plausible values, and every metric the Grafana dashboard and the alert rules name is in it.

mod common;
use herald_testkit::redis as redis_support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use herald_edge::{Edge, EdgeConfig};
use redis_support::RedisServer;
use serde_json::json;

/// One sample: metric name, labels (sorted) and value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

async fn scrape(edge: &Edge) -> String {
    let r = reqwest::get(format!("http://{}/metrics", edge.metrics_addr))
        .await
        .expect("scrape");
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    r.text().await.unwrap()
}

/// Parses the text exposition (the subset the prometheus crate writes: no timestamps, label
/// values without escaped quotes).
fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().expect("sample value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let labels = rest
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        out.insert((name, labels), value);
    }
    out
}

/// The value of the series `name` with exactly these labels (panics when absent).
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    *samples
        .get(&(name.to_owned(), labels.clone()))
        .unwrap_or_else(|| panic!("no series {name}{labels:?} in the exposition"))
}

/// Sum over every series of `name`.
fn sum(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `promtool check metrics` on `text` (stdin); panics with its output on failure.
fn promtool_check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed (not on PATH): this test checks the exposition with it. \
             Install it with `apt-get install -y prometheus` (Debian) or put the promtool \
             binary from a Prometheus release on PATH."
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    // promtool exits 0 but prints lint findings for some problems; there must be none.
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

fn config_for(redis: &RedisServer, id: &str) -> EdgeConfig {
    let mut c = config();
    c.node_id = id.into();
    c.redis_url = Some(redis.url());
    c.limits.max_channels_per_connection = 4;
    c.limits.max_message_size = 4096;
    c
}

#[tokio::test]
async fn exposition_passes_promtool_and_has_every_series() {
    let redis = RedisServer::start();
    let edge = start(config_for(&redis, "m1")).await;

    // WebSocket: one subscribes, one publishes (a too-large publish too); one channel too many.
    let mut ws = connect(&edge).await;
    let mut pubr = connect(&edge).await;
    ws.subscribe("m:a").await;
    let mut sse_c = sse(&edge, "channel=m:a", None).await;
    sse_c.next_named("subscribed").await;
    for i in 0..5 {
        pubr.publish("m:a", json!(i)).await;
        assert_eq!(ws.next_op("message").await["data"], i);
        assert_eq!(sse_c.next_message().await.json()["data"], i);
    }
    // Too large: over HTTP a 413, over WebSocket the frame itself is refused with 1009.
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .json(&json!({"channel":"m:a","data":"x".repeat(4500)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    pubr.send(json!({"op":"publish","channel":"m:a","data":"x".repeat(5000)}))
        .await;
    assert_eq!(pubr.closed_with().await, Some(1009));
    for ch in ["m:b", "m:c", "m:d"] {
        ws.subscribe(ch).await;
    }
    let r = ws
        .request(json!({"op":"subscribe","channel":"m:e"}), 8)
        .await;
    assert_eq!(r["op"], "error", "{r}");

    // Short poll, long poll (answered by a publish over POST /publish), recovery by cursor.
    let first = poll(&edge, "channel=m:p&timeout=0").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let url = format!(
        "{}/poll?channel=m:p&cursor={cursor}&timeout=10",
        http(&edge)
    );
    let waiter = tokio::spawn(async move { reqwest::get(url).await.unwrap().text().await });
    let node = edge.node.clone();
    wait_until("long poll waiting", || node.connection_count() == 3).await;
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .json(&json!({"channel":"m:p","data":"via-post"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(waiter.await.unwrap().unwrap().contains("via-post"));
    let again = poll(&edge, &format!("channel=m:p&cursor={cursor}&timeout=0")).await;
    assert_eq!(again["messages"][0]["data"], "via-post");
    api_publish(&edge, "m:p", json!("via-api")).await;

    // Refusals counted by limit: too many channels on SSE and poll, a too-long poll.
    let many = "channel=q:1&channel=q:2&channel=q:3&channel=q:4&channel=q:5";
    let r = reqwest::get(format!("{}/sse?{many}", http(&edge)))
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = reqwest::get(format!("{}/poll?{many}&timeout=0", http(&edge)))
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = reqwest::get(format!("{}/poll?channel=q:1&timeout=100000", http(&edge)))
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    let text = scrape(&edge).await;
    promtool_check_metrics(&text);
    let s = parse(&text);

    // Connections by transport.
    assert_eq!(
        value(&s, "herald_connections_current", &[("transport", "ws")]),
        1.0
    );
    assert_eq!(
        value(&s, "herald_connections_current", &[("transport", "sse")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "herald_connections_current",
            &[("transport", "longpoll")]
        ),
        0.0
    );
    for t in ["ws", "sse", "longpoll", "poll"] {
        assert!(
            value(&s, "herald_connections_accepted_total", &[("transport", t)]) >= 1.0,
            "{t}"
        );
    }
    // Messages published by transport, delivered by transport.
    assert_eq!(
        value(
            &s,
            "herald_messages_published_total",
            &[("transport", "ws")]
        ),
        5.0
    );
    assert!(
        value(
            &s,
            "herald_messages_published_total",
            &[("transport", "http")]
        ) >= 2.0
    );
    assert_eq!(
        value(
            &s,
            "herald_messages_delivered_total",
            &[("transport", "ws")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &s,
            "herald_messages_delivered_total",
            &[("transport", "sse")]
        ),
        5.0
    );
    assert!(
        value(
            &s,
            "herald_messages_delivered_total",
            &[("transport", "longpoll")]
        ) >= 1.0
    );
    assert!(
        value(
            &s,
            "herald_messages_delivered_total",
            &[("transport", "poll")]
        ) >= 1.0
    );
    // Bytes both ways.
    assert!(
        value(
            &s,
            "herald_transport_received_bytes_total",
            &[("transport", "ws")]
        ) > 100.0
    );
    assert!(
        value(
            &s,
            "herald_transport_sent_bytes_total",
            &[("transport", "ws")]
        ) > 100.0
    );
    assert!(
        value(
            &s,
            "herald_transport_sent_bytes_total",
            &[("transport", "sse")]
        ) > 100.0
    );
    // Latency histograms: one observation per delivery, all well under a minute.
    let ws_count = value(
        &s,
        "herald_delivery_latency_seconds_count",
        &[("transport", "ws")],
    );
    assert_eq!(ws_count, 5.0);
    let ws_sum = value(
        &s,
        "herald_delivery_latency_seconds_sum",
        &[("transport", "ws")],
    );
    assert!((0.0..60.0).contains(&ws_sum), "{ws_sum}");
    assert_eq!(
        value(
            &s,
            "herald_delivery_latency_seconds_bucket",
            &[("transport", "ws"), ("le", "+Inf")]
        ),
        5.0
    );
    let publishes = value(&s, "herald_broker_publish_duration_seconds_count", &[]);
    assert!(publishes >= 7.0, "{publishes}");
    // Recovery (the poll with a cursor), subscriptions and channels.
    assert!(
        value(
            &s,
            "herald_recovery_requests_total",
            &[("outcome", "recovered")]
        ) >= 1.0
    );
    assert_eq!(value(&s, "herald_hub_subscriptions_current", &[]), 5.0);
    // m:p may still be in its unsubscribe delay.
    let channels = value(&s, "herald_hub_channels_current", &[]);
    assert!((4.0..=5.0).contains(&channels), "{channels}");
    // Limits and errors: the too-large publish, one channel too many on each transport, the
    // too-long poll.
    assert_eq!(
        value(
            &s,
            "herald_limit_rejections_total",
            &[("limit", "message_size")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "herald_errors_total",
            &[("code", "message_too_large"), ("source", "client")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "herald_disconnects_total", &[("code", "1009")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "herald_limit_rejections_total",
            &[("limit", "channels_per_connection")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "herald_limit_rejections_total",
            &[("limit", "poll_timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "herald_limit_rejections_total",
            &[("limit", "connections")]
        ),
        0.0
    );
    assert!(sum(&s, "herald_errors_total") >= 5.0);
    assert_eq!(
        value(
            &s,
            "herald_errors_total",
            &[("code", "limit_exceeded"), ("source", "client")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "herald_slow_consumer_closes_total",
            &[("transport", "ws")]
        ),
        0.0
    );
    // Redis health: healthy, subscribed to the four channels with local subscribers (m:p may
    // still be in its unsubscribe delay), idle less than a probe interval and a half.
    assert_eq!(value(&s, "herald_redis_healthy", &[]), 1.0);
    assert_eq!(value(&s, "herald_redis_reconnects_total", &[]), 0.0);
    let subscribed = value(&s, "herald_redis_subscribed_channels", &[]);
    assert!((4.0..=5.0).contains(&subscribed), "{subscribed}");
    let idle = value(&s, "herald_redis_pubsub_idle_seconds", &[]);
    assert!((0.0..8.0).contains(&idle), "{idle}");
    assert!(text.contains("# TYPE herald_redis_reconnects_total counter"));
    // The bounded pub/sub intake: nothing dropped, nothing left waiting at rest.
    assert_eq!(value(&s, "herald_redis_pubsub_dropped_total", &[]), 0.0);
    assert!(text.contains("# TYPE herald_redis_pubsub_dropped_total counter"));
    assert_eq!(value(&s, "herald_redis_pubsub_queued_events", &[]), 0.0);
    // No offset regression without a failover (the failover tests raise it).
    assert_eq!(value(&s, "herald_redis_epochs_fenced_total", &[]), 0.0);
    // The process collector (Linux): memory, CPU, file descriptors.
    let rss = value(&s, "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 1e10, "{rss}");
    assert!(value(&s, "process_cpu_seconds_total", &[]) >= 0.0);
    let fds = value(&s, "process_open_fds", &[]);
    assert!(fds >= 5.0, "{fds}");
    assert!(value(&s, "process_max_fds", &[]) >= fds);

    // No label carries a channel or a client id.
    for (name, labels) in s.keys() {
        for v in labels.values() {
            assert!(
                !v.contains(':') && !v.contains(&ws.id),
                "{name} has a high-cardinality label value {v:?}"
            );
        }
    }

    // Every metric the dashboard and the alert rules use is in this exposition.
    let dir = std::env::temp_dir().join(format!("herald-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scrape_file = dir.join("scrape.txt");
    std::fs::write(&scrape_file, &text).unwrap();
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("tests-deploy/check_dashboard.py"))
        .arg("--metrics")
        .arg(&scrape_file)
        .arg(root.join("deploy/grafana/herald-dashboard.json"))
        .arg(root.join("deploy/herald-rules.yml"))
        .output()
        .expect("python3 runs tests-deploy/check_dashboard.py");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "check_dashboard.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn alert_rules_pass_promtool() {
    let rules = repo_root().join("deploy/herald-rules.yml");
    let out = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not installed: `apt-get install -y prometheus`")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

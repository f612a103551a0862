//! Three edges over a real redis-server: everything works when the publisher and subscribers sit
//! on different edges, and survives an edge being killed and Redis being killed and restarted.

mod common;
use herald_testkit::redis as redis_support;

use std::process::{Child, Command, Stdio};

use common::*;
use herald_edge::config::NamespaceConfig;
use herald_edge::{Edge, EdgeConfig};
use redis_support::RedisServer;
use serde_json::json;

fn node_config(redis: &RedisServer, id: &str) -> EdgeConfig {
    let mut c = config();
    c.node_id = id.into();
    c.redis_url = Some(redis.url());
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            join_leave: true,
            ..Default::default()
        },
    );
    c
}

async fn three(redis: &RedisServer) -> (Edge, Edge, Edge) {
    (
        start(node_config(redis, "e1")).await,
        start(node_config(redis, "e2")).await,
        start(node_config(redis, "e3")).await,
    )
}

async fn post_publish(edge: &Edge, channel: &str, data: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/publish", http(edge)))
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .expect("publish request")
}

#[tokio::test]
async fn every_transport_pair_delivers_across_nodes() {
    let redis = RedisServer::start();
    let (e1, e2, e3) = three(&redis).await;

    // WS (e1) → WS (e2) and SSE (e3).
    let mut pubr = connect(&e1).await;
    let mut ws = connect(&e2).await;
    ws.subscribe("x:a").await;
    let mut sse_c = sse(&e3, "channel=x:a", None).await;
    sse_c.next_named("subscribed").await;
    let ack = pubr.publish("x:a", json!("from-ws")).await;
    assert_eq!(ack["offset"], 1);
    let m = ws.next_op("message").await;
    assert_eq!(
        (m["data"].clone(), m["from"].clone()),
        (json!("from-ws"), json!(pubr.id))
    );
    assert_eq!(sse_c.next_message().await.json()["data"], "from-ws");

    // SSE client's POST (e3) → long-poll (e1).
    let first = poll(&e1, "channel=x:b&timeout=0").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let url = format!("{}/poll?channel=x:b&cursor={cursor}&timeout=20", http(&e1));
    let waiter = tokio::spawn(async move {
        reqwest::get(url)
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    let n1 = e1.node.clone();
    wait_until("poll waiting", || n1.hub.connection_count() == 2).await;
    assert_eq!(
        post_publish(&e3, "x:b", json!("from-post")).await.status(),
        200
    );
    let got = waiter.await.unwrap();
    assert_eq!(got["messages"][0]["data"], "from-post");

    // Poll-side client publishing by POST (e1) → WS (e2), in order.
    ws.subscribe("x:c").await;
    for i in 0..20 {
        assert_eq!(post_publish(&e1, "x:c", json!(i)).await.status(), 200);
    }
    for i in 0..20u64 {
        let m = ws.next_op("message").await;
        assert_eq!(
            (m["offset"].as_u64().unwrap(), m["data"].as_u64().unwrap()),
            (i + 1, i)
        );
    }
}

#[tokio::test]
async fn presence_join_leave_broadcast_and_skip_self_across_nodes() {
    let redis = RedisServer::start();
    let (e1, e2, e3) = three(&redis).await;
    let mut a = connect_url(&format!("ws://{}/ws?user=ann", e1.addr)).await;
    let mut b = connect_url(&format!("ws://{}/ws?user=bob", e2.addr)).await;
    a.subscribe("chat:room").await;
    assert_eq!(a.next_op("join").await["client"], a.id.as_str());
    b.subscribe("chat:room").await;
    let j = a.next_op("join").await;
    assert_eq!(
        (j["user"].clone(), j["node"].clone()),
        (json!("bob"), json!("e2"))
    );

    let p: serde_json::Value = reqwest::get(format!("{}/api/presence/chat:room", http(&e3)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut users: Vec<String> = p["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}@{}",
                c["user"].as_str().unwrap(),
                c["node"].as_str().unwrap()
            )
        })
        .collect();
    users.sort();
    assert_eq!(users, vec!["ann@e1", "bob@e2"]);

    // skip_self across nodes: b gets it, a does not.
    let ack = a
        .request(
            json!({"op":"publish","channel":"chat:room","data":"s","skip_self":true}),
            5,
        )
        .await;
    assert_eq!(ack["op"], "ack");
    assert_eq!(b.next_op("message").await["data"], "s");

    // Broadcast to every connection of the cluster, from a third node.
    let mut idle = connect(&e3).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/broadcast", http(&e3)))
        .json(&json!({"data":"all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for c in [&mut a, &mut b, &mut idle] {
        assert_eq!(c.next_op("broadcast").await["data"], "all");
    }

    let b_id = b.id.clone();
    drop(b);
    let l = a.next_op("leave").await;
    assert_eq!(l["client"], b_id.as_str());
    // a saw no copy of its own skip_self publish.
    a.assert_quiet().await;

    let info: serde_json::Value = reqwest::get(format!("{}/api/info", http(&e2)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nodes: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["e1", "e2", "e3"]);
}

/// A real `herald` process (so it can be SIGKILLed).
struct EdgeProcess {
    child: Child,
    addr: String,
    redis_url: String,
    id: String,
}

impl EdgeProcess {
    fn spawn(redis: &RedisServer, id: &str) -> Self {
        let (child, addr) = Self::start(&redis.url(), id);
        EdgeProcess {
            child,
            addr,
            redis_url: redis.url(),
            id: id.to_string(),
        }
    }

    /// Starts the binary on two free ports. A port found free can be taken by another test
    /// before the process binds it; `ready` starts it again then.
    fn start(redis_url: &str, id: &str) -> (Child, String) {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, mport) = (free(), free());
        let log = std::fs::File::create(Self::log_path(id)).expect("edge log file");
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
            .args(["--node-id", id, "--redis-url", redis_url])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn herald");
        (child, format!("127.0.0.1:{port}"))
    }

    fn log_path(id: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "herald-cluster-test-{}-{id}.log",
            std::process::id()
        ))
    }

    async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let url = format!("http://{}/readyz", self.addr);
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Exited (its port was taken meanwhile): again on new ports.
                eprintln!("edge process exited ({status}) before ready; starting it again");
                (self.child, self.addr) = Self::start(&self.redis_url, &self.id);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge process not ready; its log:\n{}",
                std::fs::read_to_string(Self::log_path(&self.id)).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(Self::log_path(&self.id));
    }
}

#[tokio::test]
async fn a_client_of_a_killed_edge_resumes_on_another_with_nothing_lost() {
    let redis = RedisServer::start();
    let mut doomed = EdgeProcess::spawn(&redis, "doomed");
    doomed.ready().await;
    let survivor = start(node_config(&redis, "survivor")).await;

    let mut c = connect_url(&format!("ws://{}/ws", doomed.addr)).await;
    c.subscribe("k:feed").await;
    api_publish(&survivor, "k:feed", json!(1)).await;
    let first = c.next_op("message").await;
    assert_eq!(first["offset"], 1);
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    doomed.child.kill().unwrap(); // SIGKILL
    doomed.child.wait().unwrap();
    assert_eq!(
        c.closed_with().await,
        None,
        "no close frame from a killed process"
    );
    for i in 2..=6 {
        api_publish(&survivor, "k:feed", json!(i)).await;
    }
    let mut again = connect(&survivor).await;
    let r = again
        .request(
            json!({"op":"subscribe","channel":"k:feed","since":{"epoch":epoch,"offset":1}}),
            1,
        )
        .await;
    assert_eq!(r["recovered"], true);
    let mut offsets = Vec::new();
    for _ in 2..=6 {
        offsets.push(again.next_op("message").await["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, vec![2, 3, 4, 5, 6]);
    again.assert_quiet().await;
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_heals_without_silent_loss() {
    let mut redis = RedisServer::start();
    let e1 = start(node_config(&redis, "e1")).await;
    let e2 = start(node_config(&redis, "e2")).await;
    let mut sub = connect(&e2).await;
    sub.subscribe("h:x").await;
    let mut pubr = connect(&e1).await;
    let mut old_epoch = json!(null);
    for i in 1..=3 {
        pubr.publish("h:x", json!(i)).await;
        let m = sub.next_op("message").await;
        assert_eq!(m["data"], i);
        old_epoch = m["epoch"].clone();
    }

    redis.kill();
    // Readiness flips on both edges.
    for e in [&e1, &e2] {
        let url = format!("{}/readyz", http(e));
        let deadline = tokio::time::Instant::now() + WAIT;
        while reqwest::get(&url).await.unwrap().status() != 503 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "readiness did not flip"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Publishes during the outage are refused, never acked.
    let r = pubr
        .request(json!({"op":"publish","channel":"h:x","data":"lost?"}), 77)
        .await;
    assert_eq!(r["op"], "error", "{r}");
    assert_eq!(r["code"], 111);
    let http_r = post_publish(&e1, "h:x", json!("lost?")).await;
    assert_eq!(http_r.status(), 503);

    redis.restart();
    for e in [&e1, &e2] {
        let url = format!("{}/readyz", http(e));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while reqwest::get(&url).await.unwrap().status() != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "readiness did not come back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // The subscriber is told its position was lost (history is gone with the empty restart).
    let reset = sub.next_op("subscribed").await;
    assert_eq!(reset["recovered"], false, "{reset}");
    assert!(reset["id"].is_null());
    assert_ne!(reset["epoch"], old_epoch, "a new history generation");
    // Reading creates nothing: the emptied channel's position is the empty one until a publish.
    assert_eq!((&reset["epoch"], &reset["offset"]), (&json!(""), &json!(0)));
    // Delivery heals without restarting any edge, in the new epoch.
    let ack = pubr.publish("h:x", json!("after")).await;
    assert_ne!(ack["epoch"], old_epoch);
    let m = sub.next_op("message").await;
    assert_eq!(m["data"], "after");
    assert_eq!(
        (m["epoch"].clone(), m["offset"].clone()),
        (ack["epoch"].clone(), json!(1))
    );
}

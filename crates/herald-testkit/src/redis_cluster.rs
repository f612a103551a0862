//! A real Redis Cluster for tests: six `redis-server --cluster-enabled yes` children on free
//! loopback ports (three masters, one replica each), joined by `redis-cli --cluster create
//! --cluster-replicas 1 --cluster-yes`, killed (and their directories removed) on drop.
//!
//! Startup is bounded: each server must answer `PING` within 20 s, and the cluster must report
//! `cluster_state:ok` on every node and agree on the slot table within 30 s after `create`.
//! At most [`MAX_LIVE`] clusters exist at once in a test process: a binary's tests run in
//! parallel, and fourteen clusters (84 servers) starting together on a 2-core machine made
//! some servers miss the 20 s bound. A further `start` waits until one is dropped.

use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::redis::RedisServer;

/// Masters in the cluster (each with one replica).
pub const MASTERS: usize = 3;

/// Clusters alive at once per test process.
pub const MAX_LIVE: usize = 2;

static LIVE: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// One of the [`MAX_LIVE`] places; given back on drop.
struct Permit;

impl Permit {
    fn take() -> Self {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        while *live >= MAX_LIVE {
            live = FREED.wait(live).unwrap_or_else(|e| e.into_inner());
        }
        *live += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// Six redis-server processes forming a cluster; stopped on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    // Declared last: dropped after the servers are stopped.
    _permit: Permit,
}

impl RedisCluster {
    /// Starts six cluster-enabled servers and creates the cluster. Panics with a clear message
    /// when `redis-server` or `redis-cli` is missing or the cluster does not become ready.
    pub fn start() -> Self {
        let permit = Permit::take();
        let mut nodes = Vec::with_capacity(MASTERS * 2);
        for _ in 0..MASTERS * 2 {
            nodes.push(RedisServer::start_with_args(
                None,
                false,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            ));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-cli is not installed (not on PATH): the cluster tests need it. \
                 Install it with `apt-get install -y redis-tools`."
            ),
            Err(err) => panic!("cannot run redis-cli: {err}"),
        };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self {
            nodes,
            _permit: permit,
        };
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    /// Polls every node until it reports `cluster_state:ok` and knows all 16384 slots.
    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ready = self.nodes.iter().all(|n| {
                let info = cli(n.port(), &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis cluster not ready within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host:port` of every node (masters and replicas), the seed list for a client.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The hash slot of `key`, as the cluster computes it (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let answer = cli(self.nodes[0].port(), &["CLUSTER", "KEYSLOT", key]);
        answer
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {answer:?}"))
    }

    /// The masters' slot ranges, one `(first, last)` list per master, from `CLUSTER NODES`.
    pub fn master_slot_ranges(&self) -> Vec<Vec<(u16, u16)>> {
        let text = cli(self.nodes[0].port(), &["CLUSTER", "NODES"]);
        let mut masters = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].split(',').any(|f| f == "master") {
                continue;
            }
            let ranges: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .filter_map(|f| match f.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => f.parse().ok().map(|s| (s, s)),
                })
                .collect();
            if !ranges.is_empty() {
                masters.push(ranges);
            }
        }
        masters
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its output (empty when it failed).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

//! A real Redis Cluster for tests: six `redis-server --cluster-enabled yes` children on free
//! loopback ports (three masters, one replica each), joined by `redis-cli --cluster create
//! --cluster-replicas 1 --cluster-yes`, killed (and their directories removed) on drop.
//!
//! Startup is bounded: each server must answer `PING` within 20 s, and the cluster must report
//! `cluster_state:ok` on every node, agree on the slot table and see every replica linked to its
//! master within 30 s after `create`.
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
                    // As deploy/README.md recommends: a failed shard does not stop the others.
                    "--cluster-require-full-coverage",
                    "no",
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
        // Every node knows all slots, and sees every replica attached to its master with the
        // replication link up (a failover test needs a replica that is in sync).
        poll_until(
            "redis cluster ready",
            within,
            Duration::from_millis(100),
            || {
                self.nodes.iter().all(|n| {
                    let info = cli(n.port(), &["CLUSTER", "INFO"]);
                    let nodes = cli(n.port(), &["CLUSTER", "NODES"]);
                    let replicas = nodes.lines().filter(|l| l.contains("slave")).count();
                    let role = cli(n.port(), &["INFO", "replication"]);
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_assigned:16384")
                        && replicas == MASTERS
                        && (role.contains("role:master") || role.contains("master_link_status:up"))
                })
            },
        );
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
        let answer = self.live_cli(&["CLUSTER", "KEYSLOT", key]);
        answer
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {answer:?}"))
    }

    /// The masters' slot ranges, one `(first, last)` list per master, from `CLUSTER NODES`.
    pub fn master_slot_ranges(&self) -> Vec<Vec<(u16, u16)>> {
        masters(&cli(self.nodes[0].port(), &["CLUSTER", "NODES"]))
            .into_iter()
            .map(|(_, _, ranges)| ranges)
            .collect()
    }
}

/// Failover: which node serves what, and the ways a node fails.
impl RedisCluster {
    /// The node (by index) that is master of `slot` now, as the first live node sees it.
    pub fn master_of(&self, slot: u16) -> usize {
        let text = self.live_cli(&["CLUSTER", "NODES"]);
        match owner(&text, slot) {
            Some((_, address)) => self.index_of(&address),
            None => panic!("no master owns slot {slot}: {text}"),
        }
    }

    /// The replica (by index) of the master `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = cli(self.nodes[master].port(), &["CLUSTER", "MYID"]);
        let id = id.trim();
        let text = self.live_cli(&["CLUSTER", "NODES"]);
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 4 && fields[3] == id && fields[2].contains("slave") {
                return self.index_of(fields[1]);
            }
        }
        panic!("master {master} ({id}) has no replica: {text}");
    }

    /// `kill -9` of node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// The server of node `index` (to stop, resume or inspect it).
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// `redis-cli` against node `index`; its output (empty when it failed).
    pub fn cli(&self, index: usize, args: &[&str]) -> String {
        cli(self.nodes[index].port(), args)
    }

    /// Waits (at most `within`) until node `index`'s replication offset reaches its master's,
    /// i.e. the replica holds every write the master acknowledged so far.
    pub fn wait_replica_synced(&self, index: usize, within: Duration) {
        let field = |text: &str, name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':')?.parse().ok())
        };
        let what = format!("replica {index} in sync with its master");
        poll_until(&what, within, Duration::from_millis(20), || {
            let info = self.cli(index, &["INFO", "replication"]);
            let host = field(&info, "master_port").expect("a replica knows its master's port");
            let master = self
                .nodes
                .iter()
                .position(|n| u64::from(n.port()) == host)
                .expect("its master is one of ours");
            let wanted = field(
                &self.cli(master, &["INFO", "replication"]),
                "master_repl_offset",
            );
            wanted.is_some() && wanted == field(&info, "slave_repl_offset")
        });
    }

    /// Waits (at most `within`) until every running node sees `slot` served by node `index`
    /// as master and reports `cluster_state:ok`.
    pub fn wait_master(&self, slot: u16, index: usize, within: Duration) {
        let id = cli(self.nodes[index].port(), &["CLUSTER", "MYID"]);
        let what = format!("slot {slot} served by node {index} everywhere");
        poll_until(&what, within, Duration::from_millis(50), || {
            self.nodes.iter().enumerate().all(|(i, n)| {
                !n.is_running()
                    || (cli(n.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                        && self.master_as_seen_by(i, slot).as_deref() == Some(id.trim()))
            })
        });
    }

    /// The id of the master owning `slot`, as node `viewer` sees it.
    fn master_as_seen_by(&self, viewer: usize, slot: u16) -> Option<String> {
        owner(&cli(self.nodes[viewer].port(), &["CLUSTER", "NODES"]), slot).map(|(id, _)| id)
    }

    /// The output of `args` from the first running node.
    fn live_cli(&self, args: &[&str]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        cli(node.port(), args)
    }

    /// The index of the node whose `ip:port@bus` address is `address`.
    fn index_of(&self, address: &str) -> usize {
        let port: u16 = address
            .split(['@', ','])
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad node address {address}"));
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }
}

/// From `CLUSTER NODES` output, the `(id, address)` of the master owning `slot`, if any
/// (a master flagged `fail` still counts: the caller compares ids).
fn owner(text: &str, slot: u16) -> Option<(String, String)> {
    masters(text)
        .into_iter()
        .find(|(_, _, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|(id, address, _)| (id, address))
}

/// A master as `CLUSTER NODES` lists it: id, `ip:port@bus` address, slot ranges.
type Master = (String, String, Vec<(u16, u16)>);

/// From `CLUSTER NODES` output, every master with slots (importing/migrating markers `[...]`
/// left out).
fn masters(text: &str) -> Vec<Master> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].split(',').any(|f| f == "master") {
                return None;
            }
            let ranges: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .filter_map(|f| match f.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => f.parse().ok().map(|s| (s, s)),
                })
                .collect();
            (!ranges.is_empty()).then(|| (fields[0].to_string(), fields[1].to_string(), ranges))
        })
        .collect()
}

/// Polls `done` every `every` until it holds; panics with `what` after `within`.
fn poll_until(what: &str, within: Duration, every: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(every);
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

/// Resharding.
impl RedisCluster {
    /// The process ids of the running servers (for CPU accounting in benchmarks).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(RedisServer::pid).collect()
    }

    /// The node id of node `index`.
    pub fn id(&self, index: usize) -> String {
        self.cli(index, &["CLUSTER", "MYID"]).trim().to_string()
    }

    /// Moves `slot` (and its keys) from master `from` to master `to` the way `redis-cli
    /// --cluster reshard` does: `IMPORTING` on the target, `MIGRATING` on the source, `MIGRATE`
    /// of its keys in batches, then `SETSLOT NODE` on both and every other master. Between the
    /// steps clients meet `ASK` and `TRYAGAIN`.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let slot_s = slot.to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        let ok = |what: &str, out: String| assert_eq!(out.trim(), "OK", "{what}: {out}");
        ok(
            "importing",
            self.cli(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]),
        );
        ok(
            "migrating",
            self.cli(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]),
        );
        let to_port = self.nodes[to].port().to_string();
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            ok("migrate", self.cli(from, &args));
        }
        for node in [to, from] {
            ok(
                "setslot node",
                self.cli(node, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]),
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if i != to && i != from && n.is_running() {
                let role = self.cli(i, &["ROLE"]);
                if role.starts_with("master") {
                    self.cli(i, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
                }
            }
        }
    }
}

//! Command-path measurement behind the choice in `src/redis/commands.rs`: the publish script
//! from 32 concurrent tasks through multiplexed connections versus a deadpool-redis pool.
//!
//! `cargo test --release -p herald-broker --test redis_bench -- --ignored --nocapture`

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_testkit::redis::RedisServer;
use redis::aio::ConnectionManager;

const TASKS: usize = 32;
const PER_TASK: usize = 1250;
const SCRIPT: &str = include_str!("../src/redis/lua/publish.lua");

fn invocation(script: &redis::Script, task: usize) -> redis::ScriptInvocation<'_> {
    let mut inv = script.prepare_invoke();
    inv.key(format!("bench:m:{{c{task}}}"))
        .key(format!("bench:h:{{c{task}}}"))
        .arg("epoch000")
        .arg(100)
        .arg(60_000)
        .arg(600_000)
        .arg(format!("bench:t:c{task}"))
        .arg(&b"00:{\"text\":\"hello, this is a chat message of typical size\"}"[..])
        .arg("")
        .arg(0)
        .arg(0);
    inv
}

async fn multiplexed(url: &str, connections: usize) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(ConnectionManager::new(client.clone()).await.unwrap());
    }
    let script = Arc::new(redis::Script::new(SCRIPT));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut con = conns[task % connections].clone();
        let script = script.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                let _: redis::Value = invocation(&script, task)
                    .invoke_async(&mut con)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (TASKS * PER_TASK) as f64 / started.elapsed().as_secs_f64()
}

async fn pooled(url: &str, size: usize) -> f64 {
    let mut cfg = deadpool_redis::Config::from_url(url);
    cfg.pool = Some(deadpool_redis::PoolConfig::new(size));
    let pool = cfg
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let script = Arc::new(redis::Script::new(SCRIPT));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        let script = script.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                let mut con = pool.get().await.unwrap();
                let _: redis::Value = invocation(&script, task)
                    .invoke_async(&mut *con)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (TASKS * PER_TASK) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand with --release --ignored --nocapture"]
async fn publish_throughput_multiplexed_vs_pool() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Warm-up: loads the script, creates the keys.
    multiplexed(&url, 1).await;
    for round in 0..2 {
        println!("round {round}");
        println!(
            "  multiplexed x1   {:>8.0} publishes/s",
            multiplexed(&url, 1).await
        );
        println!(
            "  multiplexed x4   {:>8.0} publishes/s",
            multiplexed(&url, 4).await
        );
        println!(
            "  deadpool 32      {:>8.0} publishes/s",
            pooled(&url, 32).await
        );
        println!(
            "  deadpool 8       {:>8.0} publishes/s",
            pooled(&url, 8).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Count(std::sync::atomic::AtomicU64, tokio::sync::Notify, u64);

impl herald_broker::BrokerEvents for Count {
    fn on_event(&self, event: herald_broker::BrokerEvent) {
        if let herald_broker::BrokerEvent::Publication(_) = event {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n == self.2 {
                self.1.notify_one();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand with --release --ignored --nocapture"]
async fn broker_publish_and_cross_node_delivery_throughput() {
    use herald_broker::redis::RedisBrokerConfig;
    let redis = RedisServer::start();
    let r = cross_node(
        RedisBrokerConfig::new(redis.url(), "a"),
        RedisBrokerConfig::new(redis.url(), "b"),
        &[redis.pid().unwrap()],
    )
    .await;
    println!("RedisBroker: {r}");
}

/// One Redis against a 3-master Redis Cluster (3 replicas), same brokers, same load, in one
/// run, alternating, three rounds each. docs/BENCHMARKS.md ("Redis Cluster") quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand with --release --ignored --nocapture"]
async fn one_redis_vs_a_three_master_cluster() {
    use herald_broker::redis::RedisBrokerConfig;
    use herald_testkit::redis_cluster::RedisCluster;
    let redis = RedisServer::start();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    for round in 1..=3 {
        let single = cross_node(
            RedisBrokerConfig::new(redis.url(), "a"),
            RedisBrokerConfig::new(redis.url(), "b"),
            &[redis.pid().unwrap()],
        )
        .await;
        println!("round {round} one redis        {single}");
        let sharded = cross_node(
            RedisBrokerConfig::cluster(cluster.urls(), "a"),
            RedisBrokerConfig::cluster(cluster.urls(), "b"),
            &cluster.pids(),
        )
        .await;
        println!("round {round} 3-master cluster {sharded}");
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

/// Node `a` publishes `TASKS * PER_TASK` messages from `TASKS` tasks over `TASKS * 3`
/// channels; node `b` receives them all. Returns the rates and the Redis servers' CPU.
async fn cross_node(
    a: herald_broker::redis::RedisBrokerConfig,
    b: herald_broker::redis::RedisBrokerConfig,
    redis_pids: &[u32],
) -> String {
    use herald_broker::redis::RedisBroker;
    use herald_broker::{Broker, HistoryOptions, Payload, PublishRequest};

    let a = RedisBroker::connect(a).await.unwrap();
    let b = RedisBroker::connect(b).await.unwrap();
    let total = (TASKS * PER_TASK) as u64;
    let count = Arc::new(Count(Default::default(), Default::default(), total));
    // The broker holds only a Weak: `count` stays alive here for the whole measurement.
    let sink = Arc::downgrade(&count);
    b.attach(sink as std::sync::Weak<dyn herald_broker::BrokerEvents>);
    let channel = |task: usize, i: usize| format!("bench:{}", task * 3 + i % 3);
    for task in 0..TASKS {
        for i in 0..3 {
            b.subscribe(&channel(task, i)).await.unwrap();
        }
    }
    let payload = serde_json::value::RawValue::from_string(
        r#"{"text":"hello, this is a chat message of typical size"}"#.into(),
    )
    .unwrap();
    let cpu_before: f64 = redis_pids.iter().map(|&p| cpu_seconds(p)).sum();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (a, payload) = (a.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                a.publish(PublishRequest {
                    channel: channel(task, i).into(),
                    payload: Payload::Json(payload.clone()),
                    from: Some("client".into()),
                    user: None,
                    skip_self: false,
                    history: HistoryOptions {
                        size: 100,
                        ttl: Duration::from_secs(60),
                    },
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published = started.elapsed();
    tokio::time::timeout(Duration::from_secs(60), count.1.notified())
        .await
        .expect("every publication delivered to node b");
    let delivered = started.elapsed();
    let redis_cpu: f64 = redis_pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu_before;
    a.shutdown().await;
    b.shutdown().await;
    format!(
        "{total} publishes from {TASKS} tasks over {} channels: {:>6.0}/s acked, all delivered \
         to the other node after {:.2}s ({:>6.0}/s); redis CPU {:.2}s ({:.0}% of the run)",
        TASKS * 3,
        total as f64 / published.as_secs_f64(),
        delivered.as_secs_f64(),
        total as f64 / delivered.as_secs_f64(),
        redis_cpu,
        100.0 * redis_cpu / delivered.as_secs_f64()
    )
}

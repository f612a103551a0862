//! Failover on a real Redis Cluster (six servers from `herald_testkit`): a master killed with
//! `kill -9`, its replica promoted, and what the brokers make of it.
//!
//! * A replica promoted *behind* the acknowledged publishes (it was stopped and cut off from
//!   its master while three more were acknowledged and delivered) must not let the next
//!   publishes reuse those offsets: a new epoch starts, the subscriber's node is told to
//!   resync, and history from the old position answers `recovered: false`.
//! * A master killed under traffic on all three shards: publishes to its shard fail (error,
//!   never a false acknowledgement) until the automatic failover, the other shards keep
//!   working meanwhile, and a resuming reader ends with every acknowledged publication exactly
//!   once, in order, or a signalled reset — never a silent gap.

// Only the sink and request helpers are used here, not the contract's cases.
#[allow(unused_imports, unused_macros, dead_code)]
mod conformance;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{attach, json, json_of, keep, request, since};
use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::{Broker, BrokerError, BrokerEvent, HistoryQuery, Publication};
use herald_testkit::redis_cluster::RedisCluster;

fn config(cluster: &RedisCluster, id: &str) -> RedisBrokerConfig {
    RedisBrokerConfig {
        probe_interval: Duration::from_millis(300),
        probe_timeout: Duration::from_secs(2),
        reconnect_max: Duration::from_millis(500),
        command_timeout: Duration::from_secs(1),
        ..RedisBrokerConfig::cluster(cluster.urls(), id)
    }
}

async fn broker(cluster: &RedisCluster, id: &str) -> Arc<RedisBroker> {
    RedisBroker::connect(config(cluster, id))
        .await
        .expect("connect to the redis cluster")
}

fn start_cluster() -> RedisCluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::task::block_in_place(RedisCluster::start)
}

/// The slot of `channel`'s keys and topic.
fn slot_of(cluster: &RedisCluster, channel: &str) -> u16 {
    cluster.keyslot(&format!("{{{channel}}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_behind_the_acks_starts_a_new_epoch() {
    let mut cluster = start_cluster();
    let channel = "failover:behind";
    let slot = slot_of(&cluster, channel);
    let master = cluster.master_of(slot);
    let replica = cluster.replica_of(master);

    let publisher = broker(&cluster, "pub").await;
    let receiver = broker(&cluster, "sub").await;
    let receiver_dyn: Arc<dyn Broker> = receiver.clone();
    let mut sink = attach(&receiver_dyn);
    receiver.subscribe(channel).await.unwrap();

    // What each (epoch, offset) was seen to name, by acknowledgement or delivery.
    let mut named = Named::default();
    let publish = |n: u64| {
        let publisher = publisher.clone();
        async move {
            let body = format!("{{\"n\":{n}}}");
            let position = publisher
                .publish(request(channel, json(&body), keep(100)))
                .await
                .expect("publish");
            (position, body)
        }
    };

    for n in 1..=5 {
        let (position, body) = publish(n).await;
        named.name(&position.epoch, position.offset, body);
        let p = sink.publication().await;
        named.name(&p.epoch, p.offset, json_of(&p.payload));
    }
    let epoch = named.0.keys().next().unwrap().0.clone();
    tokio::task::block_in_place(|| cluster.wait_replica_synced(replica, Duration::from_secs(10)));

    // Cut the replica off: stopped, its replication link closed by the master. The master
    // then acknowledges (and delivers) three publishes the replica never gets.
    cluster.node(replica).signal("STOP");
    let killed = cluster.cli(master, &["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(killed.trim(), "1", "the replica's link was closed");
    for n in 6..=8 {
        let (position, body) = publish(n).await;
        assert_eq!(position.offset, n);
        named.name(&position.epoch, position.offset, body);
        let p = sink.publication().await;
        named.name(&p.epoch, p.offset, json_of(&p.payload));
    }

    // The master dies; the stale replica takes over.
    cluster.kill(master);
    cluster.node(replica).signal("CONT");
    let answer = cluster.cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
    assert_eq!(answer.trim(), "OK", "takeover: {answer}");
    tokio::task::block_in_place(|| cluster.wait_master(slot, replica, Duration::from_secs(30)));
    // The promoted replica really is behind: the test made the regression it is about (or
    // the receiver's node already fenced it, which it only does when the counter went back).
    let meta = format!("herald:m:{{{channel}}}");
    let state = cluster.cli(replica, &["HMGET", &meta, "e", "o"]);
    let state: Vec<&str> = state.lines().collect();
    assert!(
        state == [epoch.as_str(), "5"] || state.first() != Some(&epoch.as_str()),
        "promoted replica's epoch and offset: {state:?}"
    );

    // The receiver's node lost its shard connection; after resubscribing it checks its marks
    // (a new epoch, if Redis went back) before it tells its readers to resync.
    let deadline = Instant::now() + conformance::WAIT * 3;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), sink_next(&mut sink)).await {
            Ok(BrokerEvent::Resync) => break,
            Ok(BrokerEvent::Publication(p)) => {
                named.name(&p.epoch, p.offset, json_of(&p.payload));
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "no resync after the failover");
    }
    // Publishes now start the new epoch; no offset of the old one is reused.
    let position = loop {
        match publisher
            .publish(request(channel, json("{\"n\":9}"), keep(100)))
            .await
        {
            Ok(position) => break position,
            Err(BrokerError::Unavailable(_)) => {
                assert!(
                    Instant::now() < deadline,
                    "publishes fail after the failover"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("publish: {err}"),
        }
    };
    named.name(&position.epoch, position.offset, "{\"n\":9}".to_string());
    assert_ne!(position.epoch, epoch);
    assert_eq!(position.offset, 1);
    let page = receiver
        .history(channel, since(&epoch, 8, 100), keep(100))
        .await
        .unwrap();
    assert!(!page.recovered, "the old position cannot be recovered");
    assert_ne!(page.position.epoch, epoch, "a new epoch");

    let p = loop {
        if let BrokerEvent::Publication(p) = sink.next().await {
            if p.epoch.as_ref() == position.epoch {
                break p;
            }
        }
    };
    assert_eq!(
        (p.offset, json_of(&p.payload)),
        (1, "{\"n\":9}".to_string())
    );
    assert_eq!(
        receiver.epochs_fenced(),
        1,
        "the receiver's node started it"
    );
}

/// What each (epoch, offset) was seen to name; naming one twice with other data fails.
#[derive(Default)]
struct Named(HashMap<(String, u64), String>);

impl Named {
    fn name(&mut self, epoch: &str, offset: u64, body: String) {
        let previous = self.0.insert((epoch.to_string(), offset), body.clone());
        assert!(
            previous.is_none() || previous.as_deref() == Some(body.as_str()),
            "({epoch}, {offset}) names two messages: {previous:?} and {body}"
        );
    }
}

async fn sink_next(sink: &mut conformance::Sink) -> BrokerEvent {
    sink.next().await
}

/// A reader of one channel that resumes like an edge: live publications in order, a gap or a
/// resync filled from history, `recovered: false` counted as a reset.
#[derive(Default)]
struct Reader {
    epoch: String,
    last: u64,
    got: Vec<String>,
    resets: usize,
}

impl Reader {
    fn live(&mut self, p: &Publication) -> bool {
        if *p.epoch == *self.epoch && p.offset == self.last + 1 || self.epoch.is_empty() {
            self.epoch = p.epoch.to_string();
            self.last = p.offset;
            self.got.push(json_of(&p.payload));
            return true;
        }
        *p.epoch == *self.epoch && p.offset <= self.last // a duplicate: fine
    }

    async fn catch_up(&mut self, broker: &RedisBroker, channel: &str) -> Result<(), BrokerError> {
        loop {
            let query = if self.epoch.is_empty() {
                HistoryQuery {
                    since: None,
                    limit: 0,
                    max_bytes: 0,
                }
            } else {
                since(&self.epoch, self.last, 1000)
            };
            let page = broker.history(channel, query, keep(1000)).await?;
            if self.epoch.is_empty() {
                return Ok(());
            }
            if !page.recovered {
                self.resets += 1;
                self.epoch = page.position.epoch.clone();
                self.last = page.position.offset;
                return Ok(());
            }
            for p in &page.publications {
                assert_eq!(p.offset, self.last + 1, "history in order, no gap");
                self.last = p.offset;
                self.got.push(json_of(&p.payload));
            }
            if self.last >= page.position.offset {
                return Ok(());
            }
        }
    }
}

/// How the victim master fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// `kill -9`: its sockets close at once.
    Killed,
    /// `SIGSTOP`: its sockets stay open and nothing answers (a hung host); only the per-shard
    /// probe notices.
    Hung,
    /// Nothing fails: the victim's slot is resharded to another master under traffic (`ASK`,
    /// `TRYAGAIN`, then `MOVED`; Redis drops the slot's shard channels with a `sunsubscribe`).
    Resharded,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_under_traffic_fails_over_and_resuming_readers_lose_nothing() {
    failover_under_traffic(Failure::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_hung_under_traffic_fails_over_and_resuming_readers_lose_nothing() {
    failover_under_traffic(Failure::Hung).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_moved_under_traffic_keeps_its_subscribers_and_loses_nothing() {
    failover_under_traffic(Failure::Resharded).await;
}

async fn failover_under_traffic(failure: Failure) {
    let mut cluster = start_cluster();
    // One channel per master.
    let masters = cluster.master_slot_ranges();
    let channels: Vec<String> = tokio::task::block_in_place(|| {
        masters
            .iter()
            .map(|ranges| {
                (0..10_000)
                    .map(|i| format!("traffic:c{i}"))
                    .find(|c| {
                        let slot = slot_of(&cluster, c);
                        ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
                    })
                    .expect("a channel on every master")
            })
            .collect()
    });
    let victim = channels[0].clone();
    let victim_master = cluster.master_of(slot_of(&cluster, &victim));
    let victim_replica = cluster.replica_of(victim_master);

    let publisher = broker(&cluster, "pub").await;
    let receiver = broker(&cluster, "sub").await;
    let receiver_dyn: Arc<dyn Broker> = receiver.clone();
    let mut sink = attach(&receiver_dyn);
    for channel in &channels {
        receiver.subscribe(channel).await.unwrap();
    }

    // Publish round-robin over the three channels: a publish either fails or is acknowledged
    // (its payload must then reach the reader or be covered by a reset).
    let (acked_tx, mut acked_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, String, Instant)>();
    let stop = tokio_util::sync::CancellationToken::new();
    // One publisher task per channel: a shard that stalls its publishes stalls only its own.
    let traffic: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(i, channel)| {
            let publisher = publisher.clone();
            let channel = channel.clone();
            let stop = stop.clone();
            let acked_tx = acked_tx.clone();
            tokio::spawn(async move {
                // Bodies of failed publishes: a publish that timed out may still have landed.
                let mut failures: Vec<String> = Vec::new();
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    n += 1;
                    let body = format!("{{\"c\":{i},\"n\":{n}}}");
                    match publisher
                        .publish(request(&channel, json(&body), keep(1000)))
                        .await
                    {
                        Ok(_) => acked_tx
                            .send((channel.clone(), body, Instant::now()))
                            .unwrap(),
                        Err(BrokerError::Unavailable(_)) => failures.push(body),
                        Err(err) => panic!("publish: {err}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (channel, failures)
            })
        })
        .collect();
    drop(acked_tx);

    let mut readers: HashMap<String, Reader> = channels
        .iter()
        .map(|c| (c.clone(), Reader::default()))
        .collect();
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    // Reads events for `during`, resuming readers as an edge would.
    async fn pump(
        sink: &mut conformance::Sink,
        readers: &mut HashMap<String, Reader>,
        receiver: &RedisBroker,
        during: Duration,
    ) {
        let until = Instant::now() + during;
        while Instant::now() < until {
            let event = match tokio::time::timeout(Duration::from_millis(50), sink_next(sink)).await
            {
                Ok(event) => event,
                Err(_) => continue,
            };
            match event {
                BrokerEvent::Publication(p) => {
                    let reader = readers.get_mut(&*p.channel).unwrap();
                    if !reader.live(&p) {
                        // A gap or another epoch: history fills it (or says it cannot).
                        let _ = reader.catch_up(receiver, &p.channel).await;
                        reader.live(&p);
                    }
                }
                BrokerEvent::Resync => {
                    for (channel, reader) in readers.iter_mut() {
                        let _ = reader.catch_up(receiver, channel).await;
                    }
                }
                _ => {}
            }
        }
    }

    pump(&mut sink, &mut readers, &receiver, Duration::from_secs(1)).await;
    let kill_at = Instant::now();
    let victim_slot = slot_of(&cluster, &victim);
    // Another master, for resharding: the one owning the second channel.
    let new_owner = match failure {
        Failure::Resharded => cluster.master_of(slot_of(&cluster, &channels[1])),
        _ => victim_replica,
    };
    match failure {
        Failure::Killed => cluster.kill(victim_master),
        Failure::Hung => cluster.node(victim_master).signal("STOP"),
        Failure::Resharded => {
            tokio::task::block_in_place(|| cluster.move_slot(victim_slot, victim_master, new_owner))
        }
    }
    if failure != Failure::Resharded {
        // Readiness flips while the shard is gone.
        let seen_down = Instant::now() + conformance::WAIT;
        while receiver.is_healthy() {
            assert!(Instant::now() < seen_down, "still ready with a shard down");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The automatic failover: the replica is promoted after the node timeout (2 s).
    tokio::task::block_in_place(|| {
        cluster.wait_master(victim_slot, new_owner, Duration::from_secs(30))
    });
    let promoted_after = kill_at.elapsed();
    let promoted_at = Instant::now();
    if failure == Failure::Hung {
        // Back, it finds itself demoted (a replica of its old replica).
        cluster.node(victim_master).signal("CONT");
    }
    pump(&mut sink, &mut readers, &receiver, Duration::from_secs(3)).await;
    stop.cancel();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed_bodies: HashMap<String, Vec<String>> = HashMap::new();
    for task in traffic {
        let (channel, failed) = task.await.unwrap();
        failures.insert(channel.clone(), failed.len());
        failed_bodies.insert(channel, failed);
    }
    // Acknowledged publishes per channel while the shard was down (kill to promotion).
    let mut during: HashMap<String, usize> = HashMap::new();
    while let Ok((channel, body, at)) = acked_rx.try_recv() {
        if at > kill_at + Duration::from_millis(200) && at < promoted_at {
            *during.entry(channel.clone()).or_default() += 1;
        }
        acked.entry(channel).or_default().push(body);
    }
    // Let the last deliveries arrive, then resume every reader once more.
    pump(
        &mut sink,
        &mut readers,
        &receiver,
        Duration::from_millis(500),
    )
    .await;
    // Live delivery came back on every channel (the subscription followed its slot): the
    // last publication arrived without the final catch-up below.
    for channel in &channels {
        assert_eq!(
            readers[channel].got.last(),
            acked.get(channel).and_then(|sent| sent.last()),
            "{channel}: live delivery resumed after the {failure:?} shard"
        );
    }
    for (channel, reader) in readers.iter_mut() {
        reader.catch_up(&receiver, channel).await.unwrap();
    }

    if failure != Failure::Resharded {
        assert!(
            failures.get(&victim).copied().unwrap_or(0) > 0,
            "publishes to the dead shard failed meanwhile: {failures:?}"
        );
    }
    for channel in channels[1..]
        .iter()
        .filter(|_| failure != Failure::Resharded)
    {
        let count = during.get(channel).copied().unwrap_or(0);
        assert!(
            count > 0,
            "{channel} on a healthy shard kept working during the failover: {during:?}"
        );
    }
    assert!(receiver.is_healthy(), "ready again after the failover");
    let fenced = receiver.epochs_fenced() + publisher.epochs_fenced();
    for channel in &channels {
        let reader = &readers[channel];
        let sent = acked.get(channel).cloned().unwrap_or_default();
        if reader.resets == 0 {
            // Every acknowledged publication once, in order; anything else received is one
            // whose publish reported failure (timed out, yet applied): never a gap, never a
            // duplicate.
            let failed = &failed_bodies[channel];
            let acked_only: Vec<&String> = reader
                .got
                .iter()
                .filter(|body| !failed.contains(body))
                .collect();
            assert!(
                acked_only.iter().copied().eq(sent.iter()),
                "{channel}: acknowledged publications received once, in order \
                 ({} received, {} acknowledged)",
                reader.got.len(),
                sent.len()
            );
            let unique: std::collections::HashSet<&String> = reader.got.iter().collect();
            assert_eq!(unique.len(), reader.got.len(), "{channel}: a duplicate");
        } else {
            // A reset is only ever the signalled kind: the promoted replica was behind.
            assert!(fenced > 0, "{channel}: a reset without a regression");
            let tail: Vec<&String> = reader.got.iter().rev().take(3).collect();
            let sent_tail: Vec<&String> = sent.iter().rev().take(3).collect();
            assert_eq!(
                tail, sent_tail,
                "{channel}: delivery healed after the reset"
            );
        }
    }
    eprintln!(
        "failover ({failure:?}): promoted after {promoted_after:?}; failed publishes {failures:?}; \
         acked {:?} ({during:?} while the shard was down); resets {:?}; fenced {fenced}",
        channels
            .iter()
            .map(|c| acked.get(c).map_or(0, Vec::len))
            .collect::<Vec<_>>(),
        channels
            .iter()
            .map(|c| readers[c].resets)
            .collect::<Vec<_>>(),
    );
}

/// Channel churn on a cluster: each `SUNSUBSCRIBE` is confirmed with the same `sunsubscribe`
/// push Redis sends when a slot moves. A channel subscribed again before its confirmation came
/// must not be taken for a moved slot (that would heal the whole connection, flap readiness and
/// resync every reader). A client controls this churn, so it must cost nothing of the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_churn_is_not_taken_for_a_moved_slot() {
    let cluster = start_cluster();
    let node = broker(&cluster, "churn").await;
    let publisher = broker(&cluster, "pub").await;
    let node_dyn: Arc<dyn Broker> = node.clone();
    let mut sink = attach(&node_dyn);
    let channels: Vec<String> = (0..8).map(|i| format!("churn:{i}")).collect();
    for round in 0..150 {
        for channel in &channels {
            node.subscribe(channel).await.unwrap();
        }
        for channel in &channels {
            node.unsubscribe(channel).await.unwrap();
        }
        // Let the unsubscriber's tick (10 ms) send some `SUNSUBSCRIBE`s just before the
        // channels come back.
        tokio::time::sleep(Duration::from_millis(1 + round % 13)).await;
    }
    node.subscribe(&channels[0]).await.unwrap();
    // Drain the confirmations of the last round, then check nothing was healed.
    let position = publisher
        .publish(request(&channels[0], json("\"after\""), keep(10)))
        .await
        .unwrap();
    loop {
        match sink.next().await {
            BrokerEvent::Publication(p) if p.offset == position.offset => break,
            BrokerEvent::Resync => panic!("churn caused a resync"),
            _ => {}
        }
    }
    assert_eq!(node.reconnects(), 0, "churn healed the connection");
    assert!(node.is_healthy());
}

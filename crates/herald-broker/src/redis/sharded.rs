//! What differs between one Redis and a Redis Cluster, behind small enums the rest of the
//! broker uses without caring which it talks to.
//!
//! * [`Client`] — how to connect: a `redis::Client` for one Redis, or the cluster's seed nodes
//!   (topology discovered by redis-rs's `cluster_async`, which follows `MOVED`/`ASK`).
//! * [`Conn`] — a command connection: a `ConnectionManager`, or a `ClusterConnection` that
//!   routes each command (and each script, by its first key) to the slot's master.
//! * [`Sink`] and [`Incoming`] — the pub/sub side. One Redis: redis-rs's RESP2 `PubSub`
//!   split into sink and stream, `SUBSCRIBE`. A cluster: **sharded** pub/sub. A second
//!   `ClusterConnection`, in RESP3, keeps one connection per cluster node; `SSUBSCRIBE` of a
//!   topic goes to the master owning the topic's slot, so the node's pub/sub connections are
//!   one per shard (not one per slot or per channel). Its pushes (`smessage`, subscription
//!   confirmations, the library's `Disconnection`) arrive through a push sender that only
//!   `try_send`s into a bounded queue of `event_queue` entries: a full queue drops the push
//!   and a [`Delivery::Resync`] follows once the queue is read empty, exactly as with the
//!   broker's own intake queue. redis-rs would resubscribe a shard's channels by itself after
//!   it reconnected, but nothing would tell when that is done (so when a `Resync` is safe), and
//!   the push does not say which shard it was. So a `Disconnection` push becomes
//!   [`Delivery::ShardLost`]: the supervisor (`pubsub.rs`) keeps reading the connection (the
//!   other shards keep delivering, and publishing to them keeps working), marks the node not
//!   ready, and opens a fresh cluster connection (fresh topology) on which it `SSUBSCRIBE`s
//!   everything until every shard confirmed — the lost shard's only once the cluster promoted
//!   its replica — then checks for offset regressions (`fence.rs`), swaps the connections,
//!   emits one `Resync` and is ready again. A slot that changes owner (resharding) makes
//!   Redis drop its shard channels with a `sunsubscribe` push ([`Delivery::Unsubscribed`]);
//!   for a topic the node still holds that is handled like a lost shard.
//!
//! `SSUBSCRIBE` takes channels of one slot only, so [`Sink::subscribe`] groups a batch by
//! [`slot`] and sends the groups concurrently.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::try_join_all;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, PubSubSink, PubSubStream};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Msg, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, Value};
use tokio::sync::mpsc;

use super::commands::map_err;
use super::pubsub::unavailable;
use super::RedisBrokerConfig;
use crate::BrokerError;

/// How to reach Redis.
#[derive(Clone)]
pub(crate) enum Client {
    /// One Redis.
    Single(redis::Client),
    /// A Redis Cluster: seed node URLs and the CA to trust for `rediss://`, if any.
    Cluster {
        nodes: Vec<String>,
        ca: Option<Vec<u8>>,
    },
}

impl Client {
    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Client::Cluster { .. })
    }

    fn cluster_builder(
        nodes: &[String],
        ca: &Option<Vec<u8>>,
        config: &RedisBrokerConfig,
    ) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            .retries(2);
        if let Some(pem) = ca {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        builder
    }

    /// A cluster command connection (one Redis uses `ConnectionManager`, see `commands.rs`).
    pub(crate) async fn cluster_commands(
        nodes: &[String],
        ca: &Option<Vec<u8>>,
        config: &RedisBrokerConfig,
    ) -> Result<Conn, BrokerError> {
        let client = Self::cluster_builder(nodes, ca, config)
            .build()
            .map_err(|err| BrokerError::Config(format!("redis cluster: {err}")))?;
        let connection =
            tokio::time::timeout(config.connect_timeout * 2, client.get_async_connection())
                .await
                .map_err(|_| BrokerError::Unavailable("redis cluster: connect timed out".into()))?
                .map_err(map_err)?;
        Ok(Conn::Cluster(connection))
    }

    /// A fresh pub/sub connection, not subscribed to anything yet.
    pub(crate) async fn pubsub(
        &self,
        config: &RedisBrokerConfig,
    ) -> Result<(Sink, Incoming), BrokerError> {
        match self {
            Client::Single(client) => {
                let connection =
                    tokio::time::timeout(config.connect_timeout, client.get_async_pubsub())
                        .await
                        .map_err(|_| unavailable("connect timed out"))?
                        .map_err(map_err)?;
                let (sink, stream) = connection.split();
                Ok((Sink::Single(sink), Incoming::Single(stream)))
            }
            Client::Cluster { nodes, ca } => {
                let (tx, rx) = mpsc::channel(config.event_queue);
                let overflow = Arc::new(AtomicBool::new(false));
                let full = overflow.clone();
                let sender = move |info: PushInfo| -> Result<(), ()> {
                    match tx.try_send(info) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            full.store(true, Ordering::Release);
                            Ok(())
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                    }
                };
                let client = Self::cluster_builder(nodes, ca, config)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .build()
                    .map_err(|err| BrokerError::Config(format!("redis cluster: {err}")))?;
                let connection =
                    tokio::time::timeout(config.connect_timeout * 2, client.get_async_connection())
                        .await
                        .map_err(|_| unavailable("connect timed out"))?
                        .map_err(map_err)?;
                Ok((
                    Sink::Cluster(connection),
                    Incoming::Cluster(Pushes { rx, overflow }),
                ))
            }
        }
    }
}

/// A command connection to one Redis or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis, reconnecting by itself.
    Single(ConnectionManager),
    /// A cluster, routing by key and following the topology.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(con) => con.req_packed_command(cmd),
            Conn::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(con) => con.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(con) => con.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(con) => con.get_db(),
            Conn::Cluster(con) => con.get_db(),
        }
    }
}

/// The subscribing half of a pub/sub connection.
#[derive(Clone)]
pub(crate) enum Sink {
    /// `SUBSCRIBE` on one Redis.
    Single(PubSubSink),
    /// `SSUBSCRIBE` on the cluster, per slot.
    Cluster(ClusterConnection),
}

impl Sink {
    /// Subscribes `topics`; returns once Redis confirmed all of them.
    pub(crate) async fn subscribe(&mut self, topics: &[String]) -> Result<(), RedisError> {
        match self {
            Sink::Single(sink) => sink.subscribe(topics).await,
            Sink::Cluster(con) => {
                try_join_all(by_slot(topics).into_iter().map(|group| {
                    let mut con = con.clone();
                    async move { con.ssubscribe(group).await }
                }))
                .await?;
                Ok(())
            }
        }
    }

    /// Unsubscribes `topics`.
    pub(crate) async fn unsubscribe(&mut self, topics: &[String]) -> Result<(), RedisError> {
        match self {
            Sink::Single(sink) => sink.unsubscribe(topics).await,
            Sink::Cluster(con) => {
                try_join_all(by_slot(topics).into_iter().map(|group| {
                    let mut con = con.clone();
                    async move { con.sunsubscribe(group).await }
                }))
                .await?;
                Ok(())
            }
        }
    }
}

impl Sink {
    /// One hash tag per master of the cluster whose slot that master owns (from `CLUSTER
    /// SLOTS` as this connection sees it), for the per-shard probes; `None` on one Redis.
    pub(crate) async fn shard_tags(&mut self) -> Result<Option<Vec<String>>, RedisError> {
        let Sink::Cluster(con) = self else {
            return Ok(None);
        };
        let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
        let mut masters: std::collections::BTreeMap<String, Vec<(u16, u16)>> = Default::default();
        if let Value::Array(ranges) = slots {
            for range in ranges {
                let Value::Array(fields) = range else {
                    continue;
                };
                let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                    (fields.first(), fields.get(1), fields.get(2))
                else {
                    continue;
                };
                let id = match master.get(2) {
                    Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
                    _ => format!("{master:?}"),
                };
                masters
                    .entry(id)
                    .or_default()
                    .push((*first as u16, *last as u16));
            }
        }
        Ok(Some(
            masters
                .values()
                .filter_map(|ranges| tag_in(ranges))
                .collect(),
        ))
    }
}

/// A short hash tag whose slot lies in one of `ranges`.
fn tag_in(ranges: &[(u16, u16)]) -> Option<String> {
    (0..200_000u32).map(|i| format!("hp{i}")).find(|tag| {
        let s = slot(tag.as_bytes());
        ranges.iter().any(|&(a, b)| (a..=b).contains(&s))
    })
}

/// What a pub/sub connection hands the reader.
pub(crate) enum Delivery {
    /// A message on a subscribed topic.
    Message(Msg),
    /// Messages may have been missed (a push was dropped, or a shard reconnected).
    Resync,
    /// A cluster node's connection dropped (which one is not known): its shard's
    /// subscriptions must be made again.
    ShardLost,
    /// The cluster took a topic away (`sunsubscribe` push): the confirmation of our own
    /// `SUNSUBSCRIBE`, or Redis dropping a slot's shard channels because the slot changed
    /// owner (failover, resharding). The supervisor tells them apart by its table.
    Unsubscribed(String),
}

/// The reading half of a pub/sub connection.
pub(crate) enum Incoming {
    /// One Redis: the stream ends when the socket dies.
    Single(PubSubStream),
    /// A cluster: pushes from every shard, and [`Delivery::ShardLost`] when one drops.
    Cluster(Pushes),
}

/// The cluster's pushes, bounded (see the module docs).
pub(crate) struct Pushes {
    rx: mpsc::Receiver<PushInfo>,
    /// Set by the push sender when it dropped a push because the queue was full.
    overflow: Arc<AtomicBool>,
}

impl Incoming {
    /// The next delivery; `None` when the connection is gone for good. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        match self {
            Incoming::Single(stream) => stream.next().await.map(Delivery::Message),
            Incoming::Cluster(pushes) => pushes.next().await,
        }
    }
}

impl Pushes {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let info = match self.rx.try_recv() {
                Ok(info) => info,
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Only a full queue overflows, so this is seen once what preceded the
                    // dropped pushes has been read.
                    if self.overflow.swap(false, Ordering::AcqRel) {
                        return Some(Delivery::Resync);
                    }
                    self.rx.recv().await?
                }
            };
            match info.kind {
                PushKind::SMessage | PushKind::Message => {
                    if let Some(message) = Msg::from_push_info(info) {
                        return Some(Delivery::Message(message));
                    }
                }
                PushKind::Disconnection => return Some(Delivery::ShardLost),
                PushKind::SUnsubscribe => {
                    if let Some(redis::Value::BulkString(topic)) = info.data.first() {
                        let topic = String::from_utf8_lossy(topic).into_owned();
                        return Some(Delivery::Unsubscribed(topic));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Groups `topics` by hash slot (one `SSUBSCRIBE` takes one slot's channels only).
fn by_slot(topics: &[String]) -> Vec<Vec<String>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for topic in topics {
        groups
            .entry(slot(topic.as_bytes()))
            .or_default()
            .push(topic.clone());
    }
    groups.into_values().collect()
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"herald:t:{foo}"), 12182);
        assert_eq!(slot(b"{}foo"), slot(b"{}foo"));
        assert_eq!(slot(b"a{}{foo}"), slot(b"a{}{foo}"));
        assert_ne!(slot(b"{}foo"), slot(b"foo"));
    }

    #[test]
    fn a_tag_is_found_in_any_range() {
        for ranges in [
            vec![(0, 5460)],
            vec![(5461, 10922)],
            vec![(16383, 16383)],
            vec![(7, 7), (9000, 9000)],
        ] {
            let tag = tag_in(&ranges).expect("a tag");
            let s = slot(tag.as_bytes());
            assert!(
                ranges.iter().any(|&(a, b)| (a..=b).contains(&s)),
                "{tag} -> {s}"
            );
        }
    }

    #[test]
    fn batches_group_by_slot() {
        let topics: Vec<String> = ["t:{a}", "x:{a}", "t:{b}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let groups = by_slot(&topics);
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().any(|g| g.len() == 2));
    }
}

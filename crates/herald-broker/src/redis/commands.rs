//! The command path: publish, history, presence and registry traffic.
//!
//! Commands go through multiplexed connections ([`ConnectionManager`]): many tasks share one
//! socket, requests are pipelined, and the manager reconnects by itself after an I/O error.
//! Every call is bounded by `command_timeout` and failures are mapped to [`BrokerError`] here,
//! in one place.
//!
//! # Why multiplexed and not deadpool-redis
//!
//! Measured with `tests/redis_bench.rs` (`cargo test --release -p herald-broker --test
//! redis_bench -- --ignored --nocapture --test-threads=1`): the publish script (HGET, HINCRBY,
//! TIME, XADD MAXLEN 100, 2×PEXPIRE, PUBLISH; ~60-byte payload) from 32 concurrent tasks,
//! 40 000 publishes per run, against a local redis-server 7.0 on the project's 2-core machine
//! (client and server share the two cores), once on a quiet machine and once while other
//! builds kept the load average near 10:
//!
//! | command path                          | quiet, publishes/s | loaded, publishes/s |
//! |---------------------------------------|--------------------|---------------------|
//! | 1 multiplexed `ConnectionManager`     | 72 000 – 76 000    | 35 000 – 41 000     |
//! | 4 multiplexed, round-robin            | 71 000 – 72 000    | 33 000 – 44 000     |
//! | deadpool-redis, 32 connections        | 42 700 – 43 300    | 13 000 – 19 000     |
//! | deadpool-redis, 8 connections         | 39 000             | 12 600 – 16 000     |
//!
//! Through the whole `RedisBroker::publish` (loaded machine): ~33 000 acked publishes/s, and a
//! second broker subscribed to all 32 channels had received every one of them 1.2 s after the
//! start, i.e. delivery kept pace with publishing.
//!
//! The multiplexed connection pipelines the 32 in-flight requests into few write/read syscall
//! pairs; the pool pays one round trip and syscall pair per command while Redis, single
//! threaded, is the bottleneck either way. So: one multiplexed connection by default
//! (`command_connections` adds more, round-robin,
//! for a deployment that measures a gain).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

use super::sharded::{Client, Conn};
use super::RedisBrokerConfig;
use crate::BrokerError;

/// Maps a Redis failure to the broker's error: anything that smells of the connection is
/// `Unavailable` (retry later, readiness reflects it), and so is Redis refusing a write at
/// `maxmemory` (`OOM`: nothing was written, the publish is not acknowledged, error 111 at the
/// edge). So is a Redis Cluster in transition: a shard down or being failed over
/// (`CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`, a `MOVED`/`ASK` still unresolved after the
/// client's retries, `READONLY` from a demoted master, `LOADING`, no connection to the slot's
/// node). Anything else is `Internal`.
pub(crate) fn map_err(err: RedisError) -> BrokerError {
    use redis::{ErrorKind, ServerErrorKind};
    if err.code() == Some("OOM") {
        return BrokerError::Unavailable(format!("redis is out of memory: {err}"));
    }
    let in_transition = matches!(
        err.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
            )
    );
    if in_transition
        || err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
    {
        BrokerError::Unavailable(format!("redis: {err}"))
    } else {
        BrokerError::Internal(format!("redis: {err}"))
    }
}

/// The command connections, shared by every call of the broker.
pub(crate) struct Commands {
    connections: Vec<Conn>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Commands {
    /// Opens `config.command_connections` connections; fails if Redis cannot be reached.
    pub(crate) async fn connect(
        client: &Client,
        config: &RedisBrokerConfig,
    ) -> Result<Self, BrokerError> {
        let client = match client {
            Client::Single(client) => client,
            Client::Cluster { nodes, ca } => {
                // One cluster connection already multiplexes one connection per node.
                let connection = Client::cluster_commands(nodes, ca, config).await?;
                return Ok(Self {
                    connections: vec![connection],
                    next: AtomicUsize::new(0),
                    timeout: config.command_timeout,
                });
            }
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // A command during an outage fails fast; the next one triggers the next attempt.
            .set_number_of_retries(1)
            .set_max_delay(config.reconnect_max);
        let mut connections = Vec::with_capacity(config.command_connections);
        for _ in 0..config.command_connections {
            let connect =
                ConnectionManager::new_with_config(client.clone(), manager_config.clone());
            let connection = tokio::time::timeout(config.connect_timeout * 2, connect)
                .await
                .map_err(|_| BrokerError::Unavailable("redis: connect timed out".into()))?
                .map_err(map_err)?;
            connections.push(Conn::Single(connection));
        }
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
            timeout: config.command_timeout,
        })
    }

    /// Runs one request on the next connection, bounded by the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = self.connections[index].clone();
        match tokio::time::timeout(self.timeout, f(connection)).await {
            Ok(result) => result.map_err(map_err),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "redis: {what} timed out after {:?}",
                self.timeout
            ))),
        }
    }

    /// PINGs every connection: after an outage each one's first command fails (and makes it
    /// reconnect), so this is done once before the broker calls itself healthy again.
    pub(crate) async fn ping_all(&self) -> Result<(), BrokerError> {
        for connection in &self.connections {
            let mut connection = connection.clone();
            let command = redis::cmd("PING");
            let ping = command.query_async::<String>(&mut connection);
            match tokio::time::timeout(self.timeout, ping).await {
                Ok(result) => result.map(|_| ()).map_err(map_err)?,
                Err(_) => return Err(BrokerError::Unavailable("redis: ping timed out".into())),
            }
        }
        Ok(())
    }
}

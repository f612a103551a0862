//! The liveness probe of the pub/sub connection.
//!
//! A probe is a nonce PUBLISHed over the command connection to this broker instance's own
//! probe topic, which its pub/sub connection is subscribed to. It proves the whole path a
//! publication takes: command connection → Redis → pub/sub connection. On a Redis Cluster
//! there is one probe topic per master (`PubSub::probe_topics`), so a shard that hangs with
//! its sockets open fails the probe too; there the supervisor does not drop the connection but
//! heals it (a fresh one, see `sharded.rs`), so the other shards keep delivering. The supervisor sends
//! one every `probe_interval` while none is pending and gives up on the connection when one is
//! not back within `probe_timeout`; after a reconnect, [`PubSub::verify`] waits for one round
//! trip before the broker calls itself healthy again.

use std::sync::Arc;
use std::time::Duration;

use super::sharded::Incoming;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::codec;
use super::commands::Commands;
use super::pubsub::{unavailable, Probe, PubSub};
use crate::BrokerError;

/// Pause between probe publishes while verifying a fresh connection.
const VERIFY_RETRY: Duration = Duration::from_millis(50);

impl PubSub {
    /// One probe round trip on a fresh connection; other messages are queued meanwhile.
    /// The command connections may not have noticed the outage yet (the first command after a
    /// restart fails with a broken pipe and makes the connection reconnect), so every one is
    /// PINGed and the probe published, retried until `probe_timeout`.
    pub(crate) async fn verify(
        &self,
        stream: &mut Incoming,
        commands: &Arc<Commands>,
        cancel: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + self.config.probe_timeout;
        let nonce = loop {
            let nonce: u64 = rand::random();
            let sent = match commands.ping_all().await {
                Ok(()) => self.publish_probe(commands, nonce).await,
                Err(err) => Err(err),
            };
            match sent {
                Ok(()) => break nonce,
                Err(err) if tokio::time::Instant::now() + VERIFY_RETRY >= deadline => {
                    return Err(err)
                }
                Err(err) => {
                    debug!(cause = %err, "probe publish after reconnect failed, retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(unavailable("shutting down")),
                        _ = tokio::time::sleep(VERIFY_RETRY) => {}
                    }
                }
            }
        };
        let mut pending = Some(Probe {
            nonce,
            deadline,
            remaining: self.probe_count(),
        });
        while pending.is_some() {
            tokio::select! {
                _ = cancel.cancelled() => return Err(unavailable("shutting down")),
                message = stream.next() => match message {
                    Some(message) => self.route(message, &mut pending),
                    None => return Err(unavailable("connection closed")),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(unavailable("probe not answered after reconnect"));
                }
            }
        }
        Ok(())
    }

    /// Publishes a probe on every probe topic over the command connection (in its own task:
    /// the reader never waits on a command).
    pub(crate) fn send_probe(&self, commands: &Arc<Commands>) -> Probe {
        let nonce: u64 = rand::random();
        let topics = self.probe_topics.lock().expect("probe topics lock").clone();
        let remaining = topics.len();
        let publish = self.keys.publish_command();
        let commands = commands.clone();
        tokio::spawn(async move {
            // At once: one hung shard must not hold up the others' probes.
            let sent = topics
                .iter()
                .map(|topic| publish_probe(&commands, publish, topic, nonce));
            for result in futures_util::future::join_all(sent).await {
                if let Err(err) = result {
                    debug!(cause = %err, "probe publish failed");
                }
            }
        });
        Probe {
            nonce,
            deadline: tokio::time::Instant::now() + self.config.probe_timeout,
            remaining,
        }
    }

    fn probe_count(&self) -> usize {
        self.probe_topics.lock().expect("probe topics lock").len()
    }

    async fn publish_probe(&self, commands: &Commands, nonce: u64) -> Result<(), BrokerError> {
        let topics = self.probe_topics.lock().expect("probe topics lock").clone();
        for topic in topics {
            publish_probe(commands, self.keys.publish_command(), &topic, nonce).await?;
        }
        Ok(())
    }
}

async fn publish_probe(
    commands: &Commands,
    publish: &'static str,
    topic: &str,
    nonce: u64,
) -> Result<(), BrokerError> {
    commands
        .run("probe", |mut con| async move {
            redis::cmd(publish)
                .arg(topic)
                .arg(codec::encode_probe(nonce))
                .query_async::<i64>(&mut con)
                .await
        })
        .await
        .map(|_| ())
}

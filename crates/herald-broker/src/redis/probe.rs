//! The liveness probe of the pub/sub connection.
//!
//! A probe is a nonce PUBLISHed over the command connection to this broker instance's own
//! probe topic, which its pub/sub connection is subscribed to. It proves the whole path a
//! publication takes: command connection → Redis → pub/sub connection. The supervisor sends
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
use super::pubsub::{unavailable, PubSub};
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
        let mut pending = Some((nonce, deadline));
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

    /// Publishes a probe over the command connection (in its own task: the reader never waits
    /// on a command). Returns its nonce and deadline.
    pub(crate) fn send_probe(&self, commands: &Arc<Commands>) -> (u64, tokio::time::Instant) {
        let nonce: u64 = rand::random();
        let this = (
            self.keys.probe().to_string(),
            self.keys.publish_command(),
            commands.clone(),
        );
        tokio::spawn(async move {
            let (topic, publish, commands) = this;
            if let Err(err) = publish_probe(&commands, publish, &topic, nonce).await {
                debug!(cause = %err, "probe publish failed");
            }
        });
        (
            nonce,
            tokio::time::Instant::now() + self.config.probe_timeout,
        )
    }

    async fn publish_probe(&self, commands: &Commands, nonce: u64) -> Result<(), BrokerError> {
        publish_probe(
            commands,
            self.keys.publish_command(),
            self.keys.probe(),
            nonce,
        )
        .await
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

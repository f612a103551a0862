//! Publish and broadcast: the write side of the pub/sub topics.

use herald_protocol::StreamPosition;

use super::{codec, RedisBroker};
use crate::{new_epoch, BrokerError, Payload, PublishRequest};

impl RedisBroker {
    /// Runs `publish.lua` once: offset, stream entry, expiries and PUBLISH in one atomic step,
    /// with this node's newest mark of the channel as the watermark (`fence.rs`).
    pub(super) async fn publish_message(
        &self,
        request: PublishRequest,
    ) -> Result<StreamPosition, BrokerError> {
        self.ensure_connected()?;
        let channel = &*request.channel;
        let tail = codec::publication_tail(
            request.from.as_deref(),
            request.user.as_deref(),
            request.skip_self,
            &request.payload,
        );
        let history = request.history;
        let keep = if history.ttl.is_zero() {
            0
        } else {
            history.size
        };
        let seen = self.pubsub.subs.seen(channel);
        let (epoch, offset, ts_ms, fenced): (String, u64, u64, u8) = self
            .commands
            .run("publish", |mut con| async move {
                self.scripts
                    .publish
                    .key(self.keys.meta(channel))
                    .key(self.keys.stream(channel))
                    .arg(new_epoch())
                    .arg(keep)
                    .arg(history.ttl.as_millis() as u64)
                    .arg(self.meta_ttl_ms(history.ttl))
                    .arg(self.keys.topic(channel))
                    .arg(tail)
                    .arg(seen.as_ref().map_or("", |m| &*m.epoch))
                    .arg(seen.as_ref().map_or(0, |m| m.offset))
                    .arg(seen.as_ref().map_or(0, |m| m.ts_ms))
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        if fenced == 1 {
            // Redis went back below what this node saw: see fence.rs.
            self.pubsub.fence.count();
            tracing::warn!(
                channel,
                "channel offset went back in redis (failover or restore): publish started a new epoch"
            );
        }
        self.pubsub.subs.note_acked(channel, &epoch, offset, ts_ms);
        Ok(StreamPosition { epoch, offset })
    }

    /// PUBLISHes (SPUBLISHes on a Redis Cluster) on the cluster broadcast topic.
    pub(super) async fn broadcast_message(&self, payload: Payload) -> Result<(), BrokerError> {
        self.ensure_connected()?;
        let message = codec::encode_broadcast(&payload);
        self.commands
            .run("broadcast", |mut con| async move {
                redis::cmd(self.keys.publish_command())
                    .arg(self.keys.broadcast())
                    .arg(message)
                    .query_async::<i64>(&mut con)
                    .await
            })
            .await?;
        Ok(())
    }
}

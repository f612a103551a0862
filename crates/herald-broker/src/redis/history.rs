//! History reads: the channel's position and the publications after a reader's position.
//!
//! `history.lua` returns the epoch, the newest offset, Redis's clock and the stream entries in
//! one atomic step. It creates nothing: a channel nobody published to is at
//! `{"epoch": "", "offset": 0}` and leaves no key behind (the first publish makes the epoch).
//! Stream ids are `<offset>-0`, so "after offset N" is `XRANGE key (N+1)-0 + COUNT limit`.
//! The reader is `recovered` only when its epoch is the channel's (an empty epoch stands for
//! whatever epoch the channel has: the reader took its position before the channel had one),
//! its offset is not ahead of the newest, and either it is at the newest offset or the entry
//! right after it (offset N+1) is still retained and younger than the history TTL. Anything
//! else is `recovered: false` with no publications: never a page with a silent gap.

use std::sync::Arc;

use herald_protocol::StreamPosition;
use tracing::warn;

use super::{codec, RedisBroker};
use crate::{BrokerError, HistoryOptions, HistoryPage, HistoryQuery, Publication};

/// Never an epoch the scripts make (they are alphanumeric): for `history.lua`, "whatever epoch
/// the channel has" (a reader's empty epoch).
const ANY_EPOCH: &str = "*";

impl RedisBroker {
    pub(super) async fn read_history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        self.ensure_connected()?;
        let (reader_epoch, first_id, count) = match &query.since {
            None => ("", String::new(), query.limit),
            Some(since) => (
                match since.epoch.as_str() {
                    "" => ANY_EPOCH,
                    epoch => epoch,
                },
                format!("{}-0", since.offset.saturating_add(1)),
                // At least the entry after `since`: it decides `recovered`.
                query.limit.max(1),
            ),
        };
        let max_bytes = query.max_bytes;
        let (epoch, top, now_ms, entries): (String, u64, u64, Vec<Vec<u8>>) = self
            .commands
            .run("history", |mut con| async move {
                self.scripts
                    .history
                    .key(self.keys.meta(channel))
                    .key(self.keys.stream(channel))
                    .arg(self.meta_ttl_ms(options.ttl))
                    .arg(reader_epoch)
                    .arg(first_id)
                    .arg(count)
                    .arg(max_bytes)
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        let channel: Arc<str> = Arc::from(channel);
        let ttl_ms = options.ttl.as_millis() as u64;
        let fresh = |p: &Publication| ttl_ms > 0 && p.ts_ms.saturating_add(ttl_ms) > now_ms;
        let publications: Vec<Publication> = entries
            .iter()
            .filter_map(|bytes| match codec::decode_publication(&channel, bytes) {
                Ok(p) => Some(p),
                Err(err) => {
                    warn!(channel = %channel, cause = %err, "undecodable history entry skipped");
                    None
                }
            })
            .collect();
        let position = StreamPosition { epoch, offset: top };
        let (recovered, publications) = match &query.since {
            None => (true, publications),
            Some(since) => {
                let next = since.offset.saturating_add(1);
                let recovered = crate::same_epoch(&since.epoch, &position.epoch)
                    && since.offset <= top
                    && (since.offset == top
                        || publications
                            .first()
                            .is_some_and(|p| p.offset == next && fresh(p)));
                (recovered, if recovered { publications } else { Vec::new() })
            }
        };
        let publications = publications
            .into_iter()
            .filter(|p| fresh(p))
            .take(query.limit)
            .map(Arc::new)
            .collect();
        Ok(HistoryPage {
            position,
            publications,
            recovered,
        })
    }
}

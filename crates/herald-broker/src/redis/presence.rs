//! Presence across the cluster, and this node's share of it.
//!
//! Each channel has one hash, client id → `<expiry ms>|<entry json>`; expiries come from
//! Redis's clock inside the scripts, so node clocks never matter. A node remembers the entries
//! it added ([`PresenceBook`]) and rewrites them every third of `presence_ttl` (and at once
//! after a pub/sub reconnect, since a restarted Redis may have lost them). A node that dies
//! stops refreshing: its entries expire, readers skip them and `presence_read.lua` deletes
//! them. No `Leave` is announced for entries that merely expire.
//!
//! Join and leave are published by the same script that changes the hash, on the channel's
//! topic, and only when the entry really appeared or disappeared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use herald_protocol::frame::PresenceEntry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::RedisBroker;
use crate::BrokerError;

/// Most entries rewritten by one script call. Small: adds and removes wait for one batch.
const REFRESH_BATCH: usize = 64;

/// The presence entries this node added, so it can keep them alive.
#[derive(Default)]
pub(crate) struct PresenceBook {
    /// (channel, client id) → entry. Changed by add/remove, snapshotted by the refresher; held
    /// only for those map operations, never across Redis I/O.
    local: Mutex<HashMap<(Arc<str>, String), PresenceEntry>>,
    /// Add and remove hold it shared across their write to Redis; the refresher takes it
    /// exclusively for one batch at a time (read from the book and written), never across the
    /// whole refresh. So a refresh of many entries holds up an add or remove for one batch at
    /// most, and an entry removed meanwhile is never written back.
    gate: tokio::sync::RwLock<()>,
}

impl PresenceBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, String), PresenceEntry>> {
        self.local.lock().expect("presence book lock")
    }
}

fn entry_json(entry: &PresenceEntry) -> String {
    serde_json::to_string(entry).expect("presence entry serializes")
}

impl RedisBroker {
    /// Writes `entries` with a fresh expiry; returns how many were new (announced as joins
    /// when `announce`).
    async fn write_presence(
        &self,
        entries: &[(Arc<str>, PresenceEntry)],
        announce: bool,
    ) -> Result<u64, BrokerError> {
        if !self.config.is_cluster() || entries.len() < 2 {
            return self.write_presence_slot(entries, announce).await;
        }
        // A script's keys must share one slot on a cluster: one call per slot.
        let mut by_slot: std::collections::BTreeMap<u16, Vec<(Arc<str>, PresenceEntry)>> =
            Default::default();
        for (channel, entry) in entries {
            let slot = super::sharded::slot(self.keys.presence(channel).as_bytes());
            by_slot
                .entry(slot)
                .or_default()
                .push((channel.clone(), entry.clone()));
        }
        let mut added = 0;
        for group in by_slot.values() {
            added += self.write_presence_slot(group, announce).await?;
        }
        Ok(added)
    }

    /// [`RedisBroker::write_presence`] of entries whose keys share one slot (on a cluster).
    async fn write_presence_slot(
        &self,
        entries: &[(Arc<str>, PresenceEntry)],
        announce: bool,
    ) -> Result<u64, BrokerError> {
        let mut invocation = self.scripts.presence_add.prepare_invoke();
        invocation
            .arg(Self::ttl_ms(self.config.presence_ttl))
            .arg(if announce { "1" } else { "0" });
        for (channel, entry) in entries {
            invocation
                .key(self.keys.presence(channel))
                .arg(&entry.client)
                .arg(entry_json(entry))
                .arg(self.keys.topic(channel));
        }
        self.commands
            .run("presence add", |mut con| async move {
                invocation.invoke_async(&mut con).await
            })
            .await
    }

    pub(super) async fn add_presence(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        self.ensure_connected()?;
        let _gate = self.presence.gate.read().await;
        let channel: Arc<str> = Arc::from(channel);
        let key = (channel.clone(), entry.client.clone());
        let previous = self.presence.lock().insert(key.clone(), entry.clone());
        let written = self.write_presence(&[(channel, entry)], announce).await;
        if written.is_err() {
            let mut local = self.presence.lock();
            match previous {
                Some(previous) => local.insert(key, previous),
                None => local.remove(&key),
            };
        }
        written.map(|_| ())
    }

    pub(super) async fn remove_presence(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let _gate = self.presence.gate.read().await;
        // Forget it locally first: even if Redis is down now, it is never refreshed again.
        self.presence
            .lock()
            .remove(&(Arc::from(channel), entry.client.clone()));
        self.ensure_connected()?;
        self.commands
            .run("presence remove", |mut con| async move {
                self.scripts
                    .presence_remove
                    .key(self.keys.presence(channel))
                    .arg(&entry.client)
                    .arg(if announce { "1" } else { "0" })
                    .arg(self.keys.topic(channel))
                    .arg(entry_json(&entry))
                    .invoke_async::<i64>(&mut con)
                    .await
            })
            .await?;
        Ok(())
    }

    pub(super) async fn read_presence(
        &self,
        channel: &str,
    ) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.ensure_connected()?;
        let raw: Vec<Vec<u8>> = self
            .commands
            .run("presence", |mut con| async move {
                self.scripts
                    .presence_read
                    .key(self.keys.presence(channel))
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        let mut entries: Vec<PresenceEntry> = raw
            .iter()
            .filter_map(|json| match serde_json::from_slice(json) {
                Ok(entry) => Some(entry),
                Err(err) => {
                    warn!(channel, cause = %err, "undecodable presence entry skipped");
                    None
                }
            })
            .collect();
        entries.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(entries)
    }

    /// Rewrites every entry this node added, in batches. Each batch is read from the book and
    /// written under the gate, exclusively: no add or remove runs between reading an entry and
    /// writing it, so an entry removed meanwhile is never written back — not even for the
    /// moment until a correction (a reader then saw a removed client as present). Adds and
    /// removes wait for at most one batch's write, never for the whole refresh.
    async fn refresh_presence(&self) -> Result<usize, BrokerError> {
        let keys: Vec<(Arc<str>, String)> = self.presence.lock().keys().cloned().collect();
        let mut refreshed = 0;
        for chunk in keys.chunks(REFRESH_BATCH) {
            let _gate = self.presence.gate.write().await;
            let batch: Vec<(Arc<str>, PresenceEntry)> = {
                let local = self.presence.lock();
                chunk
                    .iter()
                    .filter_map(|key| local.get(key).map(|e| (key.0.clone(), e.clone())))
                    .collect()
            };
            if !batch.is_empty() {
                self.write_presence(&batch, false).await?;
            }
            refreshed += batch.len();
        }
        Ok(refreshed)
    }

    /// Deletes this node's entries (shutdown), without announcing leaves.
    pub(super) async fn forget_presence(&self) {
        let entries: Vec<(Arc<str>, String)> =
            self.presence.lock().drain().map(|(k, _)| k).collect();
        if entries.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (channel, client) in &entries {
            pipe.hdel(self.keys.presence(channel), client).ignore();
        }
        let done = self
            .commands
            .run("presence forget", |mut con| async move {
                pipe.query_async::<()>(&mut con).await
            })
            .await;
        if let Err(err) = done {
            debug!(cause = %err, entries = entries.len(), "presence cleanup failed");
        }
    }
}

/// Refreshes the broker's presence entries every third of their TTL and after each reconnect,
/// until `cancel` or the broker is dropped.
pub(super) async fn run_refresher(broker: Weak<RedisBroker>, cancel: CancellationToken) {
    let Some(pubsub) = broker.upgrade().map(|b| b.pubsub.clone()) else {
        return;
    };
    let every = match broker.upgrade() {
        Some(b) => b.config.presence_refresh(),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = pubsub.reconnected.notified() => {}
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.pubsub.is_connected() {
            match broker.refresh_presence().await {
                Ok(count) if count > 0 => debug!(entries = count, "presence refreshed"),
                Ok(_) => {}
                Err(err) => warn!(cause = %err, "presence refresh failed"),
            }
        }
    }
}

//! Never let an (epoch, offset) name two messages: detect a channel whose counter went back and
//! start a new epoch.
//!
//! Redis replicates asynchronously. A master killed right after it acknowledged (and
//! `SPUBLISH`ed) a publish may leave a promoted replica that never got it; a single Redis
//! restarted from an older snapshot is the same story. The channel's offset counter is then
//! behind what readers hold, the next publishes reuse those offsets with other data, and a
//! reader that holds the old message drops the new one as a duplicate — silent loss. So the
//! node remembers, per channel it receives (`subscriptions.rs`, [`Mark`]), the newest
//! position it has seen, with the message's time, and checks it at three moments:
//!
//! 1. **Publish.** `publish.lua` gets this node's mark: a newest offset below it (or equal,
//!    with another time) starts a new epoch before the offset is assigned.
//! 2. **Live.** A live message at or below the last live offset of its epoch cannot happen
//!    while Redis is whole (a topic delivers once, in order). The message is not delivered,
//!    the channel becomes a suspect, and the fencer task (`PubSub::run_fencer`) runs
//!    `fence.lua` in force mode (a new epoch if the channel is still in the suspect epoch),
//!    then emits [`BrokerEvent::Resync`](crate::BrokerEvent::Resync).
//! 3. **Reconnect.** A failover or restart always costs the pub/sub connection, so after
//!    resubscribing, *before* the reconnect's `Resync`, every mark is checked with
//!    `fence.lua`: a newest offset below the mark, or the message at the mark's offset (the
//!    newest, or still in the stream) with another time, starts a new epoch.
//!
//! After a new epoch, readers at an old position read history in another epoch and get
//! `recovered: false`; live messages of the new epoch tell subscribers the same. Whichever
//! node fences first wins; the others find the epoch already changed.
//!
//! What this cannot see: a regression on a channel no node received (no marks) whose old
//! positions a client kept, e.g. a short-poll client reading history with no subscriber in
//! the cluster, when history no longer holds the old message's offset (deploy/README.md says
//! so).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{stream, StreamExt as _};
use redis::Script;
use tokio::sync::Notify;

use super::commands::Commands;
use super::keys::Keys;
use super::subscriptions::{Mark, Subscriptions};
use crate::BrokerError;

/// Channels checked at once after a reconnect.
const CONCURRENT_CHECKS: usize = 32;

/// The checks and the fencer's work list.
pub(crate) struct Fence {
    script: Script,
    /// Channels whose live messages went back, with the newest mark seen. Bounded by the
    /// subscription table: only channels in it are ever suspected.
    suspects: Mutex<HashMap<Arc<str>, Mark>>,
    wake: Notify,
    /// New epochs this node started because a channel's counter went back.
    fenced: AtomicU64,
}

impl Fence {
    pub(crate) fn new() -> Self {
        Self {
            script: Script::new(include_str!("lua/fence.lua")),
            suspects: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            fenced: AtomicU64::new(0),
        }
    }

    /// New epochs this node started after a regression, since start.
    pub(crate) fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Counts a new epoch started by the publish script.
    pub(crate) fn count(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands `channel` to the fencer (kept once per channel, with the newest mark).
    pub(crate) fn suspect(&self, channel: Arc<str>, mark: Mark) {
        self.suspects
            .lock()
            .expect("suspects lock")
            .insert(channel, mark);
        self.wake.notify_one();
    }

    /// Waits until there are suspects, then takes them all.
    pub(crate) async fn take_suspects(&self) -> HashMap<Arc<str>, Mark> {
        loop {
            let notified = self.wake.notified();
            let taken = std::mem::take(&mut *self.suspects.lock().expect("suspects lock"));
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// Runs `fence.lua` for `channel` at `mark`; `force`: a new epoch whenever the channel is
    /// still in the mark's epoch. True when this call started one.
    pub(crate) async fn check(
        &self,
        commands: &Commands,
        keys: &Keys,
        channel: &str,
        mark: &Mark,
        force: bool,
    ) -> Result<bool, BrokerError> {
        let answer: Vec<i64> = commands
            .run("fence", |mut con| async move {
                self.script
                    .key(keys.meta(channel))
                    .key(keys.stream(channel))
                    .arg(&*mark.epoch)
                    .arg(mark.offset)
                    .arg(mark.ts_ms)
                    .arg(crate::new_epoch())
                    .arg(if force { "1" } else { "0" })
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        let int = |i: usize| answer.get(i).copied().unwrap_or(-1);
        let started = int(0) == 1;
        if started {
            self.count();
            tracing::warn!(
                channel,
                epoch = %mark.epoch,
                seen_offset = mark.offset,
                seen_ts = mark.ts_ms,
                redis_offset = int(1),
                redis_ts = int(2),
                force,
                "channel offset went back in redis (failover or restore): new epoch started"
            );
        }
        Ok(started)
    }

    /// Checks every mark in `subs` (after a reconnect). Fails on the first Redis error.
    pub(crate) async fn check_all(
        &self,
        commands: &Commands,
        keys: &Keys,
        subs: &Subscriptions,
    ) -> Result<usize, BrokerError> {
        let marks = subs.marks();
        let results: Vec<Result<bool, BrokerError>> = stream::iter(marks)
            .map(|(channel, mark)| async move {
                let started = self.check(commands, keys, &channel, &mark, false).await?;
                if started {
                    subs.forget_marks(&channel, &mark.epoch);
                }
                Ok(started)
            })
            .buffer_unordered(CONCURRENT_CHECKS)
            .collect()
            .await;
        let mut started = 0;
        for result in results {
            started += usize::from(result?);
        }
        Ok(started)
    }
}

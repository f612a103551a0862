//! The Lua scripts, one file each under `lua/`, run with EVALSHA (redis-rs falls back to
//! loading the script on `NOSCRIPT`, as after a Redis restart).
//!
//! * `publish.lua` — the whole publish, atomically: create the epoch if missing (and drop any
//!   stream left from a lost generation), `HINCRBY` the offset, `XADD` with id `<offset>-0` and
//!   an exact `MAXLEN`, `PEXPIRE` stream and meta, `PUBLISH` the same bytes to the channel
//!   topic. Scripts run one at a time, so topic order is offset order.
//! * `history.lua` — position and entries in one atomic read. It never creates a key: a channel
//!   nobody published to answers epoch `""`, offset 0 (the first publish makes the epoch, and a
//!   reader at `""`/0 reads from its offset 1).
//! * `presence_add.lua`, `presence_remove.lua`, `presence_read.lua` — presence entries with
//!   expiry stamps from Redis's own clock (`TIME`), so node clocks never disagree; join and
//!   leave are published on the channel topic in the same step.

use redis::Script;

/// The compiled scripts (each knows its SHA1).
pub(crate) struct Scripts {
    /// See `lua/publish.lua`.
    pub(crate) publish: Script,
    /// See `lua/history.lua`.
    pub(crate) history: Script,
    /// See `lua/presence_add.lua` (also used to refresh).
    pub(crate) presence_add: Script,
    /// See `lua/presence_remove.lua`.
    pub(crate) presence_remove: Script,
    /// See `lua/presence_read.lua`.
    pub(crate) presence_read: Script,
}

impl Scripts {
    /// The scripts; on a Redis Cluster (`cluster`) they `SPUBLISH` instead of `PUBLISH`
    /// (Redis ≥ 7 allows it in a script when the shard channel hashes to the slot of the
    /// script's keys, which the `{channel}` tag of every topic guarantees).
    pub(crate) fn new(cluster: bool) -> Self {
        let load = |source: &str| {
            if cluster {
                Script::new(&source.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
            } else {
                Script::new(source)
            }
        };
        Self {
            publish: load(include_str!("lua/publish.lua")),
            history: load(include_str!("lua/history.lua")),
            presence_add: load(include_str!("lua/presence_add.lua")),
            presence_remove: load(include_str!("lua/presence_remove.lua")),
            presence_read: load(include_str!("lua/presence_read.lua")),
        }
    }
}

//! Names of every Redis key and pub/sub topic the broker uses.
//!
//! With the default prefix `herald` and channel `chat:lobby`:
//!
//! | name                         | type    | what                                            |
//! |------------------------------|---------|-------------------------------------------------|
//! | `herald:m:{chat:lobby}`      | hash    | `e` = epoch, `o` = newest offset                |
//! | `herald:h:{chat:lobby}`      | stream  | history; entry id `<offset>-0`, field `d`        |
//! | `herald:p:{chat:lobby}`      | hash    | presence: client id → `<expiry ms>\|<entry json>` |
//! | `herald:t:chat:lobby`        | topic   | publications, joins and leaves of the channel   |
//! | `herald:broadcast`           | topic   | cluster-wide broadcast (every node subscribes)  |
//! | `herald:probe:<node>:<id>`   | topic   | this broker instance's liveness probe           |
//! | `herald:node:<node>`         | string  | registry entry (JSON, TTL)                      |
//! | `herald:nodes`               | set     | ids of nodes that have written an entry         |
//!
//! Channel names never contain braces, so the `{channel}` hash tag keeps a channel's keys on
//! one slot.
//!
//! On a Redis Cluster (`cluster` mode) the topics are sharded pub/sub channels, which live on
//! a slot like keys, so they carry hash tags too:
//!
//! | name                                | what                                             |
//! |-------------------------------------|--------------------------------------------------|
//! | `herald:t:{chat:lobby}`             | the channel's topic, on the slot of its keys     |
//! | `herald:broadcast:{herald}`         | cluster-wide broadcast (every node SSUBSCRIBEs)  |
//! | `herald:probe:{herald}:<node>:<id>` | this broker instance's liveness probe            |
//! | `herald:node:{herald}:<node>`       | registry entry                                   |
//! | `herald:nodes:{herald}`             | ids of nodes that have written an entry          |
//!
//! The fixed `{herald}` tag (whatever the prefix) puts the registry, the broadcast topic and
//! the probes on one slot, so `MGET` of the entries and the registry transaction stay legal;
//! the probe therefore checks the path through that one shard.

/// Builds key and topic names for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// `<prefix>:t:`, the front of every channel topic.
    topic_front: String,
    broadcast: String,
    probe: String,
    nodes: String,
    /// Cluster mode: topics and cluster-wide names carry hash tags.
    cluster: bool,
}

/// The hash tag of the cluster-wide names in cluster mode.
const CLUSTER_TAG: &str = "{herald}";

impl Keys {
    /// Names for `prefix`; `instance` makes the probe topic unique per broker instance.
    pub(crate) fn new(prefix: &str, node_id: &str, instance: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            topic_front: format!("{prefix}:t:"),
            broadcast: format!("{prefix}:broadcast"),
            probe: format!("{prefix}:probe:{node_id}:{instance}"),
            nodes: format!("{prefix}:nodes"),
            cluster: false,
        }
    }

    /// Names for a Redis Cluster (see the module docs).
    pub(crate) fn new_cluster(prefix: &str, node_id: &str, instance: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            topic_front: format!("{prefix}:t:"),
            broadcast: format!("{prefix}:broadcast:{CLUSTER_TAG}"),
            probe: format!("{prefix}:probe:{CLUSTER_TAG}:{node_id}:{instance}"),
            nodes: format!("{prefix}:nodes:{CLUSTER_TAG}"),
            cluster: true,
        }
    }

    /// The command that publishes on a topic: `SPUBLISH` on a cluster, else `PUBLISH`.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The channel's epoch/offset hash.
    pub(crate) fn meta(&self, channel: &str) -> String {
        format!("{}:m:{{{channel}}}", self.prefix)
    }

    /// The channel's history stream.
    pub(crate) fn stream(&self, channel: &str) -> String {
        format!("{}:h:{{{channel}}}", self.prefix)
    }

    /// The channel's presence hash.
    pub(crate) fn presence(&self, channel: &str) -> String {
        format!("{}:p:{{{channel}}}", self.prefix)
    }

    /// The channel's pub/sub topic.
    pub(crate) fn topic(&self, channel: &str) -> String {
        let mut topic = String::with_capacity(self.topic_front.len() + channel.len() + 2);
        topic.push_str(&self.topic_front);
        if self.cluster {
            topic.push('{');
            topic.push_str(channel);
            topic.push('}');
        } else {
            topic.push_str(channel);
        }
        topic
    }

    /// The channel a topic belongs to, if it is a channel topic.
    pub(crate) fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(self.topic_front.as_str())?;
        if self.cluster {
            rest.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(rest)
        }
    }

    /// The cluster broadcast topic.
    pub(crate) fn broadcast(&self) -> &str {
        &self.broadcast
    }

    /// This instance's probe topic.
    pub(crate) fn probe(&self) -> &str {
        &self.probe
    }

    /// This instance's probe topic on the shard owning the slot of `tag` (cluster mode).
    pub(crate) fn shard_probe(&self, tag: &str) -> String {
        self.probe.replacen(CLUSTER_TAG, &format!("{{{tag}}}"), 1)
    }

    /// Whether `topic` is one of this instance's probe topics (any shard's).
    pub(crate) fn is_probe(&self, topic: &str) -> bool {
        if !self.cluster {
            return topic == self.probe;
        }
        // `<prefix>:probe:{<tag>}:<node>:<instance>`: the same as ours but for the tag.
        let (front, back) = self.probe.split_once(CLUSTER_TAG).expect("tagged probe");
        topic.len() > front.len() + back.len()
            && topic.starts_with(front)
            && topic.ends_with(back)
            && topic[front.len()..topic.len() - back.len()].starts_with('{')
    }

    /// A node's registry entry.
    pub(crate) fn node(&self, node_id: &str) -> String {
        if self.cluster {
            format!("{}:node:{CLUSTER_TAG}:{node_id}", self.prefix)
        } else {
            format!("{}:node:{node_id}", self.prefix)
        }
    }

    /// The set of node ids.
    pub(crate) fn nodes(&self) -> &str {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_carry_hash_tags() {
        let k = Keys::new("herald", "n1", "x");
        assert_eq!(k.meta("chat:lobby"), "herald:m:{chat:lobby}");
        assert_eq!(k.stream("chat:lobby"), "herald:h:{chat:lobby}");
        assert_eq!(k.topic("chat:lobby"), "herald:t:chat:lobby");
        assert_eq!(k.channel_of("herald:t:chat:lobby"), Some("chat:lobby"));
        assert_eq!(k.channel_of("herald:broadcast"), None);
        assert_eq!(k.probe(), "herald:probe:n1:x");
        assert_eq!(k.node("n1"), "herald:node:n1");
    }

    #[test]
    fn cluster_names_carry_hash_tags() {
        let k = Keys::new_cluster("herald", "n1", "x");
        assert_eq!(k.topic("chat:lobby"), "herald:t:{chat:lobby}");
        assert_eq!(k.channel_of("herald:t:{chat:lobby}"), Some("chat:lobby"));
        assert_eq!(k.channel_of("herald:t:chat:lobby"), None);
        assert_eq!(k.broadcast(), "herald:broadcast:{herald}");
        assert_eq!(k.probe(), "herald:probe:{herald}:n1:x");
        assert_eq!(k.node("n1"), "herald:node:{herald}:n1");
        assert_eq!(k.nodes(), "herald:nodes:{herald}");
        assert_eq!(k.publish_command(), "SPUBLISH");
        use super::super::sharded::slot;
        assert_eq!(slot(k.topic("a").as_bytes()), slot(k.meta("a").as_bytes()));
        assert_eq!(slot(k.nodes().as_bytes()), slot(k.broadcast().as_bytes()));
        // Per-shard probes: ours whatever the tag, nobody else's.
        let probe = k.shard_probe("hp7");
        assert_eq!(probe, "herald:probe:{hp7}:n1:x");
        assert_eq!(slot(probe.as_bytes()), slot(b"hp7"));
        assert!(k.is_probe(&probe) && k.is_probe(k.probe()));
        assert!(!k.is_probe("herald:probe:{hp7}:n2:x"));
        assert!(!k.is_probe("herald:probe:{hp7}:n1:y"));
        assert!(!k.is_probe("herald:probe::n1:x"));
        assert!(!Keys::new("herald", "n1", "x").is_probe(&probe));
    }
}

//! The node registry: each node's heartbeat entry with a TTL, listed by `/api/info`.
//!
//! `heartbeat_node` writes `<prefix>:node:<id>` (the [`NodeInfo`] JSON, expiring after
//! `node_ttl`) and adds the id to the `<prefix>:nodes` set in one transaction. `nodes` reads
//! the set, fetches every entry with one MGET, and removes ids whose entry expired: a node
//! that stops heartbeating disappears after `node_ttl`.

use tracing::{debug, warn};

use super::RedisBroker;
use crate::{BrokerError, NodeInfo};

impl RedisBroker {
    pub(super) async fn write_node(&self, info: NodeInfo) -> Result<(), BrokerError> {
        self.ensure_connected()?;
        let json = serde_json::to_string(&info)
            .map_err(|err| BrokerError::Internal(format!("node info: {err}")))?;
        let key = self.keys.node(&info.node);
        let ttl = Self::ttl_ms(self.config.node_ttl);
        self.commands
            .run("heartbeat", |mut con| async move {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&key)
                    .arg(json)
                    .arg("PX")
                    .arg(ttl)
                    .ignore()
                    .sadd(self.keys.nodes(), &info.node)
                    .ignore()
                    .query_async::<()>(&mut con)
                    .await
            })
            .await
    }

    pub(super) async fn read_nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        self.ensure_connected()?;
        let mut ids: Vec<String> = self
            .commands
            .run("nodes", |mut con| async move {
                redis::cmd("SMEMBERS")
                    .arg(self.keys.nodes())
                    .query_async(&mut con)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let entries: Vec<Option<String>> = self
            .commands
            .run("nodes", |mut con| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut con).await
            })
            .await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, entry) in ids.iter().zip(entries) {
            match entry.map(|json| serde_json::from_str::<NodeInfo>(&json)) {
                Some(Ok(info)) => nodes.push(info),
                Some(Err(err)) => warn!(node = %id, cause = %err, "undecodable node entry"),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let removed = self
                .commands
                .run("nodes", |mut con| async move {
                    redis::cmd("SREM")
                        .arg(self.keys.nodes())
                        .arg(&gone)
                        .query_async::<i64>(&mut con)
                        .await
                })
                .await;
            if let Err(err) = removed {
                debug!(cause = %err, "could not prune expired node ids");
            }
        }
        Ok(nodes)
    }

    /// Removes this node's entry (shutdown).
    pub(super) async fn forget_node(&self) {
        let id = self.config.node_id.clone();
        let key = self.keys.node(&id);
        let done = self
            .commands
            .run("node forget", |mut con| async move {
                redis::pipe()
                    .del(&key)
                    .ignore()
                    .srem(self.keys.nodes(), &id)
                    .ignore()
                    .query_async::<()>(&mut con)
                    .await
            })
            .await;
        if let Err(err) = done {
            debug!(cause = %err, "node registry cleanup failed");
        }
    }
}

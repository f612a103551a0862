//! The node: everything one edge shares between its connections.
//!
//! [`Node`] holds the config, the broker, the hub, the metrics, the root cancellation token and
//! the connection count. Transports call [`Node::publish`] and [`Node::join`] so that limits,
//! permissions and recovery behave the same on every transport.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use herald_broker::{Broker, HistoryQuery, Payload, Publication, PublishRequest};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::hub::{ConnHandle, Hub};
use crate::metrics::{Limit, Metrics, Transport};

/// One edge's shared state.
pub struct Node {
    /// The configuration.
    pub config: EdgeConfig,
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// Local subscribers.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Root token: cancelled on shutdown. Every connection holds a child token.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Set on SIGTERM: readiness fails and new connections are refused.
    pub draining: AtomicBool,
    connections: AtomicUsize,
    client_seq: AtomicU64,
    client_prefix: String,
    started: Instant,
    published: AtomicU64,
}

/// Counts one open connection; dropping it releases the slot.
pub struct ConnectionSlot {
    node: Arc<Node>,
    transport: Transport,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.node.connections.fetch_sub(1, Ordering::AcqRel);
        self.node
            .metrics
            .connections
            .with_label_values(&[self.transport.label()])
            .dec();
    }
}

/// The result of joining a channel with recovery.
pub struct Joined {
    /// The position the client is at after the recovered publications.
    pub position: StreamPosition,
    /// Whether everything after the client's `since` was recovered.
    pub recovered: bool,
    /// Recovered publications, in offset order.
    pub publications: Vec<Arc<Publication>>,
}

impl Node {
    /// A node over `broker`. The hub is attached to the broker here.
    pub fn new(config: EdgeConfig, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Self> {
        let hub = Arc::new(Hub::new(
            broker.clone(),
            metrics.clone(),
            std::time::Duration::from_millis(config.limits.unsubscribe_delay_ms),
            config.limits.outbound_queue,
        ));
        broker.attach(hub.clone());
        let client_prefix = herald_broker::new_epoch();
        Arc::new(Self {
            config,
            broker,
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            client_seq: AtomicU64::new(0),
            client_prefix,
            started: Instant::now(),
            published: AtomicU64::new(0),
        })
    }

    /// A cluster-unique client id.
    pub fn new_client_id(&self) -> Arc<str> {
        let n = self.client_seq.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{}", self.client_prefix, n))
    }

    /// Takes a connection slot, or refuses when the node is full or draining.
    pub fn admit(self: &Arc<Self>, transport: Transport) -> Result<ConnectionSlot, EdgeError> {
        let reject = |reason: &str| {
            self.metrics
                .rejected
                .with_label_values(&[transport.label(), reason])
                .inc();
        };
        if self.draining.load(Ordering::Acquire) {
            reject("draining");
            return Err(EdgeError::Unavailable("node is shutting down".into()));
        }
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= self.config.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            reject("full");
            self.metrics.limit_rejected(Limit::Connections);
            return Err(EdgeError::Unavailable(format!(
                "node is full ({} connections)",
                self.config.limits.max_connections
            )));
        }
        self.metrics
            .accepted
            .with_label_values(&[transport.label()])
            .inc();
        self.metrics
            .connections
            .with_label_values(&[transport.label()])
            .inc();
        Ok(ConnectionSlot {
            node: self.clone(),
            transport,
        })
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Publications accepted from this node since start.
    pub fn published_count(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publishes on behalf of a client (`from` set, namespace permissions checked) or of the API
    /// (`from` = None, `as_api` true).
    pub async fn publish(
        &self,
        channel: &str,
        payload: Payload,
        from: Option<Arc<str>>,
        skip_self: bool,
        transport: Transport,
        as_api: bool,
    ) -> Result<StreamPosition, EdgeError> {
        herald_protocol::validate_channel(channel)?;
        let ns = self.config.namespace(channel);
        if !as_api && !ns.client_publish {
            return Err(EdgeError::PermissionDenied(format!(
                "clients may not publish to {channel}"
            )));
        }
        if payload.len() > self.config.limits.max_message_size {
            self.metrics.limit_rejected(Limit::MessageSize);
            return Err(EdgeError::TooLarge(format!(
                "{} bytes, the limit is {}",
                payload.len(),
                self.config.limits.max_message_size
            )));
        }
        let started = Instant::now();
        let position = self
            .broker
            .publish(PublishRequest {
                channel: Arc::from(channel),
                payload,
                from,
                skip_self,
                history: ns.history(),
            })
            .await?;
        self.metrics
            .broker_publish
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .published
            .with_label_values(&[transport.label()])
            .inc();
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(position)
    }

    /// Checks a client may subscribe to `channel`.
    pub fn check_subscribe(&self, channel: &str) -> Result<(), EdgeError> {
        herald_protocol::validate_channel(channel)?;
        if !self.config.namespace(channel).client_subscribe {
            return Err(EdgeError::PermissionDenied(format!(
                "clients may not subscribe to {channel}"
            )));
        }
        Ok(())
    }

    /// Subscribes `handle` to `channel` and recovers after `since`: the hub subscription is live
    /// before history is read, so nothing published in between is missed; the caller drops live
    /// publications at or below the returned position.
    pub async fn join(
        &self,
        channel: &str,
        handle: &Arc<ConnHandle>,
        since: Option<&StreamPosition>,
    ) -> Result<Joined, EdgeError> {
        self.hub.subscribe(channel, handle).await?;
        match self.recover(channel, since).await {
            Ok(joined) => Ok(joined),
            Err(err) => {
                self.hub.unsubscribe(channel, handle);
                Err(err)
            }
        }
    }

    /// Reads what a reader at `since` missed (or only the current position without `since`).
    pub async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Joined, EdgeError> {
        let ns = self.config.namespace(channel);
        let query = HistoryQuery {
            since: since.cloned(),
            limit: if since.is_some() { ns.history_size } else { 0 },
        };
        let page = self.broker.history(channel, query, ns.history()).await?;
        let Some(since) = since else {
            return Ok(Joined {
                position: page.position,
                recovered: true,
                publications: Vec::new(),
            });
        };
        let outcome = if page.recovered {
            "recovered"
        } else {
            "not_recovered"
        };
        self.metrics.recoveries.with_label_values(&[outcome]).inc();
        if page.recovered {
            let last = page
                .publications
                .last()
                .map(|p| p.offset)
                .unwrap_or(since.offset);
            return Ok(Joined {
                position: StreamPosition {
                    epoch: page.position.epoch.clone(),
                    offset: last.max(since.offset),
                },
                recovered: true,
                publications: page.publications,
            });
        }
        // The reader's generation is gone (history lost). Whatever the new generation still
        // holds from its start is delivered anyway: the old tail is lost (recovered: false),
        // but nothing published since the reset is.
        if since.epoch != page.position.epoch && page.position.offset > 0 {
            let fresh = StreamPosition {
                epoch: page.position.epoch.clone(),
                offset: 0,
            };
            let query = HistoryQuery {
                since: Some(fresh),
                limit: ns.history_size,
            };
            let again = self.broker.history(channel, query, ns.history()).await?;
            if again.recovered && again.position.epoch == page.position.epoch {
                let last = again.publications.last().map(|p| p.offset).unwrap_or(0);
                return Ok(Joined {
                    position: StreamPosition {
                        epoch: again.position.epoch,
                        offset: last,
                    },
                    recovered: false,
                    publications: again.publications,
                });
            }
        }
        Ok(Joined {
            position: page.position,
            recovered: false,
            publications: Vec::new(),
        })
    }

    /// Adds a client to a channel's presence (when the namespace keeps one).
    pub async fn presence_join(&self, channel: &str, entry: &PresenceEntry) {
        let ns = self.config.namespace(channel);
        if ns.presence {
            if let Err(err) = self
                .broker
                .presence_add(channel, entry.clone(), ns.join_leave)
                .await
            {
                tracing::warn!(cause = %err, "presence add failed");
            }
        }
    }

    /// Removes a client from a channel's presence.
    pub async fn presence_leave(&self, channel: &str, entry: &PresenceEntry) {
        let ns = self.config.namespace(channel);
        if ns.presence {
            if let Err(err) = self
                .broker
                .presence_remove(channel, entry.clone(), ns.join_leave)
                .await
            {
                tracing::warn!(cause = %err, "presence remove failed");
            }
        }
    }
}

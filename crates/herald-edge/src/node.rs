//! The node: everything one edge shares between its connections.
//!
//! [`Node`] holds the config, the broker, the hub, the metrics, the root cancellation token, the
//! task trackers and the connection count. It sits below the connection core and the HTTP API:
//! it publishes, recovers, reads history and keeps presence, with no notion of who asks
//! (permissions are checked above it, in the `permissions` module).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::http::{header, HeaderMap};
use herald_broker::{
    Broker, BrokerEvents, HistoryPage, HistoryQuery, NodeInfo, Payload, Publication, PublishRequest,
};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::hub::Hub;
use crate::limits::{IpGuard, IpLimits, Refusal};
use crate::metrics::{Limit, Metrics, Transport};
use crate::proxy::ProxyClient;

/// One edge's shared state.
pub struct Node {
    /// The configuration.
    pub config: EdgeConfig,
    /// The broker.
    pub(crate) broker: Arc<dyn Broker>,
    /// Local subscribers. The broker holds only a `Weak` to it (no ownership cycle).
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Root token: cancelled on shutdown. Every connection holds a child token; every task the
    /// node spawns (registry heartbeat, hub reaper) ends when it is cancelled.
    pub(crate) shutdown: CancellationToken,
    /// Tracks the connections' tasks (WebSocket sessions, presence cleanup after a connection)
    /// so shutdown can wait for them to drain.
    pub tracker: TaskTracker,
    /// Tracks the node's own tasks (registry heartbeat, hub reaper): they run for the node's
    /// life and end when `shutdown` is cancelled; shutdown waits for them after the
    /// connections.
    pub(crate) background: TaskTracker,
    /// Set on SIGTERM: readiness fails and new connections are refused.
    pub draining: AtomicBool,
    /// Verifies connection and channel tokens.
    pub(crate) verifier: Verifier,
    /// The application's backend hooks, when any is configured.
    pub(crate) proxy: Option<ProxyClient>,
    /// Per-address and per-user rates and caps.
    pub(crate) limits: Arc<IpLimits>,
    connections: AtomicUsize,
    client_seq: AtomicU64,
    client_prefix: String,
    started: Instant,
    published: AtomicU64,
}

/// Counts one open connection; dropping it releases the slot (and its address's slot).
pub(crate) struct ConnectionSlot {
    node: Arc<Node>,
    transport: Transport,
    _address: Option<IpGuard>,
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

/// The result of recovering a channel after a position.
pub(crate) struct Recovered {
    /// The position the client is at after the recovered publications.
    pub(crate) position: StreamPosition,
    /// Whether everything after the client's `since` was recovered.
    pub(crate) recovered: bool,
    /// Recovered publications, in offset order.
    pub(crate) publications: Vec<Arc<Publication>>,
    /// Whether `position` is the channel's newest: false when the page was cut short by the
    /// byte budget (or none was left), and the reader must read on from `position`.
    pub(crate) complete: bool,
}

/// Whether a history page stops before the channel's newest message (cut by `limit` or by
/// `limits.max_reply_bytes`): the reader reads on from its last message.
pub(crate) fn page_has_more(page: &HistoryPage) -> bool {
    page.recovered
        && page
            .publications
            .last()
            .is_some_and(|p| p.offset < page.position.offset)
}

/// Who publishes: a client (whose own copy may be skipped) or the server API.
#[derive(Debug, Clone)]
pub(crate) enum Publisher {
    /// A client. `id` goes into `from` (absent for an HTTP publish that names no connection),
    /// `user` into `user` (absent when anonymous); with `skip_self` the connection `id` does
    /// not receive its own copy.
    Client {
        /// The publishing connection.
        id: Option<Arc<str>>,
        /// Its authenticated user.
        user: Option<Arc<str>>,
        /// Whether the connection skips its own copy.
        skip_self: bool,
    },
    /// The server API.
    Api,
}

impl Node {
    /// A node over `broker`. The hub is attached to the broker here.
    pub(crate) fn new(
        config: EdgeConfig,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        verifier: Verifier,
        proxy: Option<ProxyClient>,
    ) -> Arc<Self> {
        let hub = Arc::new(Hub::new(
            broker.clone(),
            metrics.clone(),
            std::time::Duration::from_millis(config.limits.unsubscribe_delay_ms),
            config.limits.outbound_queue,
            config.limits.outbound_queue_bytes,
        ));
        let events: Arc<dyn BrokerEvents> = hub.clone();
        broker.attach(Arc::downgrade(&events));
        let client_prefix = herald_broker::new_epoch();
        let limits = Arc::new(IpLimits::new(&config.limits));
        Arc::new(Self {
            config,
            broker,
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            background: TaskTracker::new(),
            draining: AtomicBool::new(false),
            verifier,
            proxy,
            limits,
            connections: AtomicUsize::new(0),
            client_seq: AtomicU64::new(0),
            client_prefix,
            started: Instant::now(),
            published: AtomicU64::new(0),
        })
    }

    /// A cluster-unique client id.
    pub(crate) fn new_client_id(&self) -> Arc<str> {
        let n = self.client_seq.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{}", self.client_prefix, n))
    }

    /// Whether the node is draining (shutting down).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Takes a connection slot for a client at `address`, or refuses: node draining or full
    /// (503), the address over its rate or its cap of open connections (429). WebSocket and
    /// SSE count against `connect_rate_per_ip`, polls against the address's `command_rate`.
    pub(crate) fn admit(
        self: &Arc<Self>,
        transport: Transport,
        address: Option<IpAddr>,
    ) -> Result<ConnectionSlot, EdgeError> {
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
        let address = match address {
            Some(ip) => Some(self.admit_address(transport, ip).inspect_err(|_| {
                reject("address");
            })?),
            None => None,
        };
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
            _address: address,
        })
    }

    fn admit_address(&self, transport: Transport, ip: IpAddr) -> Result<IpGuard, EdgeError> {
        let rate_limit = match transport {
            Transport::Ws | Transport::Sse | Transport::Centrifugo => Limit::ConnectRate,
            _ => Limit::CommandRate,
        };
        let refused = match transport {
            Transport::Ws | Transport::Sse | Transport::Centrifugo => self.limits.admit(ip),
            _ => self
                .limits
                .request(ip)
                .and_then(|()| self.limits.admit_uncounted(ip)),
        };
        refused.map_err(|refusal| match refusal {
            Refusal::Rate(wait) => {
                self.metrics.limit_rejected(rate_limit);
                EdgeError::RateLimited {
                    message: "too many requests from this address".into(),
                    retry_after: Some(wait.as_secs_f64().ceil() as u64),
                }
            }
            Refusal::Connections => {
                self.metrics.limit_rejected(Limit::ConnectionsPerIp);
                EdgeError::RateLimited {
                    message: format!(
                        "at most {} open connections per address",
                        self.config.limits.max_connections_per_ip
                    ),
                    retry_after: None,
                }
            }
        })
    }

    /// Counts a request that is not a connection (`POST /publish`) against its address.
    pub(crate) fn admit_request(&self, ip: IpAddr) -> Result<(), EdgeError> {
        self.limits.request(ip).map_err(|refusal| {
            self.metrics.limit_rejected(Limit::CommandRate);
            let retry_after = match refusal {
                Refusal::Rate(wait) => Some(wait.as_secs_f64().ceil() as u64),
                Refusal::Connections => None,
            };
            EdgeError::RateLimited {
                message: "too many requests from this address".into(),
                retry_after,
            }
        })
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Seconds since start.
    pub(crate) fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Publications accepted from this node since start.
    pub(crate) fn published_count(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publishes (permissions are the caller's, checked in the `permissions` module).
    pub(crate) async fn publish(
        &self,
        channel: &str,
        payload: Payload,
        publisher: Publisher,
        transport: Transport,
    ) -> Result<StreamPosition, EdgeError> {
        herald_protocol::validate_channel(channel)?;
        let ns = self.config.namespace(channel);
        if payload.len() > self.config.limits.max_message_size {
            self.metrics.limit_rejected(Limit::MessageSize);
            return Err(EdgeError::TooLarge(format!(
                "{} bytes, the limit is {}",
                payload.len(),
                self.config.limits.max_message_size
            )));
        }
        let (from, user, skip_self) = match publisher {
            Publisher::Client {
                id,
                user,
                skip_self,
            } => {
                let skip_self = skip_self && id.is_some();
                (id, user, skip_self)
            }
            Publisher::Api => (None, None, false),
        };
        let started = Instant::now();
        let position = self
            .broker
            .publish(PublishRequest {
                channel: Arc::from(channel),
                payload,
                from,
                user,
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

    /// Reads a channel's history: after `since`, or the newest messages without it; at most
    /// `limit` (the namespace's `history_size` when absent, and never more).
    pub(crate) async fn history(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, EdgeError> {
        herald_protocol::validate_channel(channel)?;
        let ns = self.config.namespace(channel);
        let limit = limit.unwrap_or(ns.history_size).min(ns.history_size.max(1));
        Ok(self
            .broker
            .history(
                channel,
                HistoryQuery {
                    since,
                    limit,
                    max_bytes: self.config.limits.max_reply_bytes,
                },
                ns.history(),
            )
            .await?)
    }

    /// Reads what a reader at `since` missed (or only the current position without `since`),
    /// at most about `budget` bytes of it (see [`Recovered::complete`]). With `known`, the
    /// channel's newest position as the hub knows it for a subscriber it has just added
    /// ([`crate::hub::Joined::known`]), a reader without `since` or at exactly that position
    /// is answered without the broker.
    pub(crate) async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        known: Option<&StreamPosition>,
        budget: usize,
    ) -> Result<Recovered, EdgeError> {
        if let Some(known) = known {
            let up_to_date = match since {
                None => true,
                Some(since) => since == known,
            };
            if up_to_date {
                if since.is_some() {
                    self.metrics
                        .recoveries
                        .with_label_values(&["recovered"])
                        .inc();
                }
                self.metrics.positions_known.inc();
                return Ok(Recovered {
                    position: known.clone(),
                    recovered: true,
                    publications: Vec::new(),
                    complete: true,
                });
            }
        }
        if let (Some(since), 0) = (since, budget) {
            // Nothing left to read with: the reader stays where it is and pages on later.
            return Ok(Recovered {
                position: since.clone(),
                recovered: true,
                publications: Vec::new(),
                complete: false,
            });
        }
        let ns = self.config.namespace(channel);
        let query = HistoryQuery {
            since: since.cloned(),
            limit: if since.is_some() { ns.history_size } else { 0 },
            max_bytes: budget,
        };
        let page = self.broker.history(channel, query, ns.history()).await?;
        let Some(since) = since else {
            return Ok(Recovered {
                position: page.position,
                recovered: true,
                publications: Vec::new(),
                complete: true,
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
            return Ok(Recovered {
                position: StreamPosition {
                    epoch: page.position.epoch.clone(),
                    offset: last.max(since.offset),
                },
                recovered: true,
                publications: page.publications,
                complete: last.max(since.offset) >= page.position.offset,
            });
        }
        // The reader's generation is gone (history lost). Whatever the new generation still
        // holds from its start is delivered anyway: the old tail is lost (recovered: false),
        // but nothing published since the reset is.
        // (A reader with an empty epoch already read from the current epoch's start.)
        if !since.epoch.is_empty() && since.epoch != page.position.epoch && page.position.offset > 0
        {
            let fresh = StreamPosition {
                epoch: page.position.epoch.clone(),
                offset: 0,
            };
            let query = HistoryQuery {
                since: Some(fresh),
                limit: ns.history_size,
                max_bytes: budget,
            };
            let again = self.broker.history(channel, query, ns.history()).await?;
            if again.recovered && again.position.epoch == page.position.epoch {
                let last = again.publications.last().map(|p| p.offset).unwrap_or(0);
                return Ok(Recovered {
                    complete: last >= again.position.offset,
                    position: StreamPosition {
                        epoch: again.position.epoch,
                        offset: last,
                    },
                    recovered: false,
                    publications: again.publications,
                });
            }
        }
        Ok(Recovered {
            position: page.position,
            recovered: false,
            publications: Vec::new(),
            complete: true,
        })
    }

    /// Adds a client to a channel's presence (when the namespace keeps one).
    pub(crate) async fn presence_join(&self, channel: &str, entry: &PresenceEntry) {
        let ns = self.config.namespace(channel);
        if ns.presence {
            if let Err(err) = self
                .broker
                .presence_add(channel, entry.clone(), ns.join_leave)
                .await
            {
                tracing::warn!(cause = %err, channel, client = %entry.client, "presence add failed");
            }
        }
    }

    /// Removes a client from a channel's presence.
    pub(crate) async fn presence_leave(&self, channel: &str, entry: &PresenceEntry) {
        let ns = self.config.namespace(channel);
        if ns.presence {
            if let Err(err) = self
                .broker
                .presence_remove(channel, entry.clone(), ns.join_leave)
                .await
            {
                tracing::warn!(cause = %err, channel, client = %entry.client, "presence remove failed");
            }
        }
    }

    /// Whether the request's `Origin` (if any) is allowed: one of `allowed_origins`, or, when
    /// that list is empty, the same origin as the request's `Host` (Centrifugo's rule). A
    /// request without `Origin` (not from a browser page) is allowed.
    pub(crate) fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let allowed = &self.config.limits.allowed_origins;
        if !allowed.is_empty() {
            return allowed.iter().any(|a| a == origin || a == "*");
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
    }

    /// This node's registry entry.
    pub(crate) fn info(&self) -> NodeInfo {
        let mut connections = BTreeMap::new();
        for t in Transport::CONNECTED {
            let n = self
                .metrics
                .connections
                .with_label_values(&[t.label()])
                .get();
            connections.insert(t.label().to_owned(), n.max(0) as u64);
        }
        let delivered = Transport::CONNECTED
            .iter()
            .map(|t| self.metrics.delivered.with_label_values(&[t.label()]).get())
            .sum();
        NodeInfo {
            node: self.config.node_id.clone(),
            address: self.config.listen.to_string(),
            connections,
            channels: self.hub.channel_count() as u64,
            delivered,
            published: self.published_count(),
            uptime_secs: self.uptime_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

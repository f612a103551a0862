//! The connection core: one client connection's life, whatever transport carries it.
//!
//! A [`Connection`] owns everything a connection is: its slot in the node's connection count,
//! its client id and user, its hub registration and bounded outbound queue, its position in
//! every channel ([`Subscriptions`]), its presence entries, and its metrics. Every client
//! operation goes through it — subscribe (with recovery), unsubscribe, publish, presence,
//! history, refresh — and with it through `permissions` and the per-connection
//! limits, so a check written here holds on every transport.
//!
//! Transports are thin encoders and writers over it (as centrifuge's `client.go` sits under its
//! transports): the WebSocket session turns frames into calls and [`Event`]s into frames; an
//! SSE stream subscribes the channels of its query and writes events; a poll subscribes for the
//! length of one request. Nothing here knows about transports beyond the metric label.
//!
//! Life: [`Connection::open`] admits (or refuses: node full or draining) and registers with the
//! hub; [`Connection::recv`] + [`Connection::absorb`] turn what the hub queued into [`Event`]s
//! in order, with duplicates dropped and gaps filled or signalled; dropping the connection
//! leaves every channel (hub at once, presence on a task on the node's tracker), releases the
//! slot and forgets the hub registration — whichever way the transport ends, nothing leaks.

use std::collections::HashSet;
use std::sync::Arc;

use herald_broker::{HistoryPage, Payload};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::{CloseCode, StreamPosition};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::EdgeError;
use crate::hub::{ConnHandle, Delivery, EventKind, Outbound};
use crate::identity::{Identity, RequestContext};
use crate::limits::{ConnectionLimits, UserGuard, Verdict};
use crate::metrics::{Limit, Transport};
use crate::node::{ConnectionSlot, Node, Publisher};
use crate::permissions::{authorize_publish, authorize_read, Read, Subject};
use crate::subscriptions::{Emit, Subscriptions};

/// How a transport opens a connection.
pub(crate) struct ConnectionOptions {
    /// The transport (metric label, connection count).
    pub(crate) transport: Transport,
    /// The client id (from [`Node::new_client_id`], made before identification so the connect
    /// proxy is told it).
    pub(crate) client: Arc<str>,
    /// Who the connection is (see `identity::identify`).
    pub(crate) identity: Identity,
    /// The request it came in on, for the backend hooks.
    pub(crate) context: RequestContext,
    /// Whether subscribing enters the channel's presence (not for polls: a poll is one request,
    /// and joining and leaving per request would announce churn, not people).
    pub(crate) presence: bool,
}

/// What a transport writes, in order.
pub(crate) enum Event {
    /// A publication (live or recovered).
    Publication(Arc<Delivery>),
    /// A channel's position jumped and messages may be lost: write `recovered: false`.
    Reset {
        /// The channel.
        channel: Arc<str>,
        /// The new position.
        position: StreamPosition,
    },
    /// Join, leave or broadcast, already encoded as the JSON frame.
    Notice(EventKind, Utf8Bytes),
}

/// The answer to a subscribe.
pub(crate) struct Subscribed {
    /// The position after the recovered publications.
    pub(crate) position: StreamPosition,
    /// Whether everything after the client's `since` was recovered.
    pub(crate) recovered: bool,
    /// Recovered publications, in offset order: write them right after the reply, and count
    /// what was written with [`Connection::count_delivered`].
    pub(crate) publications: Vec<Arc<Delivery>>,
}

/// What [`Connection::count_command`] decided.
pub(crate) enum RateCheck {
    /// Go ahead.
    Allow,
    /// Refuse this op with this error (112).
    Refuse(EdgeError),
    /// Close the connection with 4029.
    Close,
}

/// One channel of an SSE or poll request.
pub(crate) struct StreamChannel<'a> {
    /// The channel.
    pub(crate) name: &'a str,
    /// Where the client is in it.
    pub(crate) since: Option<&'a StreamPosition>,
    /// Its channel token (`channel_token=`, in channel order), if one came.
    pub(crate) token: Option<&'a str>,
}

/// One client connection. See the module docs.
pub(crate) struct Connection {
    node: Arc<Node>,
    options: ConnectionOptions,
    /// The hub's handle: fan-out sends into `queue`'s other end; `handle.cancel` (a child of
    /// the node's shutdown token) is cancelled when the connection must close.
    handle: Arc<ConnHandle>,
    /// Positions of the subscribed channels.
    subs: Subscriptions,
    /// Channels joined in the hub, including joins still in progress, so that a connection
    /// dropped in the middle of a subscribe leaves the hub too.
    joined: HashSet<Arc<str>>,
    /// Channels whose presence holds this connection.
    present: Vec<Arc<str>>,
    /// This transport's latency histogram, looked up once (not per delivery).
    latency: prometheus::Histogram,
    /// Deliveries not yet added to the delivered counter (added per batch).
    delivered: u64,
    /// When the session ends unless refreshed (token `exp` plus leeway), on tokio's clock.
    deadline: Option<tokio::time::Instant>,
    /// This connection's command and publish buckets.
    rates: ConnectionLimits,
    /// Counts the connection against its user's cap.
    _user_slot: Option<UserGuard>,
    _slot: ConnectionSlot,
}

impl Connection {
    /// Admits a connection (or refuses: node full or draining) and registers it with the hub.
    pub(crate) fn open(node: &Arc<Node>, options: ConnectionOptions) -> Result<Self, EdgeError> {
        let slot = node.admit(options.transport, options.context.remote)?;
        Self::open_admitted(node, slot, options)
    }

    /// Registers an already admitted connection (a WebSocket holds its slot while it waits for
    /// its `connect` frame).
    pub(crate) fn open_admitted(
        node: &Arc<Node>,
        slot: ConnectionSlot,
        options: ConnectionOptions,
    ) -> Result<Self, EdgeError> {
        let identity = &options.identity;
        let user_slot = match identity.proven_user() {
            Some(user) => Some(node.limits.admit_user(user).ok_or_else(|| {
                node.metrics.limit_rejected(Limit::ConnectionsPerUser);
                EdgeError::RateLimited {
                    message: format!(
                        "at most {} open connections per user",
                        node.config.limits.max_connections_per_user
                    ),
                    retry_after: None,
                }
            })?),
            None => None,
        };
        let handle = node.hub.connect(
            options.client.clone(),
            identity.proven_user(),
            options.transport,
            &node.shutdown,
        );
        let deadline = crate::identity::deadline(node, identity.exp);
        let latency = node
            .metrics
            .delivery_latency
            .with_label_values(&[options.transport.label()]);
        Ok(Self {
            node: node.clone(),
            rates: ConnectionLimits::new(&node.config.limits),
            _user_slot: user_slot,
            options,
            handle,
            subs: Subscriptions::default(),
            joined: HashSet::new(),
            present: Vec::new(),
            latency,
            delivered: 0,
            deadline,
            _slot: slot,
        })
    }

    /// This connection's entry in a channel's presence, made when needed (a join or a leave):
    /// a poll never enters a presence, and kept, the entry's three strings would be held for a
    /// WebSocket's whole life.
    fn presence_entry(&self) -> PresenceEntry {
        let identity = &self.options.identity;
        PresenceEntry {
            client: self.handle.client.to_string(),
            user: identity.user.to_string(),
            node: self.node.config.node_id.clone(),
            info: identity.info.clone(),
        }
    }

    /// Who the connection is.
    pub(crate) fn identity(&self) -> &Identity {
        &self.options.identity
    }

    /// Counts one op the client sent (`publish`: it is a publish) against the connection's
    /// rates: `Err` with error 112 when over, [`RateCheck::Close`] once the client has stayed
    /// over for `rate_close_after` (close 4029).
    pub(crate) fn count_command(&mut self, publish: bool) -> RateCheck {
        match self.rates.check(publish) {
            Verdict::Allow => RateCheck::Allow,
            Verdict::Refuse => {
                let limit = if publish {
                    Limit::PublishRate
                } else {
                    Limit::CommandRate
                };
                self.node.metrics.limit_rejected(limit);
                RateCheck::Refuse(EdgeError::RateLimited {
                    message: "too many requests on this connection".into(),
                    retry_after: Some(1),
                })
            }
            Verdict::Close => {
                self.node.metrics.limit_rejected(Limit::SustainedExcess);
                RateCheck::Close
            }
        }
    }

    /// When the session must end unless refreshed (close 4010).
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// Extends the session with a fresh connection token of the same user; returns its `exp`.
    pub(crate) async fn refresh(&mut self, token: &str) -> Result<Option<u64>, EdgeError> {
        let fresh = crate::identity::verify_connection_token(&self.node, token).await?;
        let current = &self.options.identity;
        if !current.authenticated || fresh.user != current.user {
            return Err(EdgeError::Unauthorized(
                "a refresh token must be for the connection's own user".into(),
            ));
        }
        self.deadline = crate::identity::deadline(&self.node, fresh.exp);
        self.options.identity.exp = fresh.exp;
        Ok(fresh.exp)
    }

    fn subject(&self, channel: &str) -> Subject<'_> {
        Subject {
            identity: &self.options.identity,
            client: &self.handle.client,
            transport: self.options.transport,
            context: &self.options.context,
            subscribed: self.subs.contains(channel),
        }
    }

    /// The client id.
    pub(crate) fn client(&self) -> &Arc<str> {
        &self.handle.client
    }

    /// The node.
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Cancelled when the connection must close (slow consumer, shutdown); see
    /// [`Connection::close_code`].
    pub(crate) fn closing(&self) -> CancellationToken {
        self.handle.cancel.clone()
    }

    /// Why the connection must close: the code it was killed with (1012 by default, as the only
    /// other canceller is the node's shutdown).
    pub(crate) fn close_code(&self) -> CloseCode {
        self.handle.close_code().unwrap_or(CloseCode::Restart)
    }

    /// The limit check of a subscribe to the channels of a query, before the connection is
    /// admitted (SSE and polls): the same check as [`Connection::subscribe`] runs.
    pub(crate) fn preflight<S: AsRef<str>>(node: &Node, channels: &[S]) -> Result<(), EdgeError> {
        check_limits(node, &Subscriptions::default(), channels)
    }

    /// Subscribes to `channel` and recovers after `since`: the hub subscription is live before
    /// history is read, so nothing published in between is missed (live duplicates are dropped
    /// by offset). Enters the channel's presence when the connection keeps one.
    pub(crate) async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        token: Option<&str>,
    ) -> Result<Subscribed, EdgeError> {
        check_limits(&self.node, &self.subs, &[channel])?;
        authorize_read(
            &self.node,
            &self.subject(channel),
            Read::Subscribe,
            channel,
            token,
        )
        .await?;
        let mut budget = self.node.config.limits.max_reply_bytes;
        self.join(channel, since, &mut budget).await
    }

    /// Subscribes to several channels at once (SSE and polls): every channel is checked before
    /// any is joined, so a refusal leaves nothing behind. Channels the connection's token
    /// grants (`channels` claim) need no permission.
    pub(crate) async fn subscribe_all(
        &mut self,
        channels: &[StreamChannel<'_>],
    ) -> Result<Vec<Subscribed>, EdgeError> {
        let names: Vec<&str> = channels.iter().map(|c| c.name).collect();
        check_limits(&self.node, &self.subs, &names)?;
        for c in channels {
            if !self.options.identity.channels.iter().any(|g| g == c.name) {
                let subject = self.subject(c.name);
                authorize_read(&self.node, &subject, Read::Subscribe, c.name, c.token).await?;
            }
        }
        // One reply budget for the whole request: a cursor over many channels costs one page.
        let mut budget = self.node.config.limits.max_reply_bytes;
        let mut out = Vec::with_capacity(channels.len());
        for c in channels {
            out.push(self.join(c.name, c.since, &mut budget).await?);
        }
        Ok(out)
    }

    /// Subscribes to a channel the connection's token grants (`channels` claim): no permission
    /// check, the limits still apply.
    pub(crate) async fn subscribe_granted(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Subscribed, EdgeError> {
        check_limits(&self.node, &self.subs, &[channel])?;
        let mut budget = self.node.config.limits.max_reply_bytes;
        self.join(channel, since, &mut budget).await
    }

    /// Joins the hub, then reads what the client missed within `budget` bytes (taken off it):
    /// the rest, if any, is read page by page ([`Connection::catch_up`]).
    async fn join(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        budget: &mut usize,
    ) -> Result<Subscribed, EdgeError> {
        let name: Arc<str> = Arc::from(channel);
        self.joined.insert(name.clone());
        let recovered = match self.node.hub.subscribe(channel, &self.handle).await {
            Ok(joined) => {
                let known = joined.known.as_ref();
                let recovered = self.node.recover(channel, since, known, *budget).await;
                if let (Ok(r), None) = (&recovered, known) {
                    if r.complete {
                        self.node.hub.remember(channel, &joined, &r.position);
                    }
                }
                recovered
            }
            Err(err) => Err(err),
        };
        let recovered = match recovered {
            Ok(r) => r,
            Err(err) => {
                self.node.hub.unsubscribe(channel, &self.handle);
                self.joined.remove(channel);
                return Err(err);
            }
        };
        let read: usize = recovered.publications.iter().map(|p| p.payload.len()).sum();
        *budget = budget.saturating_sub(read);
        self.subs
            .insert(channel, &recovered.position, recovered.complete);
        if self.options.presence {
            // Recorded first: if this future is dropped mid-add, the drop still removes it.
            self.present.push(name);
            self.node
                .presence_join(channel, &self.presence_entry())
                .await;
        }
        let publications = recovered
            .publications
            .into_iter()
            .map(|p| Arc::new(Delivery::new(p)))
            .collect();
        Ok(Subscribed {
            position: recovered.position,
            recovered: recovered.recovered,
            publications,
        })
    }

    /// Leaves `channel` (hub and presence).
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> Result<(), EdgeError> {
        herald_protocol::validate_channel(channel)?;
        if !self.subs.remove(channel) {
            return Err(EdgeError::NotSubscribed(channel.into()));
        }
        self.joined.remove(channel);
        self.node.hub.unsubscribe(channel, &self.handle);
        if let Some(i) = self.present.iter().position(|c| &**c == channel) {
            self.present.swap_remove(i);
            self.node
                .presence_leave(channel, &self.presence_entry())
                .await;
        }
        Ok(())
    }

    /// Publishes as this client.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        payload: Payload,
        skip_self: bool,
    ) -> Result<StreamPosition, EdgeError> {
        let replaced =
            authorize_publish(&self.node, &self.subject(channel), channel, &payload).await?;
        let payload = replaced.unwrap_or(payload);
        let publisher = Publisher::Client {
            id: Some(self.client().clone()),
            user: self.options.identity.proven_user(),
            skip_self,
        };
        self.node
            .publish(channel, payload, publisher, self.options.transport)
            .await
    }

    /// Who is in `channel` (readable by whoever may subscribe to it).
    pub(crate) async fn presence(
        &self,
        channel: &str,
        token: Option<&str>,
    ) -> Result<Vec<PresenceEntry>, EdgeError> {
        authorize_read(
            &self.node,
            &self.subject(channel),
            Read::Presence,
            channel,
            token,
        )
        .await?;
        Ok(self.node.broker.presence(channel).await?)
    }

    /// A page of `channel`'s history (readable by whoever may subscribe to it).
    pub(crate) async fn history(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<HistoryPage, EdgeError> {
        authorize_read(
            &self.node,
            &self.subject(channel),
            Read::History,
            channel,
            token,
        )
        .await?;
        self.node.history(channel, since, limit).await
    }

    /// Waits for the next queued item; `None` when the queue is closed (never while the
    /// connection lives). Cancel-safe: use it in a `select!`.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        let item = std::future::poll_fn(|cx| self.handle.queue.poll_pop(cx)).await;
        self.handle.taken(&item);
        Some(item)
    }

    /// A queued item if one is there now.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let item = self.handle.queue.try_pop()?;
        self.handle.taken(&item);
        Some(item)
    }

    /// Turns one queued item into events: publications pass the duplicate and gap checks (a gap
    /// is filled from history or signalled with a reset); after a broker resync every channel
    /// is checked against history.
    pub(crate) async fn absorb(&mut self, item: Outbound, out: &mut Vec<Event>) {
        let mut emits: Vec<Emit> = Vec::new();
        match item {
            Outbound::Publication(d) => self.subs.on_live(&self.node, d, &mut emits).await,
            Outbound::Event(event) => {
                let (kind, ref text) = *event;
                if kind == EventKind::Broadcast {
                    self.delivered += 1;
                }
                out.push(Event::Notice(kind, text.clone()));
            }
            Outbound::Resync => self.subs.resync(&self.node, &mut emits).await,
        }
        self.emit(emits, out);
    }

    /// [`Connection::absorb`]s `first` and whatever else is queued, up to `max` items: one
    /// wake-up's batch for a transport to write and flush once.
    pub(crate) async fn absorb_batch(&mut self, first: Outbound, max: usize, out: &mut Vec<Event>) {
        let mut item = Some(first);
        let mut n = 0;
        while let Some(current) = item.take() {
            self.absorb(current, out).await;
            n += 1;
            if n < max {
                item = self.try_recv();
            }
        }
    }

    /// Whether history is still to be read for some channel before its live delivery resumes:
    /// the transport then calls [`Connection::catch_up`] whenever it is otherwise idle.
    pub(crate) fn is_catching_up(&self) -> bool {
        self.subs.is_catching_up()
    }

    /// Reads the next page (at most `limits.max_reply_bytes`) of one catching-up channel.
    pub(crate) async fn catch_up(&mut self, out: &mut Vec<Event>) {
        let mut emits: Vec<Emit> = Vec::new();
        self.subs.catch_up(&self.node, &mut emits).await;
        self.emit(emits, out);
    }

    fn emit(&mut self, emits: Vec<Emit>, out: &mut Vec<Event>) {
        let now = herald_broker::now_ms();
        for emit in emits {
            match emit {
                Emit::Publication(d) => {
                    let age_ms = now.saturating_sub(d.publication.ts_ms);
                    self.latency.observe(age_ms as f64 / 1000.0);
                    self.delivered += 1;
                    out.push(Event::Publication(d));
                }
                Emit::Reset { channel, position } => {
                    self.node
                        .metrics
                        .recoveries
                        .with_label_values(&["reset"])
                        .inc();
                    out.push(Event::Reset { channel, position });
                }
            }
        }
    }

    /// Adds the deliveries counted since the last call to the delivered counter (once per
    /// batch, not per message).
    pub(crate) fn flush_metrics(&mut self) {
        if self.delivered > 0 {
            self.node
                .metrics
                .delivered
                .with_label_values(&[self.options.transport.label()])
                .inc_by(std::mem::take(&mut self.delivered));
        }
    }

    /// Counts bytes written to the client.
    pub(crate) fn count_bytes_out(&self, n: usize) {
        self.node
            .metrics
            .bytes_out
            .with_label_values(&[self.options.transport.label()])
            .inc_by(n as u64);
    }

    /// Counts recovered publications the transport wrote (live ones are counted by
    /// [`Connection::absorb`]).
    pub(crate) fn count_delivered(&mut self, publications: &[Arc<Delivery>]) {
        let now = herald_broker::now_ms();
        for d in publications {
            let age_ms = now.saturating_sub(d.publication.ts_ms);
            self.latency.observe(age_ms as f64 / 1000.0);
        }
        self.delivered += publications.len() as u64;
    }
}

/// The limits of a subscribe, in one place: valid names, no duplicates, and the per-connection
/// channel limit (permissions are `permissions::authorize_read`'s).
fn check_limits<S: AsRef<str>>(
    node: &Node,
    subs: &Subscriptions,
    channels: &[S],
) -> Result<(), EdgeError> {
    for channel in channels {
        let channel = channel.as_ref();
        herald_protocol::validate_channel(channel)?;
        if subs.contains(channel) {
            return Err(EdgeError::AlreadySubscribed(channel.into()));
        }
    }
    let max = node.config.limits.max_channels_per_connection;
    if subs.len() + channels.len() > max {
        node.metrics.limit_rejected(Limit::ChannelsPerConnection);
        return Err(EdgeError::Limit(format!(
            "at most {max} channels per connection"
        )));
    }
    Ok(())
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.flush_metrics();
        for channel in self.joined.drain() {
            self.node.hub.unsubscribe(&channel, &self.handle);
        }
        self.node.hub.disconnect(&self.handle);
        self.handle.queue.close();
        if !self.present.is_empty() {
            let node = self.node.clone();
            let entry = self.presence_entry();
            let channels = std::mem::take(&mut self.present);
            // Presence removal talks to the broker; it runs on the node's tracker so shutdown
            // waits for it.
            self.node.tracker.spawn(async move {
                for channel in channels {
                    node.presence_leave(&channel, &entry).await;
                }
            });
        }
    }
}

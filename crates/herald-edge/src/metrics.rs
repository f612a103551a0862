//! Every metric the edge exports, declared in one place.
//!
//! Names follow `herald_<subsystem>_<name>_<unit>`; labels have few values (transport, close
//! code, outcome, error code, source) and never carry a channel or a user. Each node owns its
//! own [`Metrics`] and registry, so several nodes can run in one test process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ErrorSource;
use herald_protocol::{CloseCode, ErrorCode};

/// Transports, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket.
    Ws,
    /// Server-Sent Events.
    Sse,
    /// Long-poll (a poll with a timeout).
    LongPoll,
    /// Short poll (`timeout=0`).
    Poll,
    /// HTTP API and `POST /publish`.
    Http,
    /// WebSocket speaking Centrifugo's client protocol (`/connection/websocket`).
    Centrifugo,
}

impl Transport {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::Poll => "poll",
            Transport::Http => "http",
            Transport::Centrifugo => "centrifugo",
        }
    }

    /// All transports that hold connections.
    pub const CONNECTED: [Transport; 5] = [
        Transport::Ws,
        Transport::Sse,
        Transport::LongPoll,
        Transport::Poll,
        Transport::Centrifugo,
    ];
}

/// Configured limits that refuse something, as the `limit` label of
/// `herald_limit_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `limits.max_connections`: a connection refused because the node is full.
    Connections,
    /// `limits.max_message_size`: a publish or WebSocket frame too large.
    MessageSize,
    /// `limits.max_channels_per_connection`: a subscription past the per-connection cap.
    ChannelsPerConnection,
    /// `limits.poll_max_timeout_secs`: a poll asking to wait longer than allowed.
    PollTimeout,
    /// `limits.command_rate`: an op over the connection's (or address's) rate.
    CommandRate,
    /// `limits.publish_rate`: a publish over the connection's rate.
    PublishRate,
    /// `limits.rate_close_after`: a connection closed for sustained excess (4029).
    SustainedExcess,
    /// `limits.connect_rate_per_ip`: a new connection over its address's rate.
    ConnectRate,
    /// `limits.max_connections_per_ip`: an address with too many open connections.
    ConnectionsPerIp,
    /// `limits.max_connections_per_user`: a user with too many open connections.
    ConnectionsPerUser,
    /// `limits.outbound_queue_bytes`: a connection whose queued bytes overflowed (4008).
    OutboundBytes,
    /// `limits.write_timeout_secs`: a socket that accepted nothing for too long (4008).
    WriteTimeout,
    /// `limits.max_commands_per_frame`: a Centrifugo frame with too many commands (3501).
    CommandsPerFrame,
}

impl Limit {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::MessageSize => "message_size",
            Limit::ChannelsPerConnection => "channels_per_connection",
            Limit::PollTimeout => "poll_timeout",
            Limit::CommandRate => "command_rate",
            Limit::PublishRate => "publish_rate",
            Limit::SustainedExcess => "rate_close_after",
            Limit::ConnectRate => "connect_rate_per_ip",
            Limit::ConnectionsPerIp => "max_connections_per_ip",
            Limit::ConnectionsPerUser => "max_connections_per_user",
            Limit::OutboundBytes => "outbound_queue_bytes",
            Limit::WriteTimeout => "write_timeout",
            Limit::CommandsPerFrame => "max_commands_per_frame",
        }
    }

    /// Every limit, so each series exists from the start.
    pub const ALL: [Limit; 13] = [
        Limit::Connections,
        Limit::MessageSize,
        Limit::ChannelsPerConnection,
        Limit::PollTimeout,
        Limit::CommandRate,
        Limit::PublishRate,
        Limit::SustainedExcess,
        Limit::ConnectRate,
        Limit::ConnectionsPerIp,
        Limit::ConnectionsPerUser,
        Limit::OutboundBytes,
        Limit::WriteTimeout,
        Limit::CommandsPerFrame,
    ];
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open connections by transport.
    pub connections: IntGaugeVec,
    /// Connections accepted by transport.
    pub accepted: IntCounterVec,
    /// Connections refused by transport and reason.
    pub rejected: IntCounterVec,
    /// Publications accepted by the broker, by the transport they came in on.
    pub published: IntCounterVec,
    /// Publications written to clients, by transport.
    pub delivered: IntCounterVec,
    /// Publications dropped by transport and reason (`slow_consumer`, `duplicate`).
    pub dropped: IntCounterVec,
    /// Bytes received from clients by transport.
    pub bytes_in: IntCounterVec,
    /// Bytes written to clients by transport.
    pub bytes_out: IntCounterVec,
    /// Publish time (broker accept) to write into a client socket.
    pub delivery_latency: HistogramVec,
    /// Broker publish call duration.
    pub broker_publish: Histogram,
    /// Recovery requests by outcome (`recovered`, `not_recovered`).
    pub recoveries: IntCounterVec,
    /// Disconnects by close code.
    pub disconnects: IntCounterVec,
    /// Connections closed because their outbound queue was full.
    pub slow_consumers: IntCounterVec,
    /// Errors by code and source.
    pub errors: IntCounterVec,
    /// Requests refused by a configured limit, by limit (see [`Limit`]).
    pub limit_rejections: IntCounterVec,
    /// Channels with local subscribers.
    pub channels: IntGauge,
    /// Local subscriptions.
    pub subscriptions: IntGauge,
    /// Broadcasts received from the broker.
    pub broadcasts: IntCounter,
    /// Subscribes answered from the channel's position this edge knows, without the broker.
    pub positions_known: IntCounter,
    /// Authentication outcomes of connections, channel tokens, refreshes and HTTP publishes, by
    /// result (see [`AUTH_RESULTS`]).
    pub auth: IntCounterVec,
}

/// The `result` label values of `herald_auth_total`.
pub const AUTH_RESULTS: [&str; 7] = [
    "ok",
    "anonymous",
    "missing",
    "invalid",
    "expired",
    "denied",
    "unavailable",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    registry.register(Box::new(c.clone())).expect("register");
    c
}

impl Metrics {
    /// Declares and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let connections = IntGaugeVec::new(
            Opts::new("herald_connections_current", "Open client connections."),
            &["transport"],
        )
        .expect("metric");
        r.register(Box::new(connections.clone())).expect("register");
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "herald_delivery_latency_seconds",
                "Time from the broker accepting a publication to writing it to a client.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["transport"],
        )
        .expect("metric");
        r.register(Box::new(delivery_latency.clone()))
            .expect("register");
        let broker_publish = Histogram::with_opts(
            HistogramOpts::new(
                "herald_broker_publish_duration_seconds",
                "Duration of a broker publish call.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
        )
        .expect("metric");
        r.register(Box::new(broker_publish.clone()))
            .expect("register");
        let channels = IntGauge::new(
            "herald_hub_channels_current",
            "Channels with local subscribers.",
        )
        .expect("metric");
        r.register(Box::new(channels.clone())).expect("register");
        let subscriptions = IntGauge::new(
            "herald_hub_subscriptions_current",
            "Local subscriptions (connection x channel).",
        )
        .expect("metric");
        r.register(Box::new(subscriptions.clone()))
            .expect("register");
        let broadcasts = IntCounter::new(
            "herald_broadcasts_received_total",
            "Broadcasts to every connection received from the broker.",
        )
        .expect("metric");
        r.register(Box::new(broadcasts.clone())).expect("register");
        let positions_known = IntCounter::new(
            "herald_subscribe_positions_known_total",
            "Subscribes answered from the channel position this edge holds (no broker read).",
        )
        .expect("metric");
        r.register(Box::new(positions_known.clone()))
            .expect("register");
        let m = Self {
            connections,
            accepted: counter_vec(
                r,
                "herald_connections_accepted_total",
                "Connections accepted.",
                &["transport"],
            ),
            rejected: counter_vec(
                r,
                "herald_connections_rejected_total",
                "Connections refused.",
                &["transport", "reason"],
            ),
            published: counter_vec(
                r,
                "herald_messages_published_total",
                "Publications accepted by the broker.",
                &["transport"],
            ),
            delivered: counter_vec(
                r,
                "herald_messages_delivered_total",
                "Publications written to clients.",
                &["transport"],
            ),
            dropped: counter_vec(
                r,
                "herald_messages_dropped_total",
                "Publications not delivered.",
                &["transport", "reason"],
            ),
            bytes_in: counter_vec(
                r,
                "herald_transport_received_bytes_total",
                "Bytes received from clients.",
                &["transport"],
            ),
            bytes_out: counter_vec(
                r,
                "herald_transport_sent_bytes_total",
                "Bytes written to clients.",
                &["transport"],
            ),
            delivery_latency,
            broker_publish,
            recoveries: counter_vec(
                r,
                "herald_recovery_requests_total",
                "Recovery requests by outcome.",
                &["outcome"],
            ),
            disconnects: counter_vec(
                r,
                "herald_disconnects_total",
                "Disconnects by close code.",
                &["code"],
            ),
            slow_consumers: counter_vec(
                r,
                "herald_slow_consumer_closes_total",
                "Connections closed because their outbound queue was full.",
                &["transport"],
            ),
            errors: counter_vec(
                r,
                "herald_errors_total",
                "Errors answered to clients.",
                &["code", "source"],
            ),
            auth: counter_vec(
                r,
                "herald_auth_total",
                "Authentication outcomes (tokens and the connect proxy) by result.",
                &["result"],
            ),
            limit_rejections: counter_vec(
                r,
                "herald_limit_rejections_total",
                "Requests refused by a configured limit.",
                &["limit"],
            ),
            channels,
            subscriptions,
            broadcasts,
            positions_known,
            registry,
        };
        for t in Transport::CONNECTED {
            m.connections.with_label_values(&[t.label()]);
            m.accepted.with_label_values(&[t.label()]);
            m.delivered.with_label_values(&[t.label()]);
            m.slow_consumers.with_label_values(&[t.label()]);
            m.dropped.with_label_values(&[t.label(), "slow_consumer"]);
            for reason in ["full", "draining"] {
                m.rejected.with_label_values(&[t.label(), reason]);
            }
            m.delivery_latency.with_label_values(&[t.label()]);
        }
        for l in Limit::ALL {
            m.limit_rejections.with_label_values(&[l.label()]);
        }
        // Duplicates are found per connection's position, where the transport is not known.
        m.dropped.with_label_values(&["any", "duplicate"]);
        for outcome in ["recovered", "not_recovered"] {
            m.recoveries.with_label_values(&[outcome]);
        }
        for result in AUTH_RESULTS {
            m.auth.with_label_values(&[result]);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// Counts an error answered to a client.
    pub(crate) fn error(&self, code: ErrorCode, source: ErrorSource) {
        self.errors
            .with_label_values(&[code.name(), source.label()])
            .inc();
    }

    /// Counts a request refused by a configured limit.
    pub(crate) fn limit_rejected(&self, limit: Limit) {
        self.limit_rejections
            .with_label_values(&[limit.label()])
            .inc();
    }

    /// Counts an authentication outcome (one of [`AUTH_RESULTS`]).
    pub(crate) fn auth(&self, result: &str) {
        self.auth.with_label_values(&[result]).inc();
    }

    /// Counts a disconnect.
    pub(crate) fn disconnect(&self, code: CloseCode) {
        self.disconnects.with_label_values(&[code.label()]).inc();
    }

    /// The registry, for collectors added by other modules (the Redis broker's gauges).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        String::from_utf8(out).unwrap_or_default()
    }
}

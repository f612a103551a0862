//! Configuration: clap flags (each also an env var) and a TOML file for namespaces and limits.
//!
//! [`EdgeConfig`] is the one config struct; every limit is a field here with a documented
//! default, and [`EdgeConfig::validate`] rejects nonsense before the node starts (the binary
//! exits with code 64 on any [`ConfigError`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_broker::HistoryOptions;
use serde::Deserialize;
use thiserror::Error;

pub use crate::auth::AuthConfig;

/// Command-line flags. Every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald edge node: real-time messaging over WebSocket, SSE and polling"
)]
pub struct Cli {
    /// Address for clients (WebSocket, SSE, polling, HTTP API).
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address for Prometheus metrics (`GET /metrics`).
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    pub metrics_listen: SocketAddr,
    /// This node's id (default: the hostname).
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<String>,
    /// Redis URL (`redis://[:password@]host:port[/db]` or `rediss://`); absent: in-process broker.
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, `host:port[,host:port…]` (each may also be a full
    /// `redis://[:password@]host:port` or `rediss://` URL, for a password or TLS); the topology
    /// is discovered. Sharded pub/sub, Redis ≥ 7. Not together with `--redis-url` (an empty
    /// one counts as unset, so a compose override can switch a single-Redis file to a cluster).
    #[arg(long, env = "HERALD_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// TOML file with namespaces and limits.
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// API key required on `/api/*` as `Authorization: apikey <key>`.
    #[arg(long, env = "HERALD_API_KEY")]
    pub api_key: Option<String>,
    /// HMAC secret verifying HS256/384/512 connection and channel tokens (overrides
    /// `auth.hmac_secret` in the config file).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Seconds to drain connections on SIGTERM.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<f64>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Why the configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML of the expected shape.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Options of one namespace (the part of a channel name before the first `:`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Messages of history kept per channel (0: none; recovery then only works with no gap).
    pub history_size: usize,
    /// Seconds a message stays in history.
    pub history_ttl_secs: u64,
    /// Whether the channel keeps a presence list.
    pub presence: bool,
    /// Whether subscribers get join/leave events (needs `presence`).
    pub join_leave: bool,
    /// Whether clients may publish over WebSocket and `POST /publish` (the API always may).
    /// `false` is the same as `publish = "none"`.
    pub client_publish: bool,
    /// Whether clients may subscribe. `false` is the same as `subscribe = "none"`.
    pub client_subscribe: bool,
    /// Who may subscribe (and read history and presence); absent: the default namespace's
    /// rule, else `anyone` while no auth is configured and `user` once it is.
    pub subscribe: Option<SubscribeRule>,
    /// Who may publish; absent: the default namespace's rule, else `anyone` while no auth is
    /// configured and `subscriber` once it is.
    pub publish: Option<PublishRule>,
}

/// Who may subscribe to a namespace's channels (and read their history and presence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Every connection, anonymous ones too (when `auth.anonymous` lets them connect).
    Anyone,
    /// Every authenticated connection.
    User,
    /// A channel token for that channel, or the channel in the connection token's `channels`.
    Token,
    /// The application's backend decides (`auth.subscribe_proxy_url`).
    Proxy,
    /// No client: server-side subscriptions (`channels` claim) and the HTTP API only.
    None,
}

/// Who may publish to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishRule {
    /// Every connection, anonymous ones too.
    Anyone,
    /// Every authenticated connection.
    User,
    /// A connection subscribed to that channel.
    Subscriber,
    /// The application's backend decides, and may replace the data (`auth.publish_proxy_url`).
    Proxy,
    /// No client: the HTTP API only.
    None,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl_secs: 300,
            presence: true,
            join_leave: false,
            client_publish: true,
            client_subscribe: true,
            subscribe: None,
            publish: None,
        }
    }
}

impl NamespaceConfig {
    /// History options for the broker.
    pub fn history(&self) -> HistoryOptions {
        HistoryOptions {
            size: self.history_size,
            ttl: Duration::from_secs(self.history_ttl_secs),
        }
    }
}

/// Limits of one edge.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most client connections (WebSocket + SSE + waiting polls); over it: HTTP 503 or close 1013.
    pub max_connections: usize,
    /// Largest message a client may send, bytes (WebSocket frame or HTTP body); over it: close
    /// 1009 or HTTP 413.
    pub max_message_size: usize,
    /// Most channels one connection may subscribe to; over it: error `limit_exceeded`.
    pub max_channels_per_connection: usize,
    /// Outbound queue per connection, in messages; when full the connection is closed with 4008
    /// (SSE: the stream ends) and counted in `herald_slow_consumer_closes_total`.
    pub outbound_queue: usize,
    /// Seconds between protocol pings on WebSocket.
    pub ping_interval_secs: u64,
    /// Seconds to wait for a pong before closing with 4000.
    pub ping_timeout_secs: u64,
    /// Seconds between SSE keep-alive comments.
    pub sse_heartbeat_secs: u64,
    /// Longest long-poll wait a client may ask for, seconds.
    pub poll_max_timeout_secs: u64,
    /// Seconds to wait after the last local subscriber leaves before unsubscribing the broker.
    pub unsubscribe_delay_ms: u64,
    /// WebSocket read buffer per connection, bytes. It is allocated eagerly for every socket:
    /// tungstenite's default 128 KiB would dominate idle memory. Measured edge RSS per idle
    /// WebSocket at 10k: 10.9 KiB with 4096, 8.9 with 2048, 7.9 with 1024; at 19.5k (after
    /// the queue and span changes of issue 15): 6.16 with 1024, 5.67 with 512 (the default).
    /// A frame larger than this is read in this many bytes per read call (a 64 KiB publish is
    /// 128 reads): raise it where clients send large frames often.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection, bytes (flushed every wake-up anyway).
    pub ws_write_buffer: usize,
    /// Seconds to drain on SIGTERM.
    pub shutdown_grace_secs: f64,
    /// Allowed `Origin` values for browsers (empty: the request's own origin, from its `Host`).
    /// A mismatch gets 403 / close 1008.
    pub allowed_origins: Vec<String>,
    /// Ops per second per connection (every WebSocket frame; bursts of twice this); over it:
    /// error 112 `rate_limited`.
    pub command_rate: u32,
    /// Publishes per second per connection (bursts of twice this); over it: error 112.
    pub publish_rate: u32,
    /// Seconds of sustained excess over a rate before the connection is closed with 4029.
    pub rate_close_after: u64,
    /// New WebSocket and SSE connections per second per client address (bursts of twice
    /// this); over it: HTTP 429 with `Retry-After` / close 4029. Polls and `POST /publish` count
    /// against a per-address bucket of `command_rate`.
    pub connect_rate_per_ip: u32,
    /// Open connections per client address; over it: HTTP 429 / close 4029.
    pub max_connections_per_ip: usize,
    /// Open connections per authenticated user; over it: HTTP 429 / close 4029.
    pub max_connections_per_user: usize,
    /// Peers (`addr/prefix`) whose `X-Forwarded-For` / `X-Real-IP` name the client address;
    /// from anyone else those headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Bytes queued for one connection, besides the message count; over it: close 4008.
    pub outbound_queue_bytes: usize,
    /// Seconds a socket may accept no bytes while the edge has some to write; then close 4008.
    pub write_timeout_secs: u64,
    /// Seconds a client has to send a whole request head (also the next one on an idle
    /// keep-alive connection); then the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Largest request head (request line and headers), bytes (at least 8192).
    pub max_header_bytes: usize,
    /// Most bytes of publications one history read may load and answer: a `history` reply, a
    /// poll reply, or one page of a subscriber's recovery (SSE and WebSocket recovery continue
    /// page by page; a poll's cursor points at the rest).
    pub max_reply_bytes: usize,
    /// Most commands in one frame on `/connection/websocket` (Centrifugo's protocol batches
    /// commands, one per line); over it: disconnect 3501. Each command also counts against
    /// `command_rate`.
    pub max_commands_per_frame: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_message_size: 64 * 1024,
            max_channels_per_connection: 128,
            outbound_queue: 1024,
            ping_interval_secs: 25,
            ping_timeout_secs: 10,
            sse_heartbeat_secs: 15,
            poll_max_timeout_secs: 60,
            unsubscribe_delay_ms: 2000,
            ws_read_buffer: 512,
            ws_write_buffer: 4096,
            shutdown_grace_secs: 10.0,
            allowed_origins: Vec::new(),
            command_rate: 100,
            publish_rate: 20,
            rate_close_after: 3,
            connect_rate_per_ip: 20,
            max_connections_per_ip: 1000,
            max_connections_per_user: 100,
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            outbound_queue_bytes: 4 * 1024 * 1024,
            write_timeout_secs: 10,
            header_read_timeout_secs: 10,
            max_header_bytes: 16 * 1024,
            max_reply_bytes: 1024 * 1024,
            max_commands_per_frame: 64,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    auth: AuthConfig,
    limits: LimitsConfig,
    namespaces: BTreeMap<String, NamespaceConfig>,
    default_namespace: Option<NamespaceConfig>,
}

/// Everything an edge runs with.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Client listener address.
    pub listen: SocketAddr,
    /// Metrics listener address.
    pub metrics_listen: SocketAddr,
    /// This node's id.
    pub node_id: String,
    /// Redis URL, if clustered.
    pub redis_url: Option<String>,
    /// Redis Cluster seed node URLs (`redis://host:port`), if clustered over a Redis Cluster;
    /// empty otherwise. Exclusive with `redis_url`.
    pub redis_cluster: Vec<String>,
    /// API key for `/api/*`.
    pub api_key: Option<String>,
    /// Identity: token keys, anonymous access, proxy hooks.
    pub auth: AuthConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Named namespaces.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Options for channels with no namespace or an unlisted one.
    pub default_namespace: NamespaceConfig,
    /// Log format (`text` or `json`).
    pub log_format: String,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("addr"),
            metrics_listen: "127.0.0.1:0".parse().expect("addr"),
            node_id: "herald".into(),
            redis_url: None,
            redis_cluster: Vec::new(),
            api_key: None,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            namespaces: BTreeMap::new(),
            default_namespace: NamespaceConfig::default(),
            log_format: "text".into(),
        }
    }
}

impl EdgeConfig {
    /// Builds the config from flags and the optional TOML file, then validates it.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let mut limits = file.limits;
        let mut auth = file.auth;
        if let Some(secret) = cli.jwt_secret.filter(|s| !s.is_empty()) {
            auth.hmac_secret = Some(secret);
        }
        if let Some(grace) = cli.shutdown_grace {
            limits.shutdown_grace_secs = grace;
        }
        let node_id = match cli.node_id {
            Some(id) => id,
            None => hostname(),
        };
        let config = EdgeConfig {
            listen: cli.listen,
            metrics_listen: cli.metrics_listen,
            node_id,
            redis_url: cli.redis_url.filter(|u| !u.is_empty()),
            redis_cluster: cli
                .redis_cluster
                .iter()
                .map(|node| node.trim())
                .filter(|node| !node.is_empty())
                .map(cluster_node_url)
                .collect(),
            api_key: cli.api_key.filter(|k| !k.is_empty()),
            auth,
            limits,
            namespaces: file.namespaces,
            default_namespace: file.default_namespace.unwrap_or_default(),
            log_format: cli.log_format,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        if self.node_id.is_empty()
            || self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad(format!(
                "node id {:?} must be 1..=64 of [A-Za-z0-9._-]",
                self.node_id
            ));
        }
        if l.max_connections == 0 {
            return bad("limits.max_connections must be at least 1".into());
        }
        if l.max_message_size < 64 || l.max_message_size > 64 * 1024 * 1024 {
            return bad("limits.max_message_size must be 64 B ..= 64 MiB".into());
        }
        if l.max_channels_per_connection == 0 {
            return bad("limits.max_channels_per_connection must be at least 1".into());
        }
        if l.outbound_queue < 2 || l.outbound_queue > 1_000_000 {
            return bad("limits.outbound_queue must be 2 ..= 1000000".into());
        }
        if l.ping_interval_secs == 0 || l.ping_timeout_secs == 0 || l.sse_heartbeat_secs == 0 {
            return bad(
                "ping interval, ping timeout and SSE heartbeat must be at least 1 s".into(),
            );
        }
        if l.poll_max_timeout_secs > 600 {
            return bad("limits.poll_max_timeout_secs must be at most 600".into());
        }
        if l.ws_read_buffer < 512 || l.ws_write_buffer > 16 * 1024 * 1024 {
            return bad("limits.ws_read_buffer must be at least 512 B".into());
        }
        if l.command_rate == 0 || l.publish_rate == 0 || l.connect_rate_per_ip == 0 {
            return bad(
                "limits.command_rate, publish_rate and connect_rate_per_ip must be at least 1"
                    .into(),
            );
        }
        if l.max_connections_per_ip == 0 || l.max_connections_per_user == 0 {
            return bad(
                "limits.max_connections_per_ip and max_connections_per_user must be at least 1"
                    .into(),
            );
        }
        if l.write_timeout_secs == 0 || l.header_read_timeout_secs == 0 {
            return bad(
                "limits.write_timeout_secs and header_read_timeout_secs must be at least 1".into(),
            );
        }
        if l.max_commands_per_frame == 0 || l.max_commands_per_frame > 10_000 {
            return bad("limits.max_commands_per_frame must be 1 ..= 10000".into());
        }
        if l.max_reply_bytes < l.max_message_size {
            return bad("limits.max_reply_bytes must be at least max_message_size".into());
        }
        if l.max_header_bytes < 8192 {
            return bad("limits.max_header_bytes must be at least 8192".into());
        }
        if l.outbound_queue_bytes < l.max_message_size {
            return bad("limits.outbound_queue_bytes must be at least max_message_size".into());
        }
        for proxy in &l.trusted_proxies {
            crate::cidr::Cidr::parse(proxy)
                .map_err(|e| ConfigError::Invalid(format!("limits.trusted_proxies: {e}")))?;
        }
        if !(l.shutdown_grace_secs.is_finite() && l.shutdown_grace_secs >= 0.0) {
            return bad("shutdown grace must be a non-negative number of seconds".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(format!(
                "log format {:?} must be `text` or `json`",
                self.log_format
            ));
        }
        self.auth
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("auth: {e}")))?;
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad("redis url must start with redis:// or rediss://".into());
            }
        }
        if self.redis_url.is_some() && !self.redis_cluster.is_empty() {
            return bad("set either a redis url or redis cluster nodes, not both".into());
        }
        for url in &self.redis_cluster {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad(format!(
                    "redis cluster node {url:?} must be host:port, redis:// or rediss://"
                ));
            }
        }
        for (name, ns) in self
            .namespaces
            .iter()
            .map(|(n, c)| (n.as_str(), c))
            .chain([("default", &self.default_namespace)])
        {
            if name.is_empty()
                || herald_protocol::validate_channel(name).is_err()
                || name.contains(':')
            {
                return bad(format!(
                    "namespace name {name:?} is not a valid channel prefix"
                ));
            }
            if ns.history_size > 1_000_000 {
                return bad(format!(
                    "namespace {name}: history_size must be at most 1000000"
                ));
            }
            if ns.history_size > 0 && ns.history_ttl_secs == 0 {
                return bad(format!(
                    "namespace {name}: history_ttl_secs must be at least 1 when history is on"
                ));
            }
            if ns.join_leave && !ns.presence {
                return bad(format!(
                    "namespace {name}: join_leave needs presence = true"
                ));
            }
            if ns.subscribe == Some(SubscribeRule::Proxy) && self.auth.subscribe_proxy_url.is_none()
            {
                return bad(format!(
                    "namespace {name}: subscribe = \"proxy\" needs auth.subscribe_proxy_url"
                ));
            }
            if ns.publish == Some(PublishRule::Proxy) && self.auth.publish_proxy_url.is_none() {
                return bad(format!(
                    "namespace {name}: publish = \"proxy\" needs auth.publish_proxy_url"
                ));
            }
        }
        Ok(())
    }

    /// The options of a channel's namespace.
    pub fn namespace(&self, channel: &str) -> &NamespaceConfig {
        let ns = herald_protocol::namespace_of(channel);
        self.namespaces.get(ns).unwrap_or(&self.default_namespace)
    }

    /// Whether any identity source is configured (token keys or a connect proxy): it turns the
    /// defaults from open (`anyone`) to closed (`user` / `subscriber`).
    pub fn auth_configured(&self) -> bool {
        self.auth.has_keys() || self.auth.connect_proxy_url.is_some()
    }

    /// Who may subscribe to `channel`.
    pub fn subscribe_rule(&self, channel: &str) -> SubscribeRule {
        let ns = self.namespace(channel);
        if !ns.client_subscribe {
            return SubscribeRule::None;
        }
        ns.subscribe
            .or(self.default_namespace.subscribe)
            .unwrap_or(if self.auth_configured() {
                SubscribeRule::User
            } else {
                SubscribeRule::Anyone
            })
    }

    /// Who may publish to `channel`.
    pub fn publish_rule(&self, channel: &str) -> PublishRule {
        let ns = self.namespace(channel);
        if !ns.client_publish {
            return PublishRule::None;
        }
        ns.publish
            .or(self.default_namespace.publish)
            .unwrap_or(if self.auth_configured() {
                PublishRule::Subscriber
            } else {
                PublishRule::Anyone
            })
    }

    /// Ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.limits.ping_interval_secs)
    }

    /// Shutdown grace.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.limits.shutdown_grace_secs)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "herald".into())
}

/// A `--redis-cluster` entry as a URL: `host:port` becomes `redis://host:port`; an entry with a
/// scheme is kept (a wrong scheme is refused by `validate`).
fn cluster_node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<EdgeConfig, ConfigError> {
        EdgeConfig::from_cli(Cli::try_parse_from(args).unwrap())
    }

    #[test]
    fn defaults_validate() {
        let c = parse(&["herald", "--node-id", "n1"]).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.limits.ws_read_buffer, 512);
        assert!(c.redis_url.is_none());
        assert!(c.redis_cluster.is_empty());
    }

    #[test]
    fn redis_cluster_seeds_become_urls() {
        let c = parse(&[
            "herald",
            "--node-id",
            "n1",
            "--redis-cluster",
            "10.0.0.1:7000, rediss://:pw@10.0.0.2:7001,",
        ])
        .unwrap();
        assert_eq!(
            c.redis_cluster,
            vec!["redis://10.0.0.1:7000", "rediss://:pw@10.0.0.2:7001"]
        );
        assert!(c.redis_url.is_none());
        // An empty --redis-url (an emptied HERALD_REDIS_URL) is unset; a real one conflicts.
        let c = parse(&[
            "herald",
            "--node-id",
            "n1",
            "--redis-url",
            "",
            "--redis-cluster",
            "h:1",
        ])
        .unwrap();
        assert!(c.redis_url.is_none());
        let both = parse(&[
            "herald",
            "--node-id",
            "n1",
            "--redis-url",
            "redis://h:2",
            "--redis-cluster",
            "h:1",
        ]);
        assert!(both.is_err_and(|e| e.to_string().contains("not both")));
    }

    #[test]
    fn file_sets_namespaces_and_limits() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_connections = 5\n[namespaces.chat]\nhistory_size = 7\njoin_leave = true\n",
        )
        .unwrap();
        let c = parse(&[
            "herald",
            "--node-id",
            "n1",
            "--config",
            path.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.namespace("chat:x").history_size, 7);
        assert!(c.namespace("chat:x").join_leave);
        assert_eq!(c.namespace("other:x").history_size, 100);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["herald", "--node-id", "bad id"]).is_err());
        assert!(parse(&["herald", "--node-id", "n", "--redis-url", "http://x"]).is_err());
        assert!(parse(&["herald", "--node-id", "n", "--log-format", "xml"]).is_err());
        assert!(parse(&["herald", "--node-id", "n", "--redis-cluster", "http://x:1"]).is_err());
        let both = ["--redis-url", "redis://a:1", "--redis-cluster", "b:2"];
        assert!(parse(&[&["herald", "--node-id", "n"][..], &both[..]].concat()).is_err());
        let c = EdgeConfig {
            redis_url: Some("redis://a:1".into()),
            redis_cluster: vec!["redis://b:2".into()],
            ..EdgeConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(parse(&[
            "herald",
            "--node-id",
            "n",
            "--config",
            "/nonexistent/h.toml"
        ])
        .is_err());
        let mut c = EdgeConfig::default();
        c.limits.outbound_queue = 0;
        assert!(c.validate().is_err());
        let mut c = EdgeConfig::default();
        c.default_namespace.presence = false;
        c.default_namespace.join_leave = true;
        assert!(c.validate().is_err());
    }
}

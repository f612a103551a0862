//! Listeners, routes, and the life of a node from start to graceful shutdown.
//!
//! [`Edge::start`] binds the client and metrics listeners and returns at once with their
//! addresses; [`Edge::shutdown`] (or SIGTERM in the binary) drains: readiness fails, new
//! connections are refused, WebSockets are closed with 1012 spread over half the grace period,
//! SSE streams and polls end, and whatever is left when the grace period ends is dropped.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use herald_broker::memory::MemoryBroker;
use herald_broker::Broker;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::listener::ListenerLimits;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::proxy::{ProxyClient, ProxyConfig};
use crate::{api, transport};

mod headers;

/// The cookie naming the edge a browser is on; nginx routes by it.
pub const NODE_COOKIE: &str = "herald_node";

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`). tokio's default
/// is 1024: a burst of reconnecting clients (an edge dying, a deploy) overflowed it and paid a
/// 1 s SYN retry each, which the loadtest showed as a 1.1 s connect p99.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds a listener with an explicit backlog (and SO_REUSEADDR, for quick restarts).
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// How often the node writes its registry entry.
const REGISTRY_INTERVAL: Duration = Duration::from_secs(5);

/// A running edge.
pub struct Edge {
    /// The node's shared state.
    pub node: Arc<Node>,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where Prometheus scrapes.
    pub metrics_addr: SocketAddr,
    server: JoinHandle<()>,
    metrics_server: JoinHandle<()>,
    stop_accepting: tokio_util::sync::CancellationToken,
}

impl Edge {
    /// Starts an edge with the broker its config names (Redis when `redis_url` is set, a Redis
    /// Cluster when `redis_cluster` is).
    pub async fn start(config: EdgeConfig) -> anyhow::Result<Edge> {
        let metrics = Arc::new(Metrics::new());
        let broker: Arc<dyn Broker> = match &config.redis_url {
            Some(url) => crate::cluster::connect_redis(url, &config, &metrics).await?,
            None if !config.redis_cluster.is_empty() => {
                crate::cluster::connect_redis_cluster(&config.redis_cluster, &config, &metrics)
                    .await?
            }
            None => {
                let broker = Arc::new(MemoryBroker::new());
                // Stops on `Broker::shutdown`, which `Edge::shutdown` calls.
                broker.spawn_sweeper(Duration::from_secs(1));
                broker
            }
        };
        Self::start_with(config, broker, metrics).await
    }

    /// Starts an edge over a given broker.
    pub async fn start_with(
        config: EdgeConfig,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Edge> {
        let listener = bind(config.listen, LISTEN_BACKLOG)?;
        let metrics_listener = bind(config.metrics_listen, 128)?;
        let addr = listener.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        let verifier = crate::auth::Verifier::new(&config.auth)
            .await
            .map_err(|e| anyhow::anyhow!("auth: {e}"))?;
        let proxy = proxy_client(&config.auth).map_err(|e| anyhow::anyhow!("auth proxy: {e}"))?;
        let node = Node::new(config, broker, metrics, verifier, proxy);
        let stop_accepting = tokio_util::sync::CancellationToken::new();

        let app = router(node.clone());
        let l = &node.config.limits;
        let limits = ListenerLimits {
            write_timeout: Duration::from_secs(l.write_timeout_secs),
            header_read_timeout: Duration::from_secs(l.header_read_timeout_secs),
            max_header_bytes: l.max_header_bytes,
            max_sockets: l.max_connections + l.max_connections / 8 + 64,
        };
        let server = tokio::spawn(crate::listener::serve(
            listener,
            app,
            limits,
            node.metrics.clone(),
            stop_accepting.clone(),
        ));
        let metrics_app = Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(node.clone());
        let stop = node.shutdown.clone();
        let metrics_server = tokio::spawn(async move {
            let _ = axum::serve(metrics_listener, metrics_app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        node.background.spawn(run_registry(node.clone()));
        node.background.spawn(run_limits_sweeper(node.clone()));
        node.background
            .spawn(node.hub.clone().run_reaper(node.shutdown.clone()));
        tracing::info!(node = %node.config.node_id, %addr, %metrics_addr, "edge listening");
        Ok(Edge {
            node,
            addr,
            metrics_addr,
            server,
            metrics_server,
            stop_accepting,
        })
    }

    /// Drains and stops: see the module docs.
    pub async fn shutdown(self) {
        let node = self.node.clone();
        let grace = node.config.shutdown_grace();
        node.draining.store(true, Ordering::Release);
        tracing::info!(grace_secs = grace.as_secs_f64(), "draining");
        self.stop_accepting.cancel();
        for conn in node.hub.all_connections() {
            conn.kill(herald_protocol::CloseCode::Restart);
        }
        node.shutdown.cancel();
        node.tracker.close();
        node.background.close();
        let drained = tokio::time::timeout(grace + Duration::from_secs(1), async {
            node.tracker.wait().await;
            node.background.wait().await;
            let _ = self.server.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; dropping the remaining connections");
        }
        self.metrics_server.abort();
        node.broker.shutdown().await;
    }
}

/// The backend hooks client, when any hook URL is configured.
fn proxy_client(auth: &crate::config::AuthConfig) -> Result<Option<ProxyClient>, String> {
    if auth.connect_proxy_url.is_none()
        && auth.subscribe_proxy_url.is_none()
        && auth.publish_proxy_url.is_none()
    {
        return Ok(None);
    }
    ProxyClient::new(ProxyConfig {
        connect_url: auth.connect_proxy_url.clone(),
        subscribe_url: auth.subscribe_proxy_url.clone(),
        publish_url: auth.publish_proxy_url.clone(),
        timeout: auth.proxy_timeout(),
        concurrency: auth.proxy_concurrency,
    })
    .map(Some)
}

fn router(node: Arc<Node>) -> Router {
    let dev = if node.config.auth.dev_token_endpoint {
        tracing::warn!("auth.dev_token_endpoint is on: anyone can get a token for any user");
        Router::new().route("/dev/token", get(api::dev_token))
    } else {
        Router::new()
    };
    let api = Router::new()
        .route("/api/publish", post(api::api_publish))
        .route("/api/broadcast", post(api::api_broadcast))
        .route("/api/presence/{channel}", get(api::api_presence))
        .route("/api/history/{channel}", get(api::api_history))
        .route("/api/info", get(api::api_info))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/ws", any(transport::ws::upgrade))
        .route("/connection/websocket", any(transport::centrifugo::upgrade))
        .route("/sse", get(transport::sse::handler))
        .route("/poll", get(transport::poll::handler))
        .route("/publish", post(api::client_publish))
        .route("/presence", get(api::client_presence))
        .route("/history", get(api::client_history))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(crate::pages::routes())
        .merge(api)
        .merge(dev)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(headers::EdgeHeaders::new(node.clone()))
        .with_state(node)
}

async fn not_found() -> Response {
    EdgeError::http(StatusCode::NOT_FOUND, "no such endpoint").into_response()
}

async fn method_not_allowed() -> Response {
    EdgeError::http(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here").into_response()
}

async fn require_api_key(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match api::check_api_key(&node, req.headers(), peer) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            node.metrics.error(e.code(), e.source_tag());
            e.into_response()
        }
    }
}

async fn metrics_handler(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

/// How often the per-address buckets of idle addresses are forgotten.
const LIMITS_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Forgets idle addresses' buckets every [`LIMITS_SWEEP_INTERVAL`] until shutdown.
async fn run_limits_sweeper(node: Arc<Node>) {
    let mut tick = tokio::time::interval(LIMITS_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tick.tick() => node.limits.sweep(),
        }
    }
}

/// Writes this node's registry entry every [`REGISTRY_INTERVAL`] until shutdown.
async fn run_registry(node: Arc<Node>) {
    let mut tick = tokio::time::interval(REGISTRY_INTERVAL);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(err) = node.broker.heartbeat_node(node.info()).await {
            tracing::warn!(cause = %err, "node registry heartbeat failed");
        }
    }
}

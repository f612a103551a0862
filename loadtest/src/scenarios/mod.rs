//! Scenarios and what they share: the [`RunContext`] of one run (endpoints, clients,
//! counters, recorders, the cancellation token) and the measurement window.

pub(crate) mod connect;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod publisher;
pub(crate) mod receiver;
pub(crate) mod rooms;
pub(crate) mod storm;
pub(crate) mod summary;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::{CommonArgs, Scenario, Target};
use crate::clients::http::HttpClients;
use crate::clients::{pusher, SubscribeSpec};
use crate::errors::ErrorCounts;
use crate::net::{Endpoint, SourceAddrs};
use crate::progress::Counters;
use crate::report::Results;
use crate::stats::LatencyRecorder;
use crate::sysinfo::{available_cores, ProcSample};

/// Everything the tasks of one run share. Built once, handed out as `Arc<RunContext>`.
pub(crate) struct RunContext {
    /// The flags common to every scenario.
    pub(crate) args: CommonArgs,
    /// The edges (or nginx), resolved; connection `i` uses `endpoints[i % len]`.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Where HTTP publishes go.
    pub(crate) publish_endpoint: Endpoint,
    /// Source addresses for client sockets.
    pub(crate) sources: SourceAddrs,
    /// HTTP clients, one per source address.
    pub(crate) http: HttpClients,
    /// Live counters (progress bar and report).
    pub(crate) counters: Arc<Counters>,
    /// Failed connection attempts by class.
    pub(crate) connect_errors: Arc<ErrorCounts>,
    /// Failed publishes, by class.
    pub(crate) publish_errors: Arc<ErrorCounts>,
    /// Established connections that failed later, by class.
    pub(crate) drop_errors: Arc<ErrorCounts>,
    /// Delivery latency (receive - scheduled send), µs.
    pub(crate) latency: LatencyRecorder,
    /// Latency of deliveries whose sender sat on the receiver's edge (rooms, K > 1).
    pub(crate) same_edge: LatencyRecorder,
    /// Latency of deliveries whose sender sat on another edge (rooms, K > 1).
    pub(crate) cross_edge: LatencyRecorder,
    /// Time from starting a connection attempt to subscribed, µs.
    pub(crate) connect_latency: LatencyRecorder,
    /// Channel names are `prefix` + `c<i>`.
    pub(crate) prefix: String,
    /// sockudo's app credentials (unused by the other targets).
    pub(crate) app: Arc<pusher::App>,
    /// Cancelled when the run ends: every connection task returns.
    pub(crate) cancel: CancellationToken,
}

impl RunContext {
    /// Resolves the endpoints and builds the clients.
    pub(crate) async fn new(args: CommonArgs) -> Result<Self> {
        if args.urls.is_empty() {
            bail!("give at least one --url");
        }
        let mut endpoints = Vec::new();
        for url in &args.urls {
            endpoints.push(Endpoint::resolve(url).await?);
        }
        let publish_endpoint = match &args.publish_url {
            Some(url) => Endpoint::resolve(url).await?,
            None => endpoints[endpoints.len() - 1].clone(),
        };
        let sources = SourceAddrs::loopback(args.source_ips)?;
        let http = HttpClients::new(&sources)?;
        let shards = available_cores() * 4;
        // Pusher channel names allow `[A-Za-z0-9_\-=@,.;]` only: no `:` for sockudo.
        let sep = if args.target == Target::Sockudo {
            '-'
        } else {
            ':'
        };
        let prefix = args
            .channel_prefix
            .clone()
            .unwrap_or_else(|| format!("bench{sep}{:08x}-", rand::random::<u32>()));
        let app = Arc::new(pusher::App {
            id: args.sockudo_app_id.clone(),
            key: args.sockudo_app_key.clone(),
            secret: args.sockudo_app_secret.clone(),
        });
        Ok(Self {
            args,
            endpoints,
            publish_endpoint,
            sources,
            http,
            counters: Arc::default(),
            connect_errors: Arc::default(),
            drop_errors: Arc::default(),
            publish_errors: Arc::default(),
            latency: LatencyRecorder::new(shards),
            same_edge: LatencyRecorder::new(shards),
            cross_edge: LatencyRecorder::new(shards),
            connect_latency: LatencyRecorder::new(shards),
            prefix,
            app,
            cancel: CancellationToken::new(),
        })
    }

    /// The name of channel `i`.
    pub(crate) fn channel_name(&self, i: usize) -> String {
        format!("{}c{i}", self.prefix)
    }

    /// Which edge connection `conn` uses.
    pub(crate) fn edge_of(&self, conn: usize) -> usize {
        conn % self.endpoints.len()
    }

    /// The subscription of connection `conn` to `channels`.
    pub(crate) fn spec(&self, conn: usize, channels: &[usize]) -> SubscribeSpec {
        SubscribeSpec {
            endpoint: self.endpoints[self.edge_of(conn)].clone(),
            source: self.sources.pick(conn),
            channels: channels
                .iter()
                .map(|&c| (c, self.channel_name(c)))
                .collect(),
            since: Vec::new(),
            pubsub: false,
            timeout: self.args.connect_timeout,
            app: self.app.clone(),
        }
    }

    /// When connection `i` of `n` should start opening, spread over `--ramp`.
    pub(crate) fn ramp_offset(&self, i: usize, n: usize) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        self.args.ramp.mul_f64(i as f64 / n as f64)
    }
}

/// CPU and RSS of this tool and of the server processes over the measured phase.
pub(crate) struct Window {
    /// This tool at the start and at the end.
    pub(crate) tool: (ProcSample, Option<ProcSample>),
    /// Each `--server-pid` at the start and at the end (None when unreadable).
    pub(crate) servers: Vec<(u32, Option<ProcSample>, Option<ProcSample>)>,
}

impl Window {
    /// Starts a measurement window now.
    pub(crate) fn begin(server_pids: &[u32]) -> Self {
        Self {
            tool: (
                ProcSample::read("self").expect("/proc/self is readable"),
                None,
            ),
            servers: server_pids
                .iter()
                .map(|&pid| (pid, ProcSample::read(&pid.to_string()), None))
                .collect(),
        }
    }

    /// Ends the window now.
    pub(crate) fn end(&mut self) {
        self.tool.1 = ProcSample::read("self");
        for (pid, _, end) in &mut self.servers {
            *end = ProcSample::read(&pid.to_string());
        }
    }
}

/// Runs the chosen scenario; returns its results and the measured window.
pub(crate) async fn run(scenario: &Scenario, ctx: Arc<RunContext>) -> Result<(Results, Window)> {
    match scenario {
        Scenario::Fanout(_) => fanout::run(ctx).await,
        Scenario::Rooms(a) => rooms::run(ctx, a.room_size).await,
        Scenario::Idle(_) => idle::run(ctx).await,
        Scenario::Connect(a) => connect::run(ctx, !a.no_hold).await,
        Scenario::Storm(a) => storm::run(ctx, a).await,
    }
}

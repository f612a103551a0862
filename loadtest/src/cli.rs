//! Command-line interface: one subcommand per scenario, sharing [`CommonArgs`].

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// The load generator for Herald and nchan.
#[derive(Debug, Parser)]
#[command(name = "herald-loadtest", version, about)]
pub(crate) struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

/// One scenario of BENCHMARKS.md.
#[derive(Debug, Subcommand, Serialize)]
#[serde(untagged)]
pub(crate) enum Scenario {
    /// M subscribers spread over `--channels`, one publisher at `--rate` msgs/s in total.
    Fanout(FanoutArgs),
    /// Rooms of `--room-size` members; every member publishes `--rate` msgs/s on its room.
    Rooms(RoomsArgs),
    /// Ramp to `--connections` subscribers over `--ramp` and hold them for `--duration`.
    Idle(IdleArgs),
    /// Open-loop connection arrivals at `--rate` connections/s for `--duration`.
    Connect(ConnectArgs),
    /// Herald only: clients across edges, one edge is killed, measure reconnect and resume.
    Storm(StormArgs),
}

impl Scenario {
    /// The scenario's name as reported.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout(_) => "fanout",
            Scenario::Rooms(_) => "rooms",
            Scenario::Idle(_) => "idle",
            Scenario::Connect(_) => "connect",
            Scenario::Storm(_) => "storm",
        }
    }

    /// The flags shared by every scenario.
    pub(crate) fn common(&self) -> &CommonArgs {
        match self {
            Scenario::Fanout(a) => &a.common,
            Scenario::Rooms(a) => &a.common,
            Scenario::Idle(a) => &a.common,
            Scenario::Connect(a) => &a.common,
            Scenario::Storm(a) => &a.common,
        }
    }
}

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// Herald edges (`/ws`, `/sse`, `/poll`, `/api/publish`).
    Herald,
    /// nginx + nchan (`/sub/<ch>`, `/pub/<ch>`, `/ps/<ch>`), see bench/nchan/nginx.conf.
    Nchan,
    /// sockudo, Pusher protocol 7 (`/app/<key>`, signed `POST /apps/<id>/events`), see
    /// bench/sockudo/. WebSocket only.
    Sockudo,
}

/// How subscribers receive messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// WebSocket.
    Ws,
    /// Server-Sent Events (EventSource).
    Sse,
    /// HTTP long-polling.
    Longpoll,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize)]
pub(crate) struct CommonArgs {
    /// System under test.
    #[arg(long, value_enum, default_value = "herald")]
    pub(crate) target: Target,
    /// Base URL of an edge (or of nginx); repeat for several. Clients are spread round-robin.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub(crate) urls: Vec<String>,
    /// Transport of the subscribers.
    #[arg(long, value_enum, default_value = "ws")]
    pub(crate) transport: Transport,
    /// Number of client connections.
    #[arg(long, default_value_t = 100)]
    pub(crate) connections: usize,
    /// Number of channels (rooms: number of rooms, default connections / room size).
    #[arg(long)]
    pub(crate) channels: Option<usize>,
    /// Message rate in msgs/s (fanout: total; rooms: per member; connect: connections/s).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Size in bytes of each message's JSON data object (padded).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// How long the measured phase lasts, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub(crate) duration: Duration,
    /// Spread connection opening over this long, e.g. `5s` (0 = as fast as possible).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub(crate) ramp: Duration,
    /// Spread client sockets over 127.0.0.2 .. 127.0.0.(N+1) (bind before connect); 0 = off.
    #[arg(long, default_value_t = 0)]
    pub(crate) source_ips: usize,
    /// Print the report as JSON on stdout instead of the human table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// How long to wait for in-flight messages after the last send.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub(crate) drain: Duration,
    /// Timeout of one connection attempt (TCP + handshake + subscribe).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub(crate) connect_timeout: Duration,
    /// Channel name prefix; default `bench:<run id>-` so runs never see each other's history.
    #[arg(long)]
    pub(crate) channel_prefix: Option<String>,
    /// Publish through this base URL (default: the last `--url`).
    #[arg(long)]
    pub(crate) publish_url: Option<String>,
    /// Most publishes queued per channel (HTTP publishers send one request per channel at
    /// a time; a full queue delays sends, and the delay shows up as latency because it is
    /// measured from the scheduled time).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_inflight: usize,
    /// Pid of a server process to sample (CPU, RSS); repeat for several (edges, nginx, redis).
    #[arg(long = "server-pid")]
    pub(crate) server_pids: Vec<u32>,
    /// sockudo: the app id (`SOCKUDO_DEFAULT_APP_ID` of bench/sockudo/sockudo.sh).
    #[arg(long, env = "SOCKUDO_APP_ID", default_value = "herald-bench")]
    pub(crate) sockudo_app_id: String,
    /// sockudo: the app key.
    #[arg(long, env = "SOCKUDO_APP_KEY", default_value = "herald-bench-key")]
    pub(crate) sockudo_app_key: String,
    /// sockudo: the app secret (signs publishes; left out of the JSON report).
    #[arg(
        long,
        env = "SOCKUDO_APP_SECRET",
        default_value = "herald-bench-secret"
    )]
    #[serde(skip)]
    pub(crate) sockudo_app_secret: String,
}

/// `fanout` flags.
#[derive(Debug, Clone, Args, Serialize)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) common: CommonArgs,
}

/// `rooms` flags.
#[derive(Debug, Clone, Args, Serialize)]
pub(crate) struct RoomsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) common: CommonArgs,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub(crate) room_size: usize,
}

/// `idle` flags.
#[derive(Debug, Clone, Args, Serialize)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) common: CommonArgs,
}

/// `connect` flags.
#[derive(Debug, Clone, Args, Serialize)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) common: CommonArgs,
    /// Close each connection as soon as it is established instead of holding it.
    #[arg(long)]
    pub(crate) no_hold: bool,
}

/// `storm` flags.
#[derive(Debug, Clone, Args, Serialize)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) common: CommonArgs,
    /// Shell command that kills one edge (run with `sh -c`). Without it, the first
    /// disconnect observed marks the kill (the script kills the edge itself).
    #[arg(long)]
    pub(crate) kill_cmd: Option<String>,
    /// When to run `--kill-cmd`, measured from the start of the measured phase.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub(crate) kill_after: Duration,
    /// Largest random delay before a disconnected client's first reconnect attempt.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub(crate) reconnect_jitter: Duration,
}

/// Parses `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("bad duration unit in {s:?} (use ms, s, m, h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn urls_repeat() {
        let cli = Cli::try_parse_from([
            "x",
            "fanout",
            "--url",
            "http://a:1",
            "--url",
            "http://b:2",
            "--target",
            "nchan",
        ])
        .unwrap();
        assert_eq!(cli.scenario.common().urls, vec!["http://a:1", "http://b:2"]);
        assert_eq!(cli.scenario.common().target, Target::Nchan);
    }

    #[test]
    fn sockudo_target_has_bench_app_defaults() {
        let cli = Cli::try_parse_from(["x", "idle", "--target", "sockudo"]).unwrap();
        let c = cli.scenario.common();
        assert_eq!(c.target, Target::Sockudo);
        // The defaults match bench/sockudo/sockudo.env; the secret stays out of reports.
        assert_eq!(c.sockudo_app_key, "herald-bench-key");
        let params = serde_json::to_value(&cli.scenario).unwrap();
        assert!(params.get("sockudo_app_secret").is_none());
        assert_eq!(params["target"], "sockudo");
    }
}

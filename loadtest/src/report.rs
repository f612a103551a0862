//! The report of a run: [`Results`] from the scenario, plus the parameters, the
//! environment and the tool's own CPU and RSS; printed as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenarios::Window;
use crate::stats::{LatencySummary, SeqSummary};
use crate::sysinfo::{self_peak_rss_kib, Environment};

/// Above this share of the cores it may use, the tool was the bottleneck.
const SATURATION: f64 = 0.90;

/// Connection outcomes.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ConnStats {
    /// Connection attempts.
    pub(crate) attempted: u64,
    /// Attempts that ended subscribed.
    pub(crate) established: u64,
    /// Failed attempts by class.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Established connections lost before the end, by class.
    pub(crate) dropped: BTreeMap<String, u64>,
    /// From starting an attempt to subscribed.
    pub(crate) connect_latency: LatencySummary,
}

/// One channel with loss, duplicates or reordering.
#[derive(Debug, Serialize)]
pub(crate) struct ChannelAnomaly {
    /// Channel name.
    pub(crate) channel: String,
    /// Receiving connections.
    pub(crate) receivers: u64,
    /// Their summed tally.
    #[serde(flatten)]
    pub(crate) seq: SeqSummary,
}

/// Message outcomes.
#[derive(Debug, Default, Serialize)]
pub(crate) struct MessageStats {
    /// Length of the sending phase, s.
    pub(crate) send_secs: f64,
    /// Messages published.
    pub(crate) published: u64,
    /// Publishes that failed, by class.
    pub(crate) publish_errors: BTreeMap<String, u64>,
    /// Messages received (all copies).
    pub(crate) deliveries: u64,
    /// `deliveries / send_secs`.
    pub(crate) deliveries_per_sec: f64,
    /// Receive time minus scheduled send time.
    pub(crate) latency: LatencySummary,
    /// Rooms over several edges: sender on the receiver's edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) same_edge: Option<LatencySummary>,
    /// Rooms over several edges: sender on another edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cross_edge: Option<LatencySummary>,
    /// Loss, duplicates and reordering over every (channel, sender, receiver).
    pub(crate) seq: SeqSummary,
    /// Every channel where something went wrong.
    pub(crate) channel_anomalies: Vec<ChannelAnomaly>,
    /// Whether every receiver got everything before the drain timeout.
    pub(crate) drained: bool,
}

/// What a scenario measured. Sections a scenario has no use for stay empty.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Results {
    /// Connections.
    pub(crate) connections: ConnStats,
    /// Messages (fanout, rooms, storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) messages: Option<MessageStats>,
    /// Scenario-specific figures (idle memory, connect rates, storm recovery).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) extra: BTreeMap<String, serde_json::Value>,
}

/// CPU and memory of one process over the measured phase.
#[derive(Debug, Serialize)]
pub(crate) struct ProcUsage {
    /// Process id (0 = this tool).
    pub(crate) pid: u32,
    /// Average CPU, in cores.
    pub(crate) cpu_cores: f64,
    /// RSS at the end, MiB.
    pub(crate) rss_mib: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Scenario name.
    pub(crate) scenario: &'static str,
    /// The flags it ran with.
    pub(crate) params: serde_json::Value,
    /// What it measured.
    pub(crate) results: Results,
    /// The tool itself over the measured phase.
    pub(crate) tool: ToolUsage,
    /// Each `--server-pid` over the measured phase.
    pub(crate) servers: Vec<ProcUsage>,
    /// The machine.
    pub(crate) environment: Environment,
    /// False when the tool saturated its cores (the numbers measure the tool, not the server).
    pub(crate) valid: bool,
    /// Why the run is invalid, or other caveats.
    pub(crate) notes: Vec<String>,
}

/// The tool's own consumption.
#[derive(Debug, Serialize)]
pub(crate) struct ToolUsage {
    /// Average CPU over the measured phase, in cores.
    pub(crate) cpu_cores: f64,
    /// Cores it may run on.
    pub(crate) cores_available: usize,
    /// `cpu_cores / cores_available`, percent.
    pub(crate) cpu_percent_of_available: f64,
    /// RSS at the end, MiB.
    pub(crate) rss_mib: f64,
    /// Peak RSS, MiB.
    pub(crate) peak_rss_mib: f64,
    /// Whether it saturated its cores (> 90 % on average).
    pub(crate) saturated: bool,
}

impl Report {
    /// Assembles the report; judges validity from the tool's CPU.
    pub(crate) fn new(
        scenario: &'static str,
        params: serde_json::Value,
        results: Results,
        window: &Window,
        environment: Environment,
    ) -> Self {
        let (start, end) = (
            &window.tool.0,
            window.tool.1.as_ref().unwrap_or(&window.tool.0),
        );
        let cores = environment.cpus_available_to_tool.max(1);
        let cpu = end.cores_since(start);
        let saturated = cpu > SATURATION * cores as f64;
        let tool = ToolUsage {
            cpu_cores: round3(cpu),
            cores_available: cores,
            cpu_percent_of_available: round3(100.0 * cpu / cores as f64),
            rss_mib: round3(end.rss_kib as f64 / 1024.0),
            peak_rss_mib: round3(self_peak_rss_kib() as f64 / 1024.0),
            saturated,
        };
        let servers = window
            .servers
            .iter()
            .filter_map(|(pid, a, b)| {
                let (a, b) = (a.as_ref()?, b.as_ref()?);
                Some(ProcUsage {
                    pid: *pid,
                    cpu_cores: round3(b.cores_since(a)),
                    rss_mib: round3(b.rss_kib as f64 / 1024.0),
                })
            })
            .collect();
        let mut notes = Vec::new();
        if saturated {
            notes.push(format!(
                "INVALID: the loadtest used {:.0}% of its {cores} core(s); it was the bottleneck",
                tool.cpu_percent_of_available
            ));
        }
        Self {
            scenario,
            params,
            results,
            tool,
            servers,
            environment,
            valid: !saturated,
            notes,
        }
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let mut o = String::new();
        let p = &self.params;
        let _ = writeln!(
            o,
            "scenario {} | target {} | transport {} | connections {} | rate {} | payload {} B | duration {} s",
            self.scenario, s(&p["target"]), s(&p["transport"]), p["connections"], p["rate"], p["payload"], p["duration"]
        );
        let c = &self.results.connections;
        let _ = writeln!(
            o,
            "connections   {} of {} established",
            c.established, c.attempted
        );
        row_map(&mut o, "connect errs", &c.errors);
        row_map(&mut o, "dropped", &c.dropped);
        row_lat(&mut o, "connect lat", &c.connect_latency);
        if let Some(m) = &self.results.messages {
            let _ = writeln!(
                o,
                "messages      published {} in {:.1} s | deliveries {} = {:.0}/s | drained {}",
                m.published, m.send_secs, m.deliveries, m.deliveries_per_sec, m.drained
            );
            row_map(&mut o, "publish errs", &m.publish_errors);
            row_lat(&mut o, "latency", &m.latency);
            if let Some(l) = &m.same_edge {
                row_lat(&mut o, "same edge", l);
            }
            if let Some(l) = &m.cross_edge {
                row_lat(&mut o, "cross edge", l);
            }
            let s = &m.seq;
            let _ = writeln!(
                o,
                "sequence      expected {} received {} | LOST {} | DUPLICATES {} | REORDERED {}",
                s.expected, s.received, s.lost, s.duplicates, s.reordered
            );
            for a in m.channel_anomalies.iter().take(20) {
                let _ = writeln!(
                    o,
                    "  channel {} ({} receivers): lost {} dup {} reordered {}",
                    a.channel, a.receivers, a.seq.lost, a.seq.duplicates, a.seq.reordered
                );
            }
            if m.channel_anomalies.len() > 20 {
                let _ = writeln!(
                    o,
                    "  ... {} more channels (see --json)",
                    m.channel_anomalies.len() - 20
                );
            }
        }
        for (k, v) in &self.results.extra {
            let _ = writeln!(o, "{k:<13} {v}");
        }
        let t = &self.tool;
        let _ = writeln!(
            o,
            "loadtest      cpu {:.2} cores ({:.0}% of {}) | rss {:.1} MiB (peak {:.1})",
            t.cpu_cores, t.cpu_percent_of_available, t.cores_available, t.rss_mib, t.peak_rss_mib
        );
        for s in &self.servers {
            let _ = writeln!(
                o,
                "server {:<6} cpu {:.2} cores | rss {:.1} MiB",
                s.pid, s.cpu_cores, s.rss_mib
            );
        }
        let _ = writeln!(o, "valid         {}", self.valid);
        for n in &self.notes {
            let _ = writeln!(o, "note          {n}");
        }
        o
    }
}

fn row_map(o: &mut String, label: &str, m: &BTreeMap<String, u64>) {
    if !m.is_empty() {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(o, "{label:<13} {}", parts.join(", "));
    }
}

fn row_lat(o: &mut String, label: &str, l: &LatencySummary) {
    let _ = writeln!(
        o,
        "{label:<13} p50 {:.2} ms | p90 {:.2} | p99 {:.2} | p99.9 {:.2} | max {:.2} | n {}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    );
}

/// Rounds to 3 decimals for readable JSON.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A JSON value as plain text (strings without quotes).
fn s(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

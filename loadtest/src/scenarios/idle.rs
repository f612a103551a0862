//! idle: ramp to `--connections` subscribers over `--ramp`, hold them for `--duration`
//! with no traffic, and report what they cost: server RSS per connection (`--server-pid`),
//! kernel TCP memory per socket (/proc/net/sockstat), the servers' idle CPU, and this
//! tool's own RSS per connection.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use tokio::sync::watch;

use super::receiver::{open_receivers, Finals, OpenPlan};
use super::summary::{collect, conn_stats};
use super::{RunContext, Window};
use crate::latch::Latch;
use crate::progress::Counters;
use crate::report::{round3, Results};
use crate::sysinfo::{kernel_slab_bytes, tcp_sockstat, ProcSample};

fn servers_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

fn rss_kib(pid: u32) -> u64 {
    ProcSample::read(&pid.to_string()).map_or(0, |s| s.rss_kib)
}

/// The process's command name (`herald`, `nginx`, `redis-server`), to tell edges from proxies.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the idle scenario.
pub(crate) async fn run(ctx: Arc<RunContext>) -> Result<(Results, Window)> {
    let n = ctx.args.connections;
    let channels = ctx.args.channels.unwrap_or(1).max(1);
    let pids = ctx.args.server_pids.clone();
    let rss_before = servers_rss_kib(&pids);
    let each_before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    let tool_before = ProcSample::read("self").map_or(0, |s| s.rss_kib);
    let sock_before = tcp_sockstat();
    let slab_before = kernel_slab_bytes();

    let (_finals_tx, finals_rx) = watch::channel(None);
    let connected = Arc::new(Latch::new(n));
    let done = Arc::new(Latch::new(n));
    let start = Instant::now();
    let plan = OpenPlan {
        n,
        at: |i| start + ctx.ramp_offset(i, n),
        channels_of: |i| vec![i % channels],
        hold: true,
    };
    let handles = open_receivers(&ctx, plan, &finals_rx, &connected, &done);
    connected.wait().await;
    let ramp_secs = start.elapsed().as_secs_f64();

    let mut window = Window::begin(&pids);
    tokio::time::sleep(ctx.args.duration).await;
    window.end();
    let open = Counters::get(&ctx.counters.open);
    let rss_after = servers_rss_kib(&pids);
    let each_after: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    let tool_after = ProcSample::read("self").map_or(0, |s| s.rss_kib);
    let sock_after = tcp_sockstat();
    let slab_after = kernel_slab_bytes();
    ctx.cancel.cancel();
    let _ = collect(handles, &Finals::default()).await;

    let per_conn = |before: u64, after: u64| {
        (open > 0).then(|| round3(after.saturating_sub(before) as f64 / open as f64))
    };
    let kernel = match (sock_before, sock_after) {
        (Some((mem_a, _)), Some((mem_b, _))) if open > 0 => {
            // Both ends of every loopback connection are counted; per client socket pair.
            Some(round3(
                mem_b.saturating_sub(mem_a) as f64 * 1024.0 / open as f64,
            ))
        }
        _ => None,
    };
    let mut results = Results {
        connections: conn_stats(&ctx, n as u64),
        ..Default::default()
    };
    let extra = &mut results.extra;
    extra.insert("held_open".into(), json!(open));
    extra.insert("ramp_secs".into(), json!(round3(ramp_secs)));
    extra.insert(
        "server_rss_kib_per_conn".into(),
        json!(per_conn(rss_before, rss_after)),
    );
    // Each server process on its own: the edges' share vs nginx's and Redis's.
    let by_process: Vec<_> = pids
        .iter()
        .zip(each_before.iter().zip(&each_after))
        .map(|(&pid, (&before, &after))| {
            json!({
                "pid": pid,
                "comm": comm(pid),
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_conn": per_conn(before, after),
            })
        })
        .collect();
    extra.insert("server_rss_by_process".into(), json!(by_process));
    extra.insert("kernel_tcp_mem_bytes_per_conn".into(), json!(kernel));
    // Every socket of a client's path (client end, server end; through a proxy also the
    // proxy's two), with its file, inode, dentry and epoll entries; machine-wide, so other
    // activity on the box is noise in it.
    let slab = match (slab_before, slab_after) {
        (Some(a), Some(b)) if open > 0 => Some(round3(b.saturating_sub(a) as f64 / open as f64)),
        _ => None,
    };
    extra.insert("kernel_slab_bytes_per_conn".into(), json!(slab));
    extra.insert(
        "tool_rss_kib_per_conn".into(),
        json!(per_conn(tool_before, tool_after)),
    );
    Ok((results, window))
}

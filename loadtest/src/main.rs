//! `herald-loadtest`: the load generator for Herald and nchan.
//!
//! How it works: [`cli`] picks a scenario; the scenario opens client connections
//! ([`clients`]) from a spread of source addresses ([`net`]), publishes messages on a fixed
//! schedule (open model) whose data carries a sequence number and the scheduled send time
//! ([`payload`], [`clock`]), and every receiver records latency into sharded HDR histograms
//! and follows each stream's sequence numbers ([`stats`]). The run ends with a [`report`]:
//! a human table or JSON, including the tool's own CPU and RSS ([`sysinfo`]); a run in
//! which the tool saturated its cores is marked invalid.

mod cli;
mod clients;
mod clock;
mod errors;
mod latch;
mod net;
mod payload;
mod progress;
mod report;
mod scenarios;
mod stats;
mod sysinfo;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::report::Report;
use crate::scenarios::RunContext;
use crate::sysinfo::Environment;

fn main() -> Result<()> {
    let cli = Cli::parse();
    clock::epoch();
    let common = cli.scenario.common().clone();
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let needed = common.connections as u64 * 2 + 256;
    if nofile < needed {
        eprintln!("warning: fd limit {nofile} is below the {needed} this run may need");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(async {
        let ctx = Arc::new(RunContext::new(common.clone()).await?);
        let stop = CancellationToken::new();
        let bar = progress::spawn_progress(
            ctx.counters.clone(),
            ctx.connect_errors.clone(),
            common.quiet,
            stop.clone(),
        );
        let outcome = scenarios::run(&cli.scenario, ctx.clone()).await;
        ctx.cancel.cancel();
        stop.cancel();
        let _ = bar.await;
        let (results, window) = outcome?;
        let params = serde_json::to_value(&cli.scenario)?;
        anyhow::Ok(Report::new(
            cli.scenario.name(),
            params,
            results,
            &window,
            Environment::read(nofile),
        ))
    })?;
    // Connection tasks may still be closing; do not wait for them.
    runtime.shutdown_background();
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

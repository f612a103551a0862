//! The `herald` binary: one edge node.

use clap::Parser as _;
use herald_edge::config::{Cli, EdgeConfig};
use herald_edge::Edge;

/// mimalloc, not glibc's malloc: with glibc an edge holding 19.5k idle SSE streams measured
/// 6 KiB per stream in some fresh runs and 11-16 KiB in others, the difference sitting in its
/// per-thread arena heaps (each stream's transient HTTP buffers, freed once the stream is off
/// hyper, left fragmented); with mimalloc every run measured 6.0-6.6 KiB (docs/BENCHMARKS.md,
/// "Idle memory, round 2").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            let _ = err.print();
            std::process::exit(EXIT_CONFIG);
        }
    };
    let config = match EdgeConfig::from_cli(cli) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("herald: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    init_logs(&config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(config));
    std::process::exit(code);
}

async fn run(config: EdgeConfig) -> i32 {
    let edge = match Edge::start(config).await {
        Ok(e) => e,
        Err(err) => {
            tracing::error!(cause = %err, "cannot start");
            eprintln!("herald: cannot start: {err:#}");
            return 1;
        }
    };
    wait_for_signal().await;
    edge.shutdown().await;
    tracing::info!("stopped");
    0
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logs(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colour only on a terminal: log files and `docker logs` stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    if format == "json" {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

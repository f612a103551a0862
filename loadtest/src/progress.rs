//! Live counters of a run and the progress bar that shows their rates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::errors::ErrorCounts;

/// Counters every task bumps; read by the progress bar and the report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections established and not yet lost.
    pub(crate) open: AtomicU64,
    /// Connections established in total (including reconnects).
    pub(crate) connected: AtomicU64,
    /// Messages sent (publish requests started).
    pub(crate) sent: AtomicU64,
    /// Publishes that failed.
    pub(crate) send_errors: AtomicU64,
    /// Messages received.
    pub(crate) delivered: AtomicU64,
    /// Connections lost after being established.
    pub(crate) dropped: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Draws a spinner line with live rates until `stop` is cancelled.
pub(crate) fn spawn_progress(
    counters: Arc<Counters>,
    errors: Arc<ErrorCounts>,
    quiet: bool,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last = (Instant::now(), 0u64, 0u64);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let sent = Counters::get(&counters.sent);
            let delivered = Counters::get(&counters.delivered);
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "conns {} (+{} total) | sent {}/s | delivered {}/s | send errs {} | conn errs {} | dropped {}",
                Counters::get(&counters.open),
                Counters::get(&counters.connected),
                ((sent - last.1) as f64 / dt).round(),
                ((delivered - last.2) as f64 / dt).round(),
                Counters::get(&counters.send_errors),
                errors.total(),
                Counters::get(&counters.dropped),
            ));
            bar.tick();
            last = (now, sent, delivered);
        }
        bar.finish_and_clear();
    })
}

//! The transports: thin encoders and writers over the connection core
//! (`Connection`). A WebSocket is one task that owns its socket; an SSE
//! stream is a response body that owns its connection; a poll is one request.
//! `centrifugo` is a second WebSocket encoder: Centrifugo's client protocol v2 (JSON).

pub(crate) mod centrifugo;
pub(crate) mod poll;
pub(crate) mod request;
pub(crate) mod sse;
pub(crate) mod ws;

/// Sleeps until `deadline`, or forever without one (a `select!` arm for a session's end).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// On shutdown, waits a random part of half the grace period, so that the clients of a draining
/// edge (WebSocket closes, SSE stream ends, poll answers) reconnect spread out, not together.
pub(crate) async fn spread_restart(grace: std::time::Duration) {
    use rand::Rng as _;
    let spread = grace.mul_f64(0.5);
    if spread.is_zero() {
        return;
    }
    let wait = spread.mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::sleep(wait).await;
}

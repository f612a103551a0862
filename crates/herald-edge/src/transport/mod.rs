//! The transports: thin encoders and writers over the connection core
//! (`Connection`). A WebSocket is one task that owns its socket; an SSE
//! stream is a response body that owns its connection; a poll is one request.

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

//! The transports: WebSocket, SSE and polling. Each connection is one task that owns its
//! socket (or response stream) and its outbound queue.

pub mod poll;
pub mod sse;
pub mod ws;

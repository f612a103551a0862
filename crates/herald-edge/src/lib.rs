//! The Herald edge node.
//!
//! An edge accepts clients over WebSocket (`/ws`), Server-Sent Events (`/sse`) and polling
//! (`/poll`), and relays publications between them and the broker (in-process by default, Redis
//! when clustered).
//!
//! How it works:
//!
//! * [`server`] binds the listeners and routes requests; it owns shutdown.
//! * [`node::Node`] is the shared state: config, broker, hub, metrics, root cancellation token.
//! * [`hub::Hub`] maps channels to local connections. The broker calls it for every event; it
//!   fans out with `try_send` into each connection's bounded queue, never waiting on a client.
//! * [`transport`] has one module per transport. Each connection is one task (WebSocket) or one
//!   response stream (SSE) that owns its socket and queue; a poll is one request.
//! * [`subscriptions::Subscriptions`] is a connection's position per channel: duplicates are
//!   dropped, gaps are filled from history, and a lost position is always signalled with
//!   `recovered: false`.
//! * [`metrics`] declares every metric; [`config`] every limit; [`error`] maps every error to
//!   an HTTP status, an error code and a metric label in one place.

pub mod api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod pages;
pub mod server;
pub mod subscriptions;
pub mod transport;

pub use config::EdgeConfig;
pub use server::Edge;

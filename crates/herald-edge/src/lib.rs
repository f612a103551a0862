//! The Herald edge node.
//!
//! An edge accepts clients over WebSocket (`/ws`), Server-Sent Events (`/sse`) and polling
//! (`/poll`), and relays publications between them and the broker (in-process by default, Redis
//! when clustered).
//!
//! How it works:
//!
//! Imports run one way: `server` → `transport` and `api` → `connection` → `permissions` and
//! `node` → `hub` → broker. Nothing below imports anything above it.
//!
//! * [`server`] binds the listeners, routes requests and owns shutdown.
//! * `transport` has one thin module per transport (WebSocket, SSE, polls) and the HTTP request
//!   prelude they share; each only encodes and writes what the connection core says.
//! * `connection` is the connection core: one client connection's identity, hub registration,
//!   bounded outbound queue, positions, presence, slot and metrics, with every client
//!   operation (subscribe with recovery, unsubscribe, publish, presence, history). Every check
//!   of a client operation runs there, through `permissions`.
//! * `api` has the HTTP API handlers (`POST /publish`, `/api/*`, health).
//! * [`node::Node`] is the shared state: config, broker, hub, metrics, root cancellation token
//!   and task tracker; it publishes, recovers and reads history for the layers above.
//! * [`hub::Hub`] maps channels to local connections. The broker calls it (through a `Weak`)
//!   for every event; it fans out with `try_send` into each connection's bounded queue, never
//!   waiting on a client.
//! * `subscriptions` is a connection's position per channel: duplicates are dropped, gaps are
//!   filled from history, and a lost position is always signalled with `recovered: false`.
//! * [`metrics`] declares every metric; [`config`] every limit; `error` maps every error to an
//!   HTTP status, an error code and a metric label in one place.
//!
//! The public surface is small: [`Edge`] to start and stop a node, [`EdgeConfig`], and what
//! tests and operators read ([`metrics::Metrics`], the node's counts and task tracker).

mod api;
mod auth;
mod cidr;
mod cluster;
pub mod config;
mod connection;
mod error;
pub mod hub;
mod identity;
mod limits;
mod listener;
pub mod metrics;
pub mod node;
mod pages;
mod permissions;
mod proxy;
pub mod server;
mod subscriptions;
mod transport;

pub use config::EdgeConfig;
pub use server::Edge;

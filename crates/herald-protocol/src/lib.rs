//! Herald's wire contract, with no IO.
//!
//! Everything a client and an edge say to each other is defined here, so the edge, the broker
//! and the load generator agree by construction:
//!
//! * [`channel`] — channel names (`[A-Za-z0-9_.:@/-]`, 1..=255 bytes) and their namespace;
//! * [`cursor`] — [`StreamPosition`] (epoch + offset) and the opaque multi-channel [`Cursor`]
//!   string used by SSE `id:` lines and long-poll `cursor=` parameters;
//! * [`frame`] — client requests parsed from JSON text ([`ClientFrame`]) and the builders of
//!   every server frame; message frames are built once per publication and shared;
//! * [`binary`] — the binary WebSocket frame layout for binary publish and delivery;
//! * [`sse`] — Server-Sent Events: event names and their data;
//! * [`client`] — the client side: request encoders and typed server frames;
//! * [`close`] — WebSocket close codes; [`error`] — error codes carried by error frames;
//! * [`centrifugo`] — Centrifugo's client protocol v2 (JSON), a second encoding of the same
//!   operations for `GET /connection/websocket`.
//!
//! Parsing never panics on any input: every malformed input becomes a [`ProtocolError`] with a
//! code and a readable message (property-tested over arbitrary bytes).

pub mod binary;
pub mod centrifugo;
pub mod channel;
pub mod client;
pub mod close;
pub mod cursor;
pub mod error;
pub mod frame;
pub mod sse;

pub use channel::{allowed_users, namespace_of, validate_channel, MAX_CHANNEL_LEN};
pub use close::CloseCode;
pub use cursor::{Cursor, StreamPosition};
pub use error::{ErrorCode, ProtocolError};
pub use frame::ClientFrame;

//! The transports: thin encoders and writers over the connection core
//! (`Connection`). A WebSocket is one task that owns its socket; an SSE
//! stream is a response body that owns its connection; a poll is one request.

pub(crate) mod poll;
pub(crate) mod request;
pub(crate) mod sse;
pub(crate) mod ws;

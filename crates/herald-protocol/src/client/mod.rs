//! The client side of the wire contract: the requests a client writes and the frames it reads.
//!
//! This module mirrors [`crate::frame`]. Every request built here is one that
//! [`ClientFrame::parse`](crate::frame::ClientFrame::parse) accepts, and every frame the
//! server's `encode_*` functions write parses here into a typed [`ServerFrame`]; the unit tests
//! hold both directions together, so a change on one side that the other does not follow fails
//! here first.
//!
//! * Requests: [`encode_subscribe`], [`encode_unsubscribe`], [`encode_publish`],
//!   [`encode_presence_request`], [`encode_history_request`], [`encode_ping`], and for
//!   identity [`encode_connect`], [`encode_refresh`] and [`encode_subscribe_with_token`] write one
//!   WebSocket text frame each; [`PublishBody`] is the JSON body of `POST /publish` and
//!   `POST /api/publish`. Payloads are `&RawValue` and are written as they are, never
//!   re-encoded.
//! * Server frames: [`ServerFrame::parse`] reads a WebSocket text frame, [`Message::parse`] an
//!   SSE message event's data, [`PollReply::parse`] a long-poll reply body.
//! * SSE: [`SseParser`] splits a `text/event-stream` into [`SseEvent`]s incrementally, chunk by
//!   chunk, however the chunks cut the stream.
//!
//! Parsing is borrowed: strings and payloads point into the input (a string is copied only when
//! it holds a JSON escape), so reading a message frame allocates nothing, and the SSE parser
//! reuses one buffer. A load generator reads hundreds of thousands of frames a second through
//! this path. Like every parser in this crate, none of these panics on any input; malformed
//! input is a [`ProtocolError`](crate::ProtocolError).
//!
//! The code is split by direction: `request` holds the encoders, `server` the typed server
//! frames, `sse` the event-stream parser. Each is re-exported here, so every item is named
//! `herald_protocol::client::X`.

mod request;
mod server;
mod sse;

pub use request::{
    encode_connect, encode_history_request, encode_ping, encode_presence_request, encode_publish,
    encode_refresh, encode_subscribe, encode_subscribe_with_token, encode_unsubscribe, PublishBody,
};
pub use server::{Message, PollReply, PresenceMember, ServerFrame};
pub use sse::{SseEvent, SseParser};

/// Helpers shared by the unit tests of the submodules.
#[cfg(test)]
mod test_support {
    use std::borrow::Cow;

    use serde_json::value::RawValue;

    use crate::cursor::StreamPosition;
    use crate::frame::{self, MessageFrame};

    pub(super) fn pos(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    pub(super) fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    // Looks at the variant itself, so it takes the `Cow`.
    #[allow(clippy::ptr_arg)]
    pub(super) fn borrowed(s: &Cow<'_, str>) -> bool {
        matches!(s, Cow::Borrowed(_))
    }

    pub(super) fn message_text(from: Option<&str>) -> String {
        let data = raw(r#"{"seq": 7}"#);
        frame::encode_message(&MessageFrame {
            op: "message",
            channel: "chat:a",
            epoch: "e9",
            offset: 42,
            ts: 1_700_000_000_000,
            data: &data,
            from,
            user: None,
        })
    }
}

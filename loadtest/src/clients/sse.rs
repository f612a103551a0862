//! A Server-Sent Events reader: a stream of events over an HTTP response body, split by
//! [`SseParser`] from `herald_protocol` (the same parser for Herald's and nchan's streams).

use std::pin::Pin;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald_protocol::client::{SseEvent, SseParser};

use crate::errors::Failure;

/// Events read from one streaming response. Cancel-safe: all state is in `self`, and a chunk
/// is handed to the parser as soon as it is read.
pub(crate) struct SseStream {
    /// The response body.
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// Parser state across chunks; the events it hands out borrow its buffer.
    parser: SseParser,
}

impl SseStream {
    /// Wraps a response that answered 200 with an event stream.
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            parser: SseParser::new(),
        }
    }

    /// The next event; an error when the stream ends.
    pub(crate) async fn next_event(&mut self) -> Result<SseEvent<'_>> {
        while !self.parser.has_event() {
            let chunk = self
                .body
                .next()
                .await
                .ok_or(Failure::Closed(None))?
                .context("reading the event stream")?;
            self.parser.feed(&chunk);
        }
        Ok(self
            .parser
            .next_event()
            .expect("the parser said an event is waiting"))
    }
}

//! A Server-Sent Events reader: an incremental parser and a stream of events over an HTTP
//! response body.

use std::pin::Pin;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::errors::Failure;

/// One dispatched event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` (None for unnamed events, which fire `onmessage`).
    pub(crate) event: Option<String>,
    /// `id:` of this event.
    pub(crate) id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// Incremental `text/event-stream` parser (WHATWG rules, minus `retry`).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of an incomplete line.
    partial: Vec<u8>,
    /// The event being assembled.
    current: SseEvent,
    /// Whether `current` has any field yet.
    has_fields: bool,
    /// Whether `current` has a `data:` line yet (later ones join with `\n`).
    has_data: bool,
}

impl SseParser {
    /// Feeds a chunk and appends completed events to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&String::from_utf8_lossy(&line), out);
        }
        self.partial.extend_from_slice(rest);
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_fields {
                out.push(std::mem::take(&mut self.current));
                self.has_fields = false;
                self.has_data = false;
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = Some(value.to_string()),
            "id" => self.current.id = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => return,
        }
        self.has_fields = true;
    }
}

/// Events read from one streaming response. Cancel-safe: all state is in `self`.
pub(crate) struct SseStream {
    /// The response body.
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// Parser state across chunks.
    parser: SseParser,
    /// Parsed events not handed out yet.
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseStream {
    /// Wraps a response that answered 200 with an event stream.
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            parser: SseParser::default(),
            ready: Default::default(),
        }
    }

    /// The next event; an error when the stream ends.
    pub(crate) async fn next_event(&mut self) -> Result<SseEvent> {
        let mut batch = Vec::new();
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(ev);
            }
            let chunk = self
                .body
                .next()
                .await
                .ok_or(Failure::Closed(None))?
                .context("reading the event stream")?;
            self.parser.feed(&chunk, &mut batch);
            self.ready.extend(batch.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c.as_bytes(), &mut out);
        }
        out
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let evs = parse(&[
            "retry: 1000\n\nevent: welcome\ndata: {\"client\":\"a\"}\n\n: keepalive\n\nid: c",
            "ur1\r\ndata: {\"x\":1}\r\n",
            "\r\ndata: one\ndata: two\n\n",
        ]);
        assert_eq!(evs.len(), 3, "{evs:?}");
        assert_eq!(evs[0].event.as_deref(), Some("welcome"));
        assert_eq!(evs[1].id.as_deref(), Some("cur1"));
        assert_eq!(evs[1].data, "{\"x\":1}");
        assert_eq!(evs[1].event, None);
        assert_eq!(evs[2].data, "one\ntwo");
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        assert!(parse(&["data: half"]).is_empty());
        assert!(parse(&[": only a comment\n\n"]).is_empty());
    }
}

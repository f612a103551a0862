//! Server-Sent Events on the client side: [`SseParser`] splits a `text/event-stream` into
//! [`SseEvent`]s incrementally, chunk by chunk, however the chunks cut the stream.
//!
//! The parser keeps one buffer and reuses it; an event's fields borrow from it. Herald's message
//! events carry one `data:` line, which [`Message::parse`](super::Message::parse) reads.

use std::borrow::Cow;

/// One event of a `text/event-stream`, borrowed from the [`SseParser`] that read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// `event:` (None for unnamed events: Herald's messages, which fire `onmessage`).
    pub event: Option<Cow<'a, str>>,
    /// `id:` of this event.
    pub id: Option<Cow<'a, str>>,
    /// `data:` lines joined with `\n` (borrowed when there is one line, as on Herald's wire).
    pub data: Cow<'a, str>,
}

/// An incremental `text/event-stream` parser (WHATWG rules, minus `retry` and the event id
/// carried over between events).
///
/// Feed it chunks as they arrive with [`SseParser::feed`], then take events with
/// [`SseParser::next_event`] until it returns None. An event is dispatched when its blank line
/// arrives and it has an `event`, `id` or `data` field; comments and other fields are skipped.
/// Lines end with `\n` or `\r\n`. The parser keeps one buffer and reuses it.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes received and not consumed yet, from `start`.
    buf: Vec<u8>,
    /// Where the unconsumed bytes (the current event block) begin.
    start: usize,
    /// Where the next line not looked at yet begins.
    scan: usize,
    /// The next complete event block, `buf[..]` range, found and not handed out yet.
    ready: Option<(usize, usize)>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let keep = self.ready.map_or(self.start, |(s, _)| s);
        if keep > 0 {
            self.buf.drain(..keep);
            self.start -= keep;
            self.scan -= keep;
            if let Some((s, e)) = &mut self.ready {
                *s -= keep;
                *e -= keep;
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Whether a complete event is waiting (then [`SseParser::next_event`] returns it).
    pub fn has_event(&mut self) -> bool {
        if self.ready.is_some() {
            return true;
        }
        while let Some(n) = self.buf[self.scan..].iter().position(|&b| b == b'\n') {
            let line_end = self.scan + n;
            let line = strip_cr(&self.buf[self.scan..line_end]);
            if line.is_empty() {
                let block = (self.start, self.scan);
                self.start = line_end + 1;
                self.scan = line_end + 1;
                if has_fields(&self.buf[block.0..block.1]) {
                    self.ready = Some(block);
                    return true;
                }
            } else {
                self.scan = line_end + 1;
            }
        }
        false
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<SseEvent<'_>> {
        if !self.has_event() {
            return None;
        }
        let (s, e) = self.ready.take()?;
        Some(parse_block(&self.buf[s..e]))
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The (field, value) of each non-comment line of an event block.
fn fields(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block
        .split(|&b| b == b'\n')
        .map(strip_cr)
        .filter(|line| !line.is_empty() && line[0] != b':')
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        })
}

fn has_fields(block: &[u8]) -> bool {
    fields(block).any(|(f, _)| matches!(f, b"event" | b"id" | b"data"))
}

fn parse_block(block: &[u8]) -> SseEvent<'_> {
    let mut ev = SseEvent::default();
    let mut has_data = false;
    for (field, value) in fields(block) {
        match field {
            b"event" => ev.event = Some(String::from_utf8_lossy(value)),
            b"id" => ev.id = Some(String::from_utf8_lossy(value)),
            b"data" if has_data => {
                let data = ev.data.to_mut();
                data.push('\n');
                data.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                ev.data = String::from_utf8_lossy(value);
                has_data = true;
            }
            _ => {}
        }
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_support::{borrowed, message_text};
    use crate::client::Message;
    use proptest::prelude::*;

    fn sse(chunks: &[&[u8]]) -> Vec<SseEvent<'static>> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c);
            while let Some(ev) = p.next_event() {
                out.push(SseEvent {
                    event: ev.event.map(|s| Cow::Owned(s.into_owned())),
                    id: ev.id.map(|s| Cow::Owned(s.into_owned())),
                    data: Cow::Owned(ev.data.into_owned()),
                });
            }
        }
        out
    }

    #[test]
    fn sse_events_split_across_chunks() {
        let evs = sse(&[
            b"retry: 1000\n\nevent: welcome\ndata: {\"client\":\"a\"}\n\n: keepalive\n\nid: c",
            b"ur1\r\ndata: {\"x\":1}\r\n",
            b"\r\ndata: one\ndata: two\n\n",
        ]);
        assert_eq!(evs.len(), 3, "{evs:?}");
        assert_eq!(evs[0].event.as_deref(), Some("welcome"));
        assert_eq!(evs[0].data, "{\"client\":\"a\"}");
        assert_eq!(evs[1].id.as_deref(), Some("cur1"));
        assert_eq!(evs[1].data, "{\"x\":1}");
        assert_eq!(evs[1].event, None);
        assert_eq!(evs[2].data, "one\ntwo");
        assert_eq!(evs[2].id, None);
    }

    #[test]
    fn sse_incomplete_event_is_not_dispatched() {
        assert!(sse(&[b"data: half"]).is_empty());
        assert!(sse(&[b"data: half\n"]).is_empty());
        assert!(sse(&[b": only a comment\n\n", b"\n\n"]).is_empty());
    }

    #[test]
    fn sse_single_data_line_is_borrowed() {
        let mut p = SseParser::new();
        p.feed(b"id: c1\ndata: {\"a\":1}\n\nevent: x\n");
        assert!(p.has_event());
        // A waiting event survives more input arriving before it is taken.
        p.feed(b"data: 2\n\n");
        let ev = p.next_event().unwrap();
        assert!(borrowed(&ev.data) && ev.id.as_ref().is_some_and(borrowed));
        assert_eq!(ev.data, "{\"a\":1}");
        let ev = p.next_event().unwrap();
        assert_eq!((ev.event.as_deref(), &*ev.data), (Some("x"), "2"));
        assert!(p.next_event().is_none());
    }

    #[test]
    fn sse_message_event_data_is_a_message() {
        let text = message_text(None);
        let stream = format!("id: cur\ndata: {text}\n\n");
        let mut p = SseParser::new();
        p.feed(stream.as_bytes());
        let ev = p.next_event().unwrap();
        assert_eq!(Message::parse(&ev.data).unwrap().offset, 42);
    }

    proptest! {
        #[test]
        fn sse_chunking_does_not_matter(
            stream in proptest::collection::vec(
                prop_oneof![Just(&b"data: x\n"[..]), Just(&b"\n"[..]), Just(&b"\r\n"[..]),
                    Just(&b"event: e\n"[..]), Just(&b": c\n"[..]), Just(&b"id: 1\r\n"[..]),
                    Just(&b"data\n"[..]), Just(&b"\xff:"[..])],
                0..40),
            cut in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole: Vec<u8> = stream.concat();
            let mut cuts: Vec<usize> = cut.iter().map(|c| c % (whole.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&whole[at..c]);
                at = c;
            }
            chunks.push(&whole[at..]);
            prop_assert_eq!(sse(&chunks), sse(&[&whole]));
        }
    }
}

//! Server-Sent Events as Herald writes them.
//!
//! A stream starts with `retry:` and a `welcome` event. Each message is an unnamed event whose
//! `id:` is the stream's cursor after it and whose `data:` is the same message frame the
//! WebSocket carries. `subscribed` events (with the cursor as `id:`) report a channel's
//! position and whether it was recovered; `join`, `leave` and `broadcast` carry the WebSocket
//! frames of the same name; `close` says why the server ended the stream; a `ping` event every
//! heartbeat keeps proxies from timing the stream out and lets a script see that the stream is
//! alive (an `EventSource` hides comments from scripts, so a comment could not do the second).

use bytes::{BufMut as _, BytesMut};

use crate::close::CloseCode;
use crate::cursor::StreamPosition;

/// Event name of the first event.
pub const WELCOME: &str = "welcome";
/// Event name of a channel's position report.
pub const SUBSCRIBED: &str = "subscribed";
/// Event name of the server's last event.
pub const CLOSE: &str = "close";
/// Event name of a presence join.
pub const JOIN: &str = "join";
/// Event name of a presence leave.
pub const LEAVE: &str = "leave";
/// Event name of a broadcast.
pub const BROADCAST: &str = "broadcast";
/// Event name of the heartbeat.
pub const PING: &str = "ping";
/// The heartbeat event: named, so `EventSource.onmessage` does not fire for it, with a data
/// line, because a browser dispatches no event without one.
pub const KEEPALIVE: &[u8] = b"event: ping\ndata: {}\n\n";

/// Writes one event. Raw JSON may hold line breaks only as whitespace (never inside a string),
/// so they are written as spaces: the JSON means the same and the event stays whole.
pub fn put_event(buf: &mut BytesMut, event: Option<&str>, id: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        buf.put_slice(b"event: ");
        buf.put_slice(event.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    if data.iter().any(|b| *b == b'\n' || *b == b'\r') {
        buf.extend(data.iter().map(|b| match b {
            b'\n' | b'\r' => b' ',
            other => *other,
        }));
    } else {
        buf.put_slice(data);
    }
    buf.put_slice(b"\n\n");
}

/// Writes the reconnection delay a browser's `EventSource` uses.
pub fn put_retry(buf: &mut BytesMut, millis: u64) {
    buf.put_slice(b"retry: ");
    buf.put_slice(millis.to_string().as_bytes());
    buf.put_u8(b'\n');
}

/// The data of the `welcome` event (`user` is `""` when anonymous; `ping_interval`: seconds
/// between `ping` events).
pub fn encode_welcome<S: AsRef<str>>(
    client: &str,
    node: &str,
    channels: &[S],
    user: &str,
    ping_interval_secs: u64,
) -> String {
    let channels: Vec<&str> = channels.iter().map(AsRef::as_ref).collect();
    serde_json::json!({"client": client, "node": node, "channels": channels, "user": user,
        "ping_interval": ping_interval_secs})
    .to_string()
}

/// The data of a `subscribed` event.
pub fn encode_subscribed(channel: &str, position: &StreamPosition, recovered: bool) -> String {
    serde_json::json!({"channel": channel, "epoch": position.epoch, "offset": position.offset,
        "recovered": recovered})
    .to_string()
}

/// The data of the `close` event.
pub fn encode_close(code: CloseCode) -> String {
    serde_json::json!({"code": code.code(), "reason": code.reason()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_stay_whole() {
        let mut buf = BytesMut::new();
        put_retry(&mut buf, 2000);
        put_event(&mut buf, Some(CLOSE), Some("c1"), b"{\"a\":\n1}");
        assert_eq!(
            &buf[..],
            b"retry: 2000\nevent: close\nid: c1\ndata: {\"a\": 1}\n\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&encode_close(CloseCode::SlowConsumer)).unwrap();
        assert_eq!(v["code"], 4008);
    }
}

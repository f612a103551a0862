//! Binary WebSocket frames.
//!
//! A client publishes binary data with a binary frame laid out as:
//!
//! ```text
//! [1 byte: channel length N (1..=255)] [N bytes: channel] [4 bytes BE: request id, 0 = no ack] [payload…]
//! ```
//!
//! The ack is the usual text `ack` frame (with `id` when it was non-zero). Subscribers on
//! WebSocket receive a binary frame:
//!
//! ```text
//! [1 byte: N] [N bytes: channel] [8 bytes BE: offset] [payload…]
//! ```
//!
//! SSE and poll readers receive the payload as JSON `{"$binary":"<base64>"}` in `data`.

use crate::channel::validate_channel;
use crate::error::ProtocolError;

/// A binary publish read from a client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPublish<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The request id (None when 0).
    pub id: Option<u64>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Parses a client's binary frame. Never panics.
pub fn parse_binary_publish(frame: &[u8]) -> Result<BinaryPublish<'_>, ProtocolError> {
    let bad = |m: &str| ProtocolError::BadRequest(format!("binary frame: {m}"));
    let (&n, rest) = frame.split_first().ok_or_else(|| bad("empty"))?;
    let n = n as usize;
    if n == 0 || rest.len() < n + 4 {
        return Err(bad(
            "expected [len][channel][4-byte id][payload] (see docs/PROTOCOL.md)",
        ));
    }
    let channel = std::str::from_utf8(&rest[..n])
        .map_err(|_| ProtocolError::InvalidChannel("channel is not UTF-8".into()))?;
    validate_channel(channel)?;
    let id = u32::from_be_bytes([rest[n], rest[n + 1], rest[n + 2], rest[n + 3]]);
    Ok(BinaryPublish {
        channel,
        id: (id != 0).then_some(id as u64),
        payload: &rest[n + 4..],
    })
}

/// Builds the binary delivery frame for WebSocket subscribers.
pub fn encode_binary_delivery(channel: &str, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + channel.len() + 8 + payload.len());
    out.push(channel.len() as u8);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Builds a client's binary publish frame (used by tests and the load generator).
pub fn encode_binary_publish(channel: &str, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + channel.len() + 4 + payload.len());
    out.push(channel.len() as u8);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads a binary delivery frame: (channel, offset, payload).
pub fn parse_binary_delivery(frame: &[u8]) -> Option<(&str, u64, &[u8])> {
    let (&n, rest) = frame.split_first()?;
    let n = n as usize;
    if rest.len() < n + 8 {
        return None;
    }
    let channel = std::str::from_utf8(&rest[..n]).ok()?;
    let offset = u64::from_be_bytes(rest[n..n + 8].try_into().ok()?);
    Some((channel, offset, &rest[n + 8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn publish_round_trip() {
        let f = encode_binary_publish("bin:x", 7, &[1, 2, 3]);
        let p = parse_binary_publish(&f).unwrap();
        assert_eq!(p.channel, "bin:x");
        assert_eq!(p.id, Some(7));
        assert_eq!(p.payload, &[1, 2, 3]);
        let f = encode_binary_delivery("bin:x", 42, &[9]);
        assert_eq!(parse_binary_delivery(&f), Some(("bin:x", 42, &[9u8][..])));
    }

    #[test]
    fn rejects_short_and_bad_channel() {
        assert!(parse_binary_publish(&[]).is_err());
        assert!(parse_binary_publish(&[0, 0, 0, 0, 0]).is_err());
        assert!(parse_binary_publish(&[3, b'a', b'b']).is_err());
        assert!(parse_binary_publish(&[1, b' ', 0, 0, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_binary_publish(&b);
            let _ = parse_binary_delivery(&b);
        }
    }
}

//! The bytes the Redis broker puts on pub/sub topics and in history streams.
//!
//! One message per pub/sub delivery; its first byte says what it is. Payloads travel raw after
//! a short ASCII header: no base64, no JSON envelope, so a binary payload costs its own length
//! plus about 30 bytes, and a JSON payload is copied once and validated once per receiving node.
//!
//! ```text
//! publication  p|<epoch>|<offset>|<ts ms>|<flags><from len>:<from><user len>:<user><payload>
//! join         j<presence entry json>
//! leave        l<presence entry json>
//! broadcast    b<flags><payload>
//! probe        q<nonce>
//! ```
//!
//! `flags` is one ASCII digit: bit 0 = binary payload, bit 1 = `skip_self`. `from len` and
//! `user len` are decimal (0 = no publishing client / no authenticated user). The publish script writes the publication header itself
//! (only it knows the epoch, offset and time) in front of the tail [`publication_tail`] makes,
//! and stores the very same bytes as the history entry, so live and recovered messages are
//! decoded by one function.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::frame::PresenceEntry;
use serde_json::value::RawValue;

use crate::{BrokerEvent, Payload, Publication};

const FLAG_BINARY: u8 = 1;
const FLAG_SKIP_SELF: u8 = 2;

/// A message that could not be decoded (foreign writer, version skew, corruption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError(pub(crate) &'static str);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn flags(payload: &Payload, skip_self: bool) -> u8 {
    let mut flags = 0;
    if matches!(payload, Payload::Binary(_)) {
        flags |= FLAG_BINARY;
    }
    if skip_self {
        flags |= FLAG_SKIP_SELF;
    }
    b'0' + flags
}

fn payload_bytes(payload: &Payload) -> &[u8] {
    match payload {
        Payload::Json(raw) => raw.get().as_bytes(),
        Payload::Binary(bytes) => bytes,
    }
}

fn decode_payload(binary: bool, bytes: &[u8]) -> Result<Payload, CodecError> {
    if binary {
        return Ok(Payload::Binary(Bytes::copy_from_slice(bytes)));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| CodecError("json payload is not utf-8"))?;
    RawValue::from_string(text.to_owned())
        .map(Payload::Json)
        .map_err(|_| CodecError("json payload is not valid json"))
}

/// The part of a publication the publisher knows: flags, sender, its user and payload.
pub(crate) fn publication_tail(
    from: Option<&str>,
    user: Option<&str>,
    skip_self: bool,
    payload: &Payload,
) -> Vec<u8> {
    let from = from.unwrap_or("");
    let user = user.unwrap_or("");
    let body = payload_bytes(payload);
    let mut out = Vec::with_capacity(body.len() + from.len() + user.len() + 12);
    out.push(flags(payload, skip_self));
    for field in [from, user] {
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// Reads `<len>:<text>` from the front of `bytes`; empty text is `None`.
fn sized_text<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<(Option<Arc<str>>, &'a [u8]), CodecError> {
    let colon = bytes
        .iter()
        .take(8)
        .position(|b| *b == b':')
        .ok_or(CodecError(what))?;
    let len = number(&bytes[..colon])? as usize;
    let rest = &bytes[colon + 1..];
    if rest.len() < len {
        return Err(CodecError(what));
    }
    let (text, rest) = rest.split_at(len);
    let text = match len {
        0 => None,
        _ => Some(Arc::from(
            std::str::from_utf8(text).map_err(|_| CodecError(what))?,
        )),
    };
    Ok((text, rest))
}

/// Splits `bytes` at the first `|`.
fn field(bytes: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    let at = bytes
        .iter()
        .position(|b| *b == b'|')
        .ok_or(CodecError("publication header is cut short"))?;
    Ok((&bytes[..at], &bytes[at + 1..]))
}

fn number(bytes: &[u8]) -> Result<u64, CodecError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(CodecError("bad number in publication header"))
}

/// Decodes a publication (a live `p` message or a history entry) of `channel`.
pub(crate) fn decode_publication(
    channel: &Arc<str>,
    bytes: &[u8],
) -> Result<Publication, CodecError> {
    let rest = bytes
        .strip_prefix(b"p|")
        .ok_or(CodecError("not a publication"))?;
    let (epoch, rest) = field(rest)?;
    let (offset, rest) = field(rest)?;
    let (ts, rest) = field(rest)?;
    let (&flag, rest) = rest.split_first().ok_or(CodecError("no flags"))?;
    let flag = flag
        .checked_sub(b'0')
        .filter(|f| *f <= FLAG_BINARY | FLAG_SKIP_SELF)
        .ok_or(CodecError("bad flags"))?;
    let (from, rest) = sized_text(rest, "bad sender")?;
    let (user, body) = sized_text(rest, "bad user")?;
    let epoch = std::str::from_utf8(epoch).map_err(|_| CodecError("epoch is not utf-8"))?;
    Ok(Publication {
        channel: channel.clone(),
        epoch: Arc::from(epoch),
        offset: number(offset)?,
        ts_ms: number(ts)?,
        payload: decode_payload(flag & FLAG_BINARY != 0, body)?,
        from,
        user,
        skip_self: flag & FLAG_SKIP_SELF != 0,
    })
}

/// A join (`join = true`) or leave message (the presence scripts build the same bytes).
#[cfg(test)]
pub(crate) fn encode_presence_event(join: bool, entry: &PresenceEntry) -> Vec<u8> {
    let mut out = vec![if join { b'j' } else { b'l' }];
    serde_json::to_writer(&mut out, entry).expect("presence entry serializes");
    out
}

/// Decodes any message of a channel topic into the event it stands for.
pub(crate) fn decode_channel_message(
    channel: &Arc<str>,
    bytes: &[u8],
) -> Result<BrokerEvent, CodecError> {
    match bytes.first() {
        Some(b'p') => Ok(BrokerEvent::Publication(Arc::new(decode_publication(
            channel, bytes,
        )?))),
        Some(kind @ (b'j' | b'l')) => {
            let entry: PresenceEntry = serde_json::from_slice(&bytes[1..])
                .map_err(|_| CodecError("bad presence entry"))?;
            let channel = channel.clone();
            Ok(if *kind == b'j' {
                BrokerEvent::Join { channel, entry }
            } else {
                BrokerEvent::Leave { channel, entry }
            })
        }
        _ => Err(CodecError("unknown channel message kind")),
    }
}

/// A broadcast message.
pub(crate) fn encode_broadcast(payload: &Payload) -> Vec<u8> {
    let body = payload_bytes(payload);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(b'b');
    out.push(flags(payload, false));
    out.extend_from_slice(body);
    out
}

/// Decodes a broadcast message.
pub(crate) fn decode_broadcast(bytes: &[u8]) -> Result<Payload, CodecError> {
    match bytes {
        [b'b', flag, body @ ..] => decode_payload(*flag == b'0' + FLAG_BINARY, body),
        _ => Err(CodecError("not a broadcast")),
    }
}

/// A probe message.
pub(crate) fn encode_probe(nonce: u64) -> String {
    format!("q{nonce}")
}

/// The nonce of a probe message.
pub(crate) fn decode_probe(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes.strip_prefix(b"q")?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the publish script does in front of the tail.
    fn scripted(epoch: &str, offset: u64, ts: u64, tail: &[u8]) -> Vec<u8> {
        let mut out = format!("p|{epoch}|{offset}|{ts}|").into_bytes();
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn publication_round_trips_json_and_binary() {
        let ch: Arc<str> = Arc::from("chat:lobby");
        let json = Payload::Json(RawValue::from_string(r#"{"a":"|:x"}"#.into()).unwrap());
        let tail = publication_tail(Some("client-1"), Some("alice:1"), true, &json);
        let p = decode_publication(&ch, &scripted("ep0", 17, 1_700_000_000_123, &tail)).unwrap();
        assert_eq!(
            (&*p.epoch, p.offset, p.ts_ms),
            ("ep0", 17, 1_700_000_000_123)
        );
        assert_eq!(p.from.as_deref(), Some("client-1"));
        assert_eq!(p.user.as_deref(), Some("alice:1"));
        assert!(p.skip_self);
        match p.payload {
            Payload::Json(raw) => assert_eq!(raw.get(), r#"{"a":"|:x"}"#),
            _ => panic!("json expected"),
        }

        let bin: Vec<u8> = (0..=255u8).chain([b'|', b':', 0, b'p']).collect();
        let payload = Payload::Binary(Bytes::from(bin.clone()));
        let tail = publication_tail(None, None, false, &payload);
        let p = decode_publication(&ch, &scripted("e", 1, 2, &tail)).unwrap();
        assert!(p.from.is_none() && p.user.is_none() && !p.skip_self);
        match p.payload {
            Payload::Binary(b) => assert_eq!(&b[..], &bin[..]),
            _ => panic!("binary expected"),
        }
    }

    #[test]
    fn broken_messages_are_refused_not_panicked_on() {
        let ch: Arc<str> = Arc::from("c");
        for bad in [
            &b""[..],
            b"p|",
            b"p|e|1|2|",
            b"p|e|x|2|00:",
            b"p|e|1|2|05:ab",
            b"p|e|1|2|9",
            b"p|e|1|2|00:{",
            b"z",
        ] {
            assert!(decode_channel_message(&ch, bad).is_err(), "{bad:?}");
        }
        assert!(decode_broadcast(b"b0{").is_err());
        assert_eq!(decode_probe(b"q42"), Some(42));
        assert_eq!(decode_probe(b"x42"), None);
    }

    #[test]
    fn presence_events_and_broadcasts_round_trip() {
        let ch: Arc<str> = Arc::from("c");
        let entry = PresenceEntry {
            client: "c1".into(),
            user: "u|1".into(),
            node: "n".into(),
            info: Some(serde_json::json!({"name": "Ü|1"})),
        };
        match decode_channel_message(&ch, &encode_presence_event(false, &entry)).unwrap() {
            BrokerEvent::Leave { entry: e, .. } => assert_eq!(e, entry),
            other => panic!("leave expected, got {other:?}"),
        }
        let b = encode_broadcast(&Payload::Binary(Bytes::from_static(b"\0\xff")));
        match decode_broadcast(&b).unwrap() {
            Payload::Binary(b) => assert_eq!(&b[..], b"\0\xff"),
            _ => panic!("binary expected"),
        }
    }
}

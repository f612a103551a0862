//! Stream positions and cursors.
//!
//! A [`StreamPosition`] is where a reader is in one channel: the history generation (`epoch`)
//! and the last offset it has seen. A [`Cursor`] is a set of positions, one per channel, encoded
//! as an opaque URL-safe string with no newline: `base64url("h1\n" + "<channel> <epoch> <offset>\n"…)`.
//! The server makes cursors and reads them back; clients only store and return them.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::channel::validate_channel;
use crate::error::ProtocolError;

/// Longest epoch accepted from a client.
pub const MAX_EPOCH_LEN: usize = 64;
/// Longest encoded cursor accepted from a client.
pub const MAX_CURSOR_LEN: usize = 16 * 1024;
/// Most channels one cursor may carry.
pub const MAX_CURSOR_CHANNELS: usize = 256;

const VERSION_LINE: &str = "h1";

/// A position in one channel's stream: after `offset` in generation `epoch`.
///
/// The epoch is empty for a channel nobody has published to yet (reading it creates no
/// epoch): `{"epoch": "", "offset": 0}`. A reader holding an empty epoch follows whatever epoch
/// the channel gets. The server gives it out, so clients may send it back, but only with offset
/// 0: every message the server delivers names its epoch, so a client that has seen one holds
/// that epoch, and an empty epoch with a later offset is no position the server ever gave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The history generation; it changes when a channel's history is lost. Empty before the
    /// channel's first publish.
    pub epoch: String,
    /// The last offset seen (0 = nothing yet).
    pub offset: u64,
}

impl StreamPosition {
    /// Checks a position received from a client: an epoch of ASCII letters and digits, or the
    /// empty epoch with offset 0 (a channel nobody had published to).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_position(&self.epoch, self.offset)
    }
}

fn validate_position(epoch: &str, offset: u64) -> Result<(), ProtocolError> {
    if epoch.is_empty() && offset != 0 {
        return Err(ProtocolError::BadCursor(
            "an empty epoch goes with offset 0 only (take the epoch from the messages)".into(),
        ));
    }
    validate_epoch(epoch)
}

/// An epoch as a client may send it back: empty (the channel had none when the server gave the
/// position out) or up to [`MAX_EPOCH_LEN`] ASCII letters and digits.
fn validate_epoch(epoch: &str) -> Result<(), ProtocolError> {
    if epoch.len() > MAX_EPOCH_LEN {
        return Err(ProtocolError::BadCursor(format!(
            "epoch must be at most {MAX_EPOCH_LEN} bytes"
        )));
    }
    if !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ProtocolError::BadCursor(
            "epoch must be ASCII letters and digits".into(),
        ));
    }
    Ok(())
}

/// Reads a resume point for one channel as a client may write it: `<epoch>:<offset>` (what a
/// WebSocket client knows) or a cursor this server made. Empty text is no position.
pub fn parse_since(channel: &str, text: &str) -> Result<Option<StreamPosition>, ProtocolError> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Some((epoch, offset)) = text.split_once(':') {
        let pos = StreamPosition {
            epoch: epoch.to_owned(),
            offset: offset
                .parse()
                .map_err(|_| ProtocolError::BadCursor("offset is not a number".into()))?,
        };
        pos.validate()?;
        return Ok(Some(pos));
    }
    Ok(Cursor::decode(text)?.get(channel).cloned())
}

/// Reads a stream's resume point: a cursor this server made, or, for a stream of exactly one
/// channel, `<epoch>:<offset>` (so a client can switch from WebSocket to SSE or polling).
pub fn parse_stream_since<S: AsRef<str>>(
    text: &str,
    channels: &[S],
) -> Result<Cursor, ProtocolError> {
    match (text.split_once(':'), channels) {
        (Some(_), [only]) => {
            let mut cursor = Cursor::new();
            if let Some(pos) = parse_since(only.as_ref(), text)? {
                cursor.set(only.as_ref(), pos);
            }
            Ok(cursor)
        }
        (Some(_), _) => Err(ProtocolError::BadCursor(
            "`epoch:offset` names a position in one channel; use a cursor for several".into(),
        )),
        (None, _) => Cursor::decode(text),
    }
}

/// Positions in several channels, as carried by one opaque cursor string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    positions: BTreeMap<String, StreamPosition>,
}

impl Cursor {
    /// An empty cursor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position in `channel`, if the cursor has one.
    pub fn get(&self, channel: &str) -> Option<&StreamPosition> {
        self.positions.get(channel)
    }

    /// Sets the position in `channel`.
    pub fn set(&mut self, channel: &str, position: StreamPosition) {
        match self.positions.get_mut(channel) {
            Some(p) => *p = position,
            None => {
                self.positions.insert(channel.to_owned(), position);
            }
        }
    }

    /// Moves `channel` to `offset` within `epoch`.
    pub fn advance(&mut self, channel: &str, epoch: &str, offset: u64) {
        match self.positions.get_mut(channel) {
            Some(p) => {
                if p.epoch != epoch {
                    p.epoch.clear();
                    p.epoch.push_str(epoch);
                }
                p.offset = offset;
            }
            None => self.set(
                channel,
                StreamPosition {
                    epoch: epoch.to_owned(),
                    offset,
                },
            ),
        }
    }

    /// Channels and positions, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &StreamPosition)> {
        self.positions.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many channels the cursor holds.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the cursor holds no channel.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The opaque string form (URL-safe, no newline).
    pub fn encode(&self) -> String {
        let mut raw = String::with_capacity(8 + self.positions.len() * 40);
        raw.push_str(VERSION_LINE);
        raw.push('\n');
        for (channel, pos) in &self.positions {
            raw.push_str(channel);
            raw.push(' ');
            raw.push_str(&pos.epoch);
            raw.push(' ');
            raw.push_str(&pos.offset.to_string());
            raw.push('\n');
        }
        URL_SAFE_NO_PAD.encode(raw.as_bytes())
    }

    /// Reads a cursor string made by [`Cursor::encode`]. Never panics; any other input is a
    /// [`ProtocolError::BadCursor`].
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        let bad = |why: &str| ProtocolError::BadCursor(why.to_owned());
        if text.len() > MAX_CURSOR_LEN {
            return Err(bad("cursor is too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim().as_bytes())
            .map_err(|_| bad("cursor is not one this server made (not base64url)"))?;
        let raw =
            std::str::from_utf8(&raw).map_err(|_| bad("cursor is not one this server made"))?;
        let mut lines = raw.split_terminator('\n');
        if lines.next() != Some(VERSION_LINE) {
            return Err(bad("cursor is not one this server made (unknown version)"));
        }
        let mut cursor = Cursor::new();
        for line in lines {
            let mut parts = line.split(' ');
            let (Some(channel), Some(epoch), Some(offset), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("cursor entry is malformed"));
            };
            validate_channel(channel)
                .map_err(|e| ProtocolError::BadCursor(format!("cursor channel: {e}")))?;
            let offset: u64 = offset
                .parse()
                .map_err(|_| bad("cursor offset is not a number"))?;
            validate_position(epoch, offset)?;
            if cursor.positions.len() >= MAX_CURSOR_CHANNELS {
                return Err(bad("cursor has too many channels"));
            }
            cursor.set(
                channel,
                StreamPosition {
                    epoch: epoch.to_owned(),
                    offset,
                },
            );
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_epoch_offset_or_a_cursor() {
        let at = |e: &str, o| StreamPosition {
            epoch: e.into(),
            offset: o,
        };
        assert_eq!(parse_since("a", "").unwrap(), None);
        assert_eq!(parse_since("a", "e1:5").unwrap(), Some(at("e1", 5)));
        assert!(parse_since("a", "e1:x").is_err());
        assert!(parse_since("a", "e-1:5").is_err());
        // The position of a channel nobody published to, as the server gave it out.
        assert_eq!(parse_since("a", ":0").unwrap(), Some(at("", 0)));
        assert!(
            parse_since("a", ":3").is_err(),
            "empty epoch, offset 0 only"
        );
        assert!(at("", 0).validate().is_ok());
        assert!(at("", 1).validate().is_err());
        assert!(at(&"e".repeat(MAX_EPOCH_LEN + 1), 0).validate().is_err());
        assert!(at("e 1", 0).validate().is_err());
        let mut c = Cursor::new();
        c.set("a", at("e2", 9));
        assert_eq!(parse_since("a", &c.encode()).unwrap(), Some(at("e2", 9)));
        assert_eq!(parse_since("b", &c.encode()).unwrap(), None);
        let one = parse_stream_since("e1:5", &["a"]).unwrap();
        assert_eq!(one.get("a"), Some(&at("e1", 5)));
        assert!(parse_stream_since("e1:5", &["a", "b"]).is_err());
        assert_eq!(parse_stream_since(&c.encode(), &["a", "b"]).unwrap(), c);
    }
    use proptest::prelude::*;

    fn pos(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    #[test]
    fn round_trips_several_channels() {
        let mut c = Cursor::new();
        c.set("chat:lobby", pos("ab12", 17));
        c.set("news", pos("zz9", 0));
        c.advance("news", "q1", 3);
        // A channel nobody published to yet: an empty epoch, carried through.
        c.set("quiet", pos("", 0));
        let text = c.encode();
        assert!(!text.contains('\n') && !text.contains('+') && !text.contains('/'));
        let back = Cursor::decode(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get("news"), Some(&pos("q1", 3)));
        assert_eq!(back.get("quiet"), Some(&pos("", 0)));
        // A client that never saw a message there may send the empty epoch back in a frame.
        let frame = r#"{"op":"subscribe","channel":"quiet","since":{"epoch":"","offset":0}}"#;
        assert!(crate::frame::ClientFrame::parse(frame).is_ok());
        let mut forged = Cursor::new();
        forged.set("quiet", pos("", 4));
        assert!(Cursor::decode(&forged.encode()).is_err());
    }

    #[test]
    fn rejects_foreign_strings_with_bad_cursor() {
        for bad in ["", "!!!", "aGVsbG8", "aDEKYSBiIGMK", "aDEKYSogYiAxCg"] {
            let err = Cursor::decode(bad).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::BadCursor, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_text(s in ".{0,200}") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = URL_SAFE_NO_PAD.encode(&b);
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn round_trip_empty_epochs_at_offset_zero(channels in proptest::collection::btree_set("[A-Za-z0-9_.:@/-]{1,40}", 0..8)) {
            let mut c = Cursor::new();
            for ch in &channels {
                c.set(ch, pos("", 0));
            }
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn round_trip_any_valid_cursor(
            entries in proptest::collection::btree_map("[A-Za-z0-9_.:@/-]{1,40}", ("[A-Za-z0-9]{1,16}", any::<u64>()), 0..8)
        ) {
            let mut c = Cursor::new();
            for (ch, (e, o)) in &entries {
                c.set(ch, pos(e, *o));
            }
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
    }
}

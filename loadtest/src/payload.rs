//! The data object every published message carries: `{"seq":N,"t":<µs>,"s":<sender>,"p":".."}`.
//!
//! `seq` counts per (channel, sender) from 0, `t` is the **scheduled** send time in µs since
//! the process epoch (see [`crate::clock`]), `s` names the sending member (0 for a lone
//! publisher) and `p` pads the object to the requested payload size.

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What a receiver reads back out of a message's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct Stamp {
    /// Sequence number within (channel, sender).
    pub(crate) seq: u64,
    /// Scheduled send time, µs since the process epoch.
    pub(crate) t: u64,
    /// The sender's index.
    #[serde(default)]
    pub(crate) s: u32,
}

/// Encodes a data object of at least `size` bytes (exactly, when `size` exceeds the header),
/// as the raw JSON that the publish encoders of `herald_protocol::client` write as it is.
pub(crate) fn encode(stamp: Stamp, size: usize) -> Box<RawValue> {
    let head = format!(
        "{{\"seq\":{},\"t\":{},\"s\":{},\"p\":\"",
        stamp.seq, stamp.t, stamp.s
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + pad + 2);
    out.push_str(&head);
    out.push_str(&"x".repeat(pad));
    out.push_str("\"}");
    RawValue::from_string(out).expect("a stamp is a JSON object")
}

/// Decodes a data object (raw JSON text).
pub(crate) fn decode(data: &[u8]) -> Result<Stamp> {
    serde_json::from_slice(data).context("message data is not a loadtest stamp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_pads_to_size_and_decodes() {
        let stamp = Stamp {
            seq: 42,
            t: 1_234_567,
            s: 3,
        };
        let text = encode(stamp, 200);
        assert_eq!(text.get().len(), 200);
        assert_eq!(decode(text.get().as_bytes()).unwrap(), stamp);
        let small = encode(stamp, 1);
        assert_eq!(decode(small.get().as_bytes()).unwrap(), stamp);
        assert!(decode(b"{\"hello\":1}").is_err());
    }
}

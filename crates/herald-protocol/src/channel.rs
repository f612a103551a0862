//! Channel names and namespaces.
//!
//! A channel is 1..=255 bytes of `[A-Za-z0-9_.:@/-]`. The part before the first `:` is its
//! namespace (the whole name when there is no `:`, in which case the namespace is the default,
//! empty one).

use crate::error::ProtocolError;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Checks that `name` is a valid channel name.
pub fn validate_channel(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::InvalidChannel(
            "channel name is empty".into(),
        ));
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ProtocolError::InvalidChannel(format!(
            "channel name is {} bytes, the limit is {MAX_CHANNEL_LEN}",
            name.len()
        )));
    }
    if let Some(bad) = name.chars().find(|c| !is_channel_char(*c)) {
        return Err(ProtocolError::InvalidChannel(format!(
            "channel name has a character outside [A-Za-z0-9_.:@/-]: {bad:?}"
        )));
    }
    Ok(())
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '/' | '-')
}

/// The namespace of a channel: the part before the first `:`, or `""` when there is none.
pub fn namespace_of(channel: &str) -> &str {
    match channel.find(':') {
        Some(i) => &channel[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        validate_channel("chat:lobby").unwrap();
        validate_channel("a_b.c:d@e/f-G9").unwrap();
        validate_channel(&"x".repeat(255)).unwrap();
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "has space", "new\nline", "é", "a*b", "a#b", "a?b"] {
            assert!(validate_channel(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_channel(&"x".repeat(256)).is_err());
    }

    #[test]
    fn namespace_is_before_first_colon() {
        assert_eq!(namespace_of("chat:lobby:x"), "chat");
        assert_eq!(namespace_of("lobby"), "");
        assert_eq!(namespace_of(":x"), "");
    }
}

//! Channel names and namespaces.
//!
//! A channel is 1..=255 bytes of `[A-Za-z0-9_.:@/-]`. The part before the first `:` is its
//! namespace (the whole name when there is no `:`, in which case the namespace is the default,
//! empty one).
//!
//! A **user-limited** channel ends in `#` and a comma-separated list of user ids
//! (`dm:#alice,bob`, `game:42#alice,bob`): only those users may subscribe to it, whatever its
//! namespace says. `#` and `,` are allowed for that purpose only: one `#`, followed by one or
//! more non-empty ids of the ordinary alphabet.

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
    let (base, users) = match name.split_once('#') {
        Some((base, users)) => (base, Some(users)),
        None => (name, None),
    };
    if let Some(bad) = base.chars().find(|c| !is_channel_char(*c)) {
        return Err(ProtocolError::InvalidChannel(format!(
            "channel name has a character outside [A-Za-z0-9_.:@/-]: {bad:?}"
        )));
    }
    if let Some(users) = users {
        let bad_user = |u: &str| u.is_empty() || !u.chars().all(is_channel_char);
        if users.split(',').any(bad_user) {
            return Err(ProtocolError::InvalidChannel(
                "after `#` a channel names users: one or more comma-separated ids of [A-Za-z0-9_.:@/-]"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The users a user-limited channel (`…#alice,bob`) is limited to, or `None` for an ordinary
/// channel. The name must be valid.
pub fn allowed_users(name: &str) -> Option<std::str::Split<'_, char>> {
    name.split_once('#').map(|(_, users)| users.split(','))
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '/' | '-')
}

/// The namespace of a channel: the part before the first `:`, or `""` when there is none.
pub fn namespace_of(channel: &str) -> &str {
    let base = channel.split('#').next().unwrap_or(channel);
    match base.find(':') {
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
        for bad in [
            "",
            "has space",
            "new\nline",
            "é",
            "a*b",
            "a?b",
            "a,b",
            "a#",
            "a#b,",
            "a#,b",
            "a#b#c",
            "a#b c",
        ] {
            assert!(validate_channel(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_channel(&"x".repeat(256)).is_err());
    }

    #[test]
    fn user_limited_channels_name_their_users() {
        validate_channel("dm:#alice,bob").unwrap();
        validate_channel("game:42#a.b@c").unwrap();
        let users: Vec<&str> = allowed_users("dm:#alice,bob").unwrap().collect();
        assert_eq!(users, ["alice", "bob"]);
        assert!(allowed_users("chat:lobby").is_none());
        assert_eq!(namespace_of("dm:#alice,bob"), "dm");
        assert_eq!(namespace_of("#a:b"), "", "a user id is not a namespace");
    }

    #[test]
    fn namespace_is_before_first_colon() {
        assert_eq!(namespace_of("chat:lobby:x"), "chat");
        assert_eq!(namespace_of("lobby"), "");
        assert_eq!(namespace_of(":x"), "");
    }
}

//! Token claims: parsed with strict types, then checked here (not by `jsonwebtoken`).
//!
//! [`RawClaims`] is what any token may carry. [`Checks`] applies the rules shared by both token
//! kinds (`aud`, `iss`, `nbf`, `iat`, `sub`), then each kind adds its own and `exp` comes last,
//! so that [`AuthError::Expired`] means "valid but expired" and a token that is also wrong in any
//! other way is [`AuthError::Invalid`].

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::AuthError;

/// Longest `sub`, bytes.
pub(super) const MAX_SUB_BYTES: usize = 255;
/// Largest `info` (its JSON text as in the token), bytes.
pub(super) const MAX_INFO_BYTES: usize = 1024;

/// Who a connection is, from a verified connection token.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionClaims {
    /// The user id (`sub`), 1..=255 bytes.
    pub(crate) sub: String,
    /// When the token expires (`exp`, Unix seconds); `None`: it never does.
    pub(crate) exp: Option<u64>,
    /// `info`: a JSON object of at most 1 KiB, shown with the user in presence and join/leave.
    pub(crate) info: Option<Box<RawValue>>,
    /// `channels`: valid channel names to subscribe server-side at connect (may be empty; not
    /// deduplicated, not checked against `max_channels_per_connection`).
    pub(crate) channels: Vec<String>,
}

/// A verified channel token: this user may subscribe to this channel until `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelClaims {
    /// The user id (`sub`); equals the connection's user.
    pub(crate) sub: String,
    /// The channel (`channel`); equals the channel asked for.
    pub(crate) channel: String,
    /// When the token expires (`exp`, Unix seconds).
    pub(crate) exp: u64,
}

/// Every claim Herald reads, typed strictly: a wrong type fails the whole token.
#[derive(Debug, Deserialize)]
pub(super) struct RawClaims {
    sub: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    aud: Option<Audience>,
    iss: Option<String>,
    info: Option<Box<RawValue>>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
}

/// `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

/// A NumericDate: a non-negative JSON number of seconds (fractions are cut off); `null` is the
/// same as absent. A string is an error, never "absent".
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(
            "a time claim must be a non-negative number of seconds",
        )),
    }
}

/// The configured expectations and the current time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checks<'a> {
    /// `auth.audience`.
    pub(super) audience: Option<&'a str>,
    /// `auth.issuer`.
    pub(super) issuer: Option<&'a str>,
    /// `auth.leeway_secs`.
    pub(super) leeway: u64,
    /// Now, Unix seconds.
    pub(super) now: u64,
}

fn invalid(message: impl Into<String>) -> AuthError {
    AuthError::Invalid(message.into())
}

impl Checks<'_> {
    /// The connection-token rules.
    pub(super) fn connection(&self, c: RawClaims) -> Result<ConnectionClaims, AuthError> {
        let sub = self.common(&c)?;
        if c.channel.is_some() {
            return Err(invalid(
                "a channel token (with `channel`) is not a connection token",
            ));
        }
        if let Some(info) = &c.info {
            if !info.get().trim_start().starts_with('{') {
                return Err(invalid("`info` must be a JSON object"));
            }
            if info.get().len() > MAX_INFO_BYTES {
                return Err(invalid(format!(
                    "`info` is {} bytes, the limit is {MAX_INFO_BYTES}",
                    info.get().len()
                )));
            }
        }
        let channels = c.channels.unwrap_or_default();
        for (i, channel) in channels.iter().enumerate() {
            herald_protocol::validate_channel(channel)
                .map_err(|e| invalid(format!("`channels[{i}]`: {e}")))?;
        }
        self.not_expired(c.exp)?;
        Ok(ConnectionClaims {
            sub,
            exp: c.exp,
            info: c.info,
            channels,
        })
    }

    /// The channel-token rules for `user` asking for `channel`.
    pub(super) fn channel(
        &self,
        c: RawClaims,
        user: &str,
        channel: &str,
    ) -> Result<ChannelClaims, AuthError> {
        let sub = self.common(&c)?;
        if sub != user {
            return Err(invalid("`sub` is not this connection's user"));
        }
        match c.channel {
            None => return Err(invalid("a channel token needs `channel`")),
            Some(ref c) if c != channel => {
                return Err(invalid("`channel` is not the channel asked for"))
            }
            Some(_) => {}
        }
        let exp = c
            .exp
            .ok_or_else(|| invalid("a channel token needs `exp`"))?;
        self.not_expired(Some(exp))?;
        Ok(ChannelClaims {
            sub,
            channel: channel.to_owned(),
            exp,
        })
    }

    /// `aud`, `iss`, `nbf`, `iat` and `sub`; returns the `sub`.
    fn common(&self, c: &RawClaims) -> Result<String, AuthError> {
        if let Some(wanted) = self.audience {
            if !c.aud.as_ref().is_some_and(|aud| aud.contains(wanted)) {
                return Err(invalid("`aud` does not name this service"));
            }
        }
        if let Some(wanted) = self.issuer {
            if c.iss.as_deref() != Some(wanted) {
                return Err(invalid("`iss` is not the configured issuer"));
            }
        }
        if c.nbf
            .is_some_and(|nbf| nbf > self.now.saturating_add(self.leeway))
        {
            return Err(invalid("not valid yet (`nbf` is in the future)"));
        }
        if c.iat
            .is_some_and(|iat| iat > self.now.saturating_add(self.leeway))
        {
            return Err(invalid("issued in the future (`iat`)"));
        }
        match &c.sub {
            None => Err(invalid("`sub` is missing")),
            Some(s) if s.is_empty() => Err(invalid("`sub` is empty")),
            Some(s) if s.len() > MAX_SUB_BYTES => Err(invalid(format!(
                "`sub` is {} bytes, the limit is {MAX_SUB_BYTES}",
                s.len()
            ))),
            Some(s) => Ok(s.clone()),
        }
    }

    /// Expired once `now` reaches `exp + leeway`.
    fn not_expired(&self, exp: Option<u64>) -> Result<(), AuthError> {
        match exp {
            Some(exp) if self.now >= exp.saturating_add(self.leeway) => Err(AuthError::Expired),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn checks() -> Checks<'static> {
        Checks {
            audience: None,
            issuer: None,
            leeway: 5,
            now: NOW,
        }
    }

    fn raw(v: serde_json::Value) -> RawClaims {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn time_claims_of_the_wrong_type_fail_parsing() {
        for claim in ["exp", "nbf", "iat"] {
            let text = json!({"sub": "u", claim: "99999999999"}).to_string();
            assert!(serde_json::from_str::<RawClaims>(&text).is_err(), "{claim}");
            let text = json!({"sub": "u", claim: -5}).to_string();
            assert!(serde_json::from_str::<RawClaims>(&text).is_err(), "{claim}");
        }
        let c = raw(json!({"sub": "u", "exp": 1.9e9, "nbf": null}));
        assert_eq!((c.exp, c.nbf), (Some(1_900_000_000), None));
    }

    #[test]
    fn duplicate_claims_fail_parsing() {
        let text = r#"{"sub":"u","exp":1,"exp":99999999999}"#;
        assert!(serde_json::from_str::<RawClaims>(text).is_err());
    }

    #[test]
    fn iat_in_the_future_is_refused_within_leeway_accepted() {
        let c = checks();
        assert!(c
            .connection(raw(json!({"sub": "u", "iat": NOW + 5})))
            .is_ok());
        let err = c
            .connection(raw(json!({"sub": "u", "iat": NOW + 6})))
            .unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(ref m) if m.contains("iat")),
            "{err}"
        );
    }

    #[test]
    fn aud_may_be_an_array() {
        let c = Checks {
            audience: Some("herald"),
            ..checks()
        };
        assert!(c
            .connection(raw(json!({"sub": "u", "aud": ["other", "herald"]})))
            .is_ok());
        assert!(c
            .connection(raw(json!({"sub": "u", "aud": ["other"]})))
            .is_err());
        assert!(c.connection(raw(json!({"sub": "u"}))).is_err());
    }

    #[test]
    fn an_expired_token_that_is_also_wrong_is_invalid() {
        let c = Checks {
            issuer: Some("idp"),
            ..checks()
        };
        let err = c
            .connection(raw(json!({"sub": "u", "iss": "evil", "exp": NOW - 100})))
            .unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err}");
    }

    #[test]
    fn channels_are_validated() {
        let c = checks();
        let ok = c
            .connection(raw(json!({"sub": "u", "channels": ["news", "chat:room"]})))
            .unwrap();
        assert_eq!(ok.channels, ["news", "chat:room"]);
        let err = c
            .connection(raw(json!({"sub": "u", "channels": ["ok", "bad channel"]})))
            .unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(ref m) if m.contains("channels[1]")),
            "{err}"
        );
    }

    #[test]
    fn a_channel_token_is_not_a_connection_token() {
        let err = checks()
            .connection(raw(json!({"sub": "u", "channel": "news", "exp": NOW + 60})))
            .unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err}");
    }

    #[test]
    fn channel_token_needs_channel_and_exp() {
        let c = checks();
        let err = c
            .channel(raw(json!({"sub": "u", "channel": "news"})), "u", "news")
            .unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(ref m) if m.contains("exp")),
            "{err}"
        );
        let err = c
            .channel(raw(json!({"sub": "u", "exp": NOW + 60})), "u", "news")
            .unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(ref m) if m.contains("channel")),
            "{err}"
        );
        let err = c
            .channel(
                raw(json!({"sub": "u", "channel": "news", "exp": NOW - 10})),
                "u",
                "news",
            )
            .unwrap_err();
        assert_eq!(err, AuthError::Expired);
    }
}

//! Identity: verifying the JWTs an application's backend signs for its users.
//!
//! Herald never issues tokens; it only checks them. Two kinds are verified here, both signed with
//! the same keys ([`AuthConfig`], TOML section `[auth]`):
//!
//! * a **connection token** ([`Verifier::connection`]) says who the connection is: `sub` (the
//!   user, 1..=255 bytes), optional `exp`, `info` (a JSON object ≤ 1 KiB) and `channels`
//!   (subscribed server-side at connect);
//! * a **channel token** ([`Verifier::channel`]) lets that user subscribe to one channel of a
//!   namespace whose `subscribe` is `token`: `sub` must equal the connection's user, `channel` the
//!   exact channel name, and `exp` is required.
//!
//! How a token is checked, in this order (the first failure decides the [`AuthError`]):
//!
//! 1. The header is decoded and its `alg` picks the key, never the other way round: `HS*` only
//!    ever uses `hmac_secret`; every other algorithm uses the public key of the token's `kid` from
//!    the JWKS when `jwks_url` is set and the token has a `kid`, else the `public_key_file` key.
//!    The algorithm must fit that key's type exactly (RSA: `RS*`/`PS*`; P-256: `ES256`; P-384:
//!    `ES384`; Ed25519: `EdDSA`), so an RS256 token can never be checked as HMAC with the public
//!    key as the secret (alg confusion), and `none` is not an algorithm at all.
//! 2. The signature is verified (`jsonwebtoken`, ring crypto).
//! 3. The claims are parsed with strict types — a time claim that is not a number is refused —
//!    and checked here rather than by `jsonwebtoken` (whose 9.x checks skip a claim of the wrong
//!    type, GHSA-h395-gr6q-cpjc): `aud` and `iss` when configured, `nbf` and `iat` not in the
//!    future, `sub`, `info`, `channels`; then `exp`. An expired token that is otherwise valid is
//!    [`AuthError::Expired`] (the client should fetch a fresh token); anything else wrong is
//!    [`AuthError::Invalid`] (do not retry).
//!
//! Times allow `leeway_secs` (default 5) of clock skew. A connection token **without `exp` never
//! expires** (as in Centrifugo); a channel token must have one. A connection token that carries a
//! `channel` claim is refused, so a channel token can never stand in for a connection token.
//!
//! JWKS keys are cached by `kid` (see `jwks`): an unknown `kid` refetches the set at most once per
//! `min_refetch` (10 s), concurrent verifications share one fetch, and a fetch that fails while
//! the key is unknown is [`AuthError::Unavailable`] — the edge answers "try again later", not
//! "unauthorized".
//!
//! Errors never contain the token or a secret.

mod claims;
mod config;
mod jwks;
mod keys;
mod verifier;

#[cfg(test)]
mod test_support;

#[allow(unused_imports)] // Callers get one from `Verifier::channel` but do not name it yet.
pub(crate) use claims::ChannelClaims;
pub(crate) use claims::ConnectionClaims;
pub use config::AuthConfig;
pub(crate) use verifier::Verifier;

use thiserror::Error;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum AuthError {
    /// No token was given (and the caller needs one).
    #[error("no token")]
    Missing,
    /// A bad signature, a bad or missing claim, a wrong `aud`/`iss`, an algorithm that does not
    /// fit the key, or a malformed token. The client should not retry with the same token.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is valid but its `exp` has passed (beyond the leeway): get a fresh one.
    #[error("token expired")]
    Expired,
    /// The key needed to check the token could not be fetched (JWKS unreachable or broken).
    #[error("token keys unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The `result` metric label of this outcome; a success is labelled `"ok"`.
    pub(crate) fn result_label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_labels_are_distinct_and_fixed() {
        let all = [
            AuthError::Missing,
            AuthError::Invalid("x".into()),
            AuthError::Expired,
            AuthError::Unavailable("y".into()),
        ];
        let labels: Vec<_> = all.iter().map(AuthError::result_label).collect();
        assert_eq!(labels, ["missing", "invalid", "expired", "unavailable"]);
    }
}

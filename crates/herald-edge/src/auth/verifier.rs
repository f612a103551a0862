//! [`Verifier`]: the configured keys, and the one path every token takes through them.
//!
//! Built once per node from [`AuthConfig`] (reading the PEM file and prefetching the JWKS), then
//! shared: verifying takes `&self`, and only a JWKS refetch ever waits.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};

use super::claims::{ChannelClaims, Checks, ConnectionClaims, RawClaims};
use super::config::{redact_url, AuthConfig};
use super::jwks::{Jwks, JwksTuning};
use super::keys::Key;
use super::AuthError;

/// Longest token accepted, bytes (checked before any parsing).
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// An HMAC secret shorter than this is allowed but logged as weak (RFC 7518 §3.2).
const MIN_STRONG_SECRET_BYTES: usize = 32;

/// Verifies connection and channel tokens with the configured keys.
pub(crate) struct Verifier {
    /// Key of `HS*` tokens (`auth.hmac_secret`); the only key they are ever checked with.
    hmac: Option<Arc<Key>>,
    /// `auth.public_key_file`: checks non-HMAC tokens that have no `kid` (or when there is no
    /// JWKS).
    public_key: Option<Arc<Key>>,
    /// `auth.jwks_url`: checks non-HMAC tokens that have a `kid`.
    jwks: Option<Jwks>,
    /// `auth.audience`.
    audience: Option<String>,
    /// `auth.issuer`.
    issuer: Option<String>,
    /// `auth.leeway_secs`.
    leeway: u64,
}
impl Verifier {
    /// Builds a verifier: validates the config, loads the public key file, and fetches the JWKS
    /// once (a failed fetch is logged, not fatal: tokens needing it are `Unavailable` until a
    /// fetch succeeds). The error is one readable sentence for `ConfigError::Invalid`.
    pub(crate) async fn new(config: &AuthConfig) -> Result<Self, String> {
        Self::with_tuning(config, JwksTuning::default()).await
    }

    /// [`Verifier::new`] with a JWKS cache tuned otherwise (tests shorten the intervals).
    pub(crate) async fn with_tuning(
        config: &AuthConfig,
        tuning: JwksTuning,
    ) -> Result<Self, String> {
        config.validate()?;
        let hmac = config.hmac_secret.as_deref().map(|secret| {
            if secret.len() < MIN_STRONG_SECRET_BYTES {
                tracing::warn!(
                    bytes = secret.len(),
                    "auth.hmac_secret is short; use at least 32 random bytes"
                );
            }
            Arc::new(Key::hmac(secret))
        });
        let public_key = match &config.public_key_file {
            Some(path) => Some(Arc::new(Key::from_pem_file(path).await?)),
            None => None,
        };
        let jwks = match &config.jwks_url {
            Some(url) => {
                let jwks = Jwks::new(url, tuning)?;
                jwks.prefetch().await;
                Some(jwks)
            }
            None => None,
        };
        Ok(Verifier {
            hmac,
            public_key,
            jwks,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// Verifies a connection token. An empty token is [`AuthError::Missing`].
    pub(crate) async fn connection(&self, token: &str) -> Result<ConnectionClaims, AuthError> {
        let claims = self.verify(token).await?;
        self.checks().connection(claims)
    }

    /// Verifies a channel token of `user` for `channel`: `sub` must be `user`, `channel` must be
    /// `channel`, and `exp` is required.
    pub(crate) async fn channel(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<ChannelClaims, AuthError> {
        let claims = self.verify(token).await?;
        self.checks().channel(claims, user, channel)
    }

    fn checks(&self) -> Checks<'_> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Checks {
            audience: self.audience.as_deref(),
            issuer: self.issuer.as_deref(),
            leeway: self.leeway,
            now,
        }
    }

    /// Picks the key by `alg` (and `kid`), checks the signature and parses the claims.
    async fn verify(&self, token: &str) -> Result<RawClaims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!(
                "token is over {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token or unknown `alg`".into()))?;
        let key = self.key_for(&header).await?;
        if !key.allows(header.alg) {
            return Err(AuthError::Invalid(format!(
                "`alg` {:?} does not fit the {}",
                header.alg, key.kind
            )));
        }
        let mut validation = Validation::new(header.alg);
        // Every claim is checked by `Checks`, with strict types; see the module docs of `auth`.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<RawClaims>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                AuthError::Invalid(match e.into_kind() {
                    ErrorKind::InvalidSignature => "bad signature".into(),
                    ErrorKind::InvalidAlgorithm => "`alg` does not fit the key".into(),
                    ErrorKind::Json(e) => format!("claims: {e}"),
                    ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                        "malformed token".into()
                    }
                    _ => "signature cannot be checked".into(),
                })
            })
    }

    /// The key a token must be checked with, chosen by its header only.
    async fn key_for(&self, header: &Header) -> Result<Arc<Key>, AuthError> {
        let none = |what: &str| {
            AuthError::Invalid(format!(
                "`alg` {:?} needs {what}, which is not configured",
                header.alg
            ))
        };
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return self.hmac.clone().ok_or_else(|| none("auth.hmac_secret"));
        }
        match (&header.kid, &self.jwks, &self.public_key) {
            (Some(kid), Some(jwks), _) => jwks.key(kid).await,
            (_, _, Some(key)) => Ok(key.clone()),
            (None, Some(_), None) => Err(AuthError::Invalid(
                "token has no `kid` to find its JWKS key".into(),
            )),
            (_, None, None) => Err(none("auth.public_key_file or auth.jwks_url")),
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public_key", &self.public_key.as_ref().map(|k| k.kind))
            .field("jwks", &self.jwks.as_ref().map(|j| redact_url(j.url())))
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{fixture, fixture_path, sign, sign_hmac};
    use serde_json::{json, Value};

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    async fn hmac_verifier(extra: impl FnOnce(&mut AuthConfig)) -> Verifier {
        let mut config = AuthConfig {
            hmac_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        extra(&mut config);
        Verifier::new(&config).await.unwrap()
    }

    async fn pem_verifier(file: &str) -> Verifier {
        let config = AuthConfig {
            public_key_file: Some(fixture_path(file)),
            ..AuthConfig::default()
        };
        Verifier::new(&config).await.unwrap()
    }

    fn hs(claims: Value) -> String {
        sign_hmac(Algorithm::HS256, SECRET.as_bytes(), &claims)
    }

    #[track_caller]
    fn assert_invalid<T: fmt::Debug>(result: Result<T, AuthError>, needle: &str) {
        match result {
            Err(AuthError::Invalid(message)) => {
                assert!(message.contains(needle), "{message:?} lacks {needle:?}")
            }
            other => panic!("expected Invalid({needle:?}), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hs256_valid_token_gives_its_claims() {
        let v = hmac_verifier(|_| {}).await;
        let exp = now() + 600;
        let token = hs(json!({
            "sub": "alice",
            "exp": exp,
            "iat": now(),
            "info": {"name": "Alice"},
            "channels": ["news", "chat:lobby"],
            "custom": [1, 2, 3]
        }));
        let claims = v.connection(&token).await.unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, Some(exp));
        assert_eq!(claims.info.unwrap().get(), r#"{"name":"Alice"}"#);
        assert_eq!(claims.channels, ["news", "chat:lobby"]);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign_hmac(alg, SECRET.as_bytes(), &json!({"sub": "bob"}));
            assert_eq!(v.connection(&token).await.unwrap().sub, "bob", "{alg:?}");
        }
    }

    #[tokio::test]
    async fn a_token_without_exp_never_expires() {
        let v = hmac_verifier(|_| {}).await;
        let claims = v.connection(&hs(json!({"sub": "alice"}))).await.unwrap();
        assert_eq!(claims.exp, None);
        assert!(claims.info.is_none() && claims.channels.is_empty());
    }

    #[tokio::test]
    async fn a_bad_signature_is_invalid() {
        let v = hmac_verifier(|_| {}).await;
        let token = sign_hmac(
            Algorithm::HS256,
            b"another-secret",
            &json!({"sub": "alice"}),
        );
        assert_invalid(v.connection(&token).await, "bad signature");
        // A valid token with its payload swapped.
        let good = hs(json!({"sub": "alice"}));
        let forged = hs(json!({"sub": "mallory"}));
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_invalid(v.connection(&parts.join(".")).await, "bad signature");
    }

    #[tokio::test]
    async fn missing_and_malformed_tokens() {
        let v = hmac_verifier(|_| {}).await;
        assert_eq!(v.connection("").await.unwrap_err(), AuthError::Missing);
        assert_eq!(v.connection("  ").await.unwrap_err(), AuthError::Missing);
        assert_invalid(v.connection("not.a.jwt").await, "malformed");
        assert_invalid(v.connection(&"a".repeat(70_000)).await, "bytes");
        // alg "none" is not an algorithm.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice"}"#)
        );
        assert_invalid(v.connection(&none).await, "alg");
    }

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[tokio::test]
    async fn audience_and_issuer_are_checked_when_configured() {
        let v = hmac_verifier(|c| {
            c.audience = Some("herald".into());
            c.issuer = Some("https://idp.example/".into());
        })
        .await;
        let ok = json!({"sub": "u", "aud": "herald", "iss": "https://idp.example/"});
        v.connection(&hs(ok)).await.unwrap();
        let wrong_aud = json!({"sub": "u", "aud": "other", "iss": "https://idp.example/"});
        assert_invalid(v.connection(&hs(wrong_aud)).await, "aud");
        let wrong_iss = json!({"sub": "u", "aud": "herald", "iss": "https://evil/"});
        assert_invalid(v.connection(&hs(wrong_iss)).await, "iss");
        let no_iss = json!({"sub": "u", "aud": "herald"});
        assert_invalid(v.connection(&hs(no_iss)).await, "iss");
    }

    #[tokio::test]
    async fn expiry_honours_the_leeway() {
        let v = hmac_verifier(|c| c.leeway_secs = 5).await;
        let expired = hs(json!({"sub": "u", "exp": now() - 60}));
        let err = v.connection(&expired).await.unwrap_err();
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.result_label(), "expired");
        // Expired two seconds ago, within the 5 s leeway: still accepted.
        let within = hs(json!({"sub": "u", "exp": now() - 2}));
        v.connection(&within).await.unwrap();
        let string_exp = hs(json!({"sub": "u", "exp": (now() - 60).to_string()}));
        assert_invalid(v.connection(&string_exp).await, "claims");
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_refused() {
        let v = hmac_verifier(|_| {}).await;
        assert_invalid(
            v.connection(&hs(json!({"sub": "u", "nbf": now() + 120})))
                .await,
            "nbf",
        );
        v.connection(&hs(json!({"sub": "u", "nbf": now() - 1})))
            .await
            .unwrap();
        // The type-confusion bypass of jsonwebtoken 9 (GHSA-h395-gr6q-cpjc) does not apply.
        let string_nbf = hs(json!({"sub": "u", "nbf": "99999999999"}));
        assert_invalid(v.connection(&string_nbf).await, "claims");
    }

    #[tokio::test]
    async fn sub_must_be_1_to_255_bytes() {
        let v = hmac_verifier(|_| {}).await;
        assert_invalid(
            v.connection(&hs(json!({"exp": now() + 60}))).await,
            "missing",
        );
        assert_invalid(v.connection(&hs(json!({"sub": ""}))).await, "empty");
        let long = "x".repeat(256);
        assert_invalid(v.connection(&hs(json!({"sub": long}))).await, "256 bytes");
        let longest = "x".repeat(255);
        v.connection(&hs(json!({"sub": longest}))).await.unwrap();
        assert_invalid(v.connection(&hs(json!({"sub": 42}))).await, "claims");
    }

    #[tokio::test]
    async fn info_must_be_an_object_of_at_most_1_kib() {
        let v = hmac_verifier(|_| {}).await;
        for bad in [json!("text"), json!([1, 2]), json!(7)] {
            assert_invalid(
                v.connection(&hs(json!({"sub": "u", "info": bad}))).await,
                "object",
            );
        }
        let big = json!({"sub": "u", "info": {"pad": "x".repeat(1100)}});
        assert_invalid(v.connection(&hs(big)).await, "limit is 1024");
        let fits = json!({"sub": "u", "info": {"pad": "x".repeat(1000)}});
        v.connection(&hs(fits)).await.unwrap();
    }

    #[tokio::test]
    async fn asymmetric_tokens_verify_with_the_pem_key() {
        let cases = [
            ("rsa_public.pem", "rsa_private.pem", Algorithm::RS256),
            ("rsa_public.pem", "rsa_private.pem", Algorithm::PS512),
            ("rsa_public_pkcs1.pem", "rsa_private.pem", Algorithm::RS384),
            ("ec256_public.pem", "ec256_private.pem", Algorithm::ES256),
            ("ec384_public.pem", "ec384_private.pem", Algorithm::ES384),
            (
                "ed25519_public.pem",
                "ed25519_private.pem",
                Algorithm::EdDSA,
            ),
        ];
        for (public, private, alg) in cases {
            let v = pem_verifier(public).await;
            let token = sign(alg, private, None, &json!({"sub": "alice"}));
            let claims = v.connection(&token).await;
            assert_eq!(claims.unwrap().sub, "alice", "{alg:?} with {public}");
        }
    }

    #[tokio::test]
    async fn a_token_signed_by_another_key_is_invalid() {
        let v = pem_verifier("rsa_public.pem").await;
        let token = sign(
            Algorithm::RS256,
            "rsa_b_private.pem",
            None,
            &json!({"sub": "u"}),
        );
        assert_invalid(v.connection(&token).await, "bad signature");
    }

    #[tokio::test]
    async fn alg_confusion_is_refused() {
        // HS256 "signed" with the public key file's bytes as the HMAC secret.
        let public_pem = fixture("rsa_public.pem");
        let forged = sign_hmac(Algorithm::HS256, &public_pem, &json!({"sub": "mallory"}));
        let v = pem_verifier("rsa_public.pem").await;
        assert_invalid(v.connection(&forged).await, "auth.hmac_secret");
        // Also when an HMAC secret is configured: HS tokens only ever use that secret.
        let both = Verifier::new(&AuthConfig {
            hmac_secret: Some(SECRET.into()),
            public_key_file: Some(fixture_path("rsa_public.pem")),
            ..AuthConfig::default()
        })
        .await
        .unwrap();
        assert_invalid(both.connection(&forged).await, "bad signature");
        // An EC key checks ES256 only, not ES384 or RS256.
        let v = pem_verifier("ec256_public.pem").await;
        let es384 = sign(
            Algorithm::ES384,
            "ec384_private.pem",
            None,
            &json!({"sub": "u"}),
        );
        assert_invalid(v.connection(&es384).await, "does not fit");
        let rs256 = sign(
            Algorithm::RS256,
            "rsa_private.pem",
            None,
            &json!({"sub": "u"}),
        );
        assert_invalid(v.connection(&rs256).await, "does not fit");
        // And an RS256 token is never checked against the HMAC secret.
        let v = hmac_verifier(|_| {}).await;
        assert_invalid(v.connection(&rs256).await, "auth.public_key_file");
    }

    #[tokio::test]
    async fn channel_tokens() {
        let v = hmac_verifier(|_| {}).await;
        let token = hs(json!({"sub": "alice", "channel": "vip:room", "exp": now() + 60}));
        let claims = v.channel(&token, "alice", "vip:room").await.unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.channel.as_str()),
            ("alice", "vip:room")
        );
        assert_invalid(v.channel(&token, "bob", "vip:room").await, "sub");
        assert_invalid(v.channel(&token, "alice", "vip:other").await, "channel");
        let no_exp = hs(json!({"sub": "alice", "channel": "vip:room"}));
        assert_invalid(v.channel(&no_exp, "alice", "vip:room").await, "exp");
        // A connection token is not a channel token, nor the other way round.
        let conn = hs(json!({"sub": "alice", "exp": now() + 60}));
        assert_invalid(v.channel(&conn, "alice", "vip:room").await, "channel");
        assert_invalid(v.connection(&token).await, "channel token");
    }

    #[tokio::test]
    async fn errors_never_contain_the_token_or_secret() {
        let v = hmac_verifier(|c| c.audience = Some("herald".into())).await;
        let tokens = [
            hs(json!({"sub": "u", "aud": "other"})),
            sign_hmac(Algorithm::HS256, b"wrong", &json!({"sub": "u"})),
            "Zm9vZm9v.YmFyYmFy.YmF6YmF6".to_owned(),
        ];
        for token in tokens {
            let message = v.connection(&token).await.unwrap_err().to_string();
            assert!(
                !message.contains(&token) && !message.contains(SECRET),
                "{message}"
            );
            assert!(
                !token.split('.').any(|part| message.contains(part)),
                "{message}"
            );
        }
        let debug = format!("{v:?}");
        assert!(!debug.contains(SECRET), "{debug}");
    }

    #[tokio::test]
    async fn construction_errors_are_readable() {
        let err = Verifier::new(&AuthConfig {
            public_key_file: Some(fixture_path("rsa_private.pem")),
            ..AuthConfig::default()
        })
        .await
        .unwrap_err();
        assert!(
            err.contains("auth.public_key_file") && err.contains("private key"),
            "{err}"
        );
        let err = Verifier::new(&AuthConfig {
            hmac_secret: Some(String::new()),
            ..AuthConfig::default()
        })
        .await
        .unwrap_err();
        assert!(err.contains("hmac_secret"), "{err}");
    }

    #[tokio::test]
    async fn no_keys_means_no_token_verifies() {
        let v = Verifier::new(&AuthConfig::default()).await.unwrap();
        assert_invalid(
            v.connection(&hs(json!({"sub": "u"}))).await,
            "not configured",
        );
    }
}

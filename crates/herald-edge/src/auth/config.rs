//! The `[auth]` section of the config file: keys, claim checks, where tokens come from, and the
//! proxy endpoints (carried here; the proxy client lives elsewhere).
//!
//! Every key name is part of the contract (docs/SECURITY.md) and must not change. `Debug` never
//! prints the HMAC secret, nor credentials or query strings of the URLs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Token verification and auth proxy options (`[auth]`).
///
/// With no key configured (`hmac_secret`, `public_key_file` and `jwks_url` all unset) nothing
/// can be verified, and connections are anonymous unless `anonymous = false` (which
/// [`AuthConfig::validate`] refuses, since then nobody could connect).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret for `HS256`/`HS384`/`HS512` tokens (env `HERALD_JWT_SECRET`). Never logged.
    pub hmac_secret: Option<String>,
    /// PEM file with one public key: RSA (`RS*`, `PS*`), EC P-256 (`ES256`), EC P-384 (`ES384`)
    /// or Ed25519 (`EdDSA`). The type is detected from the file.
    pub public_key_file: Option<PathBuf>,
    /// JWKS URL (`http://` or `https://`); keys are cached by `kid`, an unknown `kid` refetches
    /// at most once per 10 s.
    pub jwks_url: Option<String>,
    /// When set, a token's `aud` (a string or an array) must contain it.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// Accept connections without a token. Unset: true only when no key is configured (see
    /// [`AuthConfig::anonymous_allowed`]).
    pub anonymous: Option<bool>,
    /// Cookie read for a token when there is no header or query parameter (default
    /// `herald_token`).
    pub token_cookie: String,
    /// Seconds a WebSocket has after the upgrade to send `{"op":"connect","token":…}` (default 5).
    pub auth_timeout_secs: u64,
    /// Clock skew allowed when checking `exp`, `nbf` and `iat`, seconds (default 5).
    pub leeway_secs: u64,
    /// URL asked whether a connection may connect (auth proxy), if any.
    pub connect_proxy_url: Option<String>,
    /// URL asked whether a subscribe is allowed (auth proxy), if any.
    pub subscribe_proxy_url: Option<String>,
    /// URL asked whether a publish is allowed (auth proxy), if any.
    pub publish_proxy_url: Option<String>,
    /// Time limit of one proxy request, milliseconds (default 3000).
    pub proxy_timeout_ms: u64,
    /// Most proxy requests in flight at once per node (default 64).
    pub proxy_concurrency: usize,
    /// **Development only**: serve `GET /dev/token?user=<id>`, which hands anyone a one-hour
    /// HS256 connection token for any user (signed with `hmac_secret`), so the demo page works
    /// against an edge that requires tokens. Never enable it where real users connect.
    pub dev_token_endpoint: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hmac_secret: None,
            public_key_file: None,
            jwks_url: None,
            audience: None,
            issuer: None,
            anonymous: None,
            token_cookie: "herald_token".into(),
            auth_timeout_secs: 5,
            leeway_secs: 5,
            connect_proxy_url: None,
            subscribe_proxy_url: None,
            publish_proxy_url: None,
            proxy_timeout_ms: 3000,
            proxy_concurrency: 64,
            dev_token_endpoint: false,
        }
    }
}

impl AuthConfig {
    /// Whether any verification key is configured.
    pub fn has_keys(&self) -> bool {
        self.hmac_secret.is_some() || self.public_key_file.is_some() || self.jwks_url.is_some()
    }

    /// Whether a connection without a token is accepted: `anonymous` when set, else true only
    /// while no key is configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.unwrap_or(!self.has_keys())
    }

    /// Time a WebSocket has to authenticate after the upgrade.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }

    /// Time limit of one proxy request.
    pub fn proxy_timeout(&self) -> Duration {
        Duration::from_millis(self.proxy_timeout_ms)
    }

    /// Checks every value is usable. The error is one readable sentence naming the key, ready
    /// for `ConfigError::Invalid`.
    pub fn validate(&self) -> Result<(), String> {
        if self.hmac_secret.as_deref() == Some("") {
            return Err("auth.hmac_secret is empty (leave it out to disable HMAC tokens)".into());
        }
        if self
            .public_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("auth.public_key_file is empty".into());
        }
        if let Some(url) = &self.jwks_url {
            check_http_url("auth.jwks_url", url)?;
        }
        for (key, value) in [("audience", &self.audience), ("issuer", &self.issuer)] {
            if value.as_deref() == Some("") {
                return Err(format!(
                    "auth.{key} is empty (leave it out to not check it)"
                ));
            }
        }
        if self.dev_token_endpoint && self.hmac_secret.is_none() {
            return Err("auth.dev_token_endpoint needs auth.hmac_secret (it signs HS256)".into());
        }
        if self.anonymous == Some(false) && !self.has_keys() && self.connect_proxy_url.is_none() {
            return Err(
                "auth.anonymous = false needs a key (hmac_secret, public_key_file or \
                        jwks_url): without one no client could connect"
                    .into(),
            );
        }
        if self.token_cookie.is_empty() || !self.token_cookie.bytes().all(is_cookie_name_byte) {
            return Err(format!(
                "auth.token_cookie {:?} is not a valid cookie name",
                self.token_cookie
            ));
        }
        if self.auth_timeout_secs == 0 || self.auth_timeout_secs > 300 {
            return Err("auth.auth_timeout_secs must be 1 ..= 300".into());
        }
        if self.leeway_secs > 300 {
            return Err("auth.leeway_secs must be at most 300".into());
        }
        for (key, url) in [
            ("connect_proxy_url", &self.connect_proxy_url),
            ("subscribe_proxy_url", &self.subscribe_proxy_url),
            ("publish_proxy_url", &self.publish_proxy_url),
        ] {
            if let Some(url) = url {
                check_http_url(&format!("auth.{key}"), url)?;
            }
        }
        if self.proxy_timeout_ms == 0 || self.proxy_timeout_ms > 60_000 {
            return Err("auth.proxy_timeout_ms must be 1 ..= 60000".into());
        }
        if self.proxy_concurrency == 0 {
            return Err("auth.proxy_concurrency must be at least 1".into());
        }
        Ok(())
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = |u: &Option<String>| u.as_deref().map(redact_url);
        f.debug_struct("AuthConfig")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &url(&self.jwks_url))
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("anonymous", &self.anonymous)
            .field("token_cookie", &self.token_cookie)
            .field("auth_timeout_secs", &self.auth_timeout_secs)
            .field("leeway_secs", &self.leeway_secs)
            .field("connect_proxy_url", &url(&self.connect_proxy_url))
            .field("subscribe_proxy_url", &url(&self.subscribe_proxy_url))
            .field("publish_proxy_url", &url(&self.publish_proxy_url))
            .field("proxy_timeout_ms", &self.proxy_timeout_ms)
            .field("proxy_concurrency", &self.proxy_concurrency)
            .field("dev_token_endpoint", &self.dev_token_endpoint)
            .finish()
    }
}

fn check_http_url(key: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(format!(
            "{key} must be an http:// or https:// URL, got {}",
            redact_url(url)
        )),
    }
}

/// The URL without user, password and query (any of which may hold a credential).
pub(super) fn redact_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "<not a URL>".into();
    };
    let had_credentials = !u.username().is_empty() || u.password().is_some();
    let had_query = u.query().is_some();
    // Both only fail for URLs that cannot have credentials, which then have none to hide.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let mut out = u.to_string();
    if had_credentials {
        out = out.replacen("://", "://<redacted>@", 1);
    }
    if had_query {
        out.push_str("?<redacted>");
    }
    out
}

/// RFC 6265 cookie-name bytes: visible ASCII except separators.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<AuthConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse("").unwrap();
        assert_eq!(c, AuthConfig::default());
        assert_eq!(c.token_cookie, "herald_token");
        assert_eq!(c.auth_timeout_secs, 5);
        assert_eq!(c.leeway_secs, 5);
        assert_eq!(c.proxy_timeout_ms, 3000);
        assert_eq!(c.proxy_concurrency, 64);
        assert_eq!(c.auth_timeout(), Duration::from_secs(5));
        assert_eq!(c.proxy_timeout(), Duration::from_millis(3000));
        assert!(!c.has_keys());
        assert!(c.anonymous_allowed());
        c.validate().unwrap();
    }

    #[test]
    fn every_contract_key_parses() {
        let c = parse(
            r#"
            hmac_secret = "s3cret"
            public_key_file = "key.pem"
            jwks_url = "https://idp.example/jwks"
            audience = "herald"
            issuer = "https://idp.example/"
            anonymous = true
            token_cookie = "tok"
            auth_timeout_secs = 7
            leeway_secs = 2
            connect_proxy_url = "http://app/connect"
            subscribe_proxy_url = "http://app/subscribe"
            publish_proxy_url = "http://app/publish"
            proxy_timeout_ms = 500
            proxy_concurrency = 8
            "#,
        )
        .unwrap();
        assert_eq!(c.hmac_secret.as_deref(), Some("s3cret"));
        assert_eq!(c.public_key_file, Some(PathBuf::from("key.pem")));
        assert_eq!(c.anonymous, Some(true));
        assert_eq!(c.token_cookie, "tok");
        assert_eq!(c.proxy_concurrency, 8);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("hmac_secert = \"x\"").unwrap_err().to_string();
        assert!(err.contains("hmac_secert"), "{err}");
    }

    #[test]
    fn anonymous_defaults_to_false_once_a_key_is_configured() {
        for c in [
            AuthConfig {
                hmac_secret: Some("k".into()),
                ..AuthConfig::default()
            },
            AuthConfig {
                public_key_file: Some("k.pem".into()),
                ..AuthConfig::default()
            },
            AuthConfig {
                jwks_url: Some("https://idp/jwks".into()),
                ..AuthConfig::default()
            },
        ] {
            assert!(c.has_keys());
            assert!(!c.anonymous_allowed());
            assert!(AuthConfig {
                anonymous: Some(true),
                ..c
            }
            .anonymous_allowed());
        }
    }

    #[test]
    fn validate_names_the_bad_key() {
        let cases: [(AuthConfig, &str); 9] = [
            (
                AuthConfig {
                    hmac_secret: Some(String::new()),
                    ..AuthConfig::default()
                },
                "hmac_secret",
            ),
            (
                AuthConfig {
                    jwks_url: Some("ftp://idp/jwks".into()),
                    ..AuthConfig::default()
                },
                "jwks_url",
            ),
            (
                AuthConfig {
                    audience: Some(String::new()),
                    ..AuthConfig::default()
                },
                "audience",
            ),
            (
                AuthConfig {
                    anonymous: Some(false),
                    ..AuthConfig::default()
                },
                "anonymous",
            ),
            (
                AuthConfig {
                    token_cookie: "a b".into(),
                    ..AuthConfig::default()
                },
                "token_cookie",
            ),
            (
                AuthConfig {
                    auth_timeout_secs: 0,
                    ..AuthConfig::default()
                },
                "auth_timeout_secs",
            ),
            (
                AuthConfig {
                    publish_proxy_url: Some("not a url".into()),
                    ..AuthConfig::default()
                },
                "publish_proxy_url",
            ),
            (
                AuthConfig {
                    proxy_timeout_ms: 0,
                    ..AuthConfig::default()
                },
                "proxy_timeout_ms",
            ),
            (
                AuthConfig {
                    proxy_concurrency: 0,
                    ..AuthConfig::default()
                },
                "proxy_concurrency",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = AuthConfig {
            hmac_secret: Some("hunter2-secret".into()),
            jwks_url: Some("https://user:pa55word@idp.example/jwks?api_key=k3y".into()),
            connect_proxy_url: Some("http://app/connect?token=t0ken".into()),
            ..AuthConfig::default()
        };
        let text = format!("{c:?}");
        for secret in ["hunter2-secret", "pa55word", "user:", "k3y", "t0ken"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            text.contains("https://<redacted>@idp.example/jwks?<redacted>"),
            "{text}"
        );
        assert!(text.contains("http://app/connect?<redacted>"), "{text}");
        let err = AuthConfig {
            jwks_url: Some("ftp://u:pa55word@idp/".into()),
            ..AuthConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(!err.contains("pa55word"), "{err}");
    }
}

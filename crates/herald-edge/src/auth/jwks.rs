//! Keys from a JWKS URL, cached by `kid`, refetched rarely and never twice at once.
//!
//! How a lookup works ([`Jwks::key`]):
//!
//! 1. A `kid` in the cache, fetched less than `max_age` ago, is used at once (no await).
//! 2. Otherwise (unknown `kid`, or a stale set) the caller queues on `fetch_lock`. Whoever gets
//!    it first fetches; everyone who was queued meanwhile sees that the generation moved on and
//!    uses that fetch's result instead of fetching again (single flight).
//! 3. Fetches are rate-limited: none starts within `min_refetch` of the previous attempt. An
//!    unknown `kid` after a recent fetch is just [`AuthError::Invalid`] — a stream of tokens with
//!    made-up `kid`s costs the JWKS server one request per `min_refetch`.
//! 4. A successful fetch replaces the whole set (a key the server dropped is no longer
//!    accepted). A failed fetch keeps the old set: a known key still verifies (stale is better
//!    than down), while an unknown `kid` gets [`AuthError::Unavailable`] until a fetch succeeds.
//!
//! Entries that are not signature keys Herald supports (symmetric `oct` keys, encryption keys,
//! other curves, no `kid`) are skipped one by one; they do not spoil the rest of the set.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use serde::Deserialize;

use super::config::redact_url;
use super::keys::Key;
use super::AuthError;

/// How the JWKS cache behaves; the defaults suit production, tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JwksTuning {
    /// Least time between two fetches (an unknown `kid` within it is invalid).
    pub(crate) min_refetch: Duration,
    /// A set older than this is refetched on the next lookup (still rate-limited).
    pub(crate) max_age: Duration,
    /// Time limit of one fetch (connect, headers and body).
    pub(crate) fetch_timeout: Duration,
}

/// [`JwksTuning::min_refetch`] by default.
pub(crate) const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// [`JwksTuning::max_age`] by default.
pub(crate) const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// [`JwksTuning::fetch_timeout`] by default.
pub(crate) const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read, bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

impl Default for JwksTuning {
    fn default() -> Self {
        Self {
            min_refetch: JWKS_MIN_REFETCH,
            max_age: JWKS_MAX_AGE,
            fetch_timeout: JWKS_FETCH_TIMEOUT,
        }
    }
}

/// One JWKS endpoint and its cached keys.
pub(super) struct Jwks {
    /// `auth.jwks_url`.
    url: String,
    /// HTTP client with the fetch timeout.
    client: reqwest::Client,
    /// Rate limit and staleness.
    tuning: JwksTuning,
    /// The keys and the fetch history. Read by every lookup, written only by the fetcher that
    /// holds `fetch_lock`; never held across an await.
    cache: RwLock<Cache>,
    /// Held for the whole of a fetch: the single flight. Waiters compare `Cache::generation`
    /// after they get it to learn whether a fetch happened while they waited.
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    /// Keys of the last successful fetch, by `kid`.
    keys: HashMap<String, Arc<Key>>,
    /// When the last successful fetch ended.
    fetched_at: Option<Instant>,
    /// When the last fetch (successful or not) ended: the rate limit runs from here.
    attempted_at: Option<Instant>,
    /// Why the last fetch failed; `None` after a success.
    last_error: Option<String>,
    /// Bumped by every fetch attempt.
    generation: u64,
}

impl Cache {
    fn is_fresh(&self, max_age: Duration) -> bool {
        self.fetched_at.is_some_and(|at| at.elapsed() < max_age)
    }

    /// The outcome of a lookup that a fetch can no longer change.
    fn settle(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        match (self.keys.get(kid), &self.last_error) {
            (Some(key), _) => Ok(key.clone()),
            (None, Some(error)) => Err(AuthError::Unavailable(error.clone())),
            (None, None) => Err(AuthError::Invalid("unknown `kid`".into())),
        }
    }
}

#[derive(Deserialize)]
struct JwkSetDocument {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    /// A cache for `url`, empty until the first fetch.
    pub(super) fn new(url: &str, tuning: JwksTuning) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(tuning.fetch_timeout)
            .build()
            .map_err(|e| format!("auth.jwks_url: cannot build an HTTP client: {e}"))?;
        Ok(Jwks {
            url: url.to_owned(),
            client,
            tuning,
            cache: RwLock::new(Cache::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The key with this `kid`, fetching the set when needed (see the module docs).
    pub(super) async fn key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        let generation = {
            let cache = self.read();
            if cache.is_fresh(self.tuning.max_age) {
                if let Some(key) = cache.keys.get(kid) {
                    return Ok(key.clone());
                }
            }
            cache.generation
        };
        let _flight = self.fetch_lock.lock().await;
        {
            let cache = self.read();
            let fetched_meanwhile = cache.generation != generation;
            let rate_limited = cache
                .attempted_at
                .is_some_and(|at| at.elapsed() < self.tuning.min_refetch);
            if fetched_meanwhile || rate_limited {
                return cache.settle(kid);
            }
        }
        self.refresh().await;
        self.read().settle(kid)
    }

    /// Fetches the set once and records the outcome. Call with `fetch_lock` held.
    pub(super) async fn refresh(&self) {
        let outcome = self.fetch().await;
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.attempted_at = Some(Instant::now());
        match outcome {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "jwks fetched");
                cache.keys = keys;
                cache.fetched_at = cache.attempted_at;
                cache.last_error = None;
            }
            Err(error) => {
                tracing::warn!(url = %redact_url(&self.url), cause = %error, "jwks fetch failed");
                cache.last_error = Some(error);
            }
        }
    }

    /// Fetches the set once, before any token needs it (failures are only logged).
    pub(super) async fn prefetch(&self) {
        let _flight = self.fetch_lock.lock().await;
        self.refresh().await;
        // A failed prefetch must not rate-limit the first real lookup.
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.last_error.is_some() {
            cache.attempted_at = None;
        }
    }

    /// `auth.jwks_url`.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("jwks request failed: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("jwks answered HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("jwks body failed: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("jwks document is over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let document: JwkSetDocument = serde_json::from_slice(&body)
            .map_err(|e| format!("jwks document is not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        for (i, value) in document.keys.into_iter().enumerate() {
            let parsed = serde_json::from_value::<Jwk>(value)
                .map_err(|e| e.to_string())
                .and_then(|jwk| {
                    let kid = jwk.common.key_id.clone().ok_or("no `kid`")?;
                    Ok((kid, Key::from_jwk(&jwk)?))
                });
            match parsed {
                Ok((kid, key)) => {
                    keys.insert(kid, Arc::new(key));
                }
                Err(cause) => tracing::debug!(index = i, %cause, "jwks entry skipped"),
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{jwk, sign, JwksServer};
    use crate::auth::{AuthConfig, Verifier};
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    fn tuning(min_refetch: Duration) -> JwksTuning {
        JwksTuning {
            min_refetch,
            ..JwksTuning::default()
        }
    }

    async fn verifier(url: String, min_refetch: Duration) -> Verifier {
        let config = AuthConfig {
            jwks_url: Some(url),
            ..AuthConfig::default()
        };
        Verifier::with_tuning(&config, tuning(min_refetch))
            .await
            .unwrap()
    }

    fn token(kid: &str) -> String {
        let (alg, key) = match kid {
            "key-a" => (Algorithm::RS256, "rsa_private.pem"),
            _ => (Algorithm::ES256, "ec256_private.pem"),
        };
        sign(alg, key, Some(kid), &json!({"sub": "alice"}))
    }

    #[tokio::test]
    async fn a_token_with_a_known_kid_is_verified() {
        let server = JwksServer::start(vec![jwk("jwk_a.json")]).await;
        let v = verifier(server.url(), JWKS_MIN_REFETCH).await;
        assert_eq!(server.requests(), 1, "prefetched at construction");
        let claims = v.connection(&token("key-a")).await.unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(server.requests(), 1, "served from the cache");
    }

    #[tokio::test]
    async fn a_rotated_key_is_found_by_refetching() {
        let server = JwksServer::start(vec![jwk("jwk_a.json")]).await;
        let v = verifier(server.url(), Duration::ZERO).await;
        v.connection(&token("key-a")).await.unwrap();
        server.set_keys(vec![jwk("jwk_b.json")]);
        let claims = v.connection(&token("key-b")).await.unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(server.requests(), 2);
        // The server dropped key A: after the refetch it is no longer accepted.
        let err = v.connection(&token("key-a")).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(ref m) if m.contains("kid")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unknown_kids_within_the_interval_cost_one_fetch() {
        let server = JwksServer::start(vec![jwk("jwk_a.json")]).await;
        let jwks = Jwks::new(&server.url(), tuning(Duration::from_secs(60))).unwrap();
        for _ in 0..2 {
            let err = jwks.key("nope").await.unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{err}");
        }
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn the_prefetch_starts_the_interval() {
        let server = JwksServer::start(vec![jwk("jwk_a.json")]).await;
        let v = verifier(server.url(), Duration::from_secs(60)).await;
        server.set_keys(vec![jwk("jwk_a.json"), jwk("jwk_b.json")]);
        for _ in 0..2 {
            let err = v.connection(&token("key-b")).await.unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{err}");
        }
        assert_eq!(server.requests(), 1, "only the prefetch");
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_fetch() {
        let server = JwksServer::start(vec![jwk("jwk_a.json"), jwk("jwk_b.json")]).await;
        server.set_delay(Duration::from_millis(200));
        // Interval zero: only the single flight can keep this to one fetch.
        let jwks = Arc::new(Jwks::new(&server.url(), tuning(Duration::ZERO)).unwrap());
        let lookups: Vec<_> = (0..8)
            .map(|i| {
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let kid = if i % 2 == 0 { "key-a" } else { "key-b" };
                    jwks.key(kid).await.map(|k| k.kind)
                })
            })
            .collect();
        for lookup in lookups {
            lookup.await.unwrap().unwrap();
        }
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_unavailable_not_invalid() {
        let url = JwksServer::dead_url().await;
        let v = verifier(url, Duration::ZERO).await;
        let err = v.connection(&token("key-a")).await.unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
        assert_eq!(err.result_label(), "unavailable");
    }

    #[tokio::test]
    async fn a_broken_jwks_answer_is_unavailable() {
        let server = JwksServer::start(vec![]).await;
        server.set_status(500);
        let v = verifier(server.url(), Duration::ZERO).await;
        let err = v.connection(&token("key-a")).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Unavailable(ref m) if m.contains("500")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_known_key_survives_a_failed_refresh() {
        let server = JwksServer::start(vec![jwk("jwk_a.json")]).await;
        let jwks = Jwks::new(
            &server.url(),
            JwksTuning {
                min_refetch: Duration::ZERO,
                max_age: Duration::ZERO,
                ..JwksTuning::default()
            },
        )
        .unwrap();
        jwks.key("key-a").await.unwrap();
        server.set_status(503);
        // The set is stale (max_age zero), the refetch fails, the old key still verifies.
        jwks.key("key-a").await.unwrap();
        assert_eq!(server.requests(), 2);
        let err = jwks.key("key-b").await.unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
    }

    #[tokio::test]
    async fn unusable_entries_are_skipped_not_fatal() {
        let server = JwksServer::start(vec![
            json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}),
            json!({"kty": "EC", "crv": "P-256", "x": "??"}),
            json!({"kty": "RSA", "kid": "weird", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}),
            jwk("jwk_a.json"),
        ])
        .await;
        let jwks = Jwks::new(&server.url(), tuning(Duration::ZERO)).unwrap();
        jwks.key("key-a").await.unwrap();
        let err = jwks.key("sym").await.unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err}");
    }
}

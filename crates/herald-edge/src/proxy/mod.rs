//! Backend proxy hooks: the edge asks the application's backend whether a connection, a
//! subscription or a publication may go ahead (like nchan's `nchan_authorize_request` and
//! Centrifugo's connect/subscribe/publish proxy), for applications that keep their sessions in
//! cookies rather than in JWTs.
//!
//! How it works: a node holds one [`ProxyClient`] (cheap to clone; clones share the HTTP
//! connection pool and the concurrency bound). Each hook is one `POST` of a JSON body to the URL
//! configured for it; the backend's answer becomes `Ok`, [`ProxyError::Denied`] or
//! [`ProxyError::Unavailable`]. The client never retries and never caches an answer.
//!
//! # Wire format
//!
//! Request: `POST <connect_url | subscribe_url | publish_url>` with
//! `Content-Type: application/json` and a body of
//!
//! ```json
//! {
//!   "client": "<connection id>",
//!   "transport": "ws | sse | longpoll | poll | http",
//!   "remote_addr": "203.0.113.7",
//!   "user": "<user id>",
//!   "headers": {"cookie": "session=…", "user-agent": "…"},
//!   "channel": "chat:42",
//!   "data": {"text": "hello"}
//! }
//! ```
//!
//! `remote_addr` and `user` are present when known (`user` is absent on connect, unless the
//! connection already has an identity); `channel` is present on subscribe and publish, `data`
//! (the publication, verbatim) on publish only. `headers` holds only these request headers, when
//! the client sent them, under lower-case names: `cookie`, `authorization`, `user-agent`,
//! `origin`, `x-forwarded-for`, `x-real-ip`, `accept-language`. No other header is ever forwarded.
//! A header sent more than once is joined into one value (`cookie` with `; `, the others with
//! `, `); a value that is not visible ASCII is left out. The headers go in the body only, not as
//! HTTP headers of the hook request.
//!
//! Answers (the body is read up to 64 KiB; unknown fields are ignored):
//!
//! | hook      | allowed: `200` with                                                     |
//! |-----------|-------------------------------------------------------------------------|
//! | connect   | `{"user": "<id>", "info": {…}?, "channels": ["…"]?, "exp": <unix secs>?}` |
//! | subscribe | `{}` or `{"allow": true}`                                               |
//! | publish   | `{}` (keep the data) or `{"data": <any JSON>}` (publish this instead)   |
//!
//! On connect, `user` is required, 1..=255 bytes; `info` is a JSON object of at most 1 KiB
//! (shown with the user in presence and join/leave, like a token's `info` claim); `channels` are
//! subscribed server-side at connect and must be valid channel names; `exp` ends the session
//! like a token's `exp`. On publish, `"data": null` means "keep the data".
//!
//! Denied: HTTP `403` (with an optional `{"reason": "…"}` body), or `200` with
//! `{"allow": false, "reason": "…"?}`. The reason (at most 256 bytes are kept) may be shown to the
//! client, so it should not contain secrets.
//!
//! Unavailable: anything else: no answer within `timeout` (which covers connecting, sending
//! and reading the whole answer), a refused connection, any other status (redirects are not
//! followed), a body that is not a JSON object, has the wrong shape or exceeds 64 KiB, or all
//! `concurrency` hook requests of the node already in flight (see [`ProxyClient`]).
//!
//! Hook requests go directly to the backend: `HTTP_PROXY`/`HTTPS_PROXY` are not used. Nothing
//! here logs a header, a cookie, a body or a URL; error messages carry none of them.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

use wire::{
    denial_reason, parse_connect, parse_publish, parse_subscribe, unavailable, ForwardedHeaders,
    RequestBody,
};

#[cfg(test)]
mod tests;
mod wire;

/// Largest answer body read from the backend; a longer one is an error, not truncated.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The request headers forwarded to the backend, lower-case; every other header stays here.
const FORWARDED_HEADERS: [&str; 7] = [
    "cookie",
    "authorization",
    "user-agent",
    "origin",
    "x-forwarded-for",
    "x-real-ip",
    "accept-language",
];

/// Where the hooks are and how hard the edge may lean on them. Built by the caller from the
/// edge config; a hook without a URL is off.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    /// `POST`ed on every new connection; its answer names the user.
    pub(crate) connect_url: Option<String>,
    /// `POST`ed before every client subscription.
    pub(crate) subscribe_url: Option<String>,
    /// `POST`ed before every client publication; may replace the data.
    pub(crate) publish_url: Option<String>,
    /// Whole budget of one hook call: waiting for a permit, connecting, sending, reading the
    /// answer. Must be more than zero.
    pub(crate) timeout: Duration,
    /// Hook requests one node keeps in flight at most, across all hooks. Must be at least 1.
    pub(crate) concurrency: usize,
}

impl Default for ProxyConfig {
    /// No hooks, a 1 s timeout, 64 requests in flight.
    fn default() -> Self {
        ProxyConfig {
            connect_url: None,
            subscribe_url: None,
            publish_url: None,
            timeout: Duration::from_secs(1),
            concurrency: 64,
        }
    }
}

/// What the edge knows about the connection a hook asks about. Deliberately not `Debug`: it
/// carries cookies and credentials, which must never reach a log.
pub(crate) struct ProxyRequest<'a> {
    /// The connection id.
    pub(crate) client: &'a str,
    /// The transport's name, as in metrics (`websocket`, `sse`, …).
    pub(crate) transport: &'a str,
    /// The peer's address, when known.
    pub(crate) remote_addr: Option<IpAddr>,
    /// The connection's user, once it has one.
    pub(crate) user: Option<&'a str>,
    /// The forwarded request headers, from [`select_headers`].
    pub(crate) headers: Vec<(String, String)>,
    /// A `Cookie` value the caller holds apart from `headers`; when set it is sent as
    /// `headers.cookie`, replacing any `cookie` in `headers`.
    pub(crate) cookies: Option<&'a str>,
}

/// The backend's yes to a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectReply {
    /// The user id, 1..=255 bytes.
    pub(crate) user: String,
    /// A JSON object of at most 1 KiB, shown with the user in presence and join/leave.
    pub(crate) info: Option<Box<RawValue>>,
    /// Valid channel names to subscribe the connection to at connect.
    pub(crate) channels: Vec<String>,
    /// When the session ends, in Unix seconds, like a token's `exp`.
    pub(crate) exp: Option<u64>,
}

/// Why a hook did not say yes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ProxyError {
    /// The backend said no; the reason is the backend's and may be shown to the client
    /// (HTTP 403, close 4501).
    #[error("denied: {0}")]
    Denied(String),
    /// No usable answer: timeout, refused connection, other status, malformed answer, or too
    /// many hook requests in flight (HTTP 503). Carries no URL, header or body.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl ProxyError {
    /// The metric label of the outcome.
    pub(crate) fn result_label(&self) -> &'static str {
        match self {
            ProxyError::Denied(_) => "denied",
            ProxyError::Unavailable(_) => "unavailable",
        }
    }
}

/// The forwarded subset of a client's request headers, in the allow-list's order, lower-case
/// names; see the module docs. Never all headers.
pub(crate) fn select_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut selected = Vec::new();
    for name in FORWARDED_HEADERS {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        if values.is_empty() {
            continue;
        }
        let separator = if name == "cookie" { "; " } else { ", " };
        selected.push((name.to_owned(), values.join(separator)));
    }
    selected
}

/// The client side of the hooks; one per node. Clones share the connection pool and the
/// permits.
///
/// A call has one budget, `timeout`, for everything. It first takes one of `concurrency` permits
/// (shared by all hooks); if none comes free within half the budget it fails
/// `Unavailable("backend busy: …")` without sending anything, so a request that is sent always
/// keeps at least half the budget, and a saturated backend is not sent requests that cannot
/// finish in time.
#[derive(Clone)]
pub(crate) struct ProxyClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    connect_url: Option<reqwest::Url>,
    subscribe_url: Option<reqwest::Url>,
    publish_url: Option<reqwest::Url>,
    timeout: Duration,
    /// One permit per hook request in flight. A call takes one before it sends and gives it
    /// back when it has its answer or gives up; a call that has waited half its budget for one
    /// fails "backend busy" (so the request always keeps at least half the budget). Never closed.
    permits: Semaphore,
    concurrency: usize,
}

impl ProxyClient {
    /// Checks the config (URLs must be absolute `http`/`https`, timeout and concurrency
    /// non-zero) and builds the client. The error names what is wrong, for config validation.
    pub(crate) fn new(config: ProxyConfig) -> Result<Self, String> {
        if config.timeout.is_zero() {
            return Err("proxy timeout must be more than zero".into());
        }
        if config.concurrency == 0 {
            return Err("proxy concurrency must be at least 1".into());
        }
        if config.concurrency > Semaphore::MAX_PERMITS {
            return Err(format!(
                "proxy concurrency must be at most {}",
                Semaphore::MAX_PERMITS
            ));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|err| format!("cannot build the proxy HTTP client: {err}"))?;
        Ok(ProxyClient {
            inner: Arc::new(Inner {
                http,
                connect_url: parse_url("connect", config.connect_url.as_deref())?,
                subscribe_url: parse_url("subscribe", config.subscribe_url.as_deref())?,
                publish_url: parse_url("publish", config.publish_url.as_deref())?,
                timeout: config.timeout,
                permits: Semaphore::new(config.concurrency),
                concurrency: config.concurrency,
            }),
        })
    }

    /// Whether a connect hook is configured.
    pub(crate) fn has_connect(&self) -> bool {
        self.inner.connect_url.is_some()
    }

    /// Whether a subscribe hook is configured.
    pub(crate) fn has_subscribe(&self) -> bool {
        self.inner.subscribe_url.is_some()
    }

    /// Whether a publish hook is configured.
    pub(crate) fn has_publish(&self) -> bool {
        self.inner.publish_url.is_some()
    }

    /// Asks whether this connection may open, and as whom.
    pub(crate) async fn connect(&self, req: &ProxyRequest<'_>) -> Result<ConnectReply, ProxyError> {
        let body = self
            .call(
                Hook::Connect,
                self.inner.connect_url.as_ref(),
                req,
                None,
                None,
            )
            .await?;
        parse_connect(&body)
    }

    /// Asks whether this connection may subscribe to `channel`.
    pub(crate) async fn subscribe(
        &self,
        req: &ProxyRequest<'_>,
        channel: &str,
    ) -> Result<(), ProxyError> {
        let body = self
            .call(
                Hook::Subscribe,
                self.inner.subscribe_url.as_ref(),
                req,
                Some(channel),
                None,
            )
            .await?;
        parse_subscribe(&body)
    }

    /// Asks whether this connection may publish `data` to `channel`; `Some` is the data the
    /// backend wants published instead.
    pub(crate) async fn publish(
        &self,
        req: &ProxyRequest<'_>,
        channel: &str,
        data: &RawValue,
    ) -> Result<Option<Box<RawValue>>, ProxyError> {
        let body = self
            .call(
                Hook::Publish,
                self.inner.publish_url.as_ref(),
                req,
                Some(channel),
                Some(data),
            )
            .await?;
        parse_publish(&body)
    }

    /// One hook call within the budget: a permit, the request, the status, the capped body.
    /// Returns the body of a `200`; maps a `403` to `Denied` and everything else to
    /// `Unavailable`.
    async fn call(
        &self,
        hook: Hook,
        url: Option<&reqwest::Url>,
        req: &ProxyRequest<'_>,
        channel: Option<&str>,
        data: Option<&RawValue>,
    ) -> Result<Vec<u8>, ProxyError> {
        let inner = &*self.inner;
        let Some(url) = url else {
            return Err(ProxyError::Unavailable(format!(
                "no {} hook is configured",
                hook.name()
            )));
        };
        let start = Instant::now();
        let deadline = start + inner.timeout;
        let _permit = match timeout_at(start + inner.timeout / 2, inner.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(unavailable("the proxy client is closed")),
            Err(_elapsed) => {
                return Err(ProxyError::Unavailable(format!(
                    "backend busy: {} hook requests already in flight",
                    inner.concurrency
                )))
            }
        };
        let body = RequestBody {
            client: req.client,
            transport: req.transport,
            remote_addr: req.remote_addr,
            user: req.user,
            headers: ForwardedHeaders {
                headers: &req.headers,
                cookies: req.cookies,
            },
            channel,
            data,
        };
        let exchange = async {
            let response = inner
                .http
                .post(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&body)
                .send()
                .await
                .map_err(|err| ProxyError::Unavailable(describe(&err)))?;
            let status = response.status();
            let body = read_capped(response).await;
            Ok::<_, ProxyError>((status, body))
        };
        let (status, answer) = timeout_at(deadline, exchange).await.map_err(|_elapsed| {
            ProxyError::Unavailable(format!("no answer within {} ms", inner.timeout.as_millis()))
        })??;
        match status {
            reqwest::StatusCode::OK => answer,
            reqwest::StatusCode::FORBIDDEN => Err(ProxyError::Denied(
                answer.map_or_else(|_| denial_reason(b""), |body| denial_reason(&body)),
            )),
            other => Err(ProxyError::Unavailable(format!(
                "the backend answered {}",
                other.as_u16()
            ))),
        }
    }
}

/// Which hook a call is; names it in errors.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Connect,
    Subscribe,
    Publish,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }
}

/// Reads the answer body, failing as soon as it passes [`MAX_ANSWER_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ProxyError> {
    let too_big = || {
        ProxyError::Unavailable(format!(
            "the answer is over the {MAX_ANSWER_BYTES}-byte limit"
        ))
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| ProxyError::Unavailable(describe(&err)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error without its URL (which may hold credentials), with its causes.
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "cannot connect to the backend"
    } else if err.is_body() || err.is_decode() {
        "cannot read the answer"
    } else if err.is_request() {
        "cannot send the request"
    } else {
        "the request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks one hook URL: absent is fine; present must be absolute `http`/`https` with a host.
fn parse_url(hook: &str, url: Option<&str>) -> Result<Option<reqwest::Url>, String> {
    let Some(url) = url else { return Ok(None) };
    let parsed = reqwest::Url::parse(url)
        .map_err(|err| format!("the proxy {hook} URL is not a valid URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the proxy {hook} URL must be http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().unwrap_or_default().is_empty() {
        return Err(format!("the proxy {hook} URL has no host"));
    }
    Ok(Some(parsed))
}

impl fmt::Debug for ProxyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs are left out: they may carry credentials.
        f.debug_struct("ProxyClient")
            .field("connect", &self.has_connect())
            .field("subscribe", &self.has_subscribe())
            .field("publish", &self.has_publish())
            .field("timeout", &self.inner.timeout)
            .field("concurrency", &self.inner.concurrency)
            .finish()
    }
}

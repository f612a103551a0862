//! Who a connection (or an HTTP request) is.
//!
//! Every transport asks [`identify`] once, before the connection is opened, with the token it
//! found ([`token_from`]: `Authorization: Bearer`, `?token=`, the `auth.token_cookie` cookie; a
//! WebSocket may also send it in a first `connect` frame). The answer is an [`Identity`]:
//!
//! * a valid connection token → its `sub` (the user), `info`, `exp` and `channels`;
//! * no token and a connect proxy configured → whatever the application's backend says;
//! * no token and anonymous access allowed (`auth.anonymous`, default: only while no key is
//!   configured) → anonymous, with the unauthenticated display name `?user=` when no identity
//!   source is configured at all (development setups; refused once one is);
//! * otherwise the request is refused: 401 / close 4501, or 401 `token_expired` / close 4010 for
//!   an expired token, or 503 / close 1013 when the keys or the backend cannot be reached.
//!
//! Every outcome is counted in `herald_auth_total{result}`. Tokens and cookies are never
//! logged.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};

use crate::auth::{AuthError, ConnectionClaims};
use crate::error::EdgeError;
use crate::metrics::Transport;
use crate::node::Node;
use crate::proxy::{ProxyError, ProxyRequest};

/// Longest unauthenticated display name accepted in a query string.
const MAX_DISPLAY_NAME: usize = 64;

/// Who a connection is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The user (`sub`, or the proxy's `user`); for an anonymous connection the display name,
    /// usually `""`.
    pub(crate) user: Arc<str>,
    /// The `info` claim, shown with the user in presence and join/leave.
    pub(crate) info: Option<serde_json::Value>,
    /// When the session ends (Unix seconds), unless refreshed.
    pub(crate) exp: Option<u64>,
    /// Channels to subscribe server-side at connect (the `channels` claim).
    pub(crate) channels: Vec<String>,
    /// Whether the user was proven (a token or the backend), not merely named.
    pub(crate) authenticated: bool,
}

impl Identity {
    /// An anonymous connection with an (unauthenticated) display name.
    pub(crate) fn anonymous(display: String) -> Self {
        Self {
            user: Arc::from(display),
            info: None,
            exp: None,
            channels: Vec::new(),
            authenticated: false,
        }
    }

    fn from_claims(claims: ConnectionClaims) -> Self {
        Self {
            user: Arc::from(claims.sub),
            info: claims
                .info
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
            exp: claims.exp,
            channels: claims.channels,
            authenticated: true,
        }
    }

    /// The user as publications carry it (`None` when anonymous).
    pub(crate) fn proven_user(&self) -> Option<Arc<str>> {
        self.authenticated.then(|| self.user.clone())
    }
}

/// What the backend proxy hooks are told about the request a connection came in on.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestContext {
    /// The peer address.
    pub(crate) remote: Option<IpAddr>,
    /// Allow-listed request headers (see `proxy::select_headers`), kept only when the node
    /// has backend hooks to send them to: a WebSocket or SSE connection holds its context for
    /// its whole life, and a browser's cookies and user agent are most of a kilobyte.
    pub(crate) headers: Vec<(String, String)>,
}

impl RequestContext {
    /// The context of a request from `remote` with `headers`.
    pub(crate) fn new(node: &Node, remote: Option<IpAddr>, headers: &HeaderMap) -> Self {
        Self {
            remote,
            headers: if node.proxy.is_some() {
                crate::proxy::select_headers(headers)
            } else {
                Vec::new()
            },
        }
    }

    /// The proxy request for `client` on `transport`, as `user`.
    pub(crate) fn proxy_request<'a>(
        &'a self,
        client: &'a str,
        transport: Transport,
        user: Option<&'a str>,
    ) -> ProxyRequest<'a> {
        ProxyRequest {
            client,
            transport: transport.label(),
            remote_addr: self.remote,
            user,
            headers: self.headers.clone(),
            cookies: None,
        }
    }
}

/// The token a request carries: `Authorization: Bearer <jwt>`, then `?token=`, then the
/// `cookie_name` cookie.
pub(crate) fn token_from(
    headers: &HeaderMap,
    query_token: Option<&str>,
    cookie_name: &str,
) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if let Some(token) = bearer.filter(|t| !t.is_empty()) {
        return Some(token.to_owned());
    }
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return Some(token.to_owned());
    }
    cookie_value(headers, cookie_name)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The value of the cookie `name`, if the request carries it.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// How [`identify`] is asked.
pub(crate) struct IdentifyRequest<'a> {
    /// The token the request carries, if any.
    pub(crate) token: Option<&'a str>,
    /// The unauthenticated display name (`?user=`), if any.
    pub(crate) display: Option<String>,
    /// The client id the connection will have (told to the connect proxy).
    pub(crate) client: &'a str,
    /// The transport (told to the connect proxy).
    pub(crate) transport: Transport,
    /// The request (told to the connect proxy).
    pub(crate) context: &'a RequestContext,
}

/// Decides who a request is; see the module docs.
pub(crate) async fn identify(
    node: &Node,
    request: IdentifyRequest<'_>,
) -> Result<Identity, EdgeError> {
    // Without a key nothing can be verified: a token (e.g. a stale cookie) is ignored.
    let token = request.token.filter(|_| node.config.auth.has_keys());
    let identity = match token {
        Some(token) => verify_connection_token(node, token).await?,
        None => match &node.proxy {
            Some(proxy) if proxy.has_connect() => {
                let ask = request
                    .context
                    .proxy_request(request.client, request.transport, None);
                match proxy.connect(&ask).await {
                    Ok(reply) if reply.exp.is_some_and(|exp| exp < now_secs()) => {
                        node.metrics.auth("expired");
                        return Err(EdgeError::TokenExpired(
                            "the backend's session has expired".into(),
                        ));
                    }
                    Ok(reply) => {
                        node.metrics.auth("ok");
                        Identity {
                            user: Arc::from(reply.user),
                            info: reply
                                .info
                                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
                            exp: reply.exp,
                            channels: reply.channels,
                            authenticated: true,
                        }
                    }
                    Err(ProxyError::Denied(why)) => {
                        node.metrics.auth("denied");
                        return Err(EdgeError::Unauthorized(format!("backend: {why}")));
                    }
                    Err(err) => return Err(proxy_error(node, err)),
                }
            }
            _ if node.config.auth.anonymous_allowed() => {
                node.metrics.auth("anonymous");
                Identity::anonymous(String::new())
            }
            _ => {
                node.metrics.auth("missing");
                return Err(EdgeError::Unauthorized(
                    "a connection token is required".into(),
                ));
            }
        },
    };
    match request.display {
        Some(name) if !name.is_empty() => {
            if node.config.auth_configured() {
                return Err(EdgeError::http(
                    StatusCode::BAD_REQUEST,
                    "`user` is set by the token (or the backend), not by the client",
                ));
            }
            Ok(Identity::anonymous(sanitize_display(name)?))
        }
        _ => Ok(identity),
    }
}

/// Verifies a connection token (also a `refresh` token).
pub(crate) async fn verify_connection_token(
    node: &Node,
    token: &str,
) -> Result<Identity, EdgeError> {
    match node.verifier.connection(token).await {
        Ok(claims) => {
            node.metrics.auth("ok");
            Ok(Identity::from_claims(claims))
        }
        Err(err) => Err(auth_error(node, err)),
    }
}

/// Verifies a channel token of `user` for `channel`.
pub(crate) async fn verify_channel_token(
    node: &Node,
    token: &str,
    user: &str,
    channel: &str,
) -> Result<(), EdgeError> {
    match node.verifier.channel(token, user, channel).await {
        Ok(_) => {
            node.metrics.auth("ok");
            Ok(())
        }
        Err(AuthError::Invalid(why)) => {
            node.metrics.auth("invalid");
            Err(EdgeError::PermissionDenied(format!(
                "channel token refused: {why}"
            )))
        }
        Err(err) => Err(auth_error(node, err)),
    }
}

/// Counts an authentication failure and turns it into the error the client gets.
pub(crate) fn auth_error(node: &Node, err: AuthError) -> EdgeError {
    node.metrics.auth(err.result_label());
    match err {
        AuthError::Expired => EdgeError::TokenExpired("get a fresh token".into()),
        AuthError::Unavailable(why) => EdgeError::Unavailable(format!("token keys: {why}")),
        other => EdgeError::Unauthorized(other.to_string()),
    }
}

/// Counts a proxy failure and turns it into the error the client gets.
pub(crate) fn proxy_error(node: &Node, err: ProxyError) -> EdgeError {
    node.metrics.auth(err.result_label());
    match err {
        ProxyError::Denied(why) => EdgeError::PermissionDenied(format!("backend: {why}")),
        ProxyError::Unavailable(why) => EdgeError::Unavailable(format!("backend: {why}")),
    }
}

fn now_secs() -> u64 {
    herald_broker::now_ms() / 1000
}

/// When a session that ends at `exp` (Unix seconds) is closed: `exp` plus the clock leeway the
/// verifier allows, measured on tokio's clock (so tests can pause and advance it).
pub(crate) fn deadline(node: &Node, exp: Option<u64>) -> Option<tokio::time::Instant> {
    let exp = exp?;
    let left = exp.saturating_sub(now_secs()) + node.config.auth.leeway_secs;
    Some(tokio::time::Instant::now() + Duration::from_secs(left))
}

/// Checks an unauthenticated display name.
fn sanitize_display(user: String) -> Result<String, EdgeError> {
    if user.len() > MAX_DISPLAY_NAME
        || !user
            .chars()
            .all(|c| c.is_alphanumeric() || "_-. @".contains(c))
    {
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            "user must be at most 64 letters, digits or _-. @",
        ));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_header_then_the_query_then_the_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; herald_token=from-cookie".parse().unwrap(),
        );
        assert_eq!(
            token_from(&h, None, "herald_token").as_deref(),
            Some("from-cookie")
        );
        assert_eq!(
            token_from(&h, Some("from-query"), "herald_token").as_deref(),
            Some("from-query")
        );
        h.insert(header::AUTHORIZATION, "Bearer from-header".parse().unwrap());
        assert_eq!(
            token_from(&h, Some("from-query"), "herald_token").as_deref(),
            Some("from-header")
        );
        assert_eq!(token_from(&HeaderMap::new(), Some(""), "t"), None);
    }
}

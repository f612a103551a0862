//! The HTTP API: publishing, presence and history for SSE and polling clients (`POST /publish`,
//! `GET /presence`, `GET /history`), the server API (`/api/*`, behind the API key when one is
//! configured) and the health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_broker::{NodeInfo, Payload};
use herald_protocol::frame::{self, HistoryReply, MAX_HISTORY_LIMIT};
use herald_protocol::StreamPosition;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::EdgeError;
use crate::hub::{ConnHandle, Delivery};
use crate::identity::{self, IdentifyRequest, Identity, RequestContext};
use crate::metrics::Transport;
use crate::node::{Node, Publisher};
use crate::permissions::{authorize_publish, authorize_read, Read, Subject};

#[derive(Deserialize)]
struct PublishBody {
    channel: Option<String>,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    skip_self: bool,
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    #[serde(default)]
    channels: Option<Vec<String>>,
    data: Option<Box<RawValue>>,
}

/// Reads a JSON body: checks the content type and the size limit.
async fn json_body<T: serde::de::DeserializeOwned>(
    node: &Node,
    req: Request<Body>,
) -> Result<T, EdgeError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(EdgeError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let limit = node.config.limits.max_message_size + 4096;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            node.metrics
                .limit_rejected(crate::metrics::Limit::MessageSize);
            EdgeError::TooLarge(format!("request body over {limit} bytes"))
        })?;
    node.metrics
        .bytes_in
        .with_label_values(&["http"])
        .inc_by(bytes.len() as u64);
    serde_json::from_slice(&bytes).map_err(|e| {
        EdgeError::Protocol(herald_protocol::ProtocolError::BadRequest(format!(
            "body is not a valid request: {e}"
        )))
    })
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, EdgeError> {
    v.ok_or_else(|| {
        EdgeError::Protocol(herald_protocol::ProtocolError::BadRequest(format!(
            "missing field `{name}`"
        )))
    })
}

/// A JSON body already encoded (by herald-protocol, or serde for `/api/info`).
fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn reply(result: Result<String, EdgeError>, node: &Node) -> Response {
    match result {
        Ok(body) => json_response(body),
        Err(e) => {
            node.metrics.error(e.code(), e.source_tag());
            e.into_response()
        }
    }
}

/// `POST /publish` for SSE and polling clients: the caller is identified by its own token
/// (header, `?token=`, cookie) and the client permission rules apply. A `client` it names (its
/// SSE connection, to skip its own copy and to count as that connection for `subscriber`) must
/// be a connection on this edge of the same user — or, with no identity source configured at
/// all, any connection here.
pub(crate) async fn client_publish(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Response {
    let result = async {
        if !node.origin_allowed(req.headers()) {
            return Err(EdgeError::PermissionDenied("origin not allowed".into()));
        }
        let address = node.limits.client_ip(peer.ip(), req.headers());
        node.admit_request(address)?;
        let context = RequestContext::new(&node, Some(address), req.headers());
        let query_token = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned());
        let token = identity::token_from(
            req.headers(),
            query_token.as_deref(),
            &node.config.auth.token_cookie,
        );
        let body: PublishBody = json_body(&node, req).await?;
        let channel = required(body.channel, "channel")?;
        let data = required(body.data, "data")?;
        let identity = identity::identify(
            &node,
            IdentifyRequest {
                token: token.as_deref(),
                display: None,
                client: body.client.as_deref().unwrap_or(""),
                transport: Transport::Http,
                context: &context,
            },
        )
        .await?;
        let named = match &body.client {
            Some(id) => Some(named_connection(&node, &identity, id)?),
            None => None,
        };
        let subject = Subject {
            identity: &identity,
            client: body.client.as_deref().unwrap_or(""),
            transport: Transport::Http,
            context: &context,
            subscribed: named
                .as_ref()
                .is_some_and(|h| node.hub.is_subscribed(&channel, h)),
        };
        let payload = Payload::Json(data);
        let replaced = authorize_publish(&node, &subject, &channel, &payload).await?;
        let publisher = Publisher::Client {
            id: named.map(|h| h.client.clone()),
            user: identity.proven_user(),
            skip_self: body.skip_self,
        };
        let payload = replaced.unwrap_or(payload);
        let pos = node
            .publish(&channel, payload, publisher, Transport::Http)
            .await?;
        Ok(frame::encode_published(&channel, &pos))
    }
    .await;
    reply(result, &node)
}

/// The connection a `POST /publish`, `GET /presence` or `GET /history` names (`client`): it must
/// be on this edge and of the caller's user.
fn named_connection(
    node: &Node,
    identity: &Identity,
    client: &str,
) -> Result<Arc<ConnHandle>, EdgeError> {
    let handle = node.hub.find(client).ok_or_else(|| {
        EdgeError::PermissionDenied(format!("no connection {client:?} on this edge"))
    })?;
    let same_user = match &handle.user {
        Some(user) => identity.authenticated && *user == identity.user,
        None => !node.config.auth_configured(),
    };
    if !same_user {
        return Err(EdgeError::PermissionDenied(
            "`client` names a connection of another user".into(),
        ));
    }
    Ok(handle)
}

/// The query string of a client read (`GET /presence`, `GET /history`).
#[derive(Default)]
struct ReadQuery {
    /// `channel=`: exactly one, required.
    channel: String,
    /// `since=` (history only).
    since: Option<String>,
    /// `limit=` (history only).
    limit: Option<String>,
    /// `token=`: the connection token (a header or the cookie may carry it instead).
    token: Option<String>,
    /// `channel_token=`: a channel token, for a `token` namespace.
    channel_token: Option<String>,
    /// `client=`: the caller's own SSE connection on this edge.
    client: Option<String>,
}

/// Reads the query string of a client read: a missing, empty or repeated `channel` is 104, an
/// invalid one 105; empty optional values count as absent.
fn read_query(query: Option<&str>) -> Result<ReadQuery, EdgeError> {
    let bad = |m: &str| EdgeError::Protocol(herald_protocol::ProtocolError::BadRequest(m.into()));
    let mut q = ReadQuery::default();
    let mut channel = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = (!v.is_empty()).then(|| v.into_owned());
        match &*k {
            "channel" if value.is_some() => {
                if channel.is_some() {
                    return Err(bad("exactly one channel=… is allowed"));
                }
                channel = value;
            }
            "since" => q.since = value,
            "limit" => q.limit = value,
            "token" => q.token = value,
            "channel_token" => q.channel_token = value,
            "client" => q.client = value,
            _ => {}
        }
    }
    q.channel = channel.ok_or_else(|| bad("missing channel=…"))?;
    herald_protocol::validate_channel(&q.channel)?;
    Ok(q)
}

/// The history `limit` of a client read, as the WebSocket `history` op takes it: a whole number
/// of at most [`MAX_HISTORY_LIMIT`] (else 104); `Node::history` caps it at the namespace's
/// history size.
fn history_limit(text: Option<&str>) -> Result<Option<usize>, EdgeError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let limit = text.parse::<usize>().map_err(|_| {
        EdgeError::Protocol(herald_protocol::ProtocolError::BadRequest(
            "limit must be a whole number".into(),
        ))
    })?;
    if limit > MAX_HISTORY_LIMIT {
        return Err(EdgeError::Protocol(
            herald_protocol::ProtocolError::BadRequest(format!(
                "limit must be at most {MAX_HISTORY_LIMIT}"
            )),
        ));
    }
    Ok(Some(limit))
}

/// The checks of a client read, in `client_publish`'s order and with the WebSocket
/// `presence`/`history` ops' rules: origin, the per-address request rate, the query string
/// (`check` reads the op's own parameters, before any token is verified), the caller's own
/// token, the connection `client` names (which makes the caller a subscriber of the channels
/// that connection holds), then `permissions::authorize_read`.
async fn authorize_client_read<T>(
    node: &Arc<Node>,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    read: Read,
    check: impl FnOnce(&ReadQuery) -> Result<T, EdgeError>,
) -> Result<(ReadQuery, T), EdgeError> {
    if !node.origin_allowed(headers) {
        return Err(EdgeError::PermissionDenied("origin not allowed".into()));
    }
    let address = node.limits.client_ip(peer.ip(), headers);
    node.admit_request(address)?;
    let q = read_query(query)?;
    let checked = check(&q)?;
    let context = RequestContext::new(node, Some(address), headers);
    let token = identity::token_from(headers, q.token.as_deref(), &node.config.auth.token_cookie);
    let client = q.client.as_deref().unwrap_or("");
    let identity = identity::identify(
        node,
        IdentifyRequest {
            token: token.as_deref(),
            display: None,
            client,
            transport: Transport::Http,
            context: &context,
        },
    )
    .await?;
    let named = match &q.client {
        Some(id) => Some(named_connection(node, &identity, id)?),
        None => None,
    };
    let subject = Subject {
        identity: &identity,
        client,
        transport: Transport::Http,
        context: &context,
        subscribed: named
            .as_ref()
            .is_some_and(|h| node.hub.is_subscribed(&q.channel, h)),
    };
    authorize_read(node, &subject, read, &q.channel, q.channel_token.as_deref()).await?;
    Ok((q, checked))
}

/// The reply to a client read: counted in `herald_transport_sent_bytes_total{transport="http"}` (errors
/// in `herald_errors_total`, by [`reply`]) and never cached, as it depends on who asked.
fn client_read_reply(result: Result<String, EdgeError>, node: &Node) -> Response {
    if let Ok(body) = &result {
        node.metrics
            .bytes_out
            .with_label_values(&[Transport::Http.label()])
            .inc_by(body.len() as u64);
    }
    let mut response = reply(result, node);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// `GET /presence?channel=` for SSE and polling clients: the WebSocket `presence` op over HTTP
/// (see [`authorize_client_read`]); the body is `GET /api/presence`'s.
pub(crate) async fn client_presence(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (q, ()) = authorize_client_read(
            &node,
            peer,
            &headers,
            query.as_deref(),
            Read::Presence,
            |_| Ok(()),
        )
        .await?;
        let clients = node.broker.presence(&q.channel).await?;
        Ok(frame::encode_presence_body(&q.channel, &clients))
    }
    .await;
    client_read_reply(result, &node)
}

/// `GET /history?channel=&since=&limit=` for SSE and polling clients: the WebSocket `history` op
/// over HTTP (see [`authorize_client_read`]); the body is `GET /api/history`'s, paged by
/// `limits.max_reply_bytes` (`more`).
pub(crate) async fn client_history(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (q, (since, limit)) = authorize_client_read(
            &node,
            peer,
            &headers,
            query.as_deref(),
            Read::History,
            |q| -> Result<(Option<StreamPosition>, Option<usize>), EdgeError> {
                let since = match &q.since {
                    Some(text) => herald_protocol::cursor::parse_since(&q.channel, text)?,
                    None => None,
                };
                Ok((since, history_limit(q.limit.as_deref())?))
            },
        )
        .await?;
        let page = node.history(&q.channel, since, limit).await?;
        Ok(encode_history(&q.channel, page))
    }
    .await;
    client_read_reply(result, &node)
}

/// The body of a history reply (`GET /history`, `GET /api/history`).
fn encode_history(channel: &str, page: herald_broker::HistoryPage) -> String {
    let more = crate::node::page_has_more(&page);
    let frames: Vec<Delivery> = page.publications.into_iter().map(Delivery::new).collect();
    let reply = HistoryReply {
        channel,
        position: &page.position,
        recovered: page.recovered,
        more,
        messages: frames.iter().map(|d| d.text().as_str()),
    };
    reply.encode_body()
}

/// `POST /api/publish`.
pub(crate) async fn api_publish(State(node): State<Arc<Node>>, req: Request<Body>) -> Response {
    let result = async {
        let body: PublishBody = json_body(&node, req).await?;
        let channel = required(body.channel, "channel")?;
        let data = required(body.data, "data")?;
        let pos = node
            .publish(
                &channel,
                Payload::Json(data),
                Publisher::Api,
                Transport::Http,
            )
            .await?;
        Ok(frame::encode_published(&channel, &pos))
    }
    .await;
    reply(result, &node)
}

/// `POST /api/broadcast`: to the listed channels, or with none, to every connection.
pub(crate) async fn api_broadcast(State(node): State<Arc<Node>>, req: Request<Body>) -> Response {
    let result = async {
        let body: BroadcastBody = json_body(&node, req).await?;
        let data = required(body.data, "data")?;
        match body.channels {
            None => {
                if data.get().len() > node.config.limits.max_message_size {
                    return Err(EdgeError::TooLarge("broadcast data too large".into()));
                }
                node.broker.broadcast(Payload::Json(data)).await?;
                Ok(frame::BROADCAST_ALL_REPLY.to_owned())
            }
            Some(channels) if channels.is_empty() => Err(EdgeError::Protocol(
                herald_protocol::ProtocolError::BadRequest(
                    "channels is empty; omit it to reach every connection".into(),
                ),
            )),
            Some(channels) => {
                for ch in &channels {
                    herald_protocol::validate_channel(ch)?;
                }
                let mut positions = Vec::with_capacity(channels.len());
                for ch in &channels {
                    let payload = Payload::Json(data.clone());
                    let pos = node
                        .publish(ch, payload, Publisher::Api, Transport::Http)
                        .await?;
                    positions.push(pos);
                }
                let results = channels.iter().map(String::as_str).zip(positions.iter());
                Ok(frame::encode_broadcast_results(results))
            }
        }
    }
    .await;
    reply(result, &node)
}

/// `GET /api/presence/{channel}`.
pub(crate) async fn api_presence(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
) -> Response {
    let result = async {
        herald_protocol::validate_channel(&channel)?;
        let clients = node.broker.presence(&channel).await?;
        Ok(frame::encode_presence_body(&channel, &clients))
    }
    .await;
    reply(result, &node)
}

/// `GET /api/history/{channel}?since=&limit=`.
pub(crate) async fn api_history(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let mut since = None;
        let mut limit = None;
        for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
            match &*k {
                "since" => since = herald_protocol::cursor::parse_since(&channel, &v)?,
                "limit" => {
                    limit = Some(v.parse::<usize>().map_err(|_| {
                        EdgeError::http(StatusCode::BAD_REQUEST, "limit must be a whole number")
                    })?)
                }
                _ => {}
            }
        }
        let page = node.history(&channel, since, limit).await?;
        Ok(encode_history(&channel, page))
    }
    .await;
    reply(result, &node)
}

/// The body of `GET /api/info`.
#[derive(Serialize)]
struct ClusterInfo<'a> {
    /// The node that answered.
    node: &'a str,
    /// When it answered, Unix milliseconds.
    ts_ms: u64,
    /// Every live node, by id.
    nodes: Vec<NodeInfo>,
}

/// `GET /api/info`: the live nodes of the cluster.
pub(crate) async fn api_info(State(node): State<Arc<Node>>) -> Response {
    let result = async {
        let mut nodes = node.broker.nodes().await?;
        // This node's own numbers are always fresh.
        let me = node.info();
        nodes.retain(|n| n.node != me.node);
        nodes.push(me);
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let info = ClusterInfo {
            node: &node.config.node_id,
            ts_ms: herald_broker::now_ms(),
            nodes,
        };
        Ok(serde_json::to_string(&info).expect("info serializes"))
    }
    .await;
    reply(result, &node)
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> Response {
    json_response(frame::HEALTHY_REPLY.to_owned())
}

/// `GET /readyz`: 200 when the broker is healthy and the node is not draining.
pub(crate) async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let draining = node.is_draining();
    let broker = node.broker.is_healthy();
    let ready = !draining && broker;
    let body = frame::encode_readiness(ready, draining, broker);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Checks the API key on `/api/*`; with none configured, only loopback peers may call it.
pub(crate) fn check_api_key(
    node: &Node,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), EdgeError> {
    let Some(key) = &node.config.api_key else {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(EdgeError::Unauthorized(
            "no API key is configured, so /api/* answers loopback peers only".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(EdgeError::Unauthorized("wrong API key".into())),
        None => Err(EdgeError::Unauthorized(
            "send `Authorization: apikey <key>`".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Longest lifetime `GET /dev/token?ttl=` may ask for, seconds.
const MAX_DEV_TOKEN_TTL: u64 = 86_400;
/// Lifetime of a `GET /dev/token` token without `ttl=`, seconds.
const DEV_TOKEN_TTL: u64 = 3600;

/// `GET /dev/token?user=<id>[&ttl=<secs>]` (only with `auth.dev_token_endpoint`, for the demo
/// page and browser tests): an HS256 connection token for any user, valid for `ttl` seconds
/// (1 ..= 86400, default one hour). Anyone can call it: development only.
pub(crate) async fn dev_token(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let mut user = String::new();
        let mut ttl = DEV_TOKEN_TTL;
        for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
            match &*k {
                "user" => user = v.into_owned(),
                "ttl" => {
                    ttl = v
                        .parse::<u64>()
                        .ok()
                        .filter(|t| (1..=MAX_DEV_TOKEN_TTL).contains(t))
                        .ok_or_else(|| {
                            EdgeError::http(
                                StatusCode::BAD_REQUEST,
                                format!("ttl must be 1..={MAX_DEV_TOKEN_TTL} seconds"),
                            )
                        })?
                }
                _ => {}
            }
        }
        if user.is_empty()
            || user.len() > 64
            || !user
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.@".contains(c))
        {
            return Err(EdgeError::http(
                StatusCode::BAD_REQUEST,
                "user must be 1..=64 letters, digits or _-.@",
            ));
        }
        let secret = node.config.auth.hmac_secret.as_deref().unwrap_or_default();
        let exp = herald_broker::now_ms() / 1000 + ttl;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), user.into());
        claims.insert("exp".into(), exp.into());
        if let Some(aud) = &node.config.auth.audience {
            claims.insert("aud".into(), aud.clone().into());
        }
        if let Some(iss) = &node.config.auth.issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .map_err(|e| EdgeError::Unavailable(format!("cannot sign: {e}")))?;
        Ok(serde_json::to_string(&DevToken { token: &token, exp }).expect("serializes"))
    }
    .await;
    reply(result, &node)
}

/// The body of `GET /dev/token`.
#[derive(Serialize)]
struct DevToken<'a> {
    token: &'a str,
    exp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EdgeConfig;

    fn node(api_key: Option<&str>) -> Arc<Node> {
        let config = EdgeConfig {
            api_key: api_key.map(str::to_owned),
            ..EdgeConfig::default()
        };
        let broker = Arc::new(herald_broker::memory::MemoryBroker::new());
        let verifier =
            futures_util::FutureExt::now_or_never(crate::auth::Verifier::new(&config.auth))
                .expect("no key to fetch")
                .expect("verifier");
        Node::new(
            config,
            broker,
            Arc::new(crate::metrics::Metrics::new()),
            verifier,
            None,
        )
    }

    #[tokio::test]
    async fn without_a_key_the_api_answers_loopback_peers_only() {
        let open = node(None);
        let headers = HeaderMap::new();
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert!(check_api_key(&open, &headers, loopback).is_ok());
        assert!(check_api_key(&open, &headers, v6_loopback).is_ok());
        assert!(matches!(
            check_api_key(&open, &headers, remote),
            Err(EdgeError::Unauthorized(_))
        ));
        // With a key, the key decides, wherever the caller is.
        let keyed = node(Some("k1"));
        let mut with_key = HeaderMap::new();
        with_key.insert(header::AUTHORIZATION, "apikey k1".parse().unwrap());
        assert!(check_api_key(&keyed, &with_key, remote).is_ok());
        assert!(check_api_key(&keyed, &headers, loopback).is_err());
    }
}

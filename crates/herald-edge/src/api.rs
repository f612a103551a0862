//! The HTTP API: publishing for SSE and polling clients (`POST /publish`), the server API
//! (`/api/*`, behind the API key when one is configured) and the health endpoints.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_broker::Payload;
use herald_protocol::{Cursor, StreamPosition};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::EdgeError;
use crate::metrics::Transport;
use crate::node::Node;

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

fn reply(result: Result<Value, EdgeError>, node: &Node) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            node.metrics.error(e.code(), e.source_tag());
            e.into_response()
        }
    }
}

/// `POST /publish` for SSE and polling clients: namespace permissions apply.
pub async fn client_publish(State(node): State<Arc<Node>>, req: Request<Body>) -> Response {
    let result = async {
        let body: PublishBody = json_body(&node, req).await?;
        let channel = required(body.channel, "channel")?;
        let data = required(body.data, "data")?;
        // A client may name itself (its SSE welcome's client id) to skip its own copy.
        let from = body.client.map(Arc::<str>::from);
        let skip = body.skip_self && from.is_some();
        let pos = node
            .publish(
                &channel,
                Payload::Json(data),
                from,
                skip,
                Transport::Http,
                false,
            )
            .await?;
        Ok(json!({"channel": channel, "epoch": pos.epoch, "offset": pos.offset}))
    }
    .await;
    reply(result, &node)
}

/// `POST /api/publish`.
pub async fn api_publish(State(node): State<Arc<Node>>, req: Request<Body>) -> Response {
    let result = async {
        let body: PublishBody = json_body(&node, req).await?;
        let channel = required(body.channel, "channel")?;
        let data = required(body.data, "data")?;
        let pos = node
            .publish(
                &channel,
                Payload::Json(data),
                None,
                false,
                Transport::Http,
                true,
            )
            .await?;
        Ok(json!({"channel": channel, "epoch": pos.epoch, "offset": pos.offset}))
    }
    .await;
    reply(result, &node)
}

/// `POST /api/broadcast`: to the listed channels, or with none, to every connection.
pub async fn api_broadcast(State(node): State<Arc<Node>>, req: Request<Body>) -> Response {
    let result = async {
        let body: BroadcastBody = json_body(&node, req).await?;
        let data = required(body.data, "data")?;
        match body.channels {
            None => {
                if data.get().len() > node.config.limits.max_message_size {
                    return Err(EdgeError::TooLarge("broadcast data too large".into()));
                }
                node.broker.broadcast(Payload::Json(data)).await?;
                Ok(json!({"broadcast": "all"}))
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
                let mut results = Vec::with_capacity(channels.len());
                for ch in channels {
                    let pos = node
                        .publish(
                            &ch,
                            Payload::Json(data.clone()),
                            None,
                            false,
                            Transport::Http,
                            true,
                        )
                        .await?;
                    results.push(json!({"channel": ch, "epoch": pos.epoch, "offset": pos.offset}));
                }
                Ok(json!({"results": results}))
            }
        }
    }
    .await;
    reply(result, &node)
}

/// `GET /api/presence/{channel}`.
pub async fn api_presence(State(node): State<Arc<Node>>, Path(channel): Path<String>) -> Response {
    let result = async {
        herald_protocol::validate_channel(&channel)?;
        let clients = node.broker.presence(&channel).await?;
        Ok(json!({"channel": channel, "clients": clients}))
    }
    .await;
    reply(result, &node)
}

/// Parses a history `since`: a cursor string, or `epoch:offset`.
pub fn parse_since(channel: &str, text: &str) -> Result<Option<StreamPosition>, EdgeError> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Some((epoch, offset)) = text.split_once(':') {
        let pos = StreamPosition {
            epoch: epoch.to_owned(),
            offset: offset.parse().map_err(|_| {
                herald_protocol::ProtocolError::BadCursor("offset is not a number".into())
            })?,
        };
        pos.validate()?;
        return Ok(Some(pos));
    }
    Ok(Cursor::decode(text)?.get(channel).cloned())
}

/// The history answer shared by the API and the WebSocket `history` op.
pub async fn history_json(
    node: &Node,
    channel: &str,
    since: Option<StreamPosition>,
    limit: Option<usize>,
) -> Result<Value, EdgeError> {
    herald_protocol::validate_channel(channel)?;
    let ns = node.config.namespace(channel);
    let limit = limit.unwrap_or(ns.history_size).min(ns.history_size.max(1));
    let page = node
        .broker
        .history(
            channel,
            herald_broker::HistoryQuery {
                since: since.clone(),
                limit,
            },
            ns.history(),
        )
        .await?;
    let messages: Vec<Box<RawValue>> = page
        .publications
        .iter()
        .map(|p| RawValue::from_string(p.json_frame()).expect("frame is JSON"))
        .collect();
    Ok(
        json!({"channel": channel, "epoch": page.position.epoch, "offset": page.position.offset,
        "recovered": page.recovered, "messages": messages}),
    )
}

/// `GET /api/history/{channel}?since=&limit=`.
pub async fn api_history(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let mut since = None;
        let mut limit = None;
        for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
            match &*k {
                "since" => since = parse_since(&channel, &v)?,
                "limit" => {
                    limit = Some(v.parse::<usize>().map_err(|_| {
                        EdgeError::http(StatusCode::BAD_REQUEST, "limit must be a whole number")
                    })?)
                }
                _ => {}
            }
        }
        history_json(&node, &channel, since, limit).await
    }
    .await;
    reply(result, &node)
}

/// `GET /api/info`: the live nodes of the cluster.
pub async fn api_info(State(node): State<Arc<Node>>) -> Response {
    let result = async {
        let mut nodes = node.broker.nodes().await?;
        // This node's own numbers are always fresh.
        let me = crate::server::node_info(&node);
        nodes.retain(|n| n.node != me.node);
        nodes.push(me);
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(json!({"node": node.config.node_id, "ts_ms": herald_broker::now_ms(), "nodes": nodes}))
    }
    .await;
    reply(result, &node)
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 when the broker is healthy and the node is not draining.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let draining = node.draining.load(std::sync::atomic::Ordering::Acquire);
    let broker = node.broker.is_healthy();
    let body = json!({"ready": !draining && broker, "draining": draining, "broker": broker});
    let status = if !draining && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Checks the API key on `/api/*`.
pub fn check_api_key(node: &Node, headers: &HeaderMap) -> Result<(), EdgeError> {
    let Some(key) = &node.config.api_key else {
        return Ok(());
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

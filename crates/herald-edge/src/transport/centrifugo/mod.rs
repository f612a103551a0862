//! Centrifugo's client protocol v2 (JSON) over WebSocket: `GET /connection/websocket`.
//!
//! A second encoder over the connection core, beside `ws`: the same identity, permissions,
//! rate limits, recovery and metrics (label `transport="centrifugo"`), in Centrifugo's wire
//! form (`herald_protocol::centrifugo`), so Centrifugo's SDKs connect unchanged.
//!
//! Life: the upgrade checks the origin and admits a slot (node full, per-address limits) as
//! `/ws` does, answers 101 and spawns one task that owns the socket. The task waits up to
//! `auth.auth_timeout_secs` for the first command, which must be `connect` (its `token`, or
//! else the upgrade's `Authorization`/`?token=`/cookie, is identified like any connection's).
//! An expired token is answered with error 109 on the open socket, so the SDK asks its token
//! callback and sends `connect` again; any other refusal closes with Centrifugo's code. Once
//! identified, the [`session`] serves the connection until it ends.
//!
//! Protobuf framing (`centrifuge-protobuf` subprotocol) is not implemented: a binary frame
//! closes the connection with 3501.

mod session;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_protocol::centrifugo::command::{self, Line, Method};
use herald_protocol::centrifugo::{reply, Code, Disconnect};
use herald_protocol::{CloseCode, StreamPosition};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::ws::{accept, upgrade_key, Socket};
use crate::connection::{Connection, ConnectionOptions};
use crate::error::EdgeError;
use crate::identity::{self, IdentifyRequest, Identity, RequestContext};
use crate::metrics::Transport;
use crate::node::{ConnectionSlot, Node};

/// Most `connect` attempts with an expired token on one socket before it is closed.
const MAX_EXPIRED_CONNECTS: usize = 3;

/// Query parameters of `/connection/websocket`.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct Params {
    /// A connection token, for clients that cannot put it in `connect`.
    token: Option<String>,
}

/// What the socket's task starts with.
struct Pending {
    client: Arc<str>,
    context: RequestContext,
    /// The upgrade's token, used when `connect` carries none.
    upgrade_token: Option<String>,
}

/// The identified connection and what its `connect` asked for.
pub(super) struct Connected {
    /// The `connect` command's id.
    pub(super) id: u32,
    /// Server-side subscriptions the client recovers: channel → its position.
    pub(super) recover: BTreeMap<String, StreamPosition>,
    /// The commands after `connect` in the same frame, served next.
    pub(super) rest: String,
}

/// `GET /connection/websocket`: checks the handshake, admits, answers 101 and spawns the task.
pub(crate) async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<Params>,
    mut req: Request<Body>,
) -> Response {
    let key = match upgrade_key(&req) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let headers = req.headers();
    let admitted = if node.origin_allowed(headers) {
        let address = node.limits.client_ip(peer.ip(), headers);
        match node.admit(Transport::Centrifugo, Some(address)) {
            Ok(slot) => Ok((slot, address)),
            Err(e @ EdgeError::RateLimited { .. }) => Err(e.close_code()),
            Err(_) if node.is_draining() => Err(CloseCode::Restart),
            Err(_) => Err(CloseCode::TryAgainLater),
        }
    } else {
        Err(CloseCode::Policy)
    };
    let admitted = admitted.map(|(slot, address)| {
        let pending = Pending {
            client: node.new_client_id(),
            context: RequestContext::new(&node, Some(address), headers),
            upgrade_token: identity::token_from(
                headers,
                params.token.as_deref(),
                &node.config.auth.token_cookie,
            ),
        };
        (slot, pending)
    });
    let task_node = node.clone();
    accept(&node, &mut req, &key, move |mut socket| async move {
        let opened = match admitted {
            Ok((slot, pending)) => handshake(&task_node, &mut socket, slot, pending).await,
            Err(code) => Err(Some(code)),
        };
        match opened {
            Ok((conn, connected)) => session::run(socket, conn, connected).await,
            Err(Some(code)) => {
                // Centrifugo's close codes, not /ws's (this module's `close`).
                task_node.metrics.disconnect(code);
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), close(&mut socket, code)).await;
            }
            Err(None) => task_node.metrics.disconnect(CloseCode::Normal),
        }
    })
}

/// Waits for `connect` and identifies the connection. `Err(Some(code))`: close with it;
/// `Err(None)`: the client went away.
async fn handshake(
    node: &Arc<Node>,
    socket: &mut Socket,
    slot: ConnectionSlot,
    pending: Pending,
) -> Result<(Connection, Connected), Option<CloseCode>> {
    let deadline = tokio::time::Instant::now() + node.config.auth.auth_timeout();
    let mut expired = 0;
    loop {
        let text = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => {
                node.metrics.auth("missing");
                return Err(Some(CloseCode::Unauthorized));
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => return Err(Some(CloseCode::BadProtocol)),
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_)))) => {
                return Err(Some(CloseCode::TooBig))
            }
            Ok(_) => return Err(None),
        };
        let mut lines = command::lines(&text);
        let first = lines.next().map(command::parse_line);
        let (id, request) = match first {
            Some(Ok(Line::Command(command::Command {
                id,
                method: Method::Connect(request),
            }))) => (id, request),
            Some(Ok(Line::Pong)) | None => continue,
            _ => return Err(Some(CloseCode::BadProtocol)),
        };
        let rest: Vec<&str> = lines.collect();
        if rest.len() + 1 > node.config.limits.max_commands_per_frame {
            node.metrics
                .limit_rejected(crate::metrics::Limit::CommandsPerFrame);
            return Err(Some(CloseCode::BadProtocol));
        }
        let token = match &*request.token {
            "" => pending.upgrade_token.clone(),
            t => Some(t.to_owned()),
        };
        let identified = identity::identify(
            node,
            IdentifyRequest {
                token: token.as_deref(),
                display: None,
                client: &pending.client,
                transport: Transport::Centrifugo,
                context: &pending.context,
            },
        )
        .await;
        let identity = match identified {
            Ok(identity) => identity,
            Err(err @ EdgeError::TokenExpired(_)) => {
                // The SDK asks its token callback and connects again on this socket.
                expired += 1;
                let reply = reply::encode_error(id, Code::TokenExpired, &err.to_string());
                node.metrics.error(err.code(), err.source_tag());
                if expired > MAX_EXPIRED_CONNECTS || send(socket, reply).await.is_err() {
                    return Err(Some(CloseCode::TokenExpired));
                }
                continue;
            }
            // As Centrifugo: a disconnect (3500 invalid token, 3004 keys unreachable, …), not
            // an error reply the SDK could race with the close.
            Err(err) => return Err(Some(err.close_code())),
        };
        let recover = request
            .subs
            .iter()
            .filter(|(_, s)| s.recover)
            .map(|(channel, s)| {
                let position = StreamPosition {
                    epoch: s.epoch.to_string(),
                    offset: s.offset,
                };
                (channel.clone(), position)
            })
            // A position Herald never gave (see `StreamPosition::validate`) recovers nothing.
            .filter(|(_, p)| p.epoch.is_empty() || p.validate().is_ok())
            .collect();
        let connected = Connected {
            id,
            recover,
            rest: rest.join("\n"),
        };
        return open(node, slot, pending, identity)
            .map(|conn| (conn, connected))
            .map_err(Some);
    }
}

fn open(
    node: &Arc<Node>,
    slot: ConnectionSlot,
    pending: Pending,
    identity: Identity,
) -> Result<Connection, CloseCode> {
    let options = ConnectionOptions {
        transport: Transport::Centrifugo,
        client: pending.client,
        identity,
        context: pending.context,
        presence: true,
    };
    Connection::open_admitted(node, slot, options).map_err(|e| e.close_code())
}

async fn send(socket: &mut Socket, text: String) -> Result<(), ()> {
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .map_err(|_| ())
}

/// Closes with Centrifugo's code for `code`: a `disconnect` push, then the close frame.
pub(super) async fn close(socket: &mut Socket, code: CloseCode) {
    let d = Disconnect::from_herald(code);
    let push = reply::encode_disconnect_push(d);
    let _ = socket.feed(Message::Text(Utf8Bytes::from(push))).await;
    let frame = CloseFrame {
        code: WsCloseCode::from(d.code),
        reason: Utf8Bytes::from_static(d.reason),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
    // Wait briefly for the client's close reply so the frame is not lost to a reset.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(msg)) = socket.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

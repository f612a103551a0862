//! Client requests and server frames.
//!
//! Client frames are JSON text objects with an `op`. They are parsed in two steps: serde reads a
//! flat, borrowed shape (so `data` stays raw JSON text and is never re-encoded), then
//! [`ClientFrame::parse`] checks it into a typed request, with a clear [`ProtocolError`] for
//! every way it can be wrong. Server frames are written by the `encode_*` functions; the message
//! frame is built once per publication and the same bytes go to every subscriber.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::validate_channel;
use crate::cursor::StreamPosition;
use crate::error::{ErrorCode, ProtocolError};

/// Largest `limit` a history request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// A request from a client, checked.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    /// Authenticate a WebSocket (the first frame, when the upgrade carried no token).
    Connect {
        /// Request id to echo.
        id: Option<u64>,
        /// The connection token (JWT).
        token: Cow<'a, str>,
    },
    /// Extend the connection's session with a fresh token (same user).
    Refresh {
        /// Request id to echo.
        id: Option<u64>,
        /// The new connection token (JWT).
        token: Cow<'a, str>,
    },
    /// Subscribe to a channel, optionally resuming after `since`.
    Subscribe {
        /// Request id to echo.
        id: Option<u64>,
        /// The channel (owned only when the client escaped characters in it, e.g. `\/`).
        channel: Cow<'a, str>,
        /// Resume point.
        since: Option<StreamPosition>,
        /// A channel token, for namespaces that need one.
        token: Option<Cow<'a, str>>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// Request id to echo.
        id: Option<u64>,
        /// The channel (owned only when the client escaped characters in it, e.g. `\/`).
        channel: Cow<'a, str>,
    },
    /// Publish `data` (raw JSON text) to a channel.
    Publish {
        /// Request id to echo in the ack.
        id: Option<u64>,
        /// The channel (owned only when the client escaped characters in it, e.g. `\/`).
        channel: Cow<'a, str>,
        /// The payload, exactly as the client wrote it.
        data: &'a RawValue,
        /// Whether the sender skips its own copy.
        skip_self: bool,
    },
    /// Who is in a channel.
    Presence {
        /// Request id to echo.
        id: Option<u64>,
        /// The channel (owned only when the client escaped characters in it, e.g. `\/`).
        channel: Cow<'a, str>,
        /// A channel token, where subscribing would need one.
        token: Option<Cow<'a, str>>,
    },
    /// Read a channel's history.
    History {
        /// Request id to echo.
        id: Option<u64>,
        /// The channel (owned only when the client escaped characters in it, e.g. `\/`).
        channel: Cow<'a, str>,
        /// Read after this position (absent: the newest `limit` messages).
        since: Option<StreamPosition>,
        /// At most this many messages.
        limit: Option<usize>,
        /// A channel token, where subscribing would need one.
        token: Option<Cow<'a, str>>,
    },
    /// Application-level ping (browsers cannot send protocol pings).
    Ping {
        /// Request id to echo.
        id: Option<u64>,
    },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    id: Option<u64>,
    // Cow, not &str: a JSON string with escapes (`"chat\/room"`) cannot be borrowed.
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    skip_self: Option<bool>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

/// A request id that could be read from a frame that was otherwise bad, so the error can echo it.
pub fn salvage_id(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    serde_json::from_str::<IdOnly>(text).ok().and_then(|f| f.id)
}

impl<'a> ClientFrame<'a> {
    /// The request id, if the client gave one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Connect { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Ping { id } => *id,
        }
    }

    /// Parses one text frame. Never panics.
    pub fn parse(text: &'a str) -> Result<Self, ProtocolError> {
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|e| {
            ProtocolError::BadRequest(format!("frame is not a valid request object: {e}"))
        })?;
        let id = raw.id;
        let op = raw
            .op
            .ok_or_else(|| ProtocolError::BadRequest("missing field `op`".into()))?;
        let raw_channel = raw.channel;
        let channel = || -> Result<Cow<'a, str>, ProtocolError> {
            let ch = raw_channel
                .clone()
                .ok_or_else(|| ProtocolError::BadRequest("missing field `channel`".into()))?;
            validate_channel(&ch)?;
            Ok(ch)
        };
        let since = match raw.since {
            Some(p) => {
                p.validate()?;
                Some(p)
            }
            None => None,
        };
        let token = raw.token;
        let required_token = |token: Option<Cow<'a, str>>| {
            token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ProtocolError::BadRequest("missing field `token`".into()))
        };
        Ok(match op.as_ref() {
            "connect" => ClientFrame::Connect {
                id,
                token: required_token(token)?,
            },
            "refresh" => ClientFrame::Refresh {
                id,
                token: required_token(token)?,
            },
            "subscribe" => ClientFrame::Subscribe {
                id,
                channel: channel()?,
                since,
                token,
            },
            "unsubscribe" => ClientFrame::Unsubscribe {
                id,
                channel: channel()?,
            },
            "publish" => ClientFrame::Publish {
                id,
                channel: channel()?,
                data: raw
                    .data
                    .ok_or_else(|| ProtocolError::BadRequest("missing field `data`".into()))?,
                skip_self: raw.skip_self.unwrap_or(false),
            },
            "presence" => ClientFrame::Presence {
                id,
                channel: channel()?,
                token,
            },
            "history" => {
                if let Some(limit) = raw.limit {
                    if limit > MAX_HISTORY_LIMIT {
                        return Err(ProtocolError::BadRequest(format!(
                            "limit must be at most {MAX_HISTORY_LIMIT}"
                        )));
                    }
                }
                ClientFrame::History {
                    id,
                    channel: channel()?,
                    since,
                    limit: raw.limit,
                    token,
                }
            }
            "ping" => ClientFrame::Ping { id },
            other => return Err(ProtocolError::UnknownOp(other.chars().take(64).collect())),
        })
    }
}

/// A message as it is written on every text transport: the WebSocket `message` frame, the SSE
/// `data:` line and each entry of a poll reply are these same bytes.
#[derive(Serialize)]
pub struct MessageFrame<'a> {
    /// Always `"message"`.
    pub op: &'static str,
    /// The channel.
    pub channel: &'a str,
    /// The history generation.
    pub epoch: &'a str,
    /// The offset in the channel.
    pub offset: u64,
    /// Publish time, Unix milliseconds.
    pub ts: u64,
    /// The payload, raw JSON.
    pub data: &'a RawValue,
    /// The publishing client, when a client published it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    /// The publishing client's user, set by the server, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
}

/// Encodes a message frame (see [`MessageFrame`]).
pub fn encode_message(frame: &MessageFrame<'_>) -> String {
    serde_json::to_string(frame).expect("message frame serializes")
}

/// The data of a message as text transports carry it.
#[derive(Debug, Clone, Copy)]
pub enum MessageData<'a> {
    /// JSON, written exactly as the publisher wrote it.
    Json(&'a RawValue),
    /// Bytes, written as `{"$binary":"<base64>"}` (see [`binary_marker`]).
    Binary(&'a [u8]),
}

/// Encodes a message frame from its parts: what every text transport writes for one
/// publication (built once per publication per node and shared).
pub fn encode_publication(
    channel: &str,
    epoch: &str,
    offset: u64,
    ts: u64,
    data: MessageData<'_>,
    from: Option<&str>,
    user: Option<&str>,
) -> String {
    let marker;
    let data: &RawValue = match data {
        MessageData::Json(raw) => raw,
        MessageData::Binary(bytes) => {
            marker = RawValue::from_string(binary_marker(bytes)).expect("marker is JSON");
            &marker
        }
    };
    encode_message(&MessageFrame {
        op: "message",
        channel,
        epoch,
        offset,
        ts,
        data,
        from,
        user,
    })
}

/// Writes `text` as a JSON string (escaped) onto `out`.
fn push_json_str(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).expect("a string serializes"));
}

/// Writes `"channel":..,"epoch":..,"offset":..` onto `out`.
fn push_position(out: &mut String, channel: &str, position: &StreamPosition) {
    out.push_str("\"channel\":");
    push_json_str(out, channel);
    out.push_str(",\"epoch\":");
    push_json_str(out, &position.epoch);
    out.push_str(",\"offset\":");
    out.push_str(&position.offset.to_string());
}

fn push_messages<'m>(out: &mut String, messages: impl IntoIterator<Item = &'m str>) {
    out.push_str("\"messages\":[");
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(m);
    }
    out.push(']');
}

/// A history answer. `messages` are encoded message frames (see [`encode_publication`]), which
/// are embedded as they are.
pub struct HistoryReply<'a, M> {
    /// The channel.
    pub channel: &'a str,
    /// The channel's current position.
    pub position: &'a StreamPosition,
    /// Whether everything after the reader's `since` is in `messages` (or further pages).
    pub recovered: bool,
    /// Whether more messages follow the last one (the page was cut by `limit` or by the
    /// edge's `max_reply_bytes`): read on with `since` at the last message.
    pub more: bool,
    /// Encoded message frames, in offset order.
    pub messages: M,
}

impl<'a, 'm, M: IntoIterator<Item = &'m str>> HistoryReply<'a, M> {
    fn push_body(self, out: &mut String) {
        push_position(out, self.channel, self.position);
        out.push_str(",\"recovered\":");
        out.push_str(if self.recovered { "true" } else { "false" });
        out.push_str(",\"more\":");
        out.push_str(if self.more { "true" } else { "false" });
        out.push(',');
        push_messages(out, self.messages);
        out.push('}');
    }

    /// The WebSocket reply to a `history` request:
    /// `{"op":"history","id":..,"channel":..,"epoch":..,"offset":..,"recovered":..,"messages":[..]}`.
    pub fn encode_frame(self, id: Option<u64>) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"op\":\"history\",\"id\":");
        match id {
            Some(id) => out.push_str(&id.to_string()),
            None => out.push_str("null"),
        }
        out.push(',');
        self.push_body(&mut out);
        out
    }

    /// The HTTP body of `GET /api/history/{channel}`: the same fields without `op` and `id`.
    pub fn encode_body(self) -> String {
        let mut out = String::with_capacity(128);
        out.push('{');
        self.push_body(&mut out);
        out
    }
}

/// A poll reply: `{"messages":[<message frames>],"cursor":"<cursor>","recovered":bool}`.
pub fn encode_poll_reply<'m>(
    messages: impl IntoIterator<Item = &'m str>,
    cursor: &str,
    recovered: bool,
) -> String {
    let mut out = String::with_capacity(128);
    out.push('{');
    push_messages(&mut out, messages);
    out.push_str(",\"cursor\":");
    push_json_str(&mut out, cursor);
    out.push_str(",\"recovered\":");
    out.push_str(if recovered { "true" } else { "false" });
    out.push('}');
    out
}

/// The HTTP answer to a publish (`POST /publish`, `/api/publish`):
/// `{"channel":..,"epoch":..,"offset":..}`.
pub fn encode_published(channel: &str, position: &StreamPosition) -> String {
    let mut out = String::with_capacity(64);
    out.push('{');
    push_position(&mut out, channel, position);
    out.push('}');
    out
}

/// The HTTP answer to a broadcast to listed channels: `{"results":[<published>…]}`.
pub fn encode_broadcast_results<'c>(
    results: impl IntoIterator<Item = (&'c str, &'c StreamPosition)>,
) -> String {
    let mut out = String::from("{\"results\":[");
    for (i, (channel, position)) in results.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&encode_published(channel, position));
    }
    out.push_str("]}");
    out
}

/// The HTTP answer to a broadcast to every connection.
pub const BROADCAST_ALL_REPLY: &str = r#"{"broadcast":"all"}"#;

/// The HTTP error body: `{"error":{"code":..,"name":..,"message":..}}`.
pub fn encode_error_body(code: ErrorCode, message: &str) -> String {
    serde_json::json!({"error": {"code": code.code(), "name": code.name(), "message": message}})
        .to_string()
}

/// The HTTP answer to `GET /api/presence/{channel}`: `{"channel":..,"clients":[..]}`.
pub fn encode_presence_body(channel: &str, clients: &[PresenceEntry]) -> String {
    serde_json::json!({"channel": channel, "clients": clients}).to_string()
}

/// `GET /healthz`.
pub const HEALTHY_REPLY: &str = r#"{"status":"ok"}"#;

/// `GET /readyz`: `{"ready":..,"draining":..,"broker":..}`.
pub fn encode_readiness(ready: bool, draining: bool, broker: bool) -> String {
    serde_json::json!({"ready": ready, "draining": draining, "broker": broker}).to_string()
}

/// A JSON payload standing for binary data on text transports: `{"$binary":"<base64>"}`.
pub fn binary_marker(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(16 + bytes.len() * 4 / 3);
    out.push_str("{\"$binary\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
    out.push_str("\"}");
    out
}

/// The first frame on a WebSocket: the client id, the node, the heartbeat interval and the
/// connection's user (`""` when anonymous).
pub fn encode_welcome(client: &str, node: &str, ping_interval_secs: u64, user: &str) -> String {
    serde_json::json!({"op": "welcome", "client": client, "node": node,
        "ping_interval": ping_interval_secs, "user": user})
    .to_string()
}

/// The reply to a `refresh`: the session now lasts until `exp` (Unix seconds; `null`: no end).
pub fn encode_refreshed(id: Option<u64>, exp: Option<u64>) -> String {
    serde_json::json!({"op": "refreshed", "id": id, "exp": exp}).to_string()
}

/// The reply to a subscribe.
pub fn encode_subscribed(
    id: Option<u64>,
    channel: &str,
    position: &StreamPosition,
    recovered: bool,
) -> String {
    serde_json::json!({"op": "subscribed", "id": id, "channel": channel, "epoch": position.epoch,
        "offset": position.offset, "recovered": recovered})
    .to_string()
}

/// The reply to an unsubscribe.
pub fn encode_unsubscribed(id: Option<u64>, channel: &str) -> String {
    serde_json::json!({"op": "unsubscribed", "id": id, "channel": channel}).to_string()
}

/// The acknowledgement of a publish, sent after the broker accepted it.
pub fn encode_ack(id: Option<u64>, channel: &str, position: &StreamPosition) -> String {
    serde_json::json!({"op": "ack", "id": id, "channel": channel, "epoch": position.epoch, "offset": position.offset})
        .to_string()
}

/// The reply to an application ping.
pub fn encode_pong(id: Option<u64>) -> String {
    serde_json::json!({"op": "pong", "id": id}).to_string()
}

/// An error frame.
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    serde_json::json!({"op": "error", "id": id, "code": code.code(), "name": code.name(), "message": message})
        .to_string()
}

/// One member of a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Client id.
    pub client: String,
    /// User id (empty when anonymous).
    pub user: String,
    /// The node the client is connected to.
    pub node: String,
    /// What the user's token says about them (`info` claim), when it says anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A join or leave event.
pub fn encode_join_leave(join: bool, channel: &str, entry: &PresenceEntry) -> String {
    let mut frame = serde_json::json!({"op": if join {"join"} else {"leave"}, "channel": channel,
        "client": entry.client, "user": entry.user, "node": entry.node});
    if let Some(info) = &entry.info {
        frame["info"] = info.clone();
    }
    frame.to_string()
}

/// The reply to a presence request.
pub fn encode_presence(id: Option<u64>, channel: &str, clients: &[PresenceEntry]) -> String {
    serde_json::json!({"op": "presence", "id": id, "channel": channel, "clients": clients})
        .to_string()
}

/// A broadcast to every connection (no channel): `{"op":"broadcast","data":..}`.
pub fn encode_broadcast(data: &RawValue) -> String {
    #[derive(Serialize)]
    struct B<'a> {
        op: &'static str,
        data: &'a RawValue,
    }
    serde_json::to_string(&B {
        op: "broadcast",
        data,
    })
    .expect("broadcast serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_op() {
        let f = ClientFrame::parse(
            r#"{"op":"subscribe","channel":"chat:a","id":1,"since":{"epoch":"e1","offset":17}}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Subscribe {
                id, channel, since, ..
            } => {
                assert_eq!((id, &*channel), (Some(1), "chat:a"));
                assert_eq!(
                    since,
                    Some(StreamPosition {
                        epoch: "e1".into(),
                        offset: 17
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        let f = ClientFrame::parse(
            r#"{"op":"publish","channel":"c","data":{"x":[1, 2]},"skip_self":true}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Publish {
                data, skip_self, ..
            } => {
                assert_eq!(data.get(), r#"{"x":[1, 2]}"#, "data must stay raw");
                assert!(skip_self);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"ping","id":6}"#).unwrap(),
            ClientFrame::Ping { id: Some(6) }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"history","channel":"c","limit":5}"#).unwrap(),
            ClientFrame::History { limit: Some(5), .. }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"presence","channel":"c"}"#).unwrap(),
            ClientFrame::Presence { .. }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"unsubscribe","channel":"c"}"#).unwrap(),
            ClientFrame::Unsubscribe { .. }
        ));
        // Escapes in a channel name (e.g. PHP's json_encode writes `\/`) are fine.
        match ClientFrame::parse(r#"{"op":"subscribe","channel":"chat\/a\u0062"}"#).unwrap() {
            ClientFrame::Subscribe { channel, .. } => assert_eq!(channel, "chat/ab"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_refresh_and_channel_tokens_parse() {
        match ClientFrame::parse(r#"{"op":"connect","token":"t.k.n"}"#).unwrap() {
            ClientFrame::Connect { token, id: None } => assert_eq!(token, "t.k.n"),
            other => panic!("{other:?}"),
        }
        match ClientFrame::parse(r#"{"op":"refresh","token":"x","id":3}"#).unwrap() {
            ClientFrame::Refresh { token, id } => assert_eq!((&*token, id), ("x", Some(3))),
            other => panic!("{other:?}"),
        }
        for text in [r#"{"op":"connect"}"#, r#"{"op":"refresh","token":""}"#] {
            let err = ClientFrame::parse(text).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest, "{text}");
        }
        match ClientFrame::parse(r#"{"op":"subscribe","channel":"p:x","token":"ct"}"#).unwrap() {
            ClientFrame::Subscribe { token, .. } => assert_eq!(token.as_deref(), Some("ct")),
            other => panic!("{other:?}"),
        }
        match ClientFrame::parse(r#"{"op":"history","channel":"dm:#a,b","token":"ct"}"#).unwrap() {
            ClientFrame::History { channel, token, .. } => {
                assert_eq!((&*channel, token.as_deref()), ("dm:#a,b", Some("ct")))
            }
            other => panic!("{other:?}"),
        }
        let v: serde_json::Value =
            serde_json::from_str(&encode_refreshed(Some(3), Some(9))).unwrap();
        assert_eq!(
            (&v["op"], &v["exp"]),
            (&serde_json::json!("refreshed"), &serde_json::json!(9))
        );
        let v: serde_json::Value =
            serde_json::from_str(&encode_welcome("c", "n", 25, "ann")).unwrap();
        assert_eq!(v["user"], "ann");
    }

    #[test]
    fn every_bad_input_has_its_code() {
        let cases = [
            ("not json", ErrorCode::BadRequest),
            ("[1,2]", ErrorCode::BadRequest),
            (r#"{"id":1}"#, ErrorCode::BadRequest),
            (r#"{"op":"fly"}"#, ErrorCode::UnknownOp),
            (r#"{"op":"subscribe"}"#, ErrorCode::BadRequest),
            (
                r#"{"op":"subscribe","channel":"a b"}"#,
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"op":"subscribe","channel":"caf\u00e9"}"#,
                ErrorCode::InvalidChannel,
            ),
            (r#"{"op":"subscribe","channel":7}"#, ErrorCode::BadRequest),
            (r#"{"op":"publish","channel":"a"}"#, ErrorCode::BadRequest),
            (
                r#"{"op":"subscribe","channel":"a","since":{"epoch":"a\nb","offset":1}}"#,
                ErrorCode::BadCursor,
            ),
            (
                r#"{"op":"subscribe","channel":"a","since":{"epoch":"e","offset":-1}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"op":"history","channel":"a","limit":100000}"#,
                ErrorCode::BadRequest,
            ),
            (r#"{"op":"ping","id":"x"}"#, ErrorCode::BadRequest),
        ];
        for (text, code) in cases {
            let err = ClientFrame::parse(text).unwrap_err();
            assert_eq!(err.code(), code, "{text}: {err}");
        }
        assert_eq!(salvage_id(r#"{"op":"fly","id":9}"#), Some(9));
    }

    #[test]
    fn message_frame_embeds_raw_data() {
        let data = RawValue::from_string(r#"{"a": 1}"#.into()).unwrap();
        let s = encode_message(&MessageFrame {
            op: "message",
            channel: "c",
            epoch: "e",
            offset: 3,
            ts: 9,
            data: &data,
            from: Some("cl"),
            user: Some("alice"),
        });
        assert_eq!(
            s,
            r#"{"op":"message","channel":"c","epoch":"e","offset":3,"ts":9,"data":{"a": 1},"from":"cl","user":"alice"}"#
        );
        assert_eq!(binary_marker(&[0, 255]), r#"{"$binary":"AP8="}"#);
        assert_eq!(
            encode_publication("c", "e", 3, 9, MessageData::Binary(&[0, 255]), None, None),
            r#"{"op":"message","channel":"c","epoch":"e","offset":3,"ts":9,"data":{"$binary":"AP8="}}"#
        );
    }

    #[test]
    fn replies_embed_frames_and_escape_names() {
        let pos = StreamPosition {
            epoch: "e\"x".into(),
            offset: 7,
        };
        let m = r#"{"op":"message","channel":"c","epoch":"e","offset":7,"ts":1,"data":1}"#;
        let reply = HistoryReply {
            channel: "c",
            position: &pos,
            recovered: true,
            more: true,
            messages: [m],
        };
        let v: serde_json::Value = serde_json::from_str(&reply.encode_frame(Some(4))).unwrap();
        assert_eq!(v["op"], "history");
        assert_eq!(v["id"], 4);
        assert_eq!(v["epoch"], "e\"x");
        assert_eq!(v["messages"][0]["offset"], 7);
        assert_eq!(v["more"], true);
        let none = HistoryReply {
            channel: "c",
            position: &pos,
            recovered: false,
            more: false,
            messages: std::iter::empty(),
        };
        let v: serde_json::Value = serde_json::from_str(&none.encode_body()).unwrap();
        assert!(v.get("op").is_none() && v.get("id").is_none());
        assert_eq!(v["recovered"], false);
        let v: serde_json::Value =
            serde_json::from_str(&encode_poll_reply([m, m], "cur\"sor", true)).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        assert_eq!(v["cursor"], "cur\"sor");
        let v: serde_json::Value =
            serde_json::from_str(&encode_broadcast_results([("a", &pos), ("b", &pos)])).unwrap();
        assert_eq!(v["results"][1]["channel"], "b");
        let v: serde_json::Value =
            serde_json::from_str(&encode_error_body(ErrorCode::BadCursor, "x")).unwrap();
        assert_eq!(v["error"]["code"], ErrorCode::BadCursor.code());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = ClientFrame::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_json_like(
            op in prop_oneof![Just("subscribe"), Just("publish"), Just("history"), Just("x")],
            ch in ".{0,10}", extra in ".{0,40}"
        ) {
            let text = format!(r#"{{"op":"{op}","channel":{},"data":{extra}}}"#, serde_json::Value::String(ch));
            let _ = ClientFrame::parse(&text);
        }
    }
}

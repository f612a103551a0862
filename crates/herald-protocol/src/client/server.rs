//! Server frames, typed: a WebSocket text frame ([`ServerFrame`]), an SSE message event's data
//! ([`Message`]) and a long-poll reply body ([`PollReply`]).
//!
//! Parsing is borrowed: strings and payloads point into the input, and a string is copied only
//! when it holds a JSON escape (`CowStr`), so reading a message frame allocates nothing. Every
//! frame the server's `encode_*` functions in [`crate::frame`] write parses here; the tests
//! below hold both sides together. None of these parsers panics on any input.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cursor::StreamPosition;
use crate::error::ProtocolError;
use crate::frame::PresenceEntry;

/// A string borrowed from the input when it holds no escape, copied otherwise.
///
/// serde's own `Cow<str>` always copies when it sits inside an `Option`; this does not.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<CowStr<'a>>::deserialize(d)?.map(|s| s.0))
}

/// A message: the WebSocket `message` frame, the data of an SSE message event, and each entry
/// of a history or poll reply (see [`MessageFrame`](crate::frame::MessageFrame)).
#[derive(Debug, Clone, Deserialize)]
pub struct Message<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// The history generation.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    /// The offset in the channel.
    pub offset: u64,
    /// Publish time, Unix milliseconds.
    pub ts: u64,
    /// The payload, raw JSON.
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// The publishing client, when a client published it.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub from: Option<Cow<'a, str>>,
    /// The publisher's authenticated user, set by the server.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub user: Option<Cow<'a, str>>,
}

impl<'a> Message<'a> {
    /// Parses a message frame (`{"op":"message",..}`), e.g. an SSE message event's data.
    pub fn parse(text: &'a str) -> Result<Self, ProtocolError> {
        match ServerFrame::parse(text)? {
            ServerFrame::Message(m) => Ok(m),
            other => Err(ProtocolError::BadRequest(format!(
                "expected a message frame, got `{}`",
                other.op()
            ))),
        }
    }

    /// The stream position of this message.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone().into_owned(),
            offset: self.offset,
        }
    }
}

/// One member of a channel's presence, borrowed (owned form: [`PresenceEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceMember<'a> {
    /// Client id.
    #[serde(borrow)]
    pub client: Cow<'a, str>,
    /// User id (empty when anonymous).
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    /// The node the client is connected to.
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    /// The `info` claim of the member's token, if any.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

impl PresenceMember<'_> {
    /// The owned form.
    pub fn into_owned(self) -> PresenceEntry {
        PresenceEntry {
            client: self.client.into_owned(),
            user: self.user.into_owned(),
            node: self.node.into_owned(),
            info: self.info,
        }
    }
}

/// A frame from the server, typed. Strings and payloads borrow from the frame's text.
#[derive(Debug, Clone)]
pub enum ServerFrame<'a> {
    /// The first frame on a WebSocket.
    Welcome {
        /// This connection's client id.
        client: Cow<'a, str>,
        /// The node that serves it.
        node: Cow<'a, str>,
        /// Seconds between the server's pings.
        ping_interval: u64,
        /// The connection's user (`""` when anonymous).
        user: Cow<'a, str>,
    },
    /// The reply to a `refresh`.
    Refreshed {
        /// The request id.
        id: Option<u64>,
        /// When the session now ends (Unix seconds); `None`: never.
        exp: Option<u64>,
    },
    /// The reply to a subscribe.
    Subscribed {
        /// The request id.
        id: Option<u64>,
        /// The channel.
        channel: Cow<'a, str>,
        /// The channel's history generation.
        epoch: Cow<'a, str>,
        /// The position the subscription starts after.
        offset: u64,
        /// Whether it resumed from the requested position with no gap (recovered messages
        /// follow this frame).
        recovered: bool,
    },
    /// The reply to an unsubscribe.
    Unsubscribed {
        /// The request id.
        id: Option<u64>,
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// A publish was accepted.
    Ack {
        /// The publish's request id.
        id: Option<u64>,
        /// The channel.
        channel: Cow<'a, str>,
        /// The channel's history generation.
        epoch: Cow<'a, str>,
        /// The offset given to the message.
        offset: u64,
    },
    /// The reply to a ping.
    Pong {
        /// The request id.
        id: Option<u64>,
    },
    /// A request failed.
    Error {
        /// The failed request's id, when it had one that could be read.
        id: Option<u64>,
        /// The numeric [`ErrorCode`](crate::ErrorCode).
        code: u16,
        /// The code's stable name.
        name: Cow<'a, str>,
        /// A readable explanation.
        message: Cow<'a, str>,
    },
    /// A member joined a channel.
    Join {
        /// The channel.
        channel: Cow<'a, str>,
        /// Who joined.
        member: PresenceMember<'a>,
    },
    /// A member left a channel.
    Leave {
        /// The channel.
        channel: Cow<'a, str>,
        /// Who left.
        member: PresenceMember<'a>,
    },
    /// The reply to a presence request.
    Presence {
        /// The request id.
        id: Option<u64>,
        /// The channel.
        channel: Cow<'a, str>,
        /// Who is in it.
        clients: Vec<PresenceMember<'a>>,
    },
    /// The reply to a history request.
    History {
        /// The request id.
        id: Option<u64>,
        /// The channel.
        channel: Cow<'a, str>,
        /// The channel's history generation.
        epoch: Cow<'a, str>,
        /// The channel's newest offset.
        offset: u64,
        /// Whether the messages follow `since` with no gap.
        recovered: bool,
        /// The messages, oldest first.
        messages: Vec<Message<'a>>,
    },
    /// A message published to a subscribed channel.
    Message(Message<'a>),
    /// A broadcast to every connection.
    Broadcast {
        /// The payload, raw JSON.
        data: &'a RawValue,
    },
}

/// Every field a server frame can carry, read in one pass; [`ServerFrame::parse`] then checks
/// that the `op` has the fields it needs.
#[derive(Deserialize)]
struct RawServerFrame<'a> {
    #[serde(borrow)]
    op: CowStr<'a>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    channel: Option<CowStr<'a>>,
    #[serde(borrow, default)]
    epoch: Option<CowStr<'a>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    from: Option<CowStr<'a>>,
    #[serde(borrow, default)]
    client: Option<CowStr<'a>>,
    #[serde(borrow, default)]
    node: Option<CowStr<'a>>,
    #[serde(borrow, default)]
    user: Option<CowStr<'a>>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    ping_interval: Option<u64>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    name: Option<CowStr<'a>>,
    #[serde(borrow, default)]
    message: Option<CowStr<'a>>,
    #[serde(borrow, default)]
    clients: Option<Vec<PresenceMember<'a>>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
}

/// The value of a field the frame's `op` requires.
fn need<T>(value: Option<T>, op: &str, field: &str) -> Result<T, ProtocolError> {
    value.ok_or_else(|| ProtocolError::BadRequest(format!("`{op}` frame without `{field}`")))
}

fn need_str<'a>(
    value: Option<CowStr<'a>>,
    op: &str,
    field: &str,
) -> Result<Cow<'a, str>, ProtocolError> {
    need(value, op, field).map(|s| s.0)
}

impl<'a> ServerFrame<'a> {
    /// Parses one WebSocket text frame from the server. Never panics.
    pub fn parse(text: &'a str) -> Result<Self, ProtocolError> {
        let raw: RawServerFrame<'a> = serde_json::from_str(text)
            .map_err(|e| ProtocolError::BadRequest(format!("not a valid server frame: {e}")))?;
        let RawServerFrame {
            op,
            id,
            channel,
            epoch,
            offset,
            ts,
            recovered,
            data,
            from,
            client,
            node,
            user,
            info,
            exp,
            ping_interval,
            code,
            name,
            message,
            clients,
            messages,
        } = raw;
        let op = op.0;
        let op = op.as_ref();
        Ok(match op {
            "message" => ServerFrame::Message(Message {
                channel: need_str(channel, op, "channel")?,
                epoch: need_str(epoch, op, "epoch")?,
                offset: need(offset, op, "offset")?,
                ts: need(ts, op, "ts")?,
                data: need(data, op, "data")?,
                from: from.map(|s| s.0),
                user: user.map(|s| s.0),
            }),
            "ack" => ServerFrame::Ack {
                id,
                channel: need_str(channel, op, "channel")?,
                epoch: need_str(epoch, op, "epoch")?,
                offset: need(offset, op, "offset")?,
            },
            "welcome" => ServerFrame::Welcome {
                client: need_str(client, op, "client")?,
                node: need_str(node, op, "node")?,
                ping_interval: need(ping_interval, op, "ping_interval")?,
                user: user.map(|u| u.0).unwrap_or_default(),
            },
            "refreshed" => ServerFrame::Refreshed { id, exp },
            "subscribed" => ServerFrame::Subscribed {
                id,
                channel: need_str(channel, op, "channel")?,
                epoch: need_str(epoch, op, "epoch")?,
                offset: need(offset, op, "offset")?,
                recovered: need(recovered, op, "recovered")?,
            },
            "unsubscribed" => ServerFrame::Unsubscribed {
                id,
                channel: need_str(channel, op, "channel")?,
            },
            "pong" => ServerFrame::Pong { id },
            "error" => ServerFrame::Error {
                id,
                code: need(code, op, "code")?,
                name: need_str(name, op, "name")?,
                message: need_str(message, op, "message")?,
            },
            "join" | "leave" => {
                let channel = need_str(channel, op, "channel")?;
                let member = PresenceMember {
                    client: need_str(client, op, "client")?,
                    user: need_str(user, op, "user")?,
                    node: need_str(node, op, "node")?,
                    info,
                };
                if op == "join" {
                    ServerFrame::Join { channel, member }
                } else {
                    ServerFrame::Leave { channel, member }
                }
            }
            "presence" => ServerFrame::Presence {
                id,
                channel: need_str(channel, op, "channel")?,
                clients: need(clients, op, "clients")?,
            },
            "history" => ServerFrame::History {
                id,
                channel: need_str(channel, op, "channel")?,
                epoch: need_str(epoch, op, "epoch")?,
                offset: need(offset, op, "offset")?,
                recovered: need(recovered, op, "recovered")?,
                messages: need(messages, op, "messages")?,
            },
            "broadcast" => ServerFrame::Broadcast {
                data: need(data, op, "data")?,
            },
            other => return Err(ProtocolError::UnknownOp(other.chars().take(64).collect())),
        })
    }

    /// The frame's `op`.
    pub fn op(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Refreshed { .. } => "refreshed",
            ServerFrame::Subscribed { .. } => "subscribed",
            ServerFrame::Unsubscribed { .. } => "unsubscribed",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Join { .. } => "join",
            ServerFrame::Leave { .. } => "leave",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::History { .. } => "history",
            ServerFrame::Message(_) => "message",
            ServerFrame::Broadcast { .. } => "broadcast",
        }
    }
}

/// A long-poll reply body: `{"messages":[..],"cursor":"..","recovered":bool}`.
#[derive(Debug, Clone, Deserialize)]
pub struct PollReply<'a> {
    /// The messages after the request's cursor, oldest first.
    #[serde(borrow)]
    pub messages: Vec<Message<'a>>,
    /// Where the next poll resumes (send it back as `cursor=`).
    #[serde(borrow)]
    pub cursor: Cow<'a, str>,
    /// Whether the messages follow the request's cursor with no gap.
    pub recovered: bool,
}

impl<'a> PollReply<'a> {
    /// Parses a poll reply's HTTP body. Never panics.
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(body)
            .map_err(|e| ProtocolError::BadRequest(format!("not a valid poll reply: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_support::{borrowed, message_text, pos, raw};
    use crate::error::ErrorCode;
    use crate::frame;
    use proptest::prelude::*;

    #[test]
    fn message_frame_parses_borrowed() {
        let text = message_text(Some("cl1"));
        let ServerFrame::Message(m) = ServerFrame::parse(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!((&*m.channel, &*m.epoch), ("chat:a", "e9"));
        assert_eq!((m.offset, m.ts), (42, 1_700_000_000_000));
        assert_eq!(m.data.get(), r#"{"seq": 7}"#);
        assert_eq!(m.from.as_deref(), Some("cl1"));
        assert_eq!(m.position(), pos("e9", 42));
        // Nothing on the message path is copied.
        assert!(borrowed(&m.channel) && borrowed(&m.epoch));
        assert!(m.from.as_ref().is_some_and(borrowed));

        let text = message_text(None);
        let m = Message::parse(&text).unwrap();
        assert_eq!(m.from, None);
        assert!(Message::parse(&frame::encode_pong(None)).is_err());

        // A channel written with escapes still parses (copied).
        let m = Message::parse(
            r#"{"op":"message","channel":"a\/b","epoch":"e","offset":1,"ts":2,"data":1}"#,
        )
        .unwrap();
        assert_eq!(m.channel, "a/b");
    }

    #[test]
    fn every_server_frame_parses_to_its_type() {
        let p = pos("ep1", 9);
        match ServerFrame::parse(&frame::encode_welcome("c1", "n1", 25, "ann")).unwrap() {
            ServerFrame::Welcome {
                client,
                node,
                ping_interval,
                user,
            } => assert_eq!(
                (&*client, &*node, ping_interval, &*user),
                ("c1", "n1", 25, "ann")
            ),
            other => panic!("{other:?}"),
        }
        for recovered in [false, true] {
            match ServerFrame::parse(&frame::encode_subscribed(Some(1), "ch", &p, recovered))
                .unwrap()
            {
                ServerFrame::Subscribed {
                    id,
                    channel,
                    epoch,
                    offset,
                    recovered: r,
                } => assert_eq!(
                    (id, &*channel, &*epoch, offset, r),
                    (Some(1), "ch", "ep1", 9, recovered)
                ),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            ServerFrame::parse(&frame::encode_unsubscribed(Some(2), "ch")).unwrap(),
            ServerFrame::Unsubscribed { id: Some(2), channel } if channel == "ch"
        ));
        match ServerFrame::parse(&frame::encode_ack(Some(3), "ch", &p)).unwrap() {
            ServerFrame::Ack {
                id,
                channel,
                epoch,
                offset,
            } => assert_eq!((id, &*channel, &*epoch, offset), (Some(3), "ch", "ep1", 9)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ServerFrame::parse(&frame::encode_pong(Some(4))).unwrap(),
            ServerFrame::Pong { id: Some(4) }
        ));
        assert!(matches!(
            ServerFrame::parse(&frame::encode_pong(None)).unwrap(),
            ServerFrame::Pong { id: None }
        ));
        match ServerFrame::parse(&frame::encode_error(
            None,
            ErrorCode::InvalidChannel,
            "bad \"name\"",
        ))
        .unwrap()
        {
            ServerFrame::Error {
                id,
                code,
                name,
                message,
            } => {
                assert_eq!(id, None);
                assert_eq!(code, ErrorCode::InvalidChannel.code());
                assert_eq!(name, ErrorCode::InvalidChannel.name());
                assert_eq!(message, "bad \"name\"");
            }
            other => panic!("{other:?}"),
        }
        match ServerFrame::parse(&frame::encode_refreshed(Some(2), Some(99))).unwrap() {
            ServerFrame::Refreshed { id, exp } => assert_eq!((id, exp), (Some(2), Some(99))),
            other => panic!("{other:?}"),
        }
        let entry = PresenceEntry {
            client: "c1".into(),
            user: "ann".into(),
            node: "n1".into(),
            info: Some(serde_json::json!({"name": "Ann"})),
        };
        for join in [true, false] {
            let text = frame::encode_join_leave(join, "room", &entry);
            let f = ServerFrame::parse(&text).unwrap();
            assert_eq!(f.op(), if join { "join" } else { "leave" });
            match f {
                ServerFrame::Join { channel, member } | ServerFrame::Leave { channel, member } => {
                    assert_eq!(channel, "room");
                    assert_eq!(member.into_owned(), entry);
                }
                other => panic!("{other:?}"),
            }
        }
        let other = PresenceEntry {
            client: "c2".into(),
            user: String::new(),
            node: "n2".into(),
            info: None,
        };
        let all = [entry.clone(), other.clone()];
        match ServerFrame::parse(&frame::encode_presence(Some(5), "room", &all)).unwrap() {
            ServerFrame::Presence {
                id,
                channel,
                clients,
            } => {
                assert_eq!((id, &*channel), (Some(5), "room"));
                let clients: Vec<_> = clients.into_iter().map(|c| c.into_owned()).collect();
                assert_eq!(clients, vec![entry, other]);
            }
            other => panic!("{other:?}"),
        }
        let data = raw(r#"{"notice": "bye"}"#);
        match ServerFrame::parse(&frame::encode_broadcast(&data)).unwrap() {
            ServerFrame::Broadcast { data: d } => assert_eq!(d.get(), data.get()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_reply_parses_with_its_messages() {
        let (a, b) = (message_text(None), message_text(Some("x")));
        let text = frame::HistoryReply {
            channel: "chat:a",
            position: &pos("e9", 43),
            recovered: true,
            more: false,
            messages: [a.as_str(), b.as_str()],
        }
        .encode_frame(Some(8));
        match ServerFrame::parse(&text).unwrap() {
            ServerFrame::History {
                id,
                channel,
                epoch,
                offset,
                recovered,
                messages,
            } => {
                assert_eq!(
                    (id, &*channel, &*epoch, offset, recovered),
                    (Some(8), "chat:a", "e9", 43, true)
                );
                assert_eq!(messages.len(), 2);
                assert_eq!(messages[0].data.get(), r#"{"seq": 7}"#);
                assert_eq!(messages[1].from.as_deref(), Some("x"));
                assert!(borrowed(&messages[1].channel));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn poll_reply_parses_borrowed() {
        let mut cursor = crate::Cursor::new();
        cursor.set("chat:a", pos("e9", 42));
        let cursor = cursor.encode();
        let body = frame::encode_poll_reply([message_text(None).as_str()], &cursor, false);
        let reply = PollReply::parse(body.as_bytes()).unwrap();
        assert_eq!(reply.messages.len(), 1);
        assert_eq!(reply.messages[0].offset, 42);
        assert_eq!(reply.cursor, cursor);
        assert!(borrowed(&reply.cursor));
        assert!(!reply.recovered);
        let body = frame::encode_poll_reply([], "aDEK", true);
        let empty = PollReply::parse(body.as_bytes()).unwrap();
        assert!(empty.messages.is_empty() && empty.recovered);
        assert!(PollReply::parse(b"{\"messages\":[]}").is_err());
    }

    #[test]
    fn bad_server_frames_are_errors() {
        let cases = [
            ("", ErrorCode::BadRequest),
            ("[]", ErrorCode::BadRequest),
            (r#"{"id":1}"#, ErrorCode::BadRequest),
            (r#"{"op":7}"#, ErrorCode::BadRequest),
            (r#"{"op":"message","channel":"c"}"#, ErrorCode::BadRequest),
            (
                r#"{"op":"ack","channel":"c","offset":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"op":"subscribed","channel":"c","epoch":"e","offset":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"op":"history","channel":"c","epoch":"e","offset":1,"recovered":true,"messages":[{"x":1}]}"#,
                ErrorCode::BadRequest,
            ),
            (r#"{"op":"teleport"}"#, ErrorCode::UnknownOp),
        ];
        for (text, code) in cases {
            let err = ServerFrame::parse(text).unwrap_err();
            assert_eq!(err.code(), code, "{text}: {err}");
        }
    }

    proptest! {
        #[test]
        fn server_parse_never_panics(s in ".{0,300}") {
            let _ = ServerFrame::parse(&s);
            let _ = PollReply::parse(s.as_bytes());
        }

        #[test]
        fn server_parse_never_panics_on_json_like(
            op in prop_oneof![Just("message"), Just("history"), Just("presence"), Just("join"),
                Just("error"), Just("x")],
            ch in ".{0,10}", extra in ".{0,40}"
        ) {
            let text = format!(r#"{{"op":"{op}","channel":{},"messages":{extra},"clients":{extra},"data":{extra}}}"#,
                serde_json::Value::String(ch));
            let _ = ServerFrame::parse(&text);
        }
    }
}

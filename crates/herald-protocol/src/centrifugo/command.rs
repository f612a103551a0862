//! Centrifugo client commands (protocol v2, JSON): one JSON object per line of a text frame.
//!
//! A command is `{"id": N, "<method>": {params}}` with exactly one method field; `{}` (no id, no
//! method) is the client's pong. Parsing reads a flat borrowed shape first (so `data` stays raw
//! JSON text, never re-encoded), then checks it into a typed [`Command`]. Every malformed line
//! becomes a [`CommandError`] saying whether an id could be read, so the caller answers with an
//! error reply (an id) or a disconnect (no id). Never panics.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::validate_channel;
use crate::error::ProtocolError;

/// One line of a client frame, checked.
#[derive(Debug)]
pub enum Line<'a> {
    /// `{}`: the answer to the server's ping.
    Pong,
    /// A command with an id (or, for `send`, possibly without).
    Command(Command<'a>),
}

/// A command: its id (0 when the client gave none, only for `send`) and method.
#[derive(Debug)]
pub struct Command<'a> {
    /// The id the reply echoes.
    pub id: u32,
    /// What the client asks.
    pub method: Method<'a>,
}

/// The methods of protocol v2.
#[derive(Debug)]
pub enum Method<'a> {
    /// Authenticate (first command only).
    Connect(ConnectRequest<'a>),
    /// Subscribe to a channel.
    Subscribe(SubscribeRequest<'a>),
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Publish raw JSON to a channel.
    Publish {
        /// The channel.
        channel: Cow<'a, str>,
        /// The payload as the client wrote it.
        data: &'a RawValue,
    },
    /// Who is in a channel.
    Presence {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// How many clients and users are in a channel.
    PresenceStats {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// A page of a channel's history.
    History(HistoryRequest<'a>),
    /// An application-level ping (answered with an empty `ping` result).
    Ping,
    /// An asynchronous message to the server (no reply).
    Send,
    /// A remote procedure call.
    Rpc {
        /// The RPC method name, if any.
        method: Cow<'a, str>,
    },
    /// Extend the connection with a fresh connection token.
    Refresh {
        /// The new token.
        token: Cow<'a, str>,
    },
    /// Refresh a channel token.
    SubRefresh {
        /// The channel.
        channel: Cow<'a, str>,
        /// The new channel token.
        token: Cow<'a, str>,
    },
}

impl Method<'_> {
    /// The method's name as it is on the wire (for logs and errors).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe { .. } => "unsubscribe",
            Method::Publish { .. } => "publish",
            Method::Presence { .. } => "presence",
            Method::PresenceStats { .. } => "presence_stats",
            Method::History(_) => "history",
            Method::Ping => "ping",
            Method::Send => "send",
            Method::Rpc { .. } => "rpc",
            Method::Refresh { .. } => "refresh",
            Method::SubRefresh { .. } => "sub_refresh",
        }
    }
}

/// `connect` parameters (`data`, `headers`, `flag`, `dict` are accepted and ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest<'a> {
    /// The connection token (JWT); may be empty when the upgrade carried one.
    #[serde(borrow)]
    pub token: Cow<'a, str>,
    /// Server-side subscriptions to recover, by channel.
    #[serde(borrow)]
    pub subs: BTreeMap<String, SubscribeRequest<'a>>,
    /// The client's name (logs only).
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The client's version (logs only).
    #[serde(borrow)]
    pub version: Cow<'a, str>,
}

/// `subscribe` parameters (also the values of `connect.subs`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest<'a> {
    /// The channel (absent in `connect.subs`, where it is the key).
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// A channel token, for namespaces that need one.
    #[serde(borrow)]
    pub token: Cow<'a, str>,
    /// Whether to recover from `epoch` + `offset`.
    pub recover: bool,
    /// The epoch to recover in.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    /// The last offset the client has.
    pub offset: u64,
    /// The client asks for a positioned subscription (always given by Herald).
    pub positioned: bool,
    /// The client asks for a recoverable subscription.
    pub recoverable: bool,
    /// The client asks for join/leave pushes (sent where the namespace enables them).
    pub join_leave: bool,
    /// Feature bits; bit 2 (`2`): answer error 112 instead of `recovered: false`.
    pub flag: i64,
}

/// Subscribe flag: refuse with error 112 when recovery fails (instead of `recovered: false`).
pub const FLAG_REJECT_UNRECOVERED: i64 = 2;

/// `history` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryRequest<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// At most this many publications; 0: only the position; negative: as many as allowed.
    pub limit: i32,
    /// Read after (or, with `reverse`, before) this position.
    pub since: Option<SincePosition<'a>>,
    /// Newest first.
    pub reverse: bool,
}

/// A `{offset, epoch}` position sent by a client.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SincePosition<'a> {
    /// The offset.
    pub offset: u64,
    /// The epoch.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

/// Why a line could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The command id, when it could be read: then answer with an error reply; otherwise the
    /// line was not a command at all and the connection is closed (3501).
    pub id: Option<u32>,
    /// What was wrong (its code maps to Centrifugo's 104 or 107).
    pub error: ProtocolError,
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(default)]
    id: Option<u32>,
    #[serde(borrow, default)]
    connect: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unsubscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    publish: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence_stats: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ping: Option<&'a RawValue>,
    #[serde(borrow, default)]
    send: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rpc: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refresh: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sub_refresh: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelParams<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
}

/// The lines of a frame: split on `\n`, blank lines skipped (a trailing newline is allowed).
pub fn lines(frame: &str) -> impl Iterator<Item = &str> {
    frame
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
}

/// Parses one line. Never panics.
pub fn parse_line(line: &str) -> Result<Line<'_>, CommandError> {
    // serde would read a struct from an array too: a command is an object.
    if !line.trim_start().starts_with('{') {
        return Err(CommandError {
            id: None,
            error: ProtocolError::BadRequest("a line is not a command object".into()),
        });
    }
    let raw: RawCommand<'_> = serde_json::from_str(line).map_err(|e| CommandError {
        id: None,
        error: ProtocolError::BadRequest(format!("a line is not a command object: {e}")),
    })?;
    let id = raw.id.unwrap_or(0);
    let fields = [
        ("connect", raw.connect),
        ("subscribe", raw.subscribe),
        ("unsubscribe", raw.unsubscribe),
        ("publish", raw.publish),
        ("presence", raw.presence),
        ("presence_stats", raw.presence_stats),
        ("history", raw.history),
        ("ping", raw.ping),
        ("send", raw.send),
        ("rpc", raw.rpc),
        ("refresh", raw.refresh),
        ("sub_refresh", raw.sub_refresh),
    ];
    let mut present = fields.iter().filter_map(|(n, v)| v.map(|v| (*n, v)));
    let Some((name, params)) = present.next() else {
        if id == 0 {
            return Ok(Line::Pong);
        }
        return Err(CommandError {
            id: Some(id),
            error: ProtocolError::UnknownOp("the command names no known method".into()),
        });
    };
    let fail = |error: ProtocolError| CommandError {
        id: (id != 0).then_some(id),
        error,
    };
    if present.next().is_some() {
        return Err(fail(ProtocolError::BadRequest(
            "a command carries exactly one method".into(),
        )));
    }
    if id == 0 && name != "send" {
        return Err(fail(ProtocolError::BadRequest(format!(
            "`{name}` needs a non-zero `id`"
        ))));
    }
    let method = method(name, params).map_err(fail)?;
    Ok(Line::Command(Command { id, method }))
}

fn params<'a, T: Deserialize<'a>>(name: &str, raw: &'a RawValue) -> Result<T, ProtocolError> {
    serde_json::from_str(raw.get())
        .map_err(|e| ProtocolError::BadRequest(format!("bad `{name}` parameters: {e}")))
}

fn channel<'a>(name: &str, channel: Cow<'a, str>) -> Result<Cow<'a, str>, ProtocolError> {
    if channel.is_empty() {
        return Err(ProtocolError::BadRequest(format!(
            "`{name}` needs a `channel`"
        )));
    }
    validate_channel(&channel)?;
    Ok(channel)
}

fn method<'a>(name: &str, raw: &'a RawValue) -> Result<Method<'a>, ProtocolError> {
    Ok(match name {
        "connect" => Method::Connect(params(name, raw)?),
        "subscribe" => {
            let mut p: SubscribeRequest<'a> = params(name, raw)?;
            p.channel = channel(name, std::mem::take(&mut p.channel))?;
            Method::Subscribe(p)
        }
        "history" => {
            let mut p: HistoryRequest<'a> = params(name, raw)?;
            p.channel = channel(name, std::mem::take(&mut p.channel))?;
            Method::History(p)
        }
        "ping" => Method::Ping,
        "send" => Method::Send,
        other => {
            let p: ChannelParams<'a> = params(name, raw)?;
            match other {
                "unsubscribe" => Method::Unsubscribe {
                    channel: channel(name, p.channel)?,
                },
                "publish" => Method::Publish {
                    channel: channel(name, p.channel)?,
                    data: p.data.ok_or_else(|| {
                        ProtocolError::BadRequest("`publish` needs `data`".into())
                    })?,
                },
                "presence" => Method::Presence {
                    channel: channel(name, p.channel)?,
                },
                "presence_stats" => Method::PresenceStats {
                    channel: channel(name, p.channel)?,
                },
                "rpc" => Method::Rpc { method: p.method },
                "refresh" if p.token.is_empty() => {
                    return Err(ProtocolError::BadRequest(
                        "`refresh` needs a `token`".into(),
                    ))
                }
                "refresh" => Method::Refresh { token: p.token },
                _ => Method::SubRefresh {
                    channel: channel(name, p.channel)?,
                    token: p.token,
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> Command<'_> {
        match parse_line(line) {
            Ok(Line::Command(c)) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn reads_what_centrifuge_python_sends() {
        let c = command(
            r#"{"id":1,"connect":{"token":"t","name":"python","subs":{"news":{"recover":true,"offset":3,"epoch":"ab"}}}}"#,
        );
        let Method::Connect(p) = c.method else {
            panic!()
        };
        assert_eq!((c.id, &*p.token, &*p.name), (1, "t", "python"));
        assert!(p.subs["news"].recover && p.subs["news"].offset == 3);
        let c = command(
            r#"{"id":2,"subscribe":{"channel":"chat:a","recover":true,"epoch":"x","offset":7,"flag":3,"recoverable":true}}"#,
        );
        let Method::Subscribe(s) = c.method else {
            panic!()
        };
        assert_eq!(
            (&*s.channel, &*s.epoch, s.offset, s.flag),
            ("chat:a", "x", 7, 3)
        );
        let c = command(r#"{"id":3,"publish":{"channel":"chat:a","data":{"x":[1,2]}}}"#);
        let Method::Publish { data, .. } = c.method else {
            panic!()
        };
        assert_eq!(data.get(), r#"{"x":[1,2]}"#);
        let c = command(
            r#"{"id":4,"history":{"channel":"a","limit":-1,"reverse":true,"since":{"offset":2,"epoch":"e"}}}"#,
        );
        let Method::History(h) = c.method else {
            panic!()
        };
        assert_eq!((h.limit, h.reverse, h.since.unwrap().offset), (-1, true, 2));
        assert!(matches!(parse_line("{}"), Ok(Line::Pong)));
        assert!(matches!(
            command(r#"{"send":{"data":1}}"#).method,
            Method::Send
        ));
    }

    #[test]
    fn bad_lines_say_whether_an_id_was_read() {
        let e = parse_line("not json").unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_line("[1]").unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_line(r#"{"id":5,"frobnicate":{}}"#).unwrap_err();
        assert_eq!(e.id, Some(5));
        assert!(matches!(e.error, ProtocolError::UnknownOp(_)));
        let e = parse_line(r#"{"id":6,"subscribe":{"channel":"bad channel"}}"#).unwrap_err();
        assert_eq!(e.id, Some(6));
        assert!(matches!(e.error, ProtocolError::InvalidChannel(_)));
        let e = parse_line(r#"{"id":7,"publish":{"channel":"a"}}"#).unwrap_err();
        assert_eq!(e.id, Some(7));
        let e = parse_line(r#"{"id":8,"ping":{},"rpc":{}}"#).unwrap_err();
        assert_eq!(e.id, Some(8));
        let e = parse_line(r#"{"subscribe":{"channel":"a"}}"#).unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_line(r#"{"id":-1}"#).unwrap_err();
        assert_eq!(e.id, None);
    }

    #[test]
    fn frames_split_into_lines() {
        let v: Vec<_> = lines("{}\n{\"id\":1,\"ping\":{}}\r\n\n").collect();
        assert_eq!(v, vec!["{}", "{\"id\":1,\"ping\":{}}"]);
    }
}

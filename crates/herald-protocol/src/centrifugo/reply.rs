//! Centrifugo replies and pushes (protocol v2, JSON), one JSON object each.
//!
//! Results with publications in them (subscribe, connect `subs`, history) take the
//! publications already encoded by [`encode_publication`] and embed them as they are: a
//! publication is encoded once per node and shared.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Code, Disconnect};
use crate::frame::PresenceEntry;

/// The server's heartbeat ping, and the client's pong: the empty object.
pub const PING: &str = "{}";

/// Who published, joined or left (Centrifugo's `ClientInfo`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClientInfo<'a> {
    /// The user (empty when anonymous).
    pub user: &'a str,
    /// The client id.
    pub client: &'a str,
    /// The token's `info` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<&'a serde_json::Value>,
}

impl<'a> ClientInfo<'a> {
    /// The info of a presence entry.
    pub fn of(entry: &'a PresenceEntry) -> Self {
        ClientInfo {
            user: &entry.user,
            client: &entry.client,
            conn_info: entry.info.as_ref(),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("a reply serializes")
}

fn push_json_str(out: &mut String, text: &str) {
    out.push_str(&to_json(&text));
}

/// `{"id":N,"<method>":<result>}`; `result` is a JSON object.
pub fn encode_result(id: u32, method: &str, result: &str) -> String {
    let mut out = String::with_capacity(result.len() + method.len() + 24);
    out.push_str("{\"id\":");
    out.push_str(&id.to_string());
    out.push(',');
    push_json_str(&mut out, method);
    out.push(':');
    out.push_str(result);
    out.push('}');
    out
}

/// `{"id":N,"error":{"code":…,"message":…[,"temporary":true]}}`.
pub fn encode_error(id: u32, code: Code, message: &str) -> String {
    #[derive(Serialize)]
    struct E<'a> {
        code: u32,
        message: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        temporary: bool,
    }
    #[derive(Serialize)]
    struct R<'a> {
        id: u32,
        error: E<'a>,
    }
    to_json(&R {
        id,
        error: E {
            code: code.code(),
            message,
            temporary: code.temporary(),
        },
    })
}

/// One publication object: `{"data":…,"offset":N,"time":ms,"epoch":…,"info":{…}}`.
pub fn encode_publication(
    data: &RawValue,
    offset: u64,
    time_ms: u64,
    epoch: &str,
    info: Option<ClientInfo<'_>>,
) -> String {
    #[derive(Serialize)]
    struct P<'a> {
        data: &'a RawValue,
        offset: u64,
        time: u64,
        #[serde(skip_serializing_if = "str::is_empty")]
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<ClientInfo<'a>>,
    }
    to_json(&P {
        data,
        offset,
        time: time_ms,
        epoch,
        info,
    })
}

/// Splices `,"<field>":[items…]` before the closing brace of the object `obj`.
fn with_array<'p>(
    mut obj: String,
    field: &str,
    items: impl IntoIterator<Item = &'p str>,
) -> String {
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return obj;
    }
    debug_assert!(obj.ends_with('}'));
    obj.pop();
    if !obj.ends_with('{') {
        obj.push(',');
    }
    push_json_str(&mut obj, field);
    obj.push_str(":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            obj.push(',');
        }
        obj.push_str(item);
    }
    obj.push_str("]}");
    obj
}

/// A `subscribe` result (also a value of the connect result's `subs`).
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeResult<'a> {
    /// Whether the subscription expires (channel token `exp`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl: u32,
    /// Whether the channel keeps history the client can recover from.
    pub recoverable: bool,
    /// Whether the stream position is tracked (always, in Herald).
    pub positioned: bool,
    /// The history generation.
    pub epoch: &'a str,
    /// The position after the publications that follow in the result.
    pub offset: u64,
    /// Whether everything after the client's position was recovered.
    pub recovered: bool,
    /// Whether the client asked to recover.
    pub was_recovering: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SubscribeResult<'_> {
    /// The result object with its `publications` (encoded with [`encode_publication`]).
    pub fn encode<'p>(&self, publications: impl IntoIterator<Item = &'p str>) -> String {
        with_array(to_json(self), "publications", publications)
    }
}

/// A `connect` result, without `subs` (see [`ConnectResult::encode`]).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult<'a> {
    /// The client id.
    pub client: &'a str,
    /// The server's version.
    pub version: &'a str,
    /// Whether the connection expires (token `exp`): the SDK refreshes before `ttl` passes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl: u32,
    /// Seconds between the server's pings.
    pub ping: u32,
    /// Whether the client must answer pings (always).
    pub pong: bool,
    /// The node the client is on.
    pub node: &'a str,
}

impl ConnectResult<'_> {
    /// The connect reply; `subs` are the server-side subscriptions, each an encoded
    /// [`SubscribeResult`].
    pub fn encode(&self, id: u32, subs: &[(String, String)]) -> String {
        let mut obj = to_json(self);
        if !subs.is_empty() {
            obj.pop();
            obj.push_str(",\"subs\":{");
            for (i, (channel, result)) in subs.iter().enumerate() {
                if i > 0 {
                    obj.push(',');
                }
                push_json_str(&mut obj, channel);
                obj.push(':');
                obj.push_str(result);
            }
            obj.push_str("}}");
        }
        encode_result(id, "connect", &obj)
    }
}

/// A `refresh` result.
pub fn encode_refresh(id: u32, client: &str, version: &str, ttl: Option<u32>) -> String {
    #[derive(Serialize)]
    struct R<'a> {
        client: &'a str,
        version: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        expires: bool,
        #[serde(skip_serializing_if = "is_zero")]
        ttl: u32,
    }
    let result = to_json(&R {
        client,
        version,
        expires: ttl.is_some(),
        ttl: ttl.unwrap_or(0),
    });
    encode_result(id, "refresh", &result)
}

/// A `sub_refresh` result.
pub fn encode_sub_refresh(id: u32, ttl: Option<u32>) -> String {
    let result = match ttl {
        Some(ttl) => format!("{{\"expires\":true,\"ttl\":{ttl}}}"),
        None => "{}".to_owned(),
    };
    encode_result(id, "sub_refresh", &result)
}

/// A `presence` result: `{"presence":{"<client>":{user,client,conn_info}}}`.
pub fn encode_presence(id: u32, entries: &[PresenceEntry]) -> String {
    let map: std::collections::BTreeMap<&str, ClientInfo<'_>> = entries
        .iter()
        .map(|e| (e.client.as_str(), ClientInfo::of(e)))
        .collect();
    #[derive(Serialize)]
    struct R<'a> {
        presence: std::collections::BTreeMap<&'a str, ClientInfo<'a>>,
    }
    encode_result(id, "presence", &to_json(&R { presence: map }))
}

/// A `presence_stats` result.
pub fn encode_presence_stats(id: u32, entries: &[PresenceEntry]) -> String {
    let users: std::collections::HashSet<&str> = entries.iter().map(|e| e.user.as_str()).collect();
    let result = format!(
        "{{\"num_clients\":{},\"num_users\":{}}}",
        entries.len(),
        users.len()
    );
    encode_result(id, "presence_stats", &result)
}

/// A `history` result.
pub fn encode_history<'p>(
    id: u32,
    epoch: &str,
    offset: u64,
    publications: impl IntoIterator<Item = &'p str>,
) -> String {
    #[derive(Serialize)]
    struct R<'a> {
        epoch: &'a str,
        offset: u64,
    }
    let result = with_array(to_json(&R { epoch, offset }), "publications", publications);
    encode_result(id, "history", &result)
}

/// `{"push":{"channel":…,"pub":<publication>}}` (built once per publication per node).
pub fn encode_pub_push(channel: &str, publication: &str) -> String {
    let mut out = String::with_capacity(publication.len() + channel.len() + 32);
    out.push_str("{\"push\":{\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(",\"pub\":");
    out.push_str(publication);
    out.push_str("}}");
    out
}

/// A `join` (or `leave`) push.
pub fn encode_join_leave_push(join: bool, channel: &str, info: ClientInfo<'_>) -> String {
    #[derive(Serialize)]
    struct I<'a> {
        info: ClientInfo<'a>,
    }
    #[derive(Serialize)]
    struct P<'a> {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        join: Option<I<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        leave: Option<I<'a>>,
    }
    #[derive(Serialize)]
    struct R<'a> {
        push: P<'a>,
    }
    let (join, leave) = if join {
        (Some(I { info }), None)
    } else {
        (None, Some(I { info }))
    };
    to_json(&R {
        push: P {
            channel,
            join,
            leave,
        },
    })
}

/// An `unsubscribe` push (code 2500..: the SDK resubscribes; below: it stays unsubscribed).
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> String {
    #[derive(Serialize)]
    struct U<'a> {
        code: u32,
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct P<'a> {
        channel: &'a str,
        unsubscribe: U<'a>,
    }
    #[derive(Serialize)]
    struct R<'a> {
        push: P<'a>,
    }
    to_json(&R {
        push: P {
            channel,
            unsubscribe: U { code, reason },
        },
    })
}

/// A `disconnect` push (sent just before the close frame with the same code).
pub fn encode_disconnect_push(d: Disconnect) -> String {
    format!(
        "{{\"push\":{{\"disconnect\":{{\"code\":{},\"reason\":{},\"reconnect\":{}}}}}}}",
        d.code,
        to_json(&d.reason),
        d.reconnect()
    )
}

/// A `message` push: data for the connection, on no channel (Herald's broadcast).
pub fn encode_message_push(data: &RawValue) -> String {
    format!("{{\"push\":{{\"message\":{{\"data\":{}}}}}}}", data.get())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn results_are_json_with_their_id() {
        let data = RawValue::from_string("{\"a\":1}".into()).unwrap();
        let info = ClientInfo {
            user: "u",
            client: "c",
            conn_info: None,
        };
        let p = encode_publication(&data, 3, 9, "ep", Some(info));
        assert_eq!(
            v(&p),
            json!({"data":{"a":1},"offset":3,"time":9,"epoch":"ep","info":{"user":"u","client":"c"}})
        );
        let sr = SubscribeResult {
            expires: false,
            ttl: 0,
            recoverable: true,
            positioned: true,
            epoch: "ep",
            offset: 3,
            recovered: true,
            was_recovering: true,
        };
        let r = v(&encode_result(7, "subscribe", &sr.encode([p.as_str()])));
        assert_eq!(r["id"], 7);
        assert_eq!(r["subscribe"]["publications"][0]["offset"], 3);
        assert_eq!(r["subscribe"]["recovered"], true);
        let empty = v(&encode_result(7, "subscribe", &sr.encode([])));
        assert!(empty["subscribe"].get("publications").is_none());
        let c = ConnectResult {
            client: "c",
            version: "1",
            expires: true,
            ttl: 5,
            ping: 25,
            pong: true,
            node: "n",
        };
        let r = v(&c.encode(1, &[("news".into(), sr.encode([]))]));
        assert_eq!(r["connect"]["ttl"], 5);
        assert_eq!(r["connect"]["subs"]["news"]["offset"], 3);
        let e = v(&encode_error(4, Code::TooManyRequests, "slow down"));
        assert_eq!(
            e,
            json!({"id":4,"error":{"code":111,"message":"slow down","temporary":true}})
        );
        let h = v(&encode_history(2, "ep", 9, [p.as_str(), p.as_str()]));
        assert_eq!(h["history"]["publications"].as_array().unwrap().len(), 2);
        assert_eq!(v(&encode_history(2, "", 0, []))["history"]["offset"], 0);
    }

    #[test]
    fn pushes_have_no_id() {
        let p = v(&encode_pub_push(
            "a\"b",
            "{\"data\":1,\"offset\":1,\"time\":0}",
        ));
        assert_eq!(p["push"]["channel"], "a\"b");
        let entry = PresenceEntry {
            client: "c".into(),
            user: "u".into(),
            node: "n".into(),
            info: Some(json!({"name":"x"})),
        };
        let j = v(&encode_join_leave_push(false, "ch", ClientInfo::of(&entry)));
        assert_eq!(j["push"]["leave"]["info"]["conn_info"]["name"], "x");
        assert!(j["push"].get("join").is_none());
        let d = v(&encode_disconnect_push(Disconnect::BAD_REQUEST));
        assert_eq!(d["push"]["disconnect"]["reconnect"], false);
        let u = v(&encode_unsubscribe_push("ch", 2500, "insufficient state"));
        assert_eq!(u["push"]["unsubscribe"]["code"], 2500);
        let data = RawValue::from_string("[1]".into()).unwrap();
        assert_eq!(
            v(&encode_message_push(&data))["push"]["message"]["data"],
            json!([1])
        );
        let e = [
            entry.clone(),
            PresenceEntry {
                client: "d".into(),
                ..entry
            },
        ];
        assert_eq!(
            v(&encode_presence_stats(1, &e))["presence_stats"],
            json!({"num_clients":2,"num_users":1})
        );
        assert_eq!(
            v(&encode_presence(1, &e))["presence"]["presence"]["d"]["user"],
            "u"
        );
    }
}

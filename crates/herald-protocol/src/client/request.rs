//! Request encoders: the WebSocket text frames a client writes, and the JSON body of an HTTP
//! publish.
//!
//! Every request built here is one that
//! [`ClientFrame::parse`](crate::frame::ClientFrame::parse) accepts; the tests below parse each
//! one back with it. Payloads are `&RawValue` and are written as they are, never re-encoded.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::cursor::StreamPosition;

/// Every field a request can carry; each encoder fills the ones its `op` uses.
#[derive(Serialize)]
struct Request<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<&'a StreamPosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "is_false")]
    skip_self: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> Request<'a> {
    fn new(op: &'static str, id: Option<u64>, channel: Option<&'a str>) -> Self {
        Self {
            op,
            id,
            channel,
            since: None,
            limit: None,
            data: None,
            skip_self: false,
            token: None,
        }
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).expect("a request serializes")
    }
}

/// `{"op":"subscribe"}`: subscribe to `channel`, resuming after `since` when given.
pub fn encode_subscribe(id: Option<u64>, channel: &str, since: Option<&StreamPosition>) -> String {
    Request {
        since,
        ..Request::new("subscribe", id, Some(channel))
    }
    .encode()
}

/// `{"op":"subscribe","token":…}`: subscribe with a channel token (namespaces whose
/// `subscribe` rule is `token`).
pub fn encode_subscribe_with_token(
    id: Option<u64>,
    channel: &str,
    since: Option<&StreamPosition>,
    token: &str,
) -> String {
    Request {
        since,
        token: Some(token),
        ..Request::new("subscribe", id, Some(channel))
    }
    .encode()
}

/// `{"op":"connect","token":…}`: authenticate a WebSocket whose upgrade carried no token (the
/// first frame; the `welcome` answers it).
pub fn encode_connect(id: Option<u64>, token: &str) -> String {
    Request {
        token: Some(token),
        ..Request::new("connect", id, None)
    }
    .encode()
}

/// `{"op":"refresh","token":…}`: extend the session with a fresh token of the same user (the
/// server answers `refreshed` with the new `exp`).
pub fn encode_refresh(id: Option<u64>, token: &str) -> String {
    Request {
        token: Some(token),
        ..Request::new("refresh", id, None)
    }
    .encode()
}

/// `{"op":"unsubscribe"}`: stop receiving `channel`.
pub fn encode_unsubscribe(id: Option<u64>, channel: &str) -> String {
    Request::new("unsubscribe", id, Some(channel)).encode()
}

/// `{"op":"publish"}`: publish `data` (written as it is) to `channel`; with `skip_self` the
/// sender does not receive its own copy. With an `id`, the server answers with an `ack`.
pub fn encode_publish(id: Option<u64>, channel: &str, data: &RawValue, skip_self: bool) -> String {
    Request {
        data: Some(data),
        skip_self,
        ..Request::new("publish", id, Some(channel))
    }
    .encode()
}

/// `{"op":"presence"}`: ask who is in `channel`.
pub fn encode_presence_request(id: Option<u64>, channel: &str) -> String {
    Request::new("presence", id, Some(channel)).encode()
}

/// `{"op":"history"}`: read `channel`'s history after `since` (or the newest messages), at
/// most `limit` of them.
pub fn encode_history_request(
    id: Option<u64>,
    channel: &str,
    since: Option<&StreamPosition>,
    limit: Option<usize>,
) -> String {
    Request {
        since,
        limit,
        ..Request::new("history", id, Some(channel))
    }
    .encode()
}

/// `{"op":"ping"}`: an application-level ping, answered with `pong`.
pub fn encode_ping(id: Option<u64>) -> String {
    Request::new("ping", id, None).encode()
}

/// The JSON body of an HTTP publish: `POST /publish` (SSE and poll clients) and
/// `POST /api/publish` (servers; `skip_self` and `client` do not apply there).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PublishBody<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The payload, written as it is.
    pub data: &'a RawValue,
    /// Whether the client named by `client` skips its own copy.
    #[serde(skip_serializing_if = "is_false")]
    pub skip_self: bool,
    /// The publishing client's id (from its SSE `welcome`), for `skip_self`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<&'a str>,
}

impl<'a> PublishBody<'a> {
    /// A body that publishes `data` to `channel`, with no client named.
    pub fn new(channel: &'a str, data: &'a RawValue) -> Self {
        Self {
            channel,
            data,
            skip_self: false,
            client: None,
        }
    }

    /// The body's JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a publish body serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_support::{pos, raw};
    use crate::frame::ClientFrame;

    #[test]
    fn requests_round_trip_through_the_server_parser() {
        let since = pos("e1", 17);
        let text = encode_subscribe(Some(1), "chat:a", Some(&since));
        match ClientFrame::parse(&text).unwrap() {
            ClientFrame::Subscribe {
                id, channel, since, ..
            } => {
                assert_eq!((id, &*channel), (Some(1), "chat:a"));
                assert_eq!(since, Some(pos("e1", 17)));
            }
            other => panic!("{other:?}"),
        }
        let text = encode_subscribe(None, "a/b", None);
        assert!(matches!(
            ClientFrame::parse(&text).unwrap(),
            ClientFrame::Subscribe { id: None, since: None, channel, .. } if channel == "a/b"
        ));

        let text = encode_subscribe_with_token(Some(6), "p:x", None, "ct");
        match ClientFrame::parse(&text).unwrap() {
            ClientFrame::Subscribe { token, .. } => assert_eq!(token.as_deref(), Some("ct")),
            other => panic!("{other:?}"),
        }
        match ClientFrame::parse(&encode_connect(None, "jwt")).unwrap() {
            ClientFrame::Connect { token, .. } => assert_eq!(token, "jwt"),
            other => panic!("{other:?}"),
        }
        match ClientFrame::parse(&encode_refresh(Some(8), "jwt2")).unwrap() {
            ClientFrame::Refresh { token, id } => assert_eq!((&*token, id), ("jwt2", Some(8))),
            other => panic!("{other:?}"),
        }

        let text = encode_unsubscribe(Some(2), "c");
        assert!(matches!(
            ClientFrame::parse(&text).unwrap(),
            ClientFrame::Unsubscribe { id: Some(2), channel } if channel == "c"
        ));

        let data = raw(r#"{"x": [1, 2], "s": "a\"b"}"#);
        for skip in [false, true] {
            let text = encode_publish(Some(3), "c", &data, skip);
            match ClientFrame::parse(&text).unwrap() {
                ClientFrame::Publish {
                    id,
                    channel,
                    data: d,
                    skip_self,
                } => {
                    assert_eq!((id, &*channel, skip_self), (Some(3), "c", skip));
                    assert_eq!(d.get(), data.get(), "data must stay raw");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(!encode_publish(None, "c", &data, false).contains("skip_self"));

        let text = encode_presence_request(Some(4), "room");
        assert!(matches!(
            ClientFrame::parse(&text).unwrap(),
            ClientFrame::Presence { id: Some(4), channel, .. } if channel == "room"
        ));

        let text = encode_history_request(Some(5), "h", Some(&since), Some(10));
        match ClientFrame::parse(&text).unwrap() {
            ClientFrame::History {
                id,
                channel,
                since,
                limit,
                ..
            } => {
                assert_eq!((id, &*channel, limit), (Some(5), "h", Some(10)));
                assert_eq!(since, Some(pos("e1", 17)));
            }
            other => panic!("{other:?}"),
        }
        let text = encode_history_request(None, "h", None, None);
        assert!(matches!(
            ClientFrame::parse(&text).unwrap(),
            ClientFrame::History {
                id: None,
                since: None,
                limit: None,
                ..
            }
        ));

        assert!(matches!(
            ClientFrame::parse(&encode_ping(Some(6))).unwrap(),
            ClientFrame::Ping { id: Some(6) }
        ));
        assert!(matches!(
            ClientFrame::parse(&encode_ping(None)).unwrap(),
            ClientFrame::Ping { id: None }
        ));
    }

    #[test]
    fn publish_body_writes_data_raw() {
        let data = raw(r#"{"seq": 1}"#);
        let body = PublishBody::new("news", &data).encode();
        assert_eq!(body, r#"{"channel":"news","data":{"seq": 1}}"#);
        let body = PublishBody {
            skip_self: true,
            client: Some("c1"),
            ..PublishBody::new("news", &data)
        }
        .encode();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"channel":"news","data":{"seq":1},"skip_self":true,"client":"c1"})
        );
    }
}

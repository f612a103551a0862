//! The Pusher protocol as sockudo speaks it: WebSocket frames (protocol 7) and the signed
//! HTTP API. Pure functions only, so the wire contract is unit-tested without a server.
//!
//! Frames are JSON objects `{"event":..,"channel":..,"data":..}` whose `data` is usually a
//! JSON *string* holding JSON (Pusher double-encodes), sometimes an object (`pusher:error`,
//! `pusher:ping`); [`ServerFrame::parse`] accepts both.
//!
//! HTTP API requests carry `auth_key`, `auth_timestamp`, `auth_version=1.0`, `body_md5` and
//! `auth_signature` = hex HMAC-SHA256 (app secret) of `METHOD\nPATH\nsorted query`.

use std::borrow::Cow;

use anyhow::{bail, Context, Result};
use ring::hmac;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::errors::Failure;

/// The event name every benchmark message is published under over HTTP.
pub(crate) const EVENT: &str = "m";

/// The event name of messages a member publishes over its own socket: Pusher only relays
/// `client-` events, only on private (or presence) channels, and never back to the sender.
pub(crate) const CLIENT_EVENT: &str = "client-m";

/// The prefix that makes a channel private (subscribing needs a signature, see
/// [`channel_auth`]); client events need one.
pub(crate) const PRIVATE: &str = "private-";

/// One app's credentials (sockudo's `SOCKUDO_DEFAULT_APP_ID/KEY/SECRET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct App {
    /// App id: names the HTTP API path `/apps/<id>/...`.
    pub(crate) id: String,
    /// Public key: names the WebSocket path `/app/<key>` and signs as `auth_key`.
    pub(crate) key: String,
    /// Secret: the HMAC key of every HTTP API request.
    pub(crate) secret: String,
}

/// The WebSocket path of `app` for protocol 7.
pub(crate) fn ws_path(app: &App) -> String {
    format!(
        "/app/{}?protocol=7&client=herald-loadtest&version={}",
        app.key,
        env!("CARGO_PKG_VERSION")
    )
}

/// `pusher:subscribe`; `auth` (from [`channel_auth`]) for a private channel.
pub(crate) fn encode_subscribe(channel: &str, auth: Option<&str>) -> String {
    let data = match auth {
        None => serde_json::json!({"channel": channel}),
        Some(auth) => serde_json::json!({"channel": channel, "auth": auth}),
    };
    serde_json::json!({"event": "pusher:subscribe", "data": data}).to_string()
}

/// The signature that lets connection `socket_id` subscribe the private `channel`:
/// `<key>:<hex HMAC-SHA256(secret, "<socket_id>:<channel>")>`. Normally an app's backend
/// hands it out; the loadtest holds the secret, so it signs itself.
pub(crate) fn channel_auth(app: &App, socket_id: &str, channel: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, app.secret.as_bytes());
    let sig = hmac::sign(&key, format!("{socket_id}:{channel}").as_bytes());
    format!("{}:{}", app.key, hex(sig.as_ref()))
}

/// A client event carrying `data` (a JSON text, sent as a string like the HTTP API's).
pub(crate) fn encode_client_event(channel: &str, data: &str) -> String {
    serde_json::json!({"event": CLIENT_EVENT, "channel": channel, "data": data}).to_string()
}

/// The answer to a server's `pusher:ping`.
pub(crate) fn encode_pong() -> &'static str {
    r#"{"event":"pusher:pong","data":{}}"#
}

/// A frame as read off the socket; borrows from the text where it can.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerFrame<'a> {
    /// First frame of every connection.
    Established {
        /// The server's id of this connection.
        socket_id: String,
    },
    /// A subscribe succeeded.
    Subscribed {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// The server asks for a `pusher:pong`.
    Ping,
    /// `pusher:error` or `pusher:subscription_error`.
    Error {
        /// Pusher error code (4000..4299), if given.
        code: Option<u64>,
        /// What went wrong.
        message: String,
    },
    /// An application event on a channel: `data` is the published text, unescaped.
    Event {
        /// The channel.
        channel: Cow<'a, str>,
        /// The event name.
        event: Cow<'a, str>,
        /// The data as published (a JSON text for the loadtest).
        data: Cow<'a, str>,
    },
    /// Anything else (pong, presence, cache-miss, ...): skipped.
    Other,
}

/// The envelope; `data` stays raw until the event says what it is.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `data` as text: a JSON string is unescaped, anything else is its raw JSON.
fn data_text<'a>(data: Option<&'a RawValue>) -> Result<Cow<'a, str>> {
    let Some(raw) = data else {
        return Ok(Cow::Borrowed(""));
    };
    let text = raw.get();
    if text.starts_with('"') {
        // Borrowed when the string has no escapes; the loadtest's JSON always has some.
        let s: Cow<'a, str> = serde_json::from_str(text).context("frame data string")?;
        Ok(s)
    } else {
        Ok(Cow::Borrowed(text))
    }
}

/// The object inside `data`, whether double-encoded or not.
fn data_object(data: Option<&RawValue>) -> Result<serde_json::Value> {
    let text = data_text(data)?;
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).context("frame data object")
}

impl<'a> ServerFrame<'a> {
    /// Parses one text frame.
    pub(crate) fn parse(text: &'a str) -> Result<Self> {
        let env: Envelope<'a> =
            serde_json::from_str(text).map_err(|e| Failure::Protocol(format!("bad frame: {e}")))?;
        let channel = || {
            env.channel
                .clone()
                .ok_or_else(|| Failure::Protocol(format!("{} without a channel", env.event)))
        };
        Ok(match &*env.event {
            "pusher:connection_established" => {
                let obj = data_object(env.data)?;
                let socket_id = obj
                    .get("socket_id")
                    .and_then(|v| v.as_str())
                    .context("connection_established without socket_id")?;
                ServerFrame::Established {
                    socket_id: socket_id.to_owned(),
                }
            }
            "pusher_internal:subscription_succeeded" => ServerFrame::Subscribed {
                channel: channel()?,
            },
            "pusher:ping" => ServerFrame::Ping,
            "pusher:error" | "pusher:subscription_error" => {
                let obj = data_object(env.data).unwrap_or_default();
                ServerFrame::Error {
                    code: obj.get("code").and_then(|c| c.as_u64()),
                    message: obj
                        .get("message")
                        .or_else(|| obj.get("error"))
                        .and_then(|m| m.as_str())
                        .unwrap_or(&env.event)
                        .to_owned(),
                }
            }
            e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => {
                ServerFrame::Other
            }
            _ => ServerFrame::Event {
                channel: channel()?,
                data: data_text(env.data)?,
                event: env.event,
            },
        })
    }
}

/// The JSON body of `POST /apps/<id>/events`: one event on one channel, `data` being the
/// JSON text `data` sent as a string (Pusher's data is always a string).
pub(crate) fn event_body(channel: &str, data: &str) -> String {
    serde_json::json!({"name": EVENT, "channel": channel, "data": data}).to_string()
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The signed query string of an HTTP API request: `params` (besides the auth ones, none
/// for publishing) plus `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` (when the
/// body is not empty) and `auth_signature`.
///
/// The string signed is `METHOD\nPATH\n` + every parameter but the signature, keys
/// lowercased and sorted, joined `k=v` with `&`, not URL-escaped (Pusher's HTTP API docs).
/// The values used here never need escaping, so the same text is the query string.
pub(crate) fn signed_query(
    app: &App,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), app.key.clone()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), format!("{:x}", md5::compute(body))));
    }
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("{}\n{path}\n{query}", method.to_ascii_uppercase());
    let key = hmac::Key::new(hmac::HMAC_SHA256, app.secret.as_bytes());
    let sig = hex(hmac::sign(&key, to_sign.as_bytes()).as_ref());
    format!("{query}&auth_signature={sig}")
}

/// Seconds since the Unix epoch (sockudo rejects timestamps more than 600 s off).
pub(crate) fn unix_now() -> Result<u64> {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Ok(d.as_secs()),
        Err(_) => bail!("the clock is before 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Pusher's HTTP API reference ("Worked authentication example":
    /// app 3, key 278d425bdf160c739803, secret 7ad3773142a6692b25b8, timestamp 1353088179).
    #[test]
    fn signs_like_the_pusher_docs_example() {
        let app = App {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = signed_query(&app, "post", "/apps/3/events", body, 1_353_088_179);
        assert_eq!(
            q,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    /// No body: no `body_md5` (sockudo refuses one on an empty body), still signed.
    #[test]
    fn empty_body_has_no_md5() {
        let app = App {
            id: "1".into(),
            key: "k".into(),
            secret: "s".into(),
        };
        let q = signed_query(&app, "GET", "/apps/1/channels", b"", 10);
        assert!(q.starts_with("auth_key=k&auth_timestamp=10&auth_version=1.0&auth_signature="));
        // Hand check: HMAC-SHA256("s", "GET\n/apps/1/channels\nauth_key=k&auth_timestamp=10&auth_version=1.0").
        assert_eq!(
            q.rsplit_once('=').unwrap().1,
            hex(hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, b"s"),
                b"GET\n/apps/1/channels\nauth_key=k&auth_timestamp=10&auth_version=1.0"
            )
            .as_ref())
        );
    }

    #[test]
    fn event_body_double_encodes_data() {
        let body: serde_json::Value =
            serde_json::from_str(&event_body("bench-c0", r#"{"seq":1,"t":2}"#)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "m", "channel": "bench-c0", "data": "{\"seq\":1,\"t\":2}"})
        );
    }

    #[test]
    fn parses_connection_established_with_string_data() {
        let text = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
        assert_eq!(
            ServerFrame::parse(text).unwrap(),
            ServerFrame::Established {
                socket_id: "123.456".into()
            }
        );
    }

    #[test]
    fn parses_subscribed_ping_and_error() {
        let sub = r#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-c1","data":"{}"}"#;
        assert_eq!(
            ServerFrame::parse(sub).unwrap(),
            ServerFrame::Subscribed {
                channel: "bench-c1".into()
            }
        );
        assert_eq!(
            ServerFrame::parse(r#"{"event":"pusher:ping","data":{}}"#).unwrap(),
            ServerFrame::Ping
        );
        let err = r#"{"event":"pusher:error","data":{"code":4100,"message":"Over capacity"}}"#;
        assert_eq!(
            ServerFrame::parse(err).unwrap(),
            ServerFrame::Error {
                code: Some(4100),
                message: "Over capacity".into()
            }
        );
        assert_eq!(
            ServerFrame::parse(r#"{"event":"pusher:pong","data":{}}"#).unwrap(),
            ServerFrame::Other
        );
    }

    #[test]
    fn parses_events_with_string_or_object_data() {
        let text = r#"{"event":"m","channel":"bench-c0","data":"{\"seq\":7,\"t\":99,\"s\":0,\"p\":\"x\"}"}"#;
        let ServerFrame::Event {
            channel,
            event,
            data,
        } = ServerFrame::parse(text).unwrap()
        else {
            panic!("not an event");
        };
        assert_eq!((&*channel, &*event), ("bench-c0", "m"));
        let stamp = crate::payload::decode(data.as_bytes()).unwrap();
        assert_eq!((stamp.seq, stamp.t), (7, 99));

        let obj = r#"{"event":"m","channel":"c","data":{"seq":8,"t":1}}"#;
        let ServerFrame::Event { data, .. } = ServerFrame::parse(obj).unwrap() else {
            panic!("not an event");
        };
        assert_eq!(crate::payload::decode(data.as_bytes()).unwrap().seq, 8);
    }

    #[test]
    fn rejects_what_is_not_a_frame() {
        assert!(ServerFrame::parse("not json").is_err());
        assert!(ServerFrame::parse(r#"{"event":"m","data":"{}"}"#).is_err());
    }

    /// The example of Pusher's "authenticating users" docs (socket 1234.1234, channel
    /// private-foobar, the same key and secret as above).
    #[test]
    fn channel_auth_like_the_pusher_docs_example() {
        let app = App {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        assert_eq!(
            channel_auth(&app, "1234.1234", "private-foobar"),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let sub: serde_json::Value =
            serde_json::from_str(&encode_subscribe("private-foobar", Some("k:s"))).unwrap();
        assert_eq!(sub["data"]["auth"], "k:s");
        let ev: serde_json::Value =
            serde_json::from_str(&encode_client_event("private-x", r#"{"seq":1}"#)).unwrap();
        assert_eq!(
            ev,
            serde_json::json!({"event": "client-m", "channel": "private-x", "data": "{\"seq\":1}"})
        );
    }

    #[test]
    fn subscribe_and_paths() {
        let sub: serde_json::Value = serde_json::from_str(&encode_subscribe("a-b", None)).unwrap();
        assert_eq!(
            sub,
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":"a-b"}})
        );
        let app = App {
            id: "1".into(),
            key: "key".into(),
            secret: "s".into(),
        };
        assert!(ws_path(&app).starts_with("/app/key?protocol=7&"));
    }
}

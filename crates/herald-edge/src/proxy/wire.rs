//! The JSON of the hooks: the request body and the three answers, checked; the format is
//! described in the [parent module](super).

use std::net::IpAddr;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ConnectReply, ProxyError};

/// Longest `user` a connect answer may name (the same limit as a token's `sub`).
pub(super) const MAX_USER_BYTES: usize = 255;
/// Largest `info` object a connect answer may carry (the same limit as a token's `info`).
pub(super) const MAX_INFO_BYTES: usize = 1024;
/// Longest denial reason kept; the rest is cut at a character boundary.
pub(super) const MAX_REASON_BYTES: usize = 256;
/// Reason given when the backend denies without saying why.
pub(super) const DEFAULT_DENY_REASON: &str = "denied by the backend";

/// The JSON body of a hook request; see the module docs.
#[derive(Serialize)]
pub(super) struct RequestBody<'a> {
    pub(super) client: &'a str,
    pub(super) transport: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) remote_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<&'a str>,
    pub(super) headers: ForwardedHeaders<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<&'a RawValue>,
}

/// `headers` as a JSON object, with `cookies` (when set) in place of any `cookie` header.
pub(super) struct ForwardedHeaders<'a> {
    pub(super) headers: &'a [(String, String)],
    pub(super) cookies: Option<&'a str>,
}

impl Serialize for ForwardedHeaders<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.headers {
            if self.cookies.is_some() && name.eq_ignore_ascii_case("cookie") {
                continue;
            }
            map.serialize_entry(name, value)?;
        }
        if let Some(cookies) = self.cookies {
            map.serialize_entry("cookie", cookies)?;
        }
        map.end()
    }
}

/// A `403` body.
#[derive(Deserialize)]
struct Denial {
    #[serde(default)]
    reason: Option<String>,
}

/// The reason of a `403`: its body's `reason` when it is JSON with one, else the default.
pub(super) fn denial_reason(body: &[u8]) -> String {
    serde_json::from_slice::<Denial>(body)
        .ok()
        .and_then(|denial| denial.reason)
        .map_or_else(|| DEFAULT_DENY_REASON.to_owned(), clip_reason)
}

/// A connect answer, before validation.
#[derive(Deserialize)]
struct ConnectAnswer {
    #[serde(default)]
    allow: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<u64>,
}

/// A subscribe answer.
#[derive(Deserialize)]
struct SubscribeAnswer {
    #[serde(default)]
    allow: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

/// A publish answer.
#[derive(Deserialize)]
struct PublishAnswer {
    #[serde(default)]
    allow: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

pub(super) fn parse_connect(body: &[u8]) -> Result<ConnectReply, ProxyError> {
    let answer: ConnectAnswer = parse_object(body)?;
    verdict(answer.allow, answer.reason)?;
    let user = answer
        .user
        .ok_or_else(|| unavailable("the connect answer has no `user`"))?;
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(ProxyError::Unavailable(format!(
            "the connect answer's `user` is {} bytes, not 1..={MAX_USER_BYTES}",
            user.len()
        )));
    }
    if let Some(info) = &answer.info {
        if !info.get().starts_with('{') {
            return Err(unavailable("the connect answer's `info` is not an object"));
        }
        if info.get().len() > MAX_INFO_BYTES {
            return Err(ProxyError::Unavailable(format!(
                "the connect answer's `info` is {} bytes, the limit is {MAX_INFO_BYTES}",
                info.get().len()
            )));
        }
    }
    let channels = answer.channels.unwrap_or_default();
    for channel in &channels {
        herald_protocol::validate_channel(channel).map_err(|err| {
            ProxyError::Unavailable(format!("the connect answer's `channels`: {err}"))
        })?;
    }
    Ok(ConnectReply {
        user,
        info: answer.info,
        channels,
        exp: answer.exp,
    })
}

pub(super) fn parse_subscribe(body: &[u8]) -> Result<(), ProxyError> {
    let answer: SubscribeAnswer = parse_object(body)?;
    verdict(answer.allow, answer.reason)
}

pub(super) fn parse_publish(body: &[u8]) -> Result<Option<Box<RawValue>>, ProxyError> {
    let answer: PublishAnswer = parse_object(body)?;
    verdict(answer.allow, answer.reason)?;
    Ok(answer.data)
}

/// Parses a `200` body, which must be a JSON object of the right shape.
fn parse_object<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ProxyError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(unavailable("the answer is not a JSON object"));
    }
    serde_json::from_slice(body).map_err(|err| {
        // serde_json's message names the field and position, never the content.
        ProxyError::Unavailable(format!("the answer has the wrong shape: {err}"))
    })
}

/// `"allow": false` in a `200` answer denies; absent or `true` allows.
fn verdict(allow: Option<bool>, reason: Option<String>) -> Result<(), ProxyError> {
    match allow {
        Some(false) => Err(ProxyError::Denied(
            reason.map_or_else(|| DEFAULT_DENY_REASON.to_owned(), clip_reason),
        )),
        Some(true) | None => Ok(()),
    }
}

pub(super) fn unavailable(message: &str) -> ProxyError {
    ProxyError::Unavailable(message.to_owned())
}

/// Keeps at most [`MAX_REASON_BYTES`] of a backend's reason, cut at a character boundary.
pub(super) fn clip_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

//! The HTTP request prelude shared by SSE and polls: the origin rule, the query string
//! (channels, resume point, tokens, display name, timeout), identification, and the error
//! accounting of a refused request.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use herald_protocol::Cursor;

use crate::connection::{Connection, StreamChannel};
use crate::error::EdgeError;
use crate::identity::{self, IdentifyRequest, Identity, RequestContext};
use crate::metrics::Transport;
use crate::node::Node;

/// What an SSE or poll request asks for.
pub(crate) struct StreamRequest {
    /// Channels, in the order given, without duplicates; after [`identify`], also the
    /// channels the token grants.
    pub(crate) channels: Vec<String>,
    /// Channel tokens (`channel_token=`, repeatable), in the order of `channels`.
    pub(crate) channel_tokens: Vec<String>,
    /// Resume point (`since=`/`cursor=`, or SSE's `Last-Event-ID`).
    pub(crate) cursor: Option<Cursor>,
    /// The connection token (`Authorization: Bearer`, `?token=`, cookie).
    pub(crate) token: Option<String>,
    /// Unauthenticated display name (`?user=`).
    pub(crate) display: Option<String>,
    /// Long-poll timeout as written, seconds.
    pub(crate) timeout: Option<String>,
    /// The request, for the backend hooks.
    pub(crate) context: RequestContext,
}

impl StreamRequest {
    /// The channels with their resume points and channel tokens.
    pub(crate) fn stream_channels(&self) -> Vec<StreamChannel<'_>> {
        self.channels
            .iter()
            .enumerate()
            .map(|(i, name)| StreamChannel {
                name,
                since: self.cursor.as_ref().and_then(|c| c.get(name)),
                token: self.channel_tokens.get(i).map(String::as_str),
            })
            .collect()
    }
}

/// Splits a `channel=` value: commas separate channels, except inside the user list of a
/// user-limited channel (`dm:#alice,bob`), which runs to the end of the value.
fn split_channels(value: &str) -> Vec<&str> {
    let (plain, limited) = match value.find('#') {
        Some(hash) => match value[..hash].rfind(',') {
            Some(comma) => (&value[..comma], Some(&value[comma + 1..])),
            None => ("", Some(value)),
        },
        None => (value, None),
    };
    plain
        .split(',')
        .chain(limited)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Checks the origin, reads the query string, and runs the connection core's limit check on
/// every channel before anything is admitted or joined.
pub(crate) fn read(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<StreamRequest, EdgeError> {
    if !node.origin_allowed(headers) {
        return Err(EdgeError::PermissionDenied("origin not allowed".into()));
    }
    let max_channels = node.config.limits.max_channels_per_connection;
    let mut channels: Vec<String> = Vec::new();
    let mut channel_tokens = Vec::new();
    let mut since = None;
    let mut display = None;
    let mut timeout = None;
    let mut query_token = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "channel" => {
                for ch in split_channels(&v) {
                    herald_protocol::validate_channel(ch)?;
                    if !channels.iter().any(|c| c == ch) {
                        // Past the limit the core refuses anyway; stop collecting here so a
                        // long query costs no more than the limit.
                        if channels.len() > max_channels {
                            break;
                        }
                        channels.push(ch.to_owned());
                    }
                }
            }
            "channel_token" if channel_tokens.len() <= max_channels => {
                channel_tokens.push(v.into_owned())
            }
            "since" | "cursor" if !v.is_empty() => since = Some(v.into_owned()),
            "user" => display = Some(v.into_owned()),
            "timeout" => timeout = Some(v.into_owned()),
            "token" => query_token = Some(v.into_owned()),
            _ => {}
        }
    }
    let cursor = match since {
        Some(text) => Some(herald_protocol::cursor::parse_stream_since(
            &text, &channels,
        )?),
        None => None,
    };
    if channels.is_empty() {
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            "at least one channel=… is required",
        ));
    }
    Connection::preflight(node, &channels)?;
    let token = identity::token_from(
        headers,
        query_token.as_deref(),
        &node.config.auth.token_cookie,
    );
    Ok(StreamRequest {
        channels,
        channel_tokens,
        cursor,
        token,
        display,
        timeout,
        context: RequestContext::new(
            node,
            peer.map(|p| node.limits.client_ip(p.ip(), headers)),
            headers,
        ),
    })
}

/// Identifies the request's client and adds the channels its token grants.
pub(crate) async fn identify(
    node: &Node,
    req: &mut StreamRequest,
    client: &str,
    transport: Transport,
) -> Result<Identity, EdgeError> {
    let identity = identity::identify(
        node,
        IdentifyRequest {
            token: req.token.as_deref(),
            display: req.display.take(),
            client,
            transport,
            context: &req.context,
        },
    )
    .await?;
    for granted in &identity.channels {
        if !req.channels.contains(granted) {
            req.channels.push(granted.clone());
        }
    }
    Connection::preflight(node, &req.channels)?;
    Ok(identity)
}

/// Counts a refused SSE or poll request.
pub(crate) fn refused(node: &Node, err: &EdgeError) {
    node.metrics.error(err.code(), err.source_tag());
}

#[cfg(test)]
mod tests {
    use super::split_channels;

    #[test]
    fn commas_separate_channels_but_not_the_users_of_a_limited_one() {
        assert_eq!(split_channels("a,b"), ["a", "b"]);
        assert_eq!(split_channels("dm:#alice,bob"), ["dm:#alice,bob"]);
        assert_eq!(
            split_channels("a,b,dm:#alice,bob"),
            ["a", "b", "dm:#alice,bob"]
        );
        assert_eq!(split_channels(",a,,"), ["a"]);
    }
}

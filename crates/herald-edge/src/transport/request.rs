//! The HTTP request prelude shared by SSE and polls: the origin rule, the query string
//! (channels, resume point, user, timeout) and the error accounting of a refused request.

use axum::http::{HeaderMap, StatusCode};
use herald_protocol::Cursor;

use crate::connection::Connection;
use crate::error::EdgeError;
use crate::node::Node;

/// Longest user name accepted in a query string.
const MAX_USER_LEN: usize = 64;

/// What an SSE or poll request asks for.
pub(crate) struct StreamRequest {
    /// Channels, in the order given, without duplicates.
    pub(crate) channels: Vec<String>,
    /// Resume point (`since=`/`cursor=`, or SSE's `Last-Event-ID`).
    pub(crate) cursor: Option<Cursor>,
    /// Display name, checked.
    pub(crate) user: String,
    /// Long-poll timeout as written, seconds.
    pub(crate) timeout: Option<String>,
}

/// Checks the origin, reads the query string, and runs the connection core's subscribe check
/// (permission and channel limit) on every channel before anything is admitted or joined.
pub(crate) fn read(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<StreamRequest, EdgeError> {
    if !node.origin_allowed(headers) {
        return Err(EdgeError::PermissionDenied("origin not allowed".into()));
    }
    let max_channels = node.config.limits.max_channels_per_connection;
    let mut channels: Vec<String> = Vec::new();
    let mut since = None;
    let mut user = None;
    let mut timeout = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "channel" => {
                for ch in v.split(',').filter(|c| !c.is_empty()) {
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
            "since" | "cursor" if !v.is_empty() => since = Some(v.into_owned()),
            "user" => user = Some(v.into_owned()),
            "timeout" => timeout = Some(v.into_owned()),
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
    Ok(StreamRequest {
        channels,
        cursor,
        user: sanitize_user(user)?,
        timeout,
    })
}

/// Checks a display name from a query string.
pub(crate) fn sanitize_user(user: Option<String>) -> Result<String, EdgeError> {
    let user = user.unwrap_or_default();
    if user.len() > MAX_USER_LEN
        || !user
            .chars()
            .all(|c| c.is_alphanumeric() || "_-. @".contains(c))
    {
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            "user must be at most 64 letters, digits or _-. @",
        ));
    }
    Ok(user)
}

/// Counts a refused SSE or poll request.
pub(crate) fn refused(node: &Node, err: &EdgeError) {
    node.metrics.error(err.code(), err.source_tag());
}

//! Who may do what: the one place every client operation is checked, whatever transport it came
//! over (WebSocket frames, SSE and poll query strings, `POST /publish`).
//!
//! The rules come from the channel's namespace: `client_subscribe` governs subscribing and also
//! reading a channel's history and presence (whoever may not receive a channel may not read
//! what it holds either); `client_publish` governs publishing; `presence = false` turns presence
//! off for everyone. The server API (`/api/*`) is not a client and is not checked here.

use herald_protocol::validate_channel;

use crate::error::EdgeError;
use crate::node::Node;

/// An operation a client asks for on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Receive the channel's messages.
    Subscribe,
    /// Publish to the channel.
    Publish,
    /// Read the channel's history.
    History,
    /// Read the channel's presence.
    Presence,
}

/// Checks that a client may do `op` on `channel` (a valid name, allowed by its namespace).
pub(crate) fn authorize(node: &Node, op: Op, channel: &str) -> Result<(), EdgeError> {
    validate_channel(channel)?;
    let ns = node.config.namespace(channel);
    let denied = |what: &str| {
        Err(EdgeError::PermissionDenied(format!(
            "clients may not {what} {channel}"
        )))
    };
    match op {
        Op::Publish if !ns.client_publish => denied("publish to"),
        Op::Subscribe if !ns.client_subscribe => denied("subscribe to"),
        Op::History if !ns.client_subscribe => denied("read the history of"),
        Op::Presence if !ns.client_subscribe => denied("read the presence of"),
        Op::Presence if !ns.presence => Err(EdgeError::PermissionDenied(format!(
            "presence is off for {channel}"
        ))),
        _ => Ok(()),
    }
}

//! Who may do what: the one place every client operation is checked, whatever transport it came
//! over (WebSocket frames, SSE and poll query strings, `POST /publish`).
//!
//! Reading a channel — subscribing, and the `history` and `presence` requests, which follow
//! subscribe exactly — is decided in this order:
//!
//! 1. a **user-limited** channel (`dm:#alice,bob`) is open to exactly the users it names, and to
//!    nobody else, whatever its namespace says;
//! 2. `history` and `presence` of a channel the connection already subscribes to need nothing
//!    more (`presence` still needs the namespace to keep presence);
//! 3. the namespace's `subscribe` rule: `anyone`; `user` (authenticated); `token` (a channel
//!    token of this user for this channel, or the channel listed in the connection token's
//!    `channels`); `proxy` (the application's backend answers); `none`.
//!
//! Publishing follows the namespace's `publish` rule: `anyone`, `user`, `subscriber` (a
//! connection subscribed to that channel), `proxy` (the backend answers and may replace the
//! data), `none`. The rules' defaults are in [`crate::config::EdgeConfig::subscribe_rule`] and
//! `publish_rule`. The server API (`/api/*`) is not a client and is not checked here.

use herald_broker::Payload;
use herald_protocol::validate_channel;

use crate::config::{PublishRule, SubscribeRule};
use crate::error::EdgeError;
use crate::identity::{proxy_error, verify_channel_token, Identity, RequestContext};
use crate::metrics::Transport;
use crate::node::Node;

/// A read a client asks for on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Receive the channel's messages.
    Subscribe,
    /// Read the channel's history.
    History,
    /// Read the channel's presence.
    Presence,
}

impl Read {
    fn verb(self) -> &'static str {
        match self {
            Read::Subscribe => "subscribe to",
            Read::History => "read the history of",
            Read::Presence => "read the presence of",
        }
    }
}

/// Who asks, and from where.
pub(crate) struct Subject<'a> {
    /// The asker's identity.
    pub(crate) identity: &'a Identity,
    /// The client id (told to the backend).
    pub(crate) client: &'a str,
    /// The transport (told to the backend).
    pub(crate) transport: Transport,
    /// The request the connection came in on (told to the backend).
    pub(crate) context: &'a RequestContext,
    /// Whether the asker is subscribed to the channel in question.
    pub(crate) subscribed: bool,
}

fn denied(what: &str, channel: &str, why: &str) -> EdgeError {
    EdgeError::PermissionDenied(format!("may not {what} {channel}: {why}"))
}

/// Checks that `subject` may `read` `channel`; `token` is a channel token, if one came along.
pub(crate) async fn authorize_read(
    node: &Node,
    subject: &Subject<'_>,
    read: Read,
    channel: &str,
    token: Option<&str>,
) -> Result<(), EdgeError> {
    validate_channel(channel)?;
    let verb = read.verb();
    if read == Read::Presence && !node.config.namespace(channel).presence {
        return Err(EdgeError::PermissionDenied(format!(
            "presence is off for {channel}"
        )));
    }
    let identity = subject.identity;
    if let Some(mut users) = herald_protocol::allowed_users(channel) {
        return if identity.authenticated && users.any(|u| u == &*identity.user) {
            Ok(())
        } else {
            Err(denied(
                verb,
                channel,
                "the channel is limited to the users it names",
            ))
        };
    }
    if read != Read::Subscribe && subject.subscribed {
        return Ok(());
    }
    match node.config.subscribe_rule(channel) {
        SubscribeRule::Anyone => Ok(()),
        SubscribeRule::User if identity.authenticated => Ok(()),
        SubscribeRule::User => Err(denied(verb, channel, "a user token is required")),
        SubscribeRule::Token => {
            if identity.channels.iter().any(|c| c == channel) {
                return Ok(());
            }
            match token {
                Some(token) if identity.authenticated => {
                    verify_channel_token(node, token, &identity.user, channel).await
                }
                Some(_) => Err(denied(verb, channel, "a channel token needs a user token")),
                None => Err(denied(verb, channel, "a channel token is required")),
            }
        }
        SubscribeRule::Proxy => {
            let proxy = node.proxy.as_ref().expect("config validated: proxy set");
            let user = identity.authenticated.then_some(&*identity.user);
            let ask = subject
                .context
                .proxy_request(subject.client, subject.transport, user);
            proxy
                .subscribe(&ask, channel)
                .await
                .map_err(|e| proxy_error(node, e))
        }
        SubscribeRule::None => Err(denied(verb, channel, "clients may not")),
    }
}

/// Checks that `subject` may publish `payload` to `channel`; returns the data that replaces
/// the payload when the backend (publish proxy) rewrote it.
pub(crate) async fn authorize_publish(
    node: &Node,
    subject: &Subject<'_>,
    channel: &str,
    payload: &Payload,
) -> Result<Option<Payload>, EdgeError> {
    validate_channel(channel)?;
    let identity = subject.identity;
    let what = "publish to";
    match node.config.publish_rule(channel) {
        PublishRule::Anyone => Ok(None),
        PublishRule::User if identity.authenticated => Ok(None),
        PublishRule::User => Err(denied(what, channel, "a user token is required")),
        PublishRule::Subscriber if subject.subscribed => Ok(None),
        PublishRule::Subscriber => Err(denied(what, channel, "subscribe to it first")),
        PublishRule::Proxy => {
            let proxy = node.proxy.as_ref().expect("config validated: proxy set");
            let Payload::Json(data) = payload else {
                return Err(denied(
                    what,
                    channel,
                    "the backend decides on JSON data only",
                ));
            };
            let user = identity.authenticated.then_some(&*identity.user);
            let ask = subject
                .context
                .proxy_request(subject.client, subject.transport, user);
            match proxy.publish(&ask, channel, data).await {
                Ok(replaced) => Ok(replaced.map(Payload::Json)),
                Err(e) => Err(proxy_error(node, e)),
            }
        }
        PublishRule::None => Err(denied(what, channel, "clients may not")),
    }
}

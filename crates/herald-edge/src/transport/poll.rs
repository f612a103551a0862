//! Long-poll and short-poll: `GET /poll?channel=a[&channel=b]&cursor=<cursor>&timeout=25`.
//!
//! A poll is a [`Connection`] that lives for one request: it subscribes its channels (subscribe
//! first, then history after the cursor) and answers at once when anything is there. Otherwise
//! it waits on its queue, an event, never a sleep loop, until a publication arrives or the
//! timeout ends. `timeout=0` is a short poll. The cursor carries all state, so the next poll
//! may land on any edge; no sticky session is needed. The reply body is encoded by
//! [`herald_protocol::frame::encode_poll_reply`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::Cursor;

use crate::connection::{Connection, ConnectionOptions, Event};
use crate::error::EdgeError;
use crate::hub::Delivery;
use crate::metrics::Transport;
use crate::node::Node;
use crate::transport::request;

/// Most messages in one poll reply.
const MAX_REPLY: usize = 1000;

/// Long-poll timeout when the request names none, seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 25;

/// `GET /poll`.
pub(crate) async fn handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match poll(node.clone(), query, headers, peer).await {
        Ok(r) => r,
        Err(e) => {
            request::refused(&node, &e);
            e.into_response()
        }
    }
}

fn read_timeout(node: &Node, timeout: Option<&str>) -> Result<u64, EdgeError> {
    let timeout = match timeout {
        None | Some("") => DEFAULT_TIMEOUT_SECS,
        Some(t) => t.parse::<u64>().map_err(|_| {
            EdgeError::http(
                StatusCode::BAD_REQUEST,
                "timeout must be a whole number of seconds",
            )
        })?,
    };
    let max = node.config.limits.poll_max_timeout_secs;
    if timeout > max {
        node.metrics
            .limit_rejected(crate::metrics::Limit::PollTimeout);
        return Err(EdgeError::http(
            StatusCode::BAD_REQUEST,
            format!("timeout must be at most {max} seconds"),
        ));
    }
    Ok(timeout)
}

/// What one poll has gathered for its reply.
struct Reply {
    messages: Vec<Arc<Delivery>>,
    cursor: Cursor,
    recovered: bool,
}

impl Reply {
    fn take(&mut self, events: &mut Vec<Event>) {
        for event in events.drain(..) {
            match event {
                Event::Publication(d) => {
                    let p = &d.publication;
                    self.cursor.advance(&p.channel, &p.epoch, p.offset);
                    self.messages.push(d);
                }
                Event::Reset { channel, position } => {
                    self.recovered = false;
                    self.cursor.set(&channel, position);
                }
                Event::Notice(..) => {}
            }
        }
    }
}

async fn poll(
    node: Arc<Node>,
    query: Option<String>,
    headers: HeaderMap,
    peer: SocketAddr,
) -> Result<Response, EdgeError> {
    let req = request::read(&node, query.as_deref(), &headers, Some(peer))?;
    let timeout = read_timeout(&node, req.timeout.as_deref())?;
    let transport = if timeout == 0 {
        Transport::Poll
    } else {
        Transport::LongPoll
    };
    let client = node.new_client_id();
    // One span per poll, its fields all known here (recording one later formats the span's
    // fields again: measurable at thousands of polls a second).
    let span = tracing::debug_span!("conn", client = &*client, transport = transport.label(),
        node = %node.config.node_id);
    tracing::Instrument::instrument(answer(node, req, timeout, transport, client), span).await
}

/// Identifies, subscribes, waits and answers one admitted poll.
async fn answer(
    node: Arc<Node>,
    mut req: request::StreamRequest,
    timeout: u64,
    transport: Transport,
    client: Arc<str>,
) -> Result<Response, EdgeError> {
    let identity = request::identify(&node, &mut req, &client, transport).await?;
    let options = ConnectionOptions {
        transport,
        client,
        identity,
        context: std::mem::take(&mut req.context),
        presence: false,
    };
    let mut conn = Connection::open(&node, options)?;
    let mut reply = Reply {
        messages: Vec::new(),
        cursor: Cursor::new(),
        recovered: true,
    };
    let all = conn.subscribe_all(&req.stream_channels()).await?;
    for (channel, subscribed) in req.channels.iter().zip(all) {
        let since = req.cursor.as_ref().and_then(|c| c.get(channel));
        reply.recovered &= subscribed.recovered;
        reply.cursor.set(channel, subscribed.position.clone());
        if let Some(since) = since {
            // Recovered messages advance the cursor only as they are included in the reply.
            if subscribed.recovered {
                reply.cursor.set(channel, since.clone());
            }
        }
        reply.messages.extend(subscribed.publications);
    }
    reply.messages.truncate(MAX_REPLY);
    for d in &reply.messages {
        let p = &d.publication;
        reply.cursor.advance(&p.channel, &p.epoch, p.offset);
    }
    conn.count_delivered(&reply.messages);
    // A page cut short (a reader far behind) is answered at once; its cursor points at the rest.
    if reply.messages.is_empty() && timeout > 0 && !conn.is_catching_up() {
        wait(&mut conn, &mut reply, Duration::from_secs(timeout)).await;
        if conn.closing().is_cancelled() && conn.close_code() == herald_protocol::CloseCode::Restart
        {
            // Draining: answer at a random moment of half the grace, so polls come back spread.
            crate::transport::spread_restart(node.config.shutdown_grace()).await;
        }
    }
    conn.flush_metrics();
    tracing::debug!(
        messages = reply.messages.len(),
        recovered = reply.recovered,
        "poll answered"
    );
    let body = herald_protocol::frame::encode_poll_reply(
        reply.messages.iter().map(|d| d.text().as_str()),
        &reply.cursor.encode(),
        reply.recovered,
    );
    conn.count_bytes_out(body.len());
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// Waits until a publication (or a reset) arrives, the connection is closed, or `timeout`.
async fn wait(conn: &mut Connection, reply: &mut Reply, timeout: Duration) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let closing = conn.closing();
    let mut events = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            item = conn.recv() => {
                let Some(item) = item else { break };
                let mut next = Some(item);
                while let Some(item) = next.take() {
                    conn.absorb(item, &mut events).await;
                    if reply.messages.len() + events.len() < MAX_REPLY {
                        next = conn.try_recv();
                    }
                }
                reply.take(&mut events);
                if !reply.messages.is_empty() || !reply.recovered {
                    break;
                }
            }
            _ = &mut deadline => break,
        }
    }
}

//! Long-poll and short-poll: `GET /poll?channel=a[&channel=b]&cursor=<cursor>&timeout=25`.
//!
//! A poll joins its channels in the hub for the length of the request (subscribe first), reads
//! history after the cursor, and answers at once when anything is there. Otherwise it waits on
//! its queue, an event, never a sleep loop, until a publication arrives or the timeout ends.
//! `timeout=0` is a short poll. The cursor carries all state, so the next poll may land on any
//! edge; no sticky session is needed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::Cursor;

use crate::error::EdgeError;
use crate::hub::{Delivery, Outbound};
use crate::metrics::Transport;
use crate::node::Node;
use crate::subscriptions::{Emit, Subscriptions};
use crate::transport::sse::read_request;

/// Most messages in one poll reply.
const MAX_REPLY: usize = 1000;

/// `GET /poll`.
pub async fn handler(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // One span per poll; `client` and `transport` (poll or longpoll) are recorded once known.
    let span = tracing::info_span!("conn", client = tracing::field::Empty,
        transport = tracing::field::Empty, node = %node.config.node_id);
    match tracing::Instrument::instrument(poll(node.clone(), query, headers), span).await {
        Ok(r) => r,
        Err(e) => {
            crate::transport::sse::refused(&node, &e);
            e.into_response()
        }
    }
}

async fn poll(
    node: Arc<Node>,
    query: Option<String>,
    headers: HeaderMap,
) -> Result<Response, EdgeError> {
    let params = read_request(&node, query.as_deref(), &headers)?;
    let timeout = match params.timeout.as_deref() {
        None | Some("") => 25,
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
    let transport = if timeout == 0 {
        Transport::Poll
    } else {
        Transport::LongPoll
    };
    let _slot = node.admit(transport)?;
    let client = node.new_client_id();
    tracing::Span::current()
        .record("client", &*client)
        .record("transport", transport.label());
    let (handle, mut queue) = node.hub.connect(client, transport, &node.shutdown);
    let mut subs = Subscriptions::default();
    let mut cursor = Cursor::new();
    let mut recovered = true;
    let mut messages: Vec<Arc<Delivery>> = Vec::new();
    let result: Result<(), EdgeError> = async {
        for channel in &params.channels {
            let since = params.cursor.as_ref().and_then(|c| c.get(channel));
            let joined = node.join(channel, &handle, since).await?;
            subs.insert(channel, &joined.position);
            recovered &= joined.recovered;
            cursor.set(channel, joined.position.clone());
            if let Some(since) = since {
                if joined.recovered {
                    cursor.set(channel, since.clone());
                }
            }
            for p in joined.publications {
                messages.push(Arc::new(Delivery::new(p)));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        cleanup(&node, &subs, &handle);
        return Err(e);
    }
    // Recovered messages only advance the cursor as they are included.
    messages.truncate(MAX_REPLY);
    for d in &messages {
        let p = &d.publication;
        cursor.advance(&p.channel, &p.epoch, p.offset);
    }
    // Positions for the dedup of live messages: everything up to the recovered top.
    if messages.is_empty() && timeout > 0 {
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut emits = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = handle.cancel.cancelled() => break,
                item = queue.recv() => {
                    let Some(item) = item else { break };
                    let mut next = Some(item);
                    while let Some(item) = next.take() {
                        match item {
                            Outbound::Publication(d) => subs.on_live(&node, d, &mut emits).await,
                            Outbound::Resync => subs.resync(&node, &mut emits).await,
                            Outbound::Event(..) => {}
                        }
                        if messages.len() + emits.len() < MAX_REPLY {
                            next = queue.try_recv().ok();
                        }
                    }
                    for emit in emits.drain(..) {
                        match emit {
                            Emit::Publication(d) => {
                                let p = &d.publication;
                                cursor.advance(&p.channel, &p.epoch, p.offset);
                                messages.push(d);
                            }
                            Emit::Reset { channel, position } => {
                                recovered = false;
                                cursor.set(&channel, position);
                            }
                        }
                    }
                    if !messages.is_empty() || !recovered {
                        break;
                    }
                }
                _ = &mut deadline => break,
            }
        }
    }
    cleanup(&node, &subs, &handle);
    tracing::debug!(messages = messages.len(), recovered, "poll answered");
    let label = transport.label();
    let now = herald_broker::now_ms();
    for d in &messages {
        node.metrics
            .delivery_latency
            .with_label_values(&[label])
            .observe(now.saturating_sub(d.publication.ts_ms) as f64 / 1000.0);
    }
    node.metrics
        .delivered
        .with_label_values(&[label])
        .inc_by(messages.len() as u64);
    let mut body = String::with_capacity(64 + messages.len() * 128);
    body.push_str("{\"messages\":[");
    for (i, d) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(d.text().as_str());
    }
    body.push_str("],\"cursor\":");
    body.push_str(&serde_json::to_string(&cursor.encode()).expect("string"));
    body.push_str(",\"recovered\":");
    body.push_str(if recovered { "true" } else { "false" });
    body.push('}');
    node.metrics
        .bytes_out
        .with_label_values(&[label])
        .inc_by(body.len() as u64);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

fn cleanup(node: &Arc<Node>, subs: &Subscriptions, handle: &Arc<crate::hub::ConnHandle>) {
    for ch in subs.names() {
        node.hub.unsubscribe(&ch, handle);
    }
    node.hub.disconnect(handle);
}

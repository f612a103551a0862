//! HTTP plumbing shared by SSE, long-poll and publishing: one `reqwest::Client` per source
//! address, and [`Pending`], which keeps an in-flight request alive across `select!` wake-ups.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::net::SourceAddrs;

/// A boxed request future.
pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// HTTP clients, one per source address (reqwest binds a client to one local address).
#[derive(Clone)]
pub(crate) struct HttpClients {
    /// Index = connection number modulo the number of source addresses.
    clients: Vec<reqwest::Client>,
}

impl HttpClients {
    /// One client per source address, or one unbound client.
    pub(crate) fn new(sources: &SourceAddrs) -> Result<Self> {
        let build = |ip: Option<std::net::IpAddr>| {
            let mut b = reqwest::Client::builder()
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(30));
            if let Some(ip) = ip {
                b = b.local_address(ip);
            }
            b.build().context("building the HTTP client")
        };
        let clients = if sources.all().is_empty() {
            vec![build(None)?]
        } else {
            sources
                .all()
                .iter()
                .map(|ip| build(Some(*ip)))
                .collect::<Result<_>>()?
        };
        Ok(Self { clients })
    }

    /// The client for connection number `i` (same source address as [`SourceAddrs::pick`]).
    pub(crate) fn for_conn(&self, i: usize) -> &reqwest::Client {
        &self.clients[i % self.clients.len()]
    }
}

/// One in-flight request that survives the caller's future being dropped.
///
/// `Subscriber::next` runs inside `select!`; if another arm wins, the half-done poll must
/// not be lost (its answer may already carry messages), so the future is kept here and
/// awaited again on the next call.
pub(crate) struct Pending<T> {
    /// The request in flight, if any.
    fut: Option<BoxFut<T>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self { fut: None }
    }
}

impl<T> Pending<T> {
    /// Awaits the request in flight, starting one with `start` when there is none.
    pub(crate) async fn run(&mut self, start: impl FnOnce() -> BoxFut<T>) -> Result<T> {
        let fut = self.fut.get_or_insert_with(start);
        let out = fut.as_mut().await;
        self.fut = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_request_survives_cancellation() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut pending: Pending<u32> = Pending::default();
        let mut rx = Some(rx);
        let mut starts = 0;
        // First call is cancelled by the timeout before the answer exists.
        let first = tokio::time::timeout(Duration::from_millis(20), {
            starts += 1;
            let rx = rx.take().unwrap();
            pending.run(move || Box::pin(async move { Ok(rx.await?) }))
        })
        .await;
        assert!(first.is_err());
        tx.send(7).unwrap();
        // Second call awaits the same request instead of starting a new one.
        let v = pending
            .run(|| {
                starts += 1;
                Box::pin(async { Ok(0) })
            })
            .await
            .unwrap();
        assert_eq!((v, starts), (7, 1));
    }
}

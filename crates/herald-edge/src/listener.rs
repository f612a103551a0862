//! The client listener: accepts TCP connections and serves HTTP/1.1 on them with hyper, with
//! the limits `axum::serve` leaves off:
//!
//! * **header read timeout** (`limits.header_read_timeout_secs`): a client must send a whole
//!   request head within it — also the next one on an idle keep-alive connection — or the
//!   connection is closed (slowloris);
//! * **header size** (`limits.max_header_bytes`): hyper's read buffer, so no request head costs
//!   more;
//! * **write timeout** (`limits.write_timeout_secs`): every socket, including upgraded
//!   WebSockets and SSE streams, fails a write that makes no progress for that long. The
//!   connection is then dropped (a WebSocket session reports close 4008), its memory released,
//!   and `herald_limit_rejections_total{limit="write_timeout"}` counts it.
//!
//! * **open sockets** (`limits.max_connections` plus a headroom of an eighth and 64): every
//!   socket in its HTTP phase counts, idle keep-alive connections included; past the cap a new
//!   socket is closed at once and counted (`limit="connections"`). WebSockets, SSE streams and
//!   waiting polls also hold one of the node's `max_connections` slots; the headroom lets a
//!   request over that limit still be answered with its 503 / close 1013 instead of a reset.
//!
//! The peer address reaches handlers as axum's `ConnectInfo<SocketAddr>`. Shutdown stops
//! accepting and lets open HTTP exchanges finish (hyper's graceful shutdown); upgraded
//! WebSockets are owned by their sessions and drain on the node's token.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::metrics::{Limit, Metrics};

/// How the listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerLimits {
    /// A write that makes no progress this long fails.
    pub(crate) write_timeout: Duration,
    /// A request head must arrive within this.
    pub(crate) header_read_timeout: Duration,
    /// Largest request head, bytes.
    pub(crate) max_header_bytes: usize,
    /// Most sockets open at once in their HTTP phase.
    pub(crate) max_sockets: usize,
}

/// Serves `app` on `listener` until `stop`, then waits for open HTTP exchanges to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // Sockets in their HTTP phase: taken here, given back when hyper is done with the socket
    // (after an upgrade the WebSocket session holds a node slot instead).
    let open = Arc::new(AtomicUsize::new(0));
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                // Out of descriptors or a connection reset before accept: wait a moment rather
                // than spin.
                tracing::warn!(cause = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_sockets {
            open.fetch_sub(1, Ordering::AcqRel);
            metrics.limit_rejected(Limit::Connections);
            drop(tcp);
            continue;
        }
        let socket_slot = SocketSlot(open.clone());
        let _ = tcp.set_nodelay(true);
        let mut timed = TimeoutStream::new(tcp);
        timed.set_write_timeout(Some(limits.write_timeout));
        let io = TokioIo::new(Counted {
            inner: Box::pin(timed),
            metrics: metrics.clone(),
        });
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        tokio::spawn(async move {
            let _slot = socket_slot;
            if let Err(err) = conn.await {
                tracing::debug!(cause = %err, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One open socket of the listener's count; dropping it gives the place back.
struct SocketSlot(Arc<AtomicUsize>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket whose write timeouts are counted.
struct Counted {
    inner: Pin<Box<TimeoutStream<tokio::net::TcpStream>>>,
    metrics: Arc<Metrics>,
}

impl Counted {
    fn count<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(err)) = &result {
            if err.kind() == io::ErrorKind::TimedOut {
                self.metrics.limit_rejected(Limit::WriteTimeout);
            }
        }
        result
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.inner.as_mut().poll_write(cx, buf);
        self.count(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.inner.as_mut().poll_flush(cx);
        self.count(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.inner.as_mut().poll_write_vectored(cx, bufs);
        self.count(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

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
//!
//! **Taking a response off hyper** ([`Takeover`], [`detachable`]): an endless response (an SSE
//! stream) would keep hyper's whole HTTP/1 connection alive under it — a 16 KiB read buffer,
//! an 8 KiB header write buffer and the connection future, about 24 KiB per idle stream, where
//! the stream itself needs a few hundred bytes. So hyper reads and writes the socket through a
//! shared slot, and a body wrapped by [`detachable`] lets hyper write the response head, waits
//! until hyper has flushed it (its buffer is then empty: nothing of an earlier response on the
//! connection can be lost), takes the socket out of the slot and writes the rest of the body
//! itself, in HTTP/1.1 chunked encoding, on a task of its own. hyper's connection then ends
//! (its body "failed") and frees its buffers. What the detached writer bounds: one chunk in
//! flight (the body's own batch), the same write timeout; a client that sends anything after
//! its request (a pipelined request behind an endless stream) or closes is disconnected.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio_io_timeout::TimeoutStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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
        let shared = Arc::new(Slot::new(Counted {
            inner: Box::pin(timed),
            metrics: metrics.clone(),
        }));
        let io = TokioIo::new(SharedIo(shared.clone()));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(Takeover(shared.clone()));
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

/// The socket of one HTTP connection: hyper reads and writes it through [`SharedIo`] until a
/// [`detachable`] body takes it out.
struct Slot(std::sync::Mutex<SlotState>);

struct SlotState {
    /// None once taken over.
    io: Option<Counted>,
    /// Bytes were written since the last completed flush (or hyper holds a response head it
    /// has not written yet): not the moment to take the socket.
    dirty: bool,
}

impl Slot {
    fn new(io: Counted) -> Self {
        Self(std::sync::Mutex::new(SlotState {
            io: Some(io),
            dirty: false,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// hyper's side of a [`Slot`]. Once the socket is taken: reads see EOF, writes fail.
pub(crate) struct SharedIo(Arc<Slot>);

impl SharedIo {
    fn with<T>(
        &self,
        gone: io::Result<T>,
        op: impl FnOnce(Pin<&mut Counted>, &mut bool) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut state = self.0.lock();
        let SlotState { io, dirty } = &mut *state;
        match io {
            Some(io) => op(Pin::new(io), dirty),
            None => Poll::Ready(gone),
        }
    }
}

/// Marks the slot dirty when a write put bytes on the socket.
fn note_written(r: Poll<io::Result<usize>>, dirty: &mut bool) -> Poll<io::Result<usize>> {
    if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
        *dirty = true;
    }
    r
}

fn taken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "socket taken over by a detached response",
    )
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(Ok(()), |io, _| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(Err(taken()), |io, dirty| {
            note_written(io.poll_write(cx, buf), dirty)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(Err(taken()), |io, dirty| {
            note_written(io.poll_write_vectored(cx, bufs), dirty)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true // TcpStream's, through TimeoutStream and Counted
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(Ok(()), |io, dirty| {
            let r = io.poll_flush(cx);
            if matches!(r, Poll::Ready(Ok(()))) {
                *dirty = false;
            }
            r
        })
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(Ok(()), |io, _| io.poll_shutdown(cx))
    }
}

/// A request's handle on its connection's socket (a request extension set by the listener;
/// absent when the router is served some other way, e.g. in tests).
#[derive(Clone)]
pub(crate) struct Takeover(Arc<Slot>);

/// Wraps an endless response body (an SSE stream) so that, once hyper has written and flushed
/// the response head, the body is written by a task of its own on `tracker` and hyper's
/// connection is let go. Only for HTTP/1.1 responses without a length (hyper then writes
/// `transfer-encoding: chunked`, which the detached writer continues); without a `takeover`
/// the body is returned as it is.
pub(crate) fn detachable(body: Body, takeover: Option<Takeover>, tracker: &TaskTracker) -> Body {
    match takeover {
        Some(Takeover(slot)) => Body::new(Detachable {
            inner: Some(body),
            slot,
            armed: false,
            tracker: tracker.clone(),
        }),
        None => body,
    }
}

struct Detachable {
    inner: Option<Body>,
    slot: Arc<Slot>,
    /// The first poll happened (hyper has the head in its buffer then).
    armed: bool,
    tracker: TaskTracker,
}

impl hyper::body::Body for Detachable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if !this.armed {
            // hyper polls the body right after putting the head in its write buffer, before
            // writing it: say so, and come back after its flush (woken now: its loop flushes,
            // then polls the body again).
            this.armed = true;
            this.slot.lock().dirty = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let io = {
            let mut state = this.slot.lock();
            if state.dirty {
                return Poll::Pending; // hyper is still flushing: it polls again when done
            }
            state.io.take()
        };
        let (Some(io), Some(body)) = (io, this.inner.take()) else {
            return Poll::Ready(Some(Err(axum::Error::new(taken()))));
        };
        this.tracker.spawn(write_detached(io, body));
        // hyper's connection ends here (a "failed" body) and frees its buffers; the socket is
        // no longer in its slot, so it writes nothing more.
        Poll::Ready(Some(Err(axum::Error::new(taken()))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Writes `body` on `io` in HTTP/1.1 chunks, after hyper wrote the head; ends with the last
/// chunk when the body ends, or at once when the client closes, sends anything, or a write
/// fails (including the write timeout).
async fn write_detached(mut io: Counted, mut body: Body) {
    let mut scratch = [0u8; 16];
    loop {
        let data = tokio::select! {
            biased;
            frame = body.frame() => match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers: none on SSE
                },
                Some(Err(_)) | None => break,
            },
            // EOF, an error, or bytes after the request (nothing may follow an endless
            // response): the stream is over.
            _ = io.read(&mut scratch) => return,
        };
        if data.is_empty() {
            continue;
        }
        // Size line, data, CRLF in one vectored write (the data is not copied: it is the
        // body's batch, often shared).
        let mut size = [0u8; 18];
        let n = {
            use std::io::Write as _;
            let mut at = &mut size[..];
            let _ = write!(at, "{:x}\r\n", data.len());
            18 - at.len()
        };
        let mut chunk = bytes::Buf::chain(bytes::Buf::chain(&size[..n], data), &b"\r\n"[..]);
        if io.write_all_buf(&mut chunk).await.is_err() {
            return;
        }
    }
    if io.write_all(b"0\r\n\r\n").await.is_ok() {
        let _ = io.shutdown().await;
    }
}

/// The socket of an upgraded connection (a WebSocket), as its session reads and writes it:
/// straight on the listener's socket when the upgrade came through [`serve`] (hyper's
/// `Upgraded` box, its rewind buffer and the shared slot are left behind: one less indirection
/// and lock per read and write), else hyper's `Upgraded` (or, not reachable, an emptied slot,
/// which reads as closed).
pub(crate) type UpgradedIo = Either<Counted, Either<TokioIo<hyper::upgrade::Upgraded>, SharedIo>>;

/// The socket of `upgraded`, and the bytes the client sent after its request that hyper already
/// read (to be handed to the WebSocket before the socket's own), copied: hyper's `Bytes` is a
/// view of its whole read buffer (16 KiB), which must not live on with the socket. Bounded by
/// that buffer (`limits.max_header_bytes`).
pub(crate) fn upgraded_io(upgraded: hyper::upgrade::Upgraded) -> (UpgradedIo, Vec<u8>) {
    // hyper-util's auto builder wraps the socket in a private rewind type: its `downcast`
    // unwraps that too.
    match auto::upgrade::downcast::<TokioIo<SharedIo>>(upgraded) {
        Ok(parts) => {
            let taken = parts.io.inner().0.lock().io.take();
            match taken {
                Some(io) => (Either::Left(io), parts.read_buf.to_vec()),
                // Only a detached body empties the slot, and an upgraded connection has none.
                None => (
                    Either::Right(Either::Right(parts.io.into_inner())),
                    Vec::new(),
                ),
            }
        }
        Err(upgraded) => (
            Either::Right(Either::Left(TokioIo::new(upgraded))),
            Vec::new(),
        ),
    }
}

/// A socket whose write timeouts are counted.
pub(crate) struct Counted {
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

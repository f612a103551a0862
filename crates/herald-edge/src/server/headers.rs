//! The headers every answer of the client listener carries: which edge answered
//! (`X-Herald-Node`), nginx's affinity cookie (`herald_node=<node id>` when the request's
//! names another node, or none, so nginx keeps the client on this edge), and CORS for pages on
//! other origins: the client library and its types are public to every origin (a module script
//! from another origin is fetched in CORS mode); the client endpoints answer the origins
//! `limits.allowed_origins` lists, including their preflight `OPTIONS`. No credentials:
//! cross-origin clients send their token in `Authorization` or `?token=`, and no cookie reaches
//! the edge, so nginx's cookie affinity does not apply to them.
//!
//! One tower layer with its own future, not two `axum::middleware::from_fn`s: those clone the
//! router's service and box a future per request, and formatted the cookie each time — about 16
//! allocations on every poll, SSE stream and WebSocket upgrade (heaptrack of a long-poll run,
//! docs/BENCHMARKS.md). The values that do not depend on the request are built once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::error::EdgeError;
use crate::node::Node;

use super::NODE_COOKIE;

/// Client endpoints a page on another origin may call (with CORS), when that origin is listed in
/// `limits.allowed_origins`. WebSockets need no CORS (the edge checks their `Origin` itself).
const CORS_PATHS: &[&str] = &["/sse", "/poll", "/publish", "/presence", "/history"];

/// The layer (see the module docs).
#[derive(Clone)]
pub(crate) struct EdgeHeaders(Arc<Shared>);

struct Shared {
    node: Arc<Node>,
    /// `X-Herald-Node: <node id>` (absent when the id is not a valid header value).
    node_header: Option<HeaderValue>,
    /// `herald_node=<node id>; Path=/; HttpOnly; SameSite=Lax`.
    cookie: Option<HeaderValue>,
}

impl EdgeHeaders {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        let id = &node.config.node_id;
        let node_header = HeaderValue::from_str(id).ok();
        let cookie = HeaderValue::from_str(&format!(
            "{NODE_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"
        ))
        .ok();
        Self(Arc::new(Shared {
            node,
            node_header,
            cookie,
        }))
    }
}

impl<S> Layer<S> for EdgeHeaders {
    type Service = EdgeHeadersService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeHeadersService {
            inner,
            shared: self.0.clone(),
        }
    }
}

/// The service the layer wraps a route in.
#[derive(Clone)]
pub(crate) struct EdgeHeadersService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What to add to the inner service's response.
pub(crate) struct Plan {
    shared: Arc<Shared>,
    /// Set the affinity cookie (the request's names another node, or none).
    cookie: bool,
    cors: Cors,
}

enum Cors {
    /// Not a CORS answer.
    None,
    /// The client library: public to every origin.
    Public,
    /// A listed origin on a client endpoint.
    Origin(HeaderValue),
}

impl<S> Service<Request> for EdgeHeadersService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeHeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let shared = &self.shared;
        let cookie = crate::identity::cookie_value(req.headers(), NODE_COOKIE)
            != Some(shared.node.config.node_id.as_str());
        let path = req.uri().path();
        let cors = if path == "/herald.js" || path == "/herald.d.ts" {
            Cors::Public
        } else if CORS_PATHS.contains(&path) {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .filter(|o| listed(&shared.node, o));
            if req.method() == Method::OPTIONS {
                // The preflight is answered here, without the node headers (as before).
                return EdgeHeadersFuture::Ready {
                    response: Some(preflight(&shared.node, origin)),
                };
            }
            origin.map_or(Cors::None, |o| Cors::Origin(o.clone()))
        } else {
            Cors::None
        };
        EdgeHeadersFuture::Inner {
            future: self.inner.call(req),
            plan: Some(Plan {
                shared: shared.clone(),
                cookie,
                cors,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`EdgeHeadersService`].
    #[project = Projected]
    pub(crate) enum EdgeHeadersFuture<F> {
        /// Answered without the inner service.
        Ready { response: Option<Response> },
        /// The inner service's answer, then the plan's headers.
        Inner {
            #[pin]
            future: F,
            plan: Option<Plan>,
        },
    }
}

impl<F> Future for EdgeHeadersFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            Projected::Inner { future, plan } => {
                let Ok(mut response) = std::task::ready!(future.poll(cx));
                plan.take()
                    .expect("polled after completion")
                    .apply(response.headers_mut());
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl Plan {
    fn apply(self, h: &mut HeaderMap) {
        if let Some(v) = &self.shared.node_header {
            // Which edge answered: for poll clients (no welcome frame) and for debugging nginx.
            h.insert("x-herald-node", v.clone());
        }
        if self.cookie {
            if let Some(v) = &self.shared.cookie {
                h.append(header::SET_COOKIE, v.clone());
            }
        }
        match self.cors {
            Cors::None => {}
            Cors::Public => {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            Cors::Origin(origin) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                h.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("x-herald-node, retry-after"),
                );
                h.append(header::VARY, HeaderValue::from_static("origin"));
            }
        }
    }
}

/// Whether `origin` is one of `limits.allowed_origins` (or that list has `*`).
fn listed(node: &Node, origin: &HeaderValue) -> bool {
    let allowed = &node.config.limits.allowed_origins;
    origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a == o || a == "*"))
}

/// The answer to a CORS preflight (`OPTIONS`): 204 with the allowed methods and headers for a
/// listed origin, 403 for any other.
fn preflight(node: &Node, origin: Option<&HeaderValue>) -> Response {
    let Some(origin) = origin else {
        let e = EdgeError::PermissionDenied("origin not allowed".into());
        node.metrics.error(e.code(), e.source_tag());
        return e.into_response();
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, last-event-id"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

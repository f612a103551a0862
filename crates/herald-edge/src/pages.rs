//! Pages served by the edge: the browser demo at `/`, the cluster status page at `/status`, and
//! the browser client library `herald.js` (with its types, `herald.d.ts`) that both use.
//!
//! The files live in `crates/herald-edge/static/` and are compiled into the binary with
//! `include_str!`, so an edge needs nothing on disk. They are plain HTML, CSS and JavaScript with
//! no build step and no external resources. Every response says `Cache-Control: no-cache` so a
//! browser revalidates after an upgrade instead of running a stale script against a new server.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::node::Node;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TS: &str = "application/typescript; charset=utf-8";

/// One embedded file: the path it is served at, its content type and its text.
struct Page {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const PAGES: &[Page] = &[
    Page {
        path: "/",
        content_type: HTML,
        body: include_str!("../static/index.html"),
    },
    Page {
        path: "/app.js",
        content_type: JS,
        body: include_str!("../static/app.js"),
    },
    Page {
        path: "/herald.js",
        content_type: JS,
        body: include_str!("../static/herald.js"),
    },
    Page {
        path: "/herald.d.ts",
        content_type: TS,
        body: include_str!("../static/herald.d.ts"),
    },
    Page {
        path: "/status",
        content_type: HTML,
        body: include_str!("../static/status.html"),
    },
    Page {
        path: "/status.js",
        content_type: JS,
        body: include_str!("../static/status.js"),
    },
    Page {
        path: "/style.css",
        content_type: CSS,
        body: include_str!("../static/style.css"),
    },
];

/// Routes for the pages (GET, and HEAD through axum's `get`).
pub(crate) fn routes() -> Router<Arc<Node>> {
    PAGES.iter().fold(Router::new(), |router, page| {
        router.route(page.path, get(move || serve(page)))
    })
}

async fn serve(page: &'static Page) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(page.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        page.body,
    )
        .into_response()
}

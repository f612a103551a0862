//! Pages served by the edge (browser demo, status page).

use std::sync::Arc;

use axum::Router;

use crate::node::Node;

/// Routes for the pages.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
}

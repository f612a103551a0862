//! rooms (stub).
use super::{RunContext, Window};
use crate::report::Results;
use anyhow::{bail, Result};
use std::sync::Arc;
/// Runs rooms.
pub(crate) async fn run(_ctx: Arc<RunContext>, _room: usize) -> Result<(Results, Window)> {
    bail!("todo")
}

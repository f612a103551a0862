//! idle (stub).
use super::{RunContext, Window};
use crate::report::Results;
use anyhow::{bail, Result};
use std::sync::Arc;
/// Runs idle.
pub(crate) async fn run(_ctx: Arc<RunContext>) -> Result<(Results, Window)> {
    bail!("todo")
}

//! connect (stub).
use super::{RunContext, Window};
use crate::report::Results;
use anyhow::{bail, Result};
use std::sync::Arc;
/// Runs connect.
pub(crate) async fn run(_ctx: Arc<RunContext>, _hold: bool) -> Result<(Results, Window)> {
    bail!("todo")
}

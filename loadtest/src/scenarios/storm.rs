//! storm (stub).
use super::{RunContext, Window};
use crate::cli::StormArgs;
use crate::report::Results;
use anyhow::{bail, Result};
use std::sync::Arc;
/// Runs storm.
pub(crate) async fn run(_ctx: Arc<RunContext>, _a: &StormArgs) -> Result<(Results, Window)> {
    bail!("todo")
}

//! Broker errors.

use thiserror::Error;

/// Why a broker call failed.
#[derive(Debug, Clone, Error)]
pub enum BrokerError {
    /// The broker cannot serve now (Redis down, reconnecting); nothing was done.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered something it should not have.
    #[error("broker internal error: {0}")]
    Internal(String),
    /// The broker's configuration is invalid (bad URL, zero timeouts); raised at start.
    #[error("broker configuration: {0}")]
    Config(String),
}

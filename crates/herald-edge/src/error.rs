//! The edge's one error type, and the one place an error becomes an HTTP status, an error-frame
//! code and a metric label.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_broker::BrokerError;
use herald_protocol::{ErrorCode, ProtocolError};
use thiserror::Error;

/// Where an error came from; doubles as the `source` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorSource {
    /// The client sent something wrong.
    Client,
    /// The broker (Redis) failed.
    Broker,
    /// Herald itself failed.
    Internal,
}

impl ErrorSource {
    /// Metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Broker => "broker",
            ErrorSource::Internal => "internal",
        }
    }
}

/// Everything that can go wrong serving a request.
#[derive(Debug, Error)]
pub(crate) enum EdgeError {
    /// Malformed or invalid client input.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The namespace forbids it.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Missing or wrong credentials (API key, token).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token has expired: the client should get a fresh one.
    #[error("token expired: {0}")]
    TokenExpired(String),
    /// A limit was reached.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// A rate or a per-client cap was exceeded; retry after the given seconds, when known.
    #[error("rate limited: {message}")]
    RateLimited {
        /// What was exceeded.
        message: String,
        /// Seconds until a retry can succeed (HTTP `Retry-After`).
        retry_after: Option<u64>,
    },
    /// The message is larger than allowed.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// Already subscribed.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
    /// Not subscribed.
    #[error("not subscribed to {0}")]
    NotSubscribed(String),
    /// The node is draining or full.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An unsupported media type, method or path.
    #[error("{message}")]
    Http {
        /// Status to answer with.
        status: StatusCode,
        /// What was wrong.
        message: String,
    },
}

impl EdgeError {
    /// The error code written in error frames and HTTP bodies.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            EdgeError::Protocol(e) => e.code(),
            EdgeError::Broker(BrokerError::Unavailable(_)) => ErrorCode::Unavailable,
            EdgeError::Broker(_) => ErrorCode::Internal,
            EdgeError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            EdgeError::Unauthorized(_) => ErrorCode::Unauthorized,
            EdgeError::TokenExpired(_) => ErrorCode::TokenExpired,
            EdgeError::Limit(_) => ErrorCode::LimitExceeded,
            EdgeError::RateLimited { .. } => ErrorCode::RateLimited,
            EdgeError::TooLarge(_) => ErrorCode::MessageTooLarge,
            EdgeError::AlreadySubscribed(_) => ErrorCode::AlreadySubscribed,
            EdgeError::NotSubscribed(_) => ErrorCode::NotSubscribed,
            EdgeError::Unavailable(_) => ErrorCode::Unavailable,
            EdgeError::Http { .. } => ErrorCode::BadRequest,
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            EdgeError::Http { status, .. } => *status,
            other => StatusCode::from_u16(other.code().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// Where it came from.
    pub(crate) fn source_tag(&self) -> ErrorSource {
        match self {
            EdgeError::Broker(_) => ErrorSource::Broker,
            EdgeError::Unavailable(_) => ErrorSource::Internal,
            _ => ErrorSource::Client,
        }
    }

    /// A shorthand for an HTTP-level error.
    pub(crate) fn http(status: StatusCode, message: impl Into<String>) -> Self {
        EdgeError::Http {
            status,
            message: message.into(),
        }
    }

    /// The WebSocket close code when this error ends a connection before or at its start
    /// (authentication, admission).
    pub(crate) fn close_code(&self) -> herald_protocol::CloseCode {
        use herald_protocol::CloseCode;
        match self {
            EdgeError::Unauthorized(_) => CloseCode::Unauthorized,
            EdgeError::RateLimited { .. } | EdgeError::Limit(_) => CloseCode::RateLimited,
            EdgeError::TokenExpired(_) => CloseCode::TokenExpired,
            EdgeError::PermissionDenied(_) => CloseCode::Policy,
            EdgeError::Unavailable(_) | EdgeError::Broker(_) => CloseCode::TryAgainLater,
            _ => CloseCode::BadProtocol,
        }
    }

    /// The error frame for a WebSocket request with this id.
    pub(crate) fn frame(&self, id: Option<u64>) -> String {
        herald_protocol::frame::encode_error(id, self.code(), &self.to_string())
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let body = herald_protocol::frame::encode_error_body(self.code(), &self.to_string());
        let mut response = (
            self.status(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let EdgeError::RateLimited { retry_after, .. } = &self {
            let secs = retry_after.unwrap_or(1).max(1);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_codes() {
        let e = EdgeError::Broker(BrokerError::Unavailable("down".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.source_tag(), ErrorSource::Broker);
        let e = EdgeError::TooLarge("x".into());
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = EdgeError::Protocol(ProtocolError::BadCursor("x".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.frame(Some(3)).contains("\"id\":3"));
    }
}

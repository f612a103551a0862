//! Protocol errors and the error codes carried by `{"op":"error"}` frames.

use thiserror::Error;

/// The numeric code in an error frame (and in HTTP error bodies), with a stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// 100: something failed inside the server.
    Internal = 100,
    /// 101: missing or wrong credentials.
    Unauthorized = 101,
    /// 102: the namespace forbids this action.
    PermissionDenied = 102,
    /// 103: the `op` is not known.
    UnknownOp = 103,
    /// 104: malformed JSON, a missing or mistyped field.
    BadRequest = 104,
    /// 105: the channel name is invalid.
    InvalidChannel = 105,
    /// 106: the cursor or stream position could not be read.
    BadCursor = 106,
    /// 107: the message is larger than the configured limit.
    MessageTooLarge = 107,
    /// 108: a configured limit (such as channels per connection) was reached.
    LimitExceeded = 108,
    /// 109: already subscribed to this channel.
    AlreadySubscribed = 109,
    /// 110: not subscribed to this channel.
    NotSubscribed = 110,
    /// 111: the broker cannot take the request now (e.g. Redis is down); nothing was published.
    Unavailable = 111,
    /// 112: too many requests.
    RateLimited = 112,
    /// 113: the connection's token has expired: get a fresh one and `refresh` (or reconnect).
    TokenExpired = 113,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The stable snake_case name, also used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::BadCursor => "bad_cursor",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TokenExpired => "token_expired",
        }
    }

    /// The HTTP status that carries this code over HTTP.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Internal => 500,
            ErrorCode::Unauthorized => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::UnknownOp => 400,
            ErrorCode::BadRequest => 400,
            ErrorCode::InvalidChannel => 400,
            ErrorCode::BadCursor => 400,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::LimitExceeded => 429,
            ErrorCode::AlreadySubscribed => 409,
            ErrorCode::NotSubscribed => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::RateLimited => 429,
            ErrorCode::TokenExpired => 401,
        }
    }
}

/// Why a client's input could not be understood.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The `op` field names no known operation.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// A channel name broke the naming rules.
    #[error("invalid channel: {0}")]
    InvalidChannel(String),
    /// A cursor or position could not be decoded.
    #[error("bad cursor: {0}")]
    BadCursor(String),
}

impl ProtocolError {
    /// The error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadRequest(_) => ErrorCode::BadRequest,
            ProtocolError::UnknownOp(_) => ErrorCode::UnknownOp,
            ProtocolError::InvalidChannel(_) => ErrorCode::InvalidChannel,
            ProtocolError::BadCursor(_) => ErrorCode::BadCursor,
        }
    }
}

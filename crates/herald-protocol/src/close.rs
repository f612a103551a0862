//! WebSocket close codes used by Herald.
//!
//! | code | name | meaning | client should |
//! |------|------|---------|---------------|
//! | 1000 | Normal | closed normally (client asked, or unsubscribed from everything) | not reconnect unless it wants to |
//! | 1007 | InvalidPayload | a text frame was not valid UTF-8 | fix the client |
//! | 1008 | Policy | bad origin, forbidden | not reconnect |
//! | 1009 | TooBig | a frame exceeded the message size limit | fix the client |
//! | 1011 | Internal | internal server error | reconnect with backoff |
//! | 1012 | Restart | the edge is draining (shutdown) | reconnect elsewhere, resume |
//! | 1013 | TryAgainLater | the edge is full | reconnect with backoff |
//! | 4000 | HeartbeatTimeout | no pong within the timeout | reconnect, resume |
//! | 4008 | SlowConsumer | outbound queue full | reconnect, resume from history |
//! | 4010 | TokenExpired | the connection's token expired without a `refresh` | get a fresh token, reconnect, resume |
//! | 4029 | RateLimited | too many requests | reconnect after a pause |
//! | 4501 | Unauthorized | bad or missing credentials | not reconnect |
//! | 4502 | BadProtocol | the client broke the protocol (e.g. invalid UTF-8 text) | not reconnect |
//!
//! 4000–4499: application codes after which a reconnect is allowed; 4500–4999: do not reconnect.

/// A WebSocket close code with Herald's meaning attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal = 1000,
    /// 1007: a text frame was not valid UTF-8.
    InvalidPayload = 1007,
    /// 1008: policy violation (bad origin, forbidden).
    Policy = 1008,
    /// 1009: a frame was larger than the message size limit.
    TooBig = 1009,
    /// 1011: internal error.
    Internal = 1011,
    /// 1012: the edge is restarting/draining; reconnect elsewhere.
    Restart = 1012,
    /// 1013: the edge is full; try again later.
    TryAgainLater = 1013,
    /// 4000: heartbeat timeout (no pong).
    HeartbeatTimeout = 4000,
    /// 4008: slow consumer; the outbound queue was full.
    SlowConsumer = 4008,
    /// The connection's token expired and was not refreshed.
    TokenExpired = 4010,
    /// 4029: rate limited.
    RateLimited = 4029,
    /// 4501: unauthorized; do not reconnect.
    Unauthorized = 4501,
    /// 4502: protocol violation; do not reconnect.
    BadProtocol = 4502,
}

impl CloseCode {
    /// Every code, for lookups and tests.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::InvalidPayload,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::Restart,
        CloseCode::TryAgainLater,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::TokenExpired,
        CloseCode::RateLimited,
        CloseCode::Unauthorized,
        CloseCode::BadProtocol,
    ];

    /// The code with this number, if Herald defines one.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// A short reason text sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::InvalidPayload => "invalid UTF-8",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::Restart => "service restart",
            CloseCode::TryAgainLater => "node full, try again later",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TokenExpired => "token expired",
            CloseCode::RateLimited => "rate limited",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::BadProtocol => "bad protocol",
        }
    }

    /// Whether a client may reconnect after this code.
    pub fn reconnect_allowed(self) -> bool {
        !matches!(
            self,
            CloseCode::Policy
                | CloseCode::InvalidPayload
                | CloseCode::TooBig
                | CloseCode::Unauthorized
                | CloseCode::BadProtocol
        )
    }

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "1000",
            CloseCode::InvalidPayload => "1007",
            CloseCode::Policy => "1008",
            CloseCode::TooBig => "1009",
            CloseCode::Internal => "1011",
            CloseCode::Restart => "1012",
            CloseCode::TryAgainLater => "1013",
            CloseCode::HeartbeatTimeout => "4000",
            CloseCode::SlowConsumer => "4008",
            CloseCode::TokenExpired => "4010",
            CloseCode::RateLimited => "4029",
            CloseCode::Unauthorized => "4501",
            CloseCode::BadProtocol => "4502",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_codes_follow_the_reconnect_ranges() {
        for c in [
            CloseCode::HeartbeatTimeout,
            CloseCode::SlowConsumer,
            CloseCode::TokenExpired,
            CloseCode::RateLimited,
        ] {
            assert!((4000..4500).contains(&c.code()) && c.reconnect_allowed());
        }
        for c in [CloseCode::Unauthorized, CloseCode::BadProtocol] {
            assert!((4500..5000).contains(&c.code()) && !c.reconnect_allowed());
        }
        assert_eq!(
            CloseCode::Restart.label(),
            CloseCode::Restart.code().to_string()
        );
    }

    #[test]
    fn every_code_maps_back_from_its_number() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert_eq!(c.label(), c.code().to_string());
        }
        assert_eq!(CloseCode::from_code(0), None);
        assert_eq!(CloseCode::from_code(4001), None);
    }
}

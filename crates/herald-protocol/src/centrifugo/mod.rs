//! Centrifugo's client protocol v2, JSON form: the wire of `GET /connection/websocket`.
//!
//! Herald speaks it so Centrifugo's SDKs (centrifuge-js, centrifuge-python, centrifuge-go, …)
//! connect unchanged. It is a second encoding of the same operations as [`crate::frame`], not a
//! second model: a command is a line of JSON (`{"id":1,"subscribe":{…}}`, several per frame
//! separated by `\n`), a reply echoes its id (`{"id":1,"subscribe":{…}}` or
//! `{"id":1,"error":{"code":103,…}}`), a push has no id (`{"push":{"channel":…,"pub":{…}}}`),
//! and the heartbeat is the empty object `{}` both ways.
//!
//! * [`command`] parses client lines into typed commands;
//! * [`reply`] encodes replies and pushes (a publication push is built once per publication
//!   per node, like Herald's own message frame);
//! * this module maps Herald's error codes ([`ErrorCode`]) and close codes ([`CloseCode`]) to
//!   Centrifugo's numbers, in one place.
//!
//! Protobuf framing (the `centrifuge-protobuf` subprotocol) is not implemented.

pub mod command;
pub mod reply;

use crate::close::CloseCode;
use crate::error::ErrorCode;

/// Centrifugo's error codes (in `{"error":{"code":…}}` of a reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    /// 100: internal server error (temporary: the SDK retries).
    Internal = 100,
    /// 101: unauthorized.
    Unauthorized = 101,
    /// 102: unknown channel.
    UnknownChannel = 102,
    /// 103: permission denied.
    PermissionDenied = 103,
    /// 104: method not found.
    MethodNotFound = 104,
    /// 105: already subscribed.
    AlreadySubscribed = 105,
    /// 106: limit exceeded.
    LimitExceeded = 106,
    /// 107: bad request.
    BadRequest = 107,
    /// 108: not available (`rpc`, `send`).
    NotAvailable = 108,
    /// 109: token expired (the SDK asks its token callback for a fresh one).
    TokenExpired = 109,
    /// 110: expired.
    Expired = 110,
    /// 111: too many requests (temporary).
    TooManyRequests = 111,
    /// 112: unrecoverable position.
    UnrecoverablePosition = 112,
}

impl Code {
    /// The number.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Whether the SDK should retry the same command (Centrifugo's `temporary` flag).
    pub fn temporary(self) -> bool {
        matches!(self, Code::Internal | Code::TooManyRequests)
    }

    /// The code a Herald error is written with on this endpoint.
    pub fn from_herald(code: ErrorCode) -> Code {
        match code {
            ErrorCode::Internal | ErrorCode::Unavailable => Code::Internal,
            ErrorCode::Unauthorized => Code::Unauthorized,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::UnknownOp => Code::MethodNotFound,
            ErrorCode::BadRequest
            | ErrorCode::InvalidChannel
            | ErrorCode::BadCursor
            | ErrorCode::MessageTooLarge
            | ErrorCode::NotSubscribed => Code::BadRequest,
            ErrorCode::LimitExceeded => Code::LimitExceeded,
            ErrorCode::AlreadySubscribed => Code::AlreadySubscribed,
            ErrorCode::RateLimited => Code::TooManyRequests,
            ErrorCode::TokenExpired => Code::TokenExpired,
        }
    }
}

/// A Centrifugo disconnect: the WebSocket close code and reason (and the `disconnect` push).
/// Codes 3000–3499 (and 4000–4499) let the SDK reconnect; 3500–3999 (and 4500–4999) do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
}

impl Disconnect {
    /// 3501: a frame that is no command, a command before `connect`, too many commands in
    /// one frame, a binary frame (no protobuf here).
    pub const BAD_REQUEST: Disconnect = Disconnect {
        code: 3501,
        reason: "bad request",
    };

    /// Whether the SDK reconnects after it.
    pub fn reconnect(self) -> bool {
        !((3500..4000).contains(&self.code) || (4500..5000).contains(&self.code))
    }

    /// The disconnect a Herald close code is written as on this endpoint.
    pub fn from_herald(code: CloseCode) -> Disconnect {
        let (code, reason) = match code {
            CloseCode::Normal => (3000, "connection closed"),
            CloseCode::InvalidPayload | CloseCode::BadProtocol => (3501, "bad request"),
            CloseCode::Policy => (3507, "permission denied"),
            // The SDKs know 1009 (they report a message size limit).
            CloseCode::TooBig => (1009, "message too big"),
            CloseCode::Internal => (3004, "internal server error"),
            CloseCode::Restart => (3001, "shutdown"),
            CloseCode::TryAgainLater => (3004, "node full, try again later"),
            CloseCode::HeartbeatTimeout => (3012, "no pong"),
            CloseCode::SlowConsumer => (3008, "slow"),
            CloseCode::TokenExpired => (3005, "connection expired"),
            CloseCode::RateLimited => (3013, "too many requests"),
            CloseCode::Unauthorized => (3500, "invalid token"),
        };
        Disconnect { code, reason }
    }
}

/// The unsubscribe push code that makes the SDK resubscribe (and recover): Herald lost track
/// of the channel's position (history reset, or a gap it could not fill).
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: u32 = 2500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_herald_close_code_maps_to_a_centrifugo_disconnect_with_the_same_reconnect_rule() {
        for code in CloseCode::ALL {
            let d = Disconnect::from_herald(code);
            assert!(d.code == 1009 || (3000..5000).contains(&d.code), "{code:?}");
            if d.code != 1009 {
                assert_eq!(d.reconnect(), code.reconnect_allowed(), "{code:?}");
            }
        }
        assert!(!Disconnect::BAD_REQUEST.reconnect());
    }

    #[test]
    fn the_codes_the_sdks_act_on() {
        assert_eq!(Code::from_herald(ErrorCode::PermissionDenied).code(), 103);
        assert_eq!(Code::from_herald(ErrorCode::TokenExpired).code(), 109);
        assert_eq!(Code::from_herald(ErrorCode::AlreadySubscribed).code(), 105);
        assert!(Code::from_herald(ErrorCode::Unavailable).temporary());
        assert!(Code::from_herald(ErrorCode::RateLimited).temporary());
        assert!(!Code::TokenExpired.temporary());
    }
}

//! Stable error codes. A code's number never changes meaning; new codes are only added.
//!
//! Ranges: 1xxx protocol, 2xxx authentication and permission, 3xxx limits, 4xxx requests,
//! 5xxx server state. The same number is the WebTransport/QUIC application close code; the
//! WebSocket close code is derived by [`ErrorCode::ws_close_code`] (4000–4999).

/// Why a request failed or a session was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Bytes that do not decode as a frame.
    Malformed = 1000,
    /// A frame longer than `max_frame`.
    FrameTooLarge = 1001,
    /// A frame that is valid but not allowed at this point (e.g. no `Hello` first).
    UnexpectedFrame = 1002,
    /// `Hello` with a protocol version the server does not speak.
    UnsupportedVersion = 1003,
    /// No `Hello` within the handshake timeout.
    HandshakeTimeout = 1004,
    /// Nothing received within the idle timeout (missed heartbeats).
    IdleTimeout = 1005,
    /// A WebSocket text message, or another transport misuse.
    BadTransport = 1006,

    /// No or invalid credential.
    Unauthorized = 2000,
    /// The credential has expired (at connect or mid-session after the grace period).
    TokenExpired = 2001,
    /// The credential does not allow this operation on this channel.
    Forbidden = 2002,
    /// The credential is not valid yet (`nbf`).
    TokenNotYetValid = 2003,

    /// Publishing faster than the session's rate.
    RateLimited = 3000,
    /// Too many subscriptions in one session.
    TooManySubscriptions = 3001,
    /// A `datagram` payload larger than `max_datagram_payload`.
    DatagramTooLarge = 3002,
    /// Presence info larger than allowed.
    PresenceTooLarge = 3003,
    /// Too many connections from one address, or node-wide connection rate exceeded.
    TooManyConnections = 3004,
    /// The session could not keep up with reliable traffic; reconnect and recover.
    SlowConsumer = 3005,
    /// A payload larger than the namespace allows.
    PayloadTooLarge = 3006,

    /// Channel name empty, too long, or with characters outside the allowed set.
    BadChannel = 4000,
    /// No namespace policy matches the channel.
    UnknownNamespace = 4001,
    /// The namespace does not allow this delivery mode.
    ModeNotAllowed = 4002,
    /// Already subscribed to the channel.
    AlreadySubscribed = 4003,
    /// Not subscribed to the channel.
    NotSubscribed = 4004,
    /// A request that is missing a required field (e.g. `latest` without a key).
    BadRequest = 4005,

    /// The node is shutting down or draining.
    GoingAway = 5000,
    /// An internal error; the session may retry.
    Internal = 5001,
    /// The channel's home node cannot be reached right now.
    Unavailable = 5002,
}

impl ErrorCode {
    /// Every code, for docs, tests and other-language SDKs.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnexpectedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::BadTransport,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::TokenNotYetValid,
        ErrorCode::RateLimited,
        ErrorCode::TooManySubscriptions,
        ErrorCode::DatagramTooLarge,
        ErrorCode::PresenceTooLarge,
        ErrorCode::TooManyConnections,
        ErrorCode::SlowConsumer,
        ErrorCode::PayloadTooLarge,
        ErrorCode::BadChannel,
        ErrorCode::UnknownNamespace,
        ErrorCode::ModeNotAllowed,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::BadRequest,
        ErrorCode::GoingAway,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is known.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// WebSocket close code, in the private-use range 4000–4999:
    /// `4000 + 100 * (code / 1000 - 1) + code % 100` (so 1004 → 4004, 3005 → 4205). Distinct for
    /// every code while each range holds fewer than 100 codes.
    pub fn ws_close_code(self) -> u16 {
        let c = self.code();
        4000 + (c / 1000 - 1) * 100 + c % 100
    }

    /// HTTP status for errors answered over HTTP (publish API, refused upgrades).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::TokenNotYetValid => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::RateLimited | ErrorCode::TooManyConnections => 429,
            ErrorCode::FrameTooLarge | ErrorCode::PayloadTooLarge | ErrorCode::DatagramTooLarge => {
                413
            }
            ErrorCode::UnknownNamespace | ErrorCode::NotSubscribed => 404,
            ErrorCode::GoingAway | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }

    /// Short stable name, used as a metrics label and in logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnexpectedFrame => "unexpected_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::BadTransport => "bad_transport",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::DatagramTooLarge => "datagram_too_large",
            ErrorCode::PresenceTooLarge => "presence_too_large",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::UnknownNamespace => "unknown_namespace",
            ErrorCode::ModeNotAllowed => "mode_not_allowed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::GoingAway => "going_away",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_ws_close_codes_are_distinct() {
        let codes: HashSet<u16> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        let ws: HashSet<u16> = ErrorCode::ALL.iter().map(|c| c.ws_close_code()).collect();
        assert_eq!(ws.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert!((4000..5000).contains(&c.ws_close_code()), "{c}");
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
    }
}

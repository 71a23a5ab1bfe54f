//! Credentials to grants. Pure: no I/O per request (keys are loaded once by [`Verifier::new`]).
//!
//! Must not import `session`, `transport`, `relay` or `api`.

use serde::Deserialize;

use crate::protocol::ErrorCode;

/// What a grant allows on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Publish to the channel.
    Publish,
    /// Subscribe to the channel.
    Subscribe,
    /// Join and read the channel's presence.
    Presence,
}

/// Authentication settings (`[auth]` in the config file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HS256 shared secret for client tokens.
    pub hs256_secret: Option<String>,
    /// Accept connections without a token (anonymous grant; namespaces decide what it may do).
    #[serde(default)]
    pub allow_anonymous: bool,
}

/// Authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No usable credential, or a bad signature or shape.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
}

impl AuthError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Invalid(_) => ErrorCode::Unauthorized,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::NotYetValid => ErrorCode::TokenNotYetValid,
        }
    }
}

/// What an authenticated (or anonymous) connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// User id (`sub`), empty for anonymous.
    pub user: String,
    /// Unix seconds at which the credential expires.
    pub expires_at: Option<u64>,
    /// `true` for a connection without a token.
    pub anonymous: bool,
    allow_all: bool,
}

impl Grant {
    /// A grant for a connection without credentials: it can do only what namespaces allow
    /// anonymous users.
    pub fn anonymous() -> Self {
        Grant {
            user: String::new(),
            expires_at: None,
            anonymous: true,
            allow_all: false,
        }
    }

    /// A grant that may do everything (backends through the API key, dev mode).
    pub fn superuser(user: impl Into<String>) -> Self {
        Grant {
            user: user.into(),
            expires_at: None,
            anonymous: false,
            allow_all: true,
        }
    }

    /// Whether this grant allows `cap` on `channel`.
    pub fn allows(&self, _cap: Cap, _channel: &str) -> bool {
        self.allow_all
    }
}

/// Verifies client credentials.
#[derive(Debug, Clone)]
pub struct Verifier {
    config: Config,
}

impl Verifier {
    /// Builds a verifier, loading any key files once.
    pub fn new(config: &Config) -> Result<Self, AuthError> {
        Ok(Verifier {
            config: config.clone(),
        })
    }

    /// Maps a token (empty for none) to a grant at `now_unix` seconds.
    pub fn verify(&self, token: &str, _now_unix: u64) -> Result<Grant, AuthError> {
        if token.is_empty() {
            if self.config.allow_anonymous {
                return Ok(Grant::anonymous());
            }
            return Err(AuthError::Invalid("a token is required".into()));
        }
        Err(AuthError::Invalid(
            "token verification is not configured".into(),
        ))
    }
}

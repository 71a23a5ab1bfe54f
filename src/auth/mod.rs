//! Credentials to grants. Pure: no I/O per request (keys are loaded once by [`Verifier::new`]).
//!
//! Must not import `session`, `transport`, `relay` or `api`.
//!
//! # Tokens
//!
//! Clients present a JWT (JWS compact form) in `Hello` and `Refresh`. [`Verifier::verify`]
//! accepts it when:
//!
//! - the header's `alg` is one a configured key is meant for (see *Keys*); `none` and any
//!   algorithm without a matching key are refused;
//! - the signature verifies with that key;
//! - `iss` equals `issuer` and `aud` equals (or, as an array, contains) `audience`, for each of
//!   the two that is configured. An unconfigured one is not checked;
//! - `exp` is present and `now < exp + leeway_secs`; `nbf`, when present, satisfies
//!   `now + leeway_secs >= nbf`. `now` is the `now_unix` argument, never the wall clock;
//! - `sub` is a non-empty string: it becomes [`Grant::user`];
//! - the capability claim, when present, has the shape below and only valid patterns.
//!
//! # Claim format
//!
//! Channel permissions live in one claim, `edgegate` by default (the name is configurable
//! with `capabilities_claim`, for identity providers that require namespaced custom claims):
//!
//! ```json
//! {
//!   "sub": "alice",
//!   "exp": 1767225600,
//!   "edgegate": {
//!     "pub": ["chat:*", "prices:BTC-USD"],
//!     "sub": ["*"],
//!     "presence": ["room:*"],
//!     "allow": ["room:lobby"]
//!   }
//! }
//! ```
//!
//! - `pub`: channels the user may publish to ([`Cap::Publish`]).
//! - `sub`: channels the user may subscribe to ([`Cap::Subscribe`]). Inside the capability
//!   claim `sub` means *subscribe*; the top-level `sub` is the user id.
//! - `presence`: channels whose presence the user may join and read ([`Cap::Presence`]).
//! - `allow`: shorthand for all three.
//!
//! Every key is optional; a missing key (or a missing claim) grants nothing beyond what a
//! namespace allows anonymous users. Unknown keys make the token invalid, so a typo such as
//! `"publish"` fails loudly instead of silently granting nothing.
//!
//! A pattern is one of:
//!
//! - `*`: every channel;
//! - `ns:*`: every channel in namespace `ns` (the part of the channel name before its first
//!   `:`), so `room:*` matches `room:42` and `room:eu/7` but not `rooms:1` or `room`;
//! - anything else without `*`: exactly that channel name.
//!
//! Any other use of `*` (`room:eu-*`, `*:x`, `:*`) or an empty pattern makes the token invalid.
//!
//! # Keys
//!
//! - `hs256_secret`: a shared secret, at least [`MIN_SECRET_LEN`] bytes, for `HS256` only.
//! - `public_key_files`: PEM files, one public key each (`PUBLIC KEY` or `RSA PUBLIC KEY`). An
//!   RSA key accepts `RS256/384/512` and `PS256/384/512`; an EC key accepts `ES256` (P-256) or
//!   `ES384` (P-384) according to its curve; an Ed25519 key accepts `EdDSA`. Private keys and
//!   certificates are refused at start-up.
//! - `jwks_file`: a JWK set (`{"keys": [...]}`) with RSA, EC (P-256, P-384) and OKP (Ed25519)
//!   public keys. A key's `alg`, when present, narrows it to that one algorithm. Keys marked
//!   `"use": "enc"` are skipped; symmetric (`oct`) and private keys are refused at start-up.
//!
//! Key selection: a token whose header carries a `kid` is tried against the keys with that
//! `kid`, or, when no key has it, against the keys without a `kid` (PEM files, the secret). A
//! token without `kid` is tried against every key. Only keys whose algorithm list contains the
//! token's `alg` are ever tried, so a token can never make an RSA or EC public key serve as an
//! HMAC secret (the classic algorithm-confusion attack), and an HMAC secret is never used for
//! a token that claims an asymmetric algorithm.
//!
//! # Minting
//!
//! [`mint_hs256`] makes the tokens `edgegate token` prints: `sub`, `iat`, `exp` and an
//! `edgegate` claim holding `allow`. It always writes the default claim name.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::protocol::ErrorCode;

mod keys;
mod mint;
use keys::{load_jwks, load_pem, read};
pub use mint::{mint_hs256, parse_ttl};

/// Shortest accepted HS256 secret in bytes: RFC 7518 §3.2 requires an HMAC key at least as
/// long as the hash output (256 bits); shorter secrets can be brute-forced offline from any
/// one token.
pub const MIN_SECRET_LEN: usize = 32;

/// Longest token [`Verifier::verify`] looks at, in bytes. A realistic token (RS256 with a
/// 4096-bit key and a hundred channel patterns) stays under 4 KiB; the bound keeps the work an
/// unauthenticated client can cause small.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Default clock-skew allowance for `exp` and `nbf`, in seconds: enough for NTP-synchronised
/// hosts, short enough that an expired token is not usable for long.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// Default name of the capability claim.
pub const DEFAULT_CLAIM: &str = "edgegate";

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
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HS256 shared secret for client tokens (at least [`MIN_SECRET_LEN`] bytes).
    pub hs256_secret: Option<String>,
    /// PEM files with one RSA, EC or Ed25519 public key each.
    pub public_key_files: Vec<PathBuf>,
    /// A JWK set file with public keys, chosen by the token's `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim; not checked when unset.
    pub issuer: Option<String>,
    /// Required `aud` claim (or member of it); not checked when unset.
    pub audience: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds (default 5).
    pub leeway_secs: u64,
    /// Name of the claim holding channel capabilities (default `edgegate`).
    pub capabilities_claim: String,
    /// Accept connections without a token (anonymous grant; namespaces decide what it may do).
    pub allow_anonymous: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hs256_secret: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            capabilities_claim: DEFAULT_CLAIM.to_owned(),
            allow_anonymous: false,
        }
    }
}

// Written by hand so the secret never reaches a log line.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("public_key_files", &self.public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("capabilities_claim", &self.capabilities_claim)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
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

    fn invalid(reason: impl Into<String>) -> Self {
        AuthError::Invalid(reason.into())
    }
}

/// The `[auth]` configuration cannot be turned into a [`Verifier`] (checked at start-up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// `hs256_secret` is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("auth.hs256_secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    WeakSecret {
        /// Length of the configured secret in bytes.
        len: usize,
    },
    /// A key file could not be read.
    #[error("cannot read key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file does not hold exactly one usable public key.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS file is not JSON of the shape `{"keys": [...]}`.
    #[error("{}: not a JWK set", path.display())]
    Jwks {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// One key in the JWKS file is unusable.
    #[error("{}: key #{index}{}: {reason}", path.display(), kid_suffix(kid))]
    Jwk {
        /// The file.
        path: PathBuf,
        /// Position of the key in `keys`, from 0.
        index: usize,
        /// The key's `kid`, if it has one.
        kid: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// Another setting is unusable.
    #[error("auth config: {0}")]
    Config(String),
}

fn kid_suffix(kid: &Option<String>) -> String {
    kid.as_ref()
        .map(|k| format!(" (kid {k:?})"))
        .unwrap_or_default()
}

/// Minting a token, or parsing its lifetime, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("the secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    WeakSecret {
        /// Length of the given secret in bytes.
        len: usize,
    },
    /// The subject (user id) is empty.
    #[error("the subject (user id) is empty")]
    EmptySubject,
    /// A channel pattern is malformed.
    #[error("bad channel pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The lifetime is zero, unparsable or too large.
    #[error("bad token lifetime: {0}")]
    Ttl(String),
    /// The signing library failed.
    #[error("cannot encode the token")]
    Encode(#[source] jsonwebtoken::errors::Error),
}

/// A set of channel patterns, compiled for matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Patterns {
    all: bool,
    namespaces: BTreeSet<String>,
    exact: BTreeSet<String>,
}

impl Patterns {
    fn everything() -> Self {
        Patterns {
            all: true,
            ..Patterns::default()
        }
    }

    fn add(&mut self, pattern: &str) -> Result<(), &'static str> {
        match parse_pattern(pattern)? {
            Pattern::All => self.all = true,
            Pattern::Namespace(ns) => {
                self.namespaces.insert(ns.to_owned());
            }
            Pattern::Exact(name) => {
                self.exact.insert(name.to_owned());
            }
        }
        Ok(())
    }

    fn matches(&self, channel: &str) -> bool {
        self.all
            || self.exact.contains(channel)
            || channel
                .split_once(':')
                .is_some_and(|(ns, _)| self.namespaces.contains(ns))
    }
}

enum Pattern<'a> {
    All,
    Namespace(&'a str),
    Exact(&'a str),
}

fn parse_pattern(pattern: &str) -> Result<Pattern<'_>, &'static str> {
    if pattern.is_empty() {
        return Err("empty pattern");
    }
    if pattern == "*" {
        return Ok(Pattern::All);
    }
    if let Some(ns) = pattern.strip_suffix(":*") {
        if ns.is_empty() {
            return Err("namespace before `:*` is empty");
        }
        if ns.contains(':') || ns.contains('*') {
            return Err("`*` only as `*` or `namespace:*`, and a namespace has no `:`");
        }
        return Ok(Pattern::Namespace(ns));
    }
    if pattern.contains('*') {
        return Err("`*` only as `*` or `namespace:*`");
    }
    Ok(Pattern::Exact(pattern))
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
    publish: Patterns,
    subscribe: Patterns,
    presence: Patterns,
}

impl Grant {
    /// A grant for a connection without credentials: it can do only what namespaces allow
    /// anonymous users.
    pub fn anonymous() -> Self {
        Grant {
            user: String::new(),
            expires_at: None,
            anonymous: true,
            publish: Patterns::default(),
            subscribe: Patterns::default(),
            presence: Patterns::default(),
        }
    }

    /// A grant that may do everything (backends through the API key, dev mode).
    pub fn superuser(user: impl Into<String>) -> Self {
        Grant {
            user: user.into(),
            expires_at: None,
            anonymous: false,
            publish: Patterns::everything(),
            subscribe: Patterns::everything(),
            presence: Patterns::everything(),
        }
    }

    /// Whether this grant allows `cap` on `channel` (see the module doc for patterns).
    pub fn allows(&self, cap: Cap, channel: &str) -> bool {
        match cap {
            Cap::Publish => self.publish.matches(channel),
            Cap::Subscribe => self.subscribe.matches(channel),
            Cap::Presence => self.presence.matches(channel),
        }
    }
}

/// The capability claim as tokens carry it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilityClaim {
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
    #[serde(default, rename = "sub")]
    subscribe: Vec<String>,
    #[serde(default)]
    presence: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

/// One verification key and the algorithms it may verify.
#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Verifies client credentials. Cheap to clone (the keys are shared).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Arc<[Key]>,
    allow_anonymous: bool,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
    claim: String,
}

impl Verifier {
    /// Builds a verifier, reading and checking every key file once.
    pub fn new(config: &Config) -> Result<Self, LoadError> {
        if config.capabilities_claim.is_empty() {
            return Err(LoadError::Config("capabilities_claim is empty".into()));
        }
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(LoadError::WeakSecret { len: secret.len() });
            }
            keys.push(Key {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in &config.public_key_files {
            keys.push(load_pem(path, &read(path)?)?);
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(load_jwks(path, &read(path)?)?);
        }
        Ok(Verifier {
            keys: keys.into(),
            allow_anonymous: config.allow_anonymous,
            leeway: config.leeway_secs,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            claim: config.capabilities_claim.clone(),
        })
    }

    /// Whether any key is configured, i.e. whether a token can ever verify. Start-up uses it
    /// to refuse a configuration where nobody can authenticate.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether connections without a token get [`Grant::anonymous`].
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Maps a token (empty for none) to a grant at `now_unix` seconds.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Grant, AuthError> {
        if token.is_empty() {
            if self.allow_anonymous {
                return Ok(Grant::anonymous());
            }
            return Err(AuthError::invalid("a token is required"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::invalid(format!(
                "token longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        // `alg: none` and unknown algorithms fail here: `Algorithm` has no such variant.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::invalid("malformed token or unsupported algorithm"))?;
        let alg = header.alg;

        let usable = |k: &&Key| k.algorithms.contains(&alg);
        let kid = header.kid.as_deref();
        let named = |k: &&Key| kid.is_some() && k.kid.as_deref() == kid;
        // A known `kid` pins the key; an unknown one falls back to the keys without a `kid`.
        let candidates: Vec<&Key> = if kid.is_none() {
            self.keys.iter().filter(usable).collect()
        } else if self.keys.iter().any(|k| named(&k)) {
            self.keys.iter().filter(named).filter(usable).collect()
        } else {
            self.keys
                .iter()
                .filter(|k| k.kid.is_none())
                .filter(usable)
                .collect()
        };
        if candidates.is_empty() {
            return Err(AuthError::invalid(format!(
                "no key accepts algorithm {alg:?}{}",
                header
                    .kid
                    .as_ref()
                    .map(|k| format!(" with kid {k:?}"))
                    .unwrap_or_default()
            )));
        }

        // Only the signature is checked here; every claim is checked below against
        // `now_unix`, because jsonwebtoken's own time checks read the wall clock.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;

        let mut first_error = None;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => return self.grant(data.claims, now_unix),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(AuthError::invalid(
            match first_error.as_ref().map(|e| e.kind()) {
                Some(jsonwebtoken::errors::ErrorKind::InvalidSignature) | None => "bad signature",
                Some(_) => "malformed token or signature",
            },
        ))
    }

    /// Checks the claims of a token whose signature verified.
    fn grant(&self, claims: Value, now: u64) -> Result<Grant, AuthError> {
        let Value::Object(mut claims) = claims else {
            return Err(AuthError::invalid("claims are not a JSON object"));
        };

        if let Some(issuer) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == issuer => {}
                Some(_) => return Err(AuthError::invalid("issuer not accepted")),
                None => return Err(AuthError::invalid("token has no `iss`")),
            }
        }
        if let Some(audience) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                Some(_) => false,
                None => return Err(AuthError::invalid("token has no `aud`")),
            };
            if !ok {
                return Err(AuthError::invalid("audience not accepted"));
            }
        }

        let exp = match claims.get("exp") {
            None => return Err(AuthError::invalid("token has no `exp`")),
            Some(v) => numeric_date(v, Round::Down)
                .ok_or_else(|| AuthError::invalid("`exp` is not a time"))?,
        };
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v, Round::Up)
                .ok_or_else(|| AuthError::invalid("`nbf` is not a time"))?;
            if now.saturating_add(self.leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }

        let user = match claims.remove("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            Some(_) => return Err(AuthError::invalid("`sub` is not a non-empty string")),
            None => return Err(AuthError::invalid("token has no `sub`")),
        };

        let mut grant = Grant {
            user,
            expires_at: Some(exp),
            anonymous: false,
            publish: Patterns::default(),
            subscribe: Patterns::default(),
            presence: Patterns::default(),
        };
        if let Some(caps) = claims.remove(&self.claim) {
            let caps: CapabilityClaim = serde_json::from_value(caps).map_err(|e| {
                AuthError::invalid(format!("claim `{}` is malformed: {e}", self.claim))
            })?;
            let bad = |p: &str, reason: &str| {
                AuthError::invalid(format!("bad channel pattern {p:?}: {reason}"))
            };
            for (list, set) in [
                (&caps.publish, &mut grant.publish),
                (&caps.subscribe, &mut grant.subscribe),
                (&caps.presence, &mut grant.presence),
            ] {
                for p in list {
                    set.add(p).map_err(|r| bad(p, r))?;
                }
            }
            for p in &caps.allow {
                for set in [
                    &mut grant.publish,
                    &mut grant.subscribe,
                    &mut grant.presence,
                ] {
                    set.add(p).map_err(|r| bad(p, r))?;
                }
            }
        }
        Ok(grant)
    }
}

#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// A JWT NumericDate (seconds, possibly fractional) as whole seconds, rounded in the
/// direction that never extends validity.
fn numeric_date(v: &Value, round: Round) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // 2^53: beyond it f64 has no fractional part and the cast below would be lossy anyway.
    if !(0.0..=9_007_199_254_740_992.0).contains(&f) {
        return None;
    }
    let whole = match round {
        Round::Down => f.floor(),
        Round::Up => f.ceil(),
    };
    Some(whole as u64)
}

/// Compares two secrets (e.g. the HTTP API key) in time that depends only on their lengths,
/// not on where they first differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests;

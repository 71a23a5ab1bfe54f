//! Minting development tokens (`edgegate token`).

use super::*;

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    edgegate: Option<MintedCaps<'a>>,
}

#[derive(Serialize)]
struct MintedCaps<'a> {
    allow: &'a [String],
}

/// Makes an HS256 token for `sub`, valid from `now_unix` for `ttl_secs` seconds, allowing
/// publish, subscribe and presence on every pattern in `allow` (see the module doc). This is
/// what `edgegate token` prints.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    allow: &[String],
    ttl_secs: u64,
    now_unix: u64,
) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(MintError::WeakSecret { len: secret.len() });
    }
    if sub.is_empty() {
        return Err(MintError::EmptySubject);
    }
    for p in allow {
        parse_pattern(p).map_err(|reason| MintError::Pattern {
            pattern: p.clone(),
            reason,
        })?;
    }
    if ttl_secs == 0 {
        return Err(MintError::Ttl("zero".into()));
    }
    let exp = now_unix
        .checked_add(ttl_secs)
        .ok_or_else(|| MintError::Ttl("expiry overflows".into()))?;
    let claims = MintedClaims {
        sub,
        iat: now_unix,
        exp,
        edgegate: (!allow.is_empty()).then_some(MintedCaps { allow }),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(MintError::Encode)
}

/// Parses a token lifetime: one or more `<number><unit>` groups with units `s`, `m`, `h`,
/// `d` (`45s`, `30m`, `1h`, `2d`, `1h30m`), or a bare number of seconds. Zero is refused.
pub fn parse_ttl(text: &str) -> Result<u64, MintError> {
    let bad = |why: &str| MintError::Ttl(format!("{text:?}: {why}"));
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|_| bad("too large"))?;
        return if secs == 0 {
            Err(bad("zero"))
        } else {
            Ok(secs)
        };
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad("too large"))?;
        let unit = match rest.as_bytes().get(digits) {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            Some(_) => return Err(bad("unit must be s, m, h or d")),
            None => return Err(bad("missing unit after the last number")),
        };
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| bad("too large"))?;
        rest = &rest[digits + 1..];
    }
    if total == 0 {
        return Err(bad("zero"));
    }
    Ok(total)
}

//! `auth`: token verification end to end with real keys. Time is always an argument; no
//! test reads the clock or sleeps.
//!
//! EC and Ed25519 keys are generated per test with `rcgen`. RSA keys cannot be generated
//! without a new dependency (ring, under rcgen, does not generate RSA), so a 2048-bit test-only
//! pair lives in `tests/data/` (see its README).

use std::path::{Path, PathBuf};

use edgegate::auth::{
    self, AuthError, Cap, Config, Grant, LoadError, MIN_SECRET_LEN, MintError, Verifier,
};
use edgegate::protocol::ErrorCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const NOW: u64 = 1_700_000_000;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn rsa_private() -> EncodingKey {
    let pem = std::fs::read(data("rsa_test_private.pem")).expect("test data present");
    EncodingKey::from_rsa_pem(&pem).expect("test RSA key parses")
}

/// A temporary directory removed on drop; named per test so parallel tests don't collide.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("edgegate-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An EC key pair: the private key to sign with and the public key PEM to configure.
struct EcKey {
    signing: EncodingKey,
    public_pem: String,
    alg: Algorithm,
}

fn ec_key(alg: Algorithm) -> EcKey {
    let rc_alg = match alg {
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        other => panic!("not an EC algorithm: {other:?}"),
    };
    let pair = rcgen::KeyPair::generate_for(rc_alg).expect("generate EC key");
    EcKey {
        signing: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC pkcs8"),
        public_pem: pair.public_key_pem(),
        alg,
    }
}

fn sign(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).expect("encode")
}

fn hs256(claims: &Value) -> String {
    sign(
        Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn with_kid(alg: Algorithm, kid: &str) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    h
}

fn claims(exp: u64) -> Value {
    json!({"sub": "alice", "exp": exp, "edgegate": {"allow": ["room:*"]}})
}

fn hs_verifier() -> Verifier {
    Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        ..Config::default()
    })
    .expect("loads")
}

fn verifier_with_keys(files: Vec<PathBuf>) -> Verifier {
    Verifier::new(&Config {
        public_key_files: files,
        ..Config::default()
    })
    .expect("loads")
}

fn invalid(r: Result<Grant, AuthError>) -> String {
    match r {
        Err(AuthError::Invalid(why)) => why,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Replaces the header of a token, keeping payload and signature.
fn swap_header(token: &str, header_json: &str) -> String {
    let (_, rest) = token.split_once('.').expect("three parts");
    format!("{}.{rest}", b64url(header_json.as_bytes()))
}

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

// ---- HS256 -------------------------------------------------------------------------------

#[test]
fn hs256_valid_token_gives_its_grant() {
    let g = hs_verifier()
        .verify(&hs256(&claims(NOW + 60)), NOW)
        .expect("valid");
    assert_eq!(g.user, "alice");
    assert_eq!(g.expires_at, Some(NOW + 60));
    assert!(!g.anonymous);
    assert!(g.allows(Cap::Publish, "room:1"));
    assert!(g.allows(Cap::Subscribe, "room:1"));
    assert!(g.allows(Cap::Presence, "room:1"));
    assert!(!g.allows(Cap::Subscribe, "chat:1"));
}

#[test]
fn hs256_expired_and_not_yet_valid() {
    let v = hs_verifier();
    let e = v.verify(&hs256(&claims(NOW - 3600)), NOW).unwrap_err();
    assert_eq!(e, AuthError::Expired);
    assert_eq!(e.code(), ErrorCode::TokenExpired);
    assert_eq!(e.code().code(), 2001);

    let future = json!({"sub": "alice", "exp": NOW + 7200, "nbf": NOW + 3600});
    let e = v.verify(&hs256(&future), NOW).unwrap_err();
    assert_eq!(e, AuthError::NotYetValid);
    assert_eq!(e.code(), ErrorCode::TokenNotYetValid);
    assert_eq!(e.code().code(), 2003);
    // The same token is fine once its time has come.
    assert!(v.verify(&hs256(&future), NOW + 3600).is_ok());
}

#[test]
fn leeway_edges_are_exact() {
    let v = hs_verifier(); // default leeway: 5 s
    let leeway = auth::DEFAULT_LEEWAY_SECS;
    // exp: valid while now < exp + leeway.
    assert!(v.verify(&hs256(&claims(NOW)), NOW + leeway - 1).is_ok());
    assert_eq!(
        v.verify(&hs256(&claims(NOW)), NOW + leeway),
        Err(AuthError::Expired)
    );
    // nbf: valid once now + leeway >= nbf.
    let nbf = |n: u64| json!({"sub": "a", "exp": NOW + 1000, "nbf": n});
    assert!(v.verify(&hs256(&nbf(NOW + leeway)), NOW).is_ok());
    assert_eq!(
        v.verify(&hs256(&nbf(NOW + leeway + 1)), NOW),
        Err(AuthError::NotYetValid)
    );

    let strict = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        leeway_secs: 0,
        ..Config::default()
    })
    .expect("loads");
    assert!(strict.verify(&hs256(&claims(NOW + 1)), NOW).is_ok());
    assert_eq!(
        strict.verify(&hs256(&claims(NOW)), NOW),
        Err(AuthError::Expired)
    );
}

#[test]
fn hs256_wrong_secret_is_unauthorized() {
    let token = sign(
        Header::new(Algorithm::HS256),
        &claims(NOW + 60),
        &EncodingKey::from_secret(b"another-secret-0123456789abcdef-xyz"),
    );
    let e = hs_verifier().verify(&token, NOW).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
    assert_eq!(e.code().code(), 2000);
}

#[test]
fn forged_expired_token_reports_invalid_not_expired() {
    // Time is only judged after the signature: a forger learns nothing from the answer.
    let token = sign(
        Header::new(Algorithm::HS256),
        &claims(NOW - 3600),
        &EncodingKey::from_secret(b"another-secret-0123456789abcdef-xyz"),
    );
    invalid(hs_verifier().verify(&token, NOW));
}

#[test]
fn garbage_is_unauthorized_without_panicking() {
    let v = hs_verifier();
    let long = "a".repeat(auth::MAX_TOKEN_LEN + 1);
    for token in [
        "x",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "\u{0}\u{1}.\u{ff}.é",
        long.as_str(),
    ] {
        invalid(v.verify(token, NOW));
    }
    // A tampered payload under a valid signature.
    let token = hs256(&claims(NOW + 60));
    let parts: Vec<&str> = token.split('.').collect();
    let evil = b64url(br#"{"sub":"mallory","exp":9999999999,"edgegate":{"allow":["*"]}}"#);
    invalid(v.verify(&format!("{}.{evil}.{}", parts[0], parts[2]), NOW));
}

#[test]
fn alg_none_is_refused() {
    let v = hs_verifier();
    let payload = b64url(claims(NOW + 60).to_string().as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"typ":"JWT"}"#,
    ] {
        let h = b64url(header.as_bytes());
        invalid(v.verify(&format!("{h}.{payload}."), NOW));
        // Even with the valid signature of an HS256 token attached.
        let real = hs256(&claims(NOW + 60));
        invalid(v.verify(&swap_header(&real, header), NOW));
    }
}

#[test]
fn required_claims() {
    let v = hs_verifier();
    let why = invalid(v.verify(&hs256(&json!({"sub": "alice"})), NOW));
    assert!(why.contains("exp"), "{why}");
    let why = invalid(v.verify(&hs256(&json!({"exp": NOW + 60})), NOW));
    assert!(why.contains("sub"), "{why}");
    invalid(v.verify(&hs256(&json!({"sub": "", "exp": NOW + 60})), NOW));
    invalid(v.verify(&hs256(&json!({"sub": 7, "exp": NOW + 60})), NOW));
    invalid(v.verify(&hs256(&json!({"sub": "a", "exp": "tomorrow"})), NOW));
    invalid(v.verify(
        &hs256(&json!({"sub": "a", "exp": NOW + 60, "nbf": "x"})),
        NOW,
    ));
    invalid(v.verify(&hs256(&json!(["not", "an", "object"])), NOW));
}

#[test]
fn token_without_capability_claim_grants_nothing() {
    let g = hs_verifier()
        .verify(&hs256(&json!({"sub": "bob", "exp": NOW + 60})), NOW)
        .expect("valid");
    assert_eq!(g.user, "bob");
    for cap in [Cap::Publish, Cap::Subscribe, Cap::Presence] {
        assert!(!g.allows(cap, "room:1"));
    }
}

#[test]
fn issuer_and_audience_when_configured() {
    let v = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        issuer: Some("https://id.example".into()),
        audience: Some("edgegate".into()),
        ..Config::default()
    })
    .expect("loads");
    let base = |extra: Value| {
        let mut c = json!({"sub": "a", "exp": NOW + 60});
        for (k, val) in extra.as_object().expect("object") {
            c[k] = val.clone();
        }
        hs256(&c)
    };
    assert!(
        v.verify(
            &base(json!({"iss": "https://id.example", "aud": "edgegate"})),
            NOW
        )
        .is_ok()
    );
    assert!(
        v.verify(
            &base(json!({"iss": "https://id.example", "aud": ["other", "edgegate"]})),
            NOW
        )
        .is_ok()
    );
    for bad in [
        json!({"aud": "edgegate"}),
        json!({"iss": "https://id.example"}),
        json!({"iss": "https://evil.example", "aud": "edgegate"}),
        json!({"iss": "https://id.example", "aud": "other"}),
        json!({"iss": "https://id.example", "aud": ["other"]}),
        json!({"iss": ["https://id.example"], "aud": "edgegate"}),
    ] {
        invalid(v.verify(&base(bad.clone()), NOW));
    }
    // Unconfigured: neither is checked.
    assert!(
        hs_verifier()
            .verify(&base(json!({"iss": "whoever", "aud": "whatever"})), NOW)
            .is_ok()
    );
}

#[test]
fn custom_capability_claim_name() {
    let v = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        capabilities_claim: "https://example.com/edgegate".into(),
        ..Config::default()
    })
    .expect("loads");
    let token = hs256(&json!({
        "sub": "a", "exp": NOW + 60,
        "https://example.com/edgegate": {"sub": ["prices:*"]},
        "edgegate": {"allow": ["*"]},
    }));
    let g = v.verify(&token, NOW).expect("valid");
    assert!(g.allows(Cap::Subscribe, "prices:BTC-USD"));
    assert!(!g.allows(Cap::Publish, "prices:BTC-USD"));
    assert!(
        !g.allows(Cap::Subscribe, "room:1"),
        "the default claim is ignored"
    );
}

// ---- Anonymous and superuser ---------------------------------------------------------------

#[test]
fn empty_token_is_anonymous_only_when_allowed() {
    let e = hs_verifier().verify("", NOW).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);

    let v = Verifier::new(&Config {
        allow_anonymous: true,
        ..Config::default()
    })
    .expect("loads");
    let g = v.verify("", NOW).expect("anonymous");
    assert_eq!(g, Grant::anonymous());
    assert!(g.anonymous);
    assert!(g.user.is_empty());
    for cap in [Cap::Publish, Cap::Subscribe, Cap::Presence] {
        assert!(!g.allows(cap, "room:1"));
    }
    // A non-empty token is still verified, and refused without keys.
    invalid(v.verify(&hs256(&claims(NOW + 60)), NOW));
    assert!(!v.has_keys());
}

#[test]
fn superuser_allows_everything() {
    let g = Grant::superuser("backend");
    assert_eq!(g.user, "backend");
    assert!(!g.anonymous);
    for cap in [Cap::Publish, Cap::Subscribe, Cap::Presence] {
        assert!(g.allows(cap, "anything:at/all"));
        assert!(g.allows(cap, "lobby"));
    }
}

// ---- Capability patterns ---------------------------------------------------------------------

#[test]
fn capability_patterns() {
    let token = hs256(&json!({
        "sub": "alice", "exp": NOW + 60,
        "edgegate": {
            "pub": ["chat:*", "prices:BTC-USD"],
            "sub": ["*"],
            "presence": ["room:*", "lobby"],
        }
    }));
    let g = hs_verifier().verify(&token, NOW).expect("valid");
    let cases = [
        (Cap::Publish, "chat:general", true),
        (Cap::Publish, "chat:", true),
        (Cap::Publish, "chat", false),
        (Cap::Publish, "chatter:x", false),
        (Cap::Publish, "prices:BTC-USD", true),
        (Cap::Publish, "prices:BTC-USDT", false),
        (Cap::Publish, "prices:ETH-USD", false),
        (Cap::Subscribe, "anything:here", true),
        (Cap::Subscribe, "lobby", true),
        (Cap::Presence, "room:eu-west/42", true),
        (Cap::Presence, "lobby", true),
        (Cap::Presence, "lobby:x", false),
        (Cap::Presence, "chat:general", false),
    ];
    for (cap, channel, want) in cases {
        assert_eq!(g.allows(cap, channel), want, "{cap:?} on {channel}");
    }
}

#[test]
fn bad_patterns_make_the_token_invalid() {
    let v = hs_verifier();
    for pattern in ["", "room:eu-*", "*:x", ":*", "a*"] {
        let token = hs256(&json!({"sub": "a", "exp": NOW + 60, "edgegate": {"allow": [pattern]}}));
        let why = invalid(v.verify(&token, NOW));
        assert!(why.contains("pattern"), "{pattern:?}: {why}");
    }
    // Unknown keys are refused rather than silently granting nothing.
    let token = hs256(&json!({"sub": "a", "exp": NOW + 60, "edgegate": {"publish": ["a:*"]}}));
    invalid(v.verify(&token, NOW));
}

mod keys;

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

// ---- RS256 / ES256 / EdDSA from PEM files ------------------------------------------------------

#[test]
fn rs256_with_pem_public_key() {
    let v = verifier_with_keys(vec![data("rsa_test_public.pem")]);
    let token = sign(
        Header::new(Algorithm::RS256),
        &claims(NOW + 60),
        &rsa_private(),
    );
    let g = v.verify(&token, NOW).expect("valid RS256");
    assert_eq!(g.user, "alice");
    assert!(g.allows(Cap::Subscribe, "room:1"));
    // The PKCS#1 (`RSA PUBLIC KEY`) form of the same key works too.
    let pkcs1 = verifier_with_keys(vec![data("rsa_test_public_pkcs1.pem")]);
    assert!(pkcs1.verify(&token, NOW).is_ok());
    // PSS with the same key works too; time checks apply as with HS256.
    let pss = sign(
        Header::new(Algorithm::PS256),
        &claims(NOW + 60),
        &rsa_private(),
    );
    assert!(v.verify(&pss, NOW).is_ok());
    assert_eq!(v.verify(&token, NOW + 120), Err(AuthError::Expired));
}

#[test]
fn es256_and_es384_with_generated_keys() {
    let dir = TempDir::new("ec");
    for alg in [Algorithm::ES256, Algorithm::ES384] {
        let key = ec_key(alg);
        let path = dir.write(&format!("{alg:?}.pem"), &key.public_pem);
        let v = verifier_with_keys(vec![path]);
        let token = sign(Header::new(key.alg), &claims(NOW + 60), &key.signing);
        assert_eq!(v.verify(&token, NOW).expect("valid").user, "alice");

        // Another key of the same curve does not verify.
        let other = ec_key(alg);
        let forged = sign(Header::new(alg), &claims(NOW + 60), &other.signing);
        invalid(v.verify(&forged, NOW));
    }
}

#[test]
fn eddsa_with_generated_key() {
    let dir = TempDir::new("ed");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("generate Ed25519");
    let path = dir.write("ed.pem", pair.public_key_pem());
    let v = verifier_with_keys(vec![path]);
    let signing = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("ed pkcs8");
    let token = sign(Header::new(Algorithm::EdDSA), &claims(NOW + 60), &signing);
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn several_pem_keys_each_verify_their_tokens() {
    let dir = TempDir::new("multi");
    let ec = ec_key(Algorithm::ES256);
    let ec_path = dir.write("ec.pem", &ec.public_pem);
    let v = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        public_key_files: vec![data("rsa_test_public.pem"), ec_path],
        ..Config::default()
    })
    .expect("loads");
    assert!(v.has_keys());
    let rs = sign(
        Header::new(Algorithm::RS256),
        &claims(NOW + 60),
        &rsa_private(),
    );
    let es = sign(
        Header::new(Algorithm::ES256),
        &claims(NOW + 60),
        &ec.signing,
    );
    for token in [rs, es, hs256(&claims(NOW + 60))] {
        assert!(v.verify(&token, NOW).is_ok());
    }
}

// ---- Algorithm confusion -----------------------------------------------------------------------

#[test]
fn hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let pem = std::fs::read(data("rsa_test_public.pem")).expect("test data");
    let der_ish: Vec<u8> = pem.iter().copied().filter(|b| *b != b'\n').collect();
    let v = verifier_with_keys(vec![data("rsa_test_public.pem")]);
    let both = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        public_key_files: vec![data("rsa_test_public.pem")],
        ..Config::default()
    })
    .expect("loads");
    for secret in [pem.as_slice(), der_ish.as_slice()] {
        let token = sign(
            Header::new(Algorithm::HS256),
            &claims(NOW + 60),
            &EncodingKey::from_secret(secret),
        );
        invalid(v.verify(&token, NOW));
        invalid(both.verify(&token, NOW));
    }
}

#[test]
fn hs256_token_signed_with_an_ec_public_key_is_refused() {
    let dir = TempDir::new("ec-confusion");
    let ec = ec_key(Algorithm::ES256);
    let path = dir.write("ec.pem", &ec.public_pem);
    let v = verifier_with_keys(vec![path]);
    let token = sign(
        Header::new(Algorithm::HS256),
        &claims(NOW + 60),
        &EncodingKey::from_secret(ec.public_pem.as_bytes()),
    );
    invalid(v.verify(&token, NOW));
}

#[test]
fn rs256_header_on_an_hmac_signature_is_refused() {
    // The header claims RS256 but the signature is an HMAC: only RSA keys are tried, and the
    // HMAC secret is never used for an asymmetric algorithm.
    let real = hs256(&claims(NOW + 60));
    let relabelled = swap_header(&real, r#"{"alg":"RS256","typ":"JWT"}"#);
    invalid(hs_verifier().verify(&relabelled, NOW));
    let both = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        public_key_files: vec![data("rsa_test_public.pem")],
        ..Config::default()
    })
    .expect("loads");
    invalid(both.verify(&relabelled, NOW));
}

#[test]
fn es_token_against_rsa_key_only_is_refused() {
    let ec = ec_key(Algorithm::ES256);
    let v = verifier_with_keys(vec![data("rsa_test_public.pem")]);
    let token = sign(
        Header::new(Algorithm::ES256),
        &claims(NOW + 60),
        &ec.signing,
    );
    let why = invalid(v.verify(&token, NOW));
    assert!(why.contains("no key accepts"), "{why}");
}

// ---- JWKS ----------------------------------------------------------------------------------------

fn jwk_json(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk from key");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(&jwk).expect("jwk json")
}

#[test]
fn jwks_selects_the_key_by_kid() {
    let dir = TempDir::new("jwks");
    let ec_a = ec_key(Algorithm::ES256);
    let ec_b = ec_key(Algorithm::ES256);
    let rsa = rsa_private();
    let set = json!({"keys": [
        jwk_json(&ec_a.signing, Algorithm::ES256, "ec-a"),
        jwk_json(&ec_b.signing, Algorithm::ES256, "ec-b"),
        jwk_json(&rsa, Algorithm::RS256, "rsa-1"),
        {"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB", "e": "AQAB", "alg": "RSA-OAEP"},
    ]});
    let path = dir.write("jwks.json", set.to_string());
    let v = Verifier::new(&Config {
        jwks_file: Some(path),
        ..Config::default()
    })
    .expect("loads");

    let ok = |h: Header, k: &EncodingKey| v.verify(&sign(h, &claims(NOW + 60), k), NOW);
    assert!(ok(with_kid(Algorithm::ES256, "ec-a"), &ec_a.signing).is_ok());
    assert!(ok(with_kid(Algorithm::ES256, "ec-b"), &ec_b.signing).is_ok());
    assert!(ok(with_kid(Algorithm::RS256, "rsa-1"), &rsa).is_ok());
    // The JWK says RS256, so PS256 with the same key is refused.
    invalid(ok(with_kid(Algorithm::PS256, "rsa-1"), &rsa));
    // Signed by b but labelled a: only a is tried.
    invalid(ok(with_kid(Algorithm::ES256, "ec-a"), &ec_b.signing));
    // Unknown kid: there are no kid-less keys to fall back to.
    let why = invalid(ok(with_kid(Algorithm::ES256, "ec-z"), &ec_a.signing));
    assert!(why.contains("no key accepts"), "{why}");
    // No kid: every key of the right algorithm is tried.
    assert!(ok(Header::new(Algorithm::ES256), &ec_b.signing).is_ok());
    // The encryption key is not used for signatures.
    invalid(ok(with_kid(Algorithm::RS256, "enc-1"), &rsa));
}

#[test]
fn unknown_kid_falls_back_to_keys_without_kid() {
    let v = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        ..Config::default()
    })
    .expect("loads");
    let token = sign(
        with_kid(Algorithm::HS256, "whatever"),
        &claims(NOW + 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn jwks_hmac_token_cannot_use_an_rsa_jwk() {
    let dir = TempDir::new("jwks-confusion");
    let rsa = rsa_private();
    let jwk = jwk_json(&rsa, Algorithm::RS256, "rsa-1");
    let path = dir.write("jwks.json", json!({"keys": [jwk.clone()]}).to_string());
    let v = Verifier::new(&Config {
        jwks_file: Some(path),
        ..Config::default()
    })
    .expect("loads");
    for secret in [
        jwk["n"].as_str().expect("n").as_bytes().to_vec(),
        jwk.to_string().into_bytes(),
    ] {
        let token = sign(
            with_kid(Algorithm::HS256, "rsa-1"),
            &claims(NOW + 60),
            &EncodingKey::from_secret(&secret),
        );
        invalid(v.verify(&token, NOW));
    }

    // A kid that names a key pins that key: even the real HMAC secret is not tried for an
    // HS256 token claiming the RSA key's kid.
    let path = dir.write("jwks2.json", json!({"keys": [jwk]}).to_string());
    let both = Verifier::new(&Config {
        hs256_secret: Some(SECRET.into()),
        jwks_file: Some(path),
        ..Config::default()
    })
    .expect("loads");
    let token = sign(
        with_kid(Algorithm::HS256, "rsa-1"),
        &claims(NOW + 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    invalid(both.verify(&token, NOW));
    let token = sign(
        with_kid(Algorithm::HS256, "not-in-the-set"),
        &claims(NOW + 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert!(both.verify(&token, NOW).is_ok());
}

// ---- Start-up errors -------------------------------------------------------------------------------

#[test]
fn load_errors() {
    let dir = TempDir::new("load");
    let load = |config: Config| Verifier::new(&config).err();

    assert!(matches!(
        load(Config {
            hs256_secret: Some("short".into()),
            ..Config::default()
        }),
        Some(LoadError::WeakSecret { len: 5 })
    ));
    assert!(matches!(
        load(Config {
            public_key_files: vec![dir.0.join("missing.pem")],
            ..Config::default()
        }),
        Some(LoadError::Read { .. })
    ));

    let private = dir.write(
        "private.pem",
        std::fs::read(data("rsa_test_private.pem")).expect("test data"),
    );
    let garbage = dir.write(
        "garbage.pem",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let empty = dir.write("empty.pem", "");
    let ec = ec_key(Algorithm::ES256);
    let two = dir.write("two.pem", format!("{}{}", ec.public_pem, ec.public_pem));
    for (file, want) in [
        (private, "private key"),
        (garbage, "not an RSA, EC or Ed25519 public key"),
        (empty, "no PEM block"),
        (two, "more than one PEM block"),
    ] {
        let e = load(Config {
            public_key_files: vec![file.clone()],
            ..Config::default()
        });
        assert!(
            matches!(&e, Some(LoadError::Key { reason, .. }) if reason.contains(want)),
            "{file:?}: {e:?}"
        );
    }

    let rsa = rsa_private();
    let mut private_jwk = jwk_json(&rsa, Algorithm::RS256, "p");
    private_jwk["d"] = json!("AQAB");
    let mut mislabelled = jwk_json(&ec.signing, Algorithm::ES256, "m");
    mislabelled["alg"] = json!("RS256");
    let mut wrong_curve = jwk_json(&ec.signing, Algorithm::ES256, "c");
    wrong_curve["crv"] = json!("P-384");
    for (name, contents, want) in [
        ("notjson", "{".to_owned(), "not a JWK set"),
        ("nokeys", json!({"k": []}).to_string(), "not a JWK set"),
        (
            "oct",
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
            "symmetric",
        ),
        (
            "private",
            json!({"keys": [private_jwk]}).to_string(),
            "private key",
        ),
        (
            "p521",
            json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}).to_string(),
            "unsupported EC curve",
        ),
        (
            "wrong-curve",
            json!({"keys": [wrong_curve]}).to_string(),
            "do not fit the curve",
        ),
        (
            "mislabelled",
            json!({"keys": [mislabelled]}).to_string(),
            "does not fit",
        ),
        (
            "missing-n",
            json!({"keys": [{"kty": "RSA", "e": "AQAB"}]}).to_string(),
            "missing `n`",
        ),
        ("empty", json!({"keys": []}).to_string(), "no signature"),
    ] {
        let path = dir.write(&format!("{name}.json"), contents);
        let e = load(Config {
            jwks_file: Some(path),
            ..Config::default()
        })
        .unwrap_or_else(|| panic!("{name} should be refused"));
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
}

// ---- Minting -------------------------------------------------------------------------------------

#[test]
fn mint_then_verify_round_trip() {
    let allow = vec!["room:*".to_owned(), "prices:BTC-USD".to_owned()];
    let ttl = auth::parse_ttl("1h").expect("ttl");
    let token = auth::mint_hs256(SECRET, "alice", &allow, ttl, NOW).expect("mint");
    let v = hs_verifier();
    let g = v.verify(&token, NOW).expect("valid");
    assert_eq!(g.user, "alice");
    assert_eq!(g.expires_at, Some(NOW + 3600));
    for cap in [Cap::Publish, Cap::Subscribe, Cap::Presence] {
        assert!(g.allows(cap, "room:42"));
        assert!(g.allows(cap, "prices:BTC-USD"));
        assert!(!g.allows(cap, "prices:ETH-USD"));
    }
    assert_eq!(
        v.verify(&token, NOW + 3600 + auth::DEFAULT_LEEWAY_SECS),
        Err(AuthError::Expired)
    );

    // No patterns: an identity without channel rights.
    let bare = auth::mint_hs256(SECRET, "bob", &[], 60, NOW).expect("mint");
    let g = v.verify(&bare, NOW).expect("valid");
    assert!(!g.allows(Cap::Subscribe, "room:1"));
}

#[test]
fn mint_refuses_bad_input() {
    let allow = vec!["room:*".to_owned()];
    assert!(matches!(
        auth::mint_hs256("short", "a", &allow, 60, NOW),
        Err(MintError::WeakSecret { .. })
    ));
    assert!(matches!(
        auth::mint_hs256(SECRET, "", &allow, 60, NOW),
        Err(MintError::EmptySubject)
    ));
    assert!(matches!(
        auth::mint_hs256(SECRET, "a", &["room:eu-*".to_owned()], 60, NOW),
        Err(MintError::Pattern { .. })
    ));
    assert!(matches!(
        auth::mint_hs256(SECRET, "a", &allow, 0, NOW),
        Err(MintError::Ttl(_))
    ));
    assert!(matches!(
        auth::mint_hs256(SECRET, "a", &allow, u64::MAX, NOW),
        Err(MintError::Ttl(_))
    ));
    assert!(SECRET.len() >= MIN_SECRET_LEN);
}

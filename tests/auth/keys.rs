//! Public-key tokens: PEM and JWKS keys, algorithm confusion.

use super::*;

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

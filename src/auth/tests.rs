//! Unit tests of the auth module's private parts.
use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn grant_for(caps: Value) -> Result<Grant, AuthError> {
    let verifier = Verifier::new(&Config::default()).expect("default config loads");
    verifier.grant(
        serde_json::json!({"sub": "alice", "exp": 100, "edgegate": caps}),
        50,
    )
}

#[test]
fn patterns_parse() {
    assert!(matches!(parse_pattern("*"), Ok(Pattern::All)));
    assert!(matches!(
        parse_pattern("room:*"),
        Ok(Pattern::Namespace("room"))
    ));
    assert!(matches!(
        parse_pattern("room:42"),
        Ok(Pattern::Exact("room:42"))
    ));
    assert!(matches!(
        parse_pattern("lobby"),
        Ok(Pattern::Exact("lobby"))
    ));
    for bad in [
        "",
        ":*",
        "room:eu-*",
        "*:x",
        "a:b:*",
        "**",
        "room*",
        "*room:*",
    ] {
        assert!(parse_pattern(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn namespace_pattern_matches_only_its_namespace() {
    let mut p = Patterns::default();
    p.add("room:*").expect("valid");
    assert!(p.matches("room:42"));
    assert!(p.matches("room:eu/7:x"));
    assert!(p.matches("room:"));
    assert!(!p.matches("room"));
    assert!(!p.matches("rooms:1"));
    assert!(!p.matches("chat:room:1"));
}

#[test]
fn capability_lists_map_to_caps() {
    let g = grant_for(serde_json::json!({
        "pub": ["chat:*"], "sub": ["prices:BTC-USD"], "presence": ["room:*"], "allow": ["x:1"]
    }))
    .expect("valid claims");
    assert!(g.allows(Cap::Publish, "chat:a"));
    assert!(!g.allows(Cap::Subscribe, "chat:a"));
    assert!(g.allows(Cap::Subscribe, "prices:BTC-USD"));
    assert!(!g.allows(Cap::Subscribe, "prices:ETH-USD"));
    assert!(g.allows(Cap::Presence, "room:9"));
    assert!(!g.allows(Cap::Publish, "room:9"));
    for cap in [Cap::Publish, Cap::Subscribe, Cap::Presence] {
        assert!(g.allows(cap, "x:1"));
        assert!(!g.allows(cap, "x:2"));
    }
    assert_eq!(g.expires_at, Some(100));
    assert!(!g.anonymous);
}

#[test]
fn malformed_capability_claims_are_refused() {
    for caps in [
        serde_json::json!({"publish": ["a:*"]}),
        serde_json::json!({"pub": "a:*"}),
        serde_json::json!({"pub": ["a:b*"]}),
        serde_json::json!(["a:*"]),
    ] {
        assert!(
            matches!(grant_for(caps.clone()), Err(AuthError::Invalid(_))),
            "{caps}"
        );
    }
}

#[test]
fn numeric_dates_round_towards_shorter_validity() {
    assert_eq!(numeric_date(&serde_json::json!(10), Round::Down), Some(10));
    assert_eq!(
        numeric_date(&serde_json::json!(10.5), Round::Down),
        Some(10)
    );
    assert_eq!(numeric_date(&serde_json::json!(10.5), Round::Up), Some(11));
    assert_eq!(numeric_date(&serde_json::json!(-1), Round::Down), None);
    assert_eq!(numeric_date(&serde_json::json!("10"), Round::Down), None);
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("45s").ok(), Some(45));
    assert_eq!(parse_ttl("30m").ok(), Some(1800));
    assert_eq!(parse_ttl("1h").ok(), Some(3600));
    assert_eq!(parse_ttl("2d").ok(), Some(172_800));
    assert_eq!(parse_ttl("1h30m").ok(), Some(5400));
    assert_eq!(parse_ttl("90").ok(), Some(90));
    for bad in [
        "",
        "0",
        "0s",
        "h",
        "1x",
        "1h30",
        " 1h",
        "-1h",
        "99999999999999999999d",
    ] {
        assert!(parse_ttl(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn constant_time_eq_compares_content_and_length() {
    assert!(constant_time_eq("key-123", "key-123"));
    assert!(!constant_time_eq("key-123", "key-124"));
    assert!(!constant_time_eq("key-123", "key-1234"));
    assert!(!constant_time_eq("", "x"));
    assert!(constant_time_eq("", ""));
}

#[test]
fn config_debug_hides_the_secret() {
    let config = Config {
        hs256_secret: Some(SECRET.into()),
        ..Config::default()
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("redacted"));
    let verifier = Verifier::new(&config).expect("loads");
    assert!(!format!("{verifier:?}").contains(SECRET));
}

#[test]
fn config_defaults_and_toml_names() {
    let config: Config = toml::from_str("allow_anonymous = true").expect("parses");
    assert_eq!(config.leeway_secs, DEFAULT_LEEWAY_SECS);
    assert_eq!(config.capabilities_claim, DEFAULT_CLAIM);
    assert!(config.allow_anonymous);
    assert!(toml::from_str::<Config>("hs265_secret = 'x'").is_err());
    let full: Config = toml::from_str(
        r#"
        hs256_secret = "s"
        public_key_files = ["a.pem", "b.pem"]
        jwks_file = "keys.json"
        issuer = "https://id.example"
        audience = "edgegate"
        leeway_secs = 2
        capabilities_claim = "https://example.com/edgegate"
        "#,
    )
    .expect("parses");
    assert_eq!(full.public_key_files.len(), 2);
    assert_eq!(full.leeway_secs, 2);
}

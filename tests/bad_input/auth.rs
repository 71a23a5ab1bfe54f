//! Authentication cases: missing, invalid, expired, not-yet-valid and wrongly signed tokens;
//! requests outside a token's capabilities; a token expiring mid-session, with and without
//! `Refresh`. Every case runs beside a healthy pair that holds valid tokens.

use std::time::Duration;

use edgegate::client::{Client, Event, SubscribeOptions};
use edgegate::config::Config;
use edgegate::protocol::{ErrorCode, Mode};
use serde_json::json;

use crate::common::*;
use crate::raw::*;
use crate::{WS, WT};

/// A node that requires tokens signed with [`SECRET`] and has no anonymous namespaces.
fn authenticated(c: &mut Config) {
    c.auth.hs256_secret = Some(SECRET.into());
    c.auth.allow_anonymous = false;
    c.auth.leeway_secs = 0;
    for ns in &mut c.namespace {
        ns.anonymous_subscribe = false;
        ns.anonymous_publish = false;
        ns.anonymous_presence = false;
    }
}

#[tokio::test]
async fn missing_invalid_expired_early_and_wrongly_signed_tokens() {
    let node = start(authenticated).await;
    let healthy = Healthy::start_with(&node, &token("healthy", &["chat:*"], 3600)).await;
    let now = now();
    let cases = [
        ("", ErrorCode::Unauthorized, "required"),
        ("not.a.jwt", ErrorCode::Unauthorized, "malformed"),
        (
            &token_with(SECRET, json!({"sub": "a", "exp": now - 60}))[..],
            ErrorCode::TokenExpired,
            "expired",
        ),
        (
            &token_with(
                SECRET,
                json!({"sub": "a", "nbf": now + 600, "exp": now + 3600}),
            )[..],
            ErrorCode::TokenNotYetValid,
            "not yet valid",
        ),
        (
            &token_with(
                "another-secret-entirely-0123456789abcdef",
                json!({"sub": "a", "exp": now + 3600}),
            )[..],
            ErrorCode::Unauthorized,
            "signature",
        ),
        (
            // Signed right, but the payload was edited afterwards.
            &{
                let t = token("a", &["chat:*"], 3600);
                let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
                parts[1] = parts[1].chars().rev().collect();
                parts.join(".")
            }[..],
            ErrorCode::Unauthorized,
            "",
        ),
    ];
    for (i, (tok, want, says)) in cases.iter().enumerate() {
        let t = if i % 2 == 0 { WT } else { WS };
        for t in [t, if t == WT { WS } else { WT }] {
            let e = Client::connect(node.options(t).token(*tok))
                .await
                .map(drop)
                .expect_err("refused");
            assert_eq!(e.code(), Some(*want), "case {i} {t:?}: {e}");
            assert!(
                e.to_string().to_lowercase().contains(says),
                "case {i}: reason {e}"
            );
        }
    }
    // The raw view: a fatal error frame and the close code.
    let mut c = RawWt::connect(&node).await;
    c.frame(&hello("")).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::Unauthorized, WT);
    let mut c = RawWs::connect(&node).await;
    c.frame(&hello("garbage")).await;
    c.outcome()
        .await
        .assert_closed_with(ErrorCode::Unauthorized, WS);
    healthy.check().await;
    node.stop().await;
}

#[tokio::test]
async fn publish_and_subscribe_outside_the_tokens_capabilities() {
    let node = start(authenticated).await;
    let healthy = Healthy::start_with(&node, &token("healthy", &["chat:*"], 3600)).await;
    let now = now();
    // Reads chat, writes only chat:own, nothing in room.
    let tok = token_with(
        SECRET,
        json!({"sub": "bob", "exp": now + 3600,
               "edgegate": {"sub": ["chat:*"], "pub": ["chat:own"]}}),
    );
    for t in [WT, WS] {
        let c = node.connect_with(t, &tok).await;
        c.subscribe("chat:any", SubscribeOptions::default())
            .await
            .expect("allowed subscribe");
        c.publish("chat:own", Mode::Reliable, None, "mine")
            .await
            .expect("allowed publish");
        for (what, e) in [
            (
                "publish chat:any",
                c.publish("chat:any", Mode::Reliable, None, "x").await.err(),
            ),
            (
                "publish room:1",
                c.publish("room:1", Mode::Reliable, None, "x").await.err(),
            ),
            (
                "subscribe room:1",
                c.subscribe("room:1", SubscribeOptions::default())
                    .await
                    .err(),
            ),
            (
                "presence join chat:x",
                c.subscribe(
                    "chat:x",
                    SubscribeOptions {
                        presence: Some("me".into()),
                        ..Default::default()
                    },
                )
                .await
                .err(),
            ),
            ("presence list room:1", c.presence("room:1").await.err()),
            ("history room:1", c.history("room:1", None, 10).await.err()),
        ] {
            let e = e.unwrap_or_else(|| panic!("{what} allowed"));
            assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{what}: {e}");
            assert!(e.to_string().contains("not allowed"), "{e}");
        }
        // Still served after the refusals.
        c.publish("chat:own", Mode::Reliable, None, "still here")
            .await
            .expect("session alive");
    }
    // A refreshed token must be for the same user.
    let c = node.connect_with(WT, &tok).await;
    let e = c
        .refresh(&token("mallory", &["*"], 3600))
        .await
        .expect_err("another user");
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
    healthy.check().await;
    node.stop().await;
}

/// Heartbeat 1 s (the token check runs on it), grace 2 s.
fn short_expiry(c: &mut Config) {
    authenticated(c);
    c.session.heartbeat_secs = 1;
    c.session.idle_timeout_secs = 30;
    c.session.token_grace_secs = 2;
}

#[tokio::test]
async fn a_token_expiring_mid_session_is_refreshed_or_closed_after_the_grace_period() {
    let node = start(short_expiry).await;
    let healthy = Healthy::start_with(&node, &token("healthy", &["chat:*"], 3600)).await;
    for t in [WT, WS] {
        // Without a refresh: warned, then closed with TokenExpired once the grace is over.
        let exp = now() + 2;
        let tok = token_with(SECRET, json!({"sub": "eve", "exp": exp}));
        let mut c = node.connect_with(t, &tok).await;
        let mut warned = None;
        let (code, reason) = loop {
            match next_event(&mut c).await {
                Event::TokenExpiring { grace_ms } => warned = Some(grace_ms),
                Event::Error {
                    code,
                    reason,
                    fatal: true,
                } => break (code, reason),
                Event::Closed => panic!("closed without TokenExpired"),
                _ => {}
            }
        };
        let grace = warned.expect("TokenExpiring came first");
        assert!(grace > 0 && grace <= 5_000, "{grace}");
        assert_eq!(code, ErrorCode::TokenExpired.code(), "{reason}");
        assert!(now() >= exp + 2, "not before the grace period ends");

        // With a refresh: the session outlives the first token's grace period.
        let exp = now() + 2;
        let tok = token_with(
            SECRET,
            json!({"sub": "eve", "exp": exp, "edgegate": {"allow": ["chat:*"]}}),
        );
        let mut c = node.connect_with(t, &tok).await;
        loop {
            match next_event(&mut c).await {
                Event::TokenExpiring { .. } => break,
                Event::Closed | Event::Error { .. } => panic!("closed before the warning"),
                _ => {}
            }
        }
        c.refresh(&token("eve", &["chat:*"], 3600))
            .await
            .expect("refresh accepted");
        // Past the old deadline and two more checks, the session is still served.
        let past = Duration::from_secs((exp + 2 + 2).saturating_sub(now()));
        tokio::time::sleep(past).await;
        c.publish("chat:refreshed", Mode::Reliable, None, "alive")
            .await
            .expect("session kept");
        // The refreshed grant is what counts now (its capabilities, its expiry).
        c.subscribe("chat:refreshed", SubscribeOptions::default())
            .await
            .expect("allowed by the new token");
    }
    healthy.check().await;
    node.stop().await;
}

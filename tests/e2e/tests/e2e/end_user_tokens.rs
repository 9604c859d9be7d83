//! With `auth.jwt_jwks_file` set, a bff call also carries its end user's
//! JWT (`x-feed-user-token`), signed by a key of the JWKS for that user: a
//! leaked bff token alone no longer acts for every user. Internal callers
//! are not asked for one.

use std::time::{SystemTime, UNIX_EPOCH};

use feed_e2e::{TestApp, bff, internal};
use feed_proto::notify::v1 as nt;
use feed_testkit::jwt::JwtIssuer;
use tonic::Code;

#[tokio::test]
async fn with_a_jwks_a_bff_call_needs_its_users_token_and_nothing_else_will_do() {
    let idp = JwtIssuer::new();
    let dir = tempfile::tempdir().expect("dir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, idp.jwks()).expect("write jwks");
    let mut app = TestApp::start(|cfg| {
        cfg.auth.jwt_jwks_file = jwks.display().to_string();
        cfg.auth.jwt_issuer = "https://id.example".into();
        cfg.auth.jwt_audience = "feed".into();
    })
    .await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs() as i64;
    let claims =
        |sub: &str, exp: i64| serde_json::json!({"sub": sub, "iss": "https://id.example", "aud": "feed", "exp": exp});
    let call = |user: u64, token: Option<String>| {
        let mut req = bff(nt::GetUnreadCountsRequest { user_id: user }, user);
        if let Some(t) = token {
            req.metadata_mut()
                .insert("x-feed-user-token", t.parse().expect("ascii token"));
        }
        req
    };

    let ok = idp.token("ed", "EdDSA", &claims("5", now + 300));
    app.notify
        .get_unread_counts(call(5, Some(ok.clone())))
        .await
        .expect("the user's own token");
    let es = idp.token("ec", "ES256", &claims("5", now + 300));
    app.notify
        .get_unread_counts(call(5, Some(es)))
        .await
        .expect("an ES256 token");

    let refusals = [
        ("no token", call(5, None)),
        ("another user's token", call(6, Some(ok))),
        (
            "expired",
            call(5, Some(idp.token("ed", "EdDSA", &claims("5", now - 600)))),
        ),
        (
            "forged",
            call(5, Some(JwtIssuer::new().token("ed", "EdDSA", &claims("5", now + 300)))),
        ),
    ];
    for (why, req) in refusals {
        let err = app.notify.get_unread_counts(req).await.expect_err(why);
        assert_eq!(err.code(), Code::Unauthenticated, "{why}: {err:?}");
        assert!(err.message().contains("x-feed-user-token"), "{why}: {}", err.message());
    }
    app.notify
        .get_unread_counts(internal(nt::GetUnreadCountsRequest { user_id: 5 }))
        .await
        .expect("internal callers need no user token");
    app.stop().await.expect("stop");
}

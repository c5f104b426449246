//! OpenID Connect clients, authorization codes and the interactive (two-step)
//! login, against a real (SQLite) event log and an injected clock.

use perfect21_domain::clients::{pkce_challenge, CodeRequest};
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::*;
use perfect21_events::catalog::{ClientSettings, SessionRevoked};
use perfect21_events::Event;
use std::sync::atomic::Ordering;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "https://wiki.example.com/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

struct World {
    id: Identity,
    shift: std::sync::Arc<std::sync::atomic::AtomicI64>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store =
        perfect21_events::store::open(&format!("sqlite://{}", dir.path().join("events.db").display())).await.unwrap();
    let live = LiveModels::start(store.clone());
    let (clock, shift) = Clock::shifted();
    let config = IdentityConfig {
        password_cost: PasswordCost::TEST,
        allow_unverified_login: true,
        clock,
        ..IdentityConfig::default()
    };
    World { id: Identity::new(store, live, SecretBox::random(), config).unwrap(), shift, _dir: dir }
}

fn ctx() -> RequestContext {
    RequestContext { client_ip: Some("192.0.2.7".into()), ..RequestContext::service("test") }
}

fn settings() -> ClientSettings {
    ClientSettings {
        redirect_uris: vec![REDIRECT.into()],
        post_logout_redirect_uris: vec![],
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        scopes: vec!["openid".into(), "email".into()],
        id_token_signed_response_alg: "RS256".into(),
    }
}

async fn user(w: &World, name: &str) -> Uuid {
    let reg = Registration {
        email: format!("{name}@example.com"),
        username: name.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    w.id.register(&ctx(), reg).await.unwrap().user_id
}

async fn browser_session(w: &World, name: &str) -> LoginGrant {
    let req = LoginRequest { identifier: name.into(), password: PASSWORD.into(), ..Default::default() };
    w.id.login(&ctx(), req).await.unwrap()
}

fn code_request(client: Uuid, session: &LoginGrant, challenge: Option<String>) -> CodeRequest {
    CodeRequest {
        client_id: client,
        user_id: session.user_id,
        browser_session_id: session.session_id,
        redirect_uri: REDIRECT.into(),
        scope: "openid email".into(),
        nonce: Some("n-1".into()),
        code_challenge: challenge,
        auth_time: 1_800_000_000,
        amr: vec!["pwd".into()],
    }
}

#[tokio::test]
async fn client_registration_checks_what_it_is_told() {
    let w = world().await;
    let c = ctx();
    let bad = |f: fn(&mut ClientSettings)| {
        let mut s = settings();
        f(&mut s);
        s
    };
    for (settings, field) in [
        (bad(|s| s.redirect_uris = vec!["http://wiki.example.com/cb".into()]), "redirect_uris"),
        (bad(|s| s.redirect_uris = vec!["https://wiki.example.com/cb#frag".into()]), "redirect_uris"),
        (bad(|s| s.redirect_uris = vec!["javascript:alert(1)".into()]), "redirect_uris"),
        (bad(|s| s.redirect_uris = vec!["/relative".into()]), "redirect_uris"),
        (bad(|s| s.redirect_uris.clear()), "redirect_uris"),
        (bad(|s| s.grant_types = vec!["implicit".into()]), "grant_types"),
        (bad(|s| s.grant_types = vec!["refresh_token".into()]), "grant_types"),
        (bad(|s| s.scopes = vec!["admin".into()]), "scopes"),
        (bad(|s| s.id_token_signed_response_alg = "HS256".into()), "id_token_signed_response_alg"),
    ] {
        match w.id.register_client(&c, "Wiki", true, settings).await {
            Err(DomainError::InvalidArgument { field: f, reason }) => assert_eq!(f, field, "{reason}"),
            other => panic!("expected a refusal naming {field}, got {other:?}"),
        }
    }
    let ok = bad(|s| s.redirect_uris = vec!["http://127.0.0.1:8000/cb".into(), "com.example.app:/oauth".into()]);
    let public = w.id.register_client(&c, "App", false, ok).await.unwrap();
    assert!(public.secret.is_none(), "public clients have no secret");
    let confidential = w.id.register_client(&c, "Wiki", true, settings()).await.unwrap();
    let secret = confidential.secret.clone().unwrap();
    let id = confidential.id.to_string();
    assert!(w.id.authenticate_relying_party(&id, Some(&secret)).await.is_ok());
    for (who, secret) in [(id.as_str(), None), (id.as_str(), Some("wrong")), ("not-a-uuid", Some(secret.as_str()))] {
        assert!(matches!(w.id.authenticate_relying_party(who, secret).await, Err(DomainError::InvalidCredentials)));
    }
    assert!(w.id.authenticate_relying_party(&public.id.to_string(), None).await.is_ok());
    let (rotated, _) = w.id.rotate_client_secret(&c, confidential.id).await.unwrap();
    assert!(w.id.authenticate_relying_party(&id, Some(&secret)).await.is_err(), "the old secret stops at once");
    assert!(w.id.authenticate_relying_party(&id, Some(&rotated)).await.is_ok());
    assert!(matches!(w.id.rotate_client_secret(&c, public.id).await, Err(DomainError::FailedPrecondition(_))));
    w.id.delete_client(&c, confidential.id).await.unwrap();
    assert!(w.id.authenticate_relying_party(&id, Some(&rotated)).await.is_err(), "a deleted client is gone");
}

#[tokio::test]
async fn a_code_is_single_use_bound_to_client_redirect_and_verifier_and_expires() {
    let w = world().await;
    let c = ctx();
    let client = w.id.register_client(&c, "Wiki", true, settings()).await.unwrap().id;
    let other = w.id.register_client(&c, "Other", true, settings()).await.unwrap().id;
    user(&w, "ada").await;
    let browser = browser_session(&w, "ada").await;

    let code =
        w.id.issue_authorization_code(&c, code_request(client, &browser, Some(pkce_challenge(VERIFIER))))
            .await
            .unwrap();
    let refused = |r: Result<clients::RedeemedCode>| matches!(r, Err(DomainError::InvalidToken { .. }));
    // Wrong client, wrong redirect URI, missing or wrong verifier: refused, and the code stays good.
    assert!(refused(w.id.redeem_authorization_code(&c, other, &code, REDIRECT, Some(VERIFIER)).await));
    assert!(refused(
        w.id.redeem_authorization_code(&c, client, &code, "https://evil.example/cb", Some(VERIFIER)).await
    ));
    assert!(refused(w.id.redeem_authorization_code(&c, client, &code, REDIRECT, None).await));
    let wrong_verifier = "x".repeat(43);
    assert!(refused(w.id.redeem_authorization_code(&c, client, &code, REDIRECT, Some(&wrong_verifier)).await));
    let forged = format!("{}.forged", code.split_once('.').unwrap().0);
    assert!(refused(w.id.redeem_authorization_code(&c, client, &forged, REDIRECT, Some(VERIFIER)).await));

    let redeemed = w.id.redeem_authorization_code(&c, client, &code, REDIRECT, Some(VERIFIER)).await.unwrap();
    assert_eq!(redeemed.issued.nonce.as_deref(), Some("n-1"));
    let child = redeemed.grant.session_id;
    let link =
        w.id.read(Some(w.id.last_write()), |m| m.sessions.client_session(child).cloned()).await.unwrap().unwrap();
    assert_eq!((link.client_id, link.browser_session_id), (client, browser.session_id));
    assert_eq!(&*link.scope, "openid email");

    // A replay is refused and ends the session the first exchange started (RFC 6749 §4.1.2).
    assert!(refused(w.id.redeem_authorization_code(&c, client, &code, REDIRECT, Some(VERIFIER)).await));
    let ended = w.id.read(Some(w.id.last_write()), |m| m.sessions.get(child).is_none()).await.unwrap();
    assert!(ended, "the tokens issued from a replayed code are revoked");
    let events = w.id.store().read_all(1, 10_000).await.unwrap();
    let revoked = events.iter().filter_map(|e| e.decode().ok()).any(|e| {
        matches!(e, Event::SessionRevoked(SessionRevoked { session_id, ref reason, .. })
            if session_id == child && reason == "authorization_code_replay")
    });
    assert!(revoked, "the revocation is recorded with its reason");

    // A code not exchanged within its lifetime expires.
    let late = w.id.issue_authorization_code(&c, code_request(client, &browser, None)).await.unwrap();
    w.shift.store(61, Ordering::Relaxed);
    assert!(refused(w.id.redeem_authorization_code(&c, client, &late, REDIRECT, None).await));
}

#[tokio::test]
async fn ending_the_browser_session_ends_every_client_session_started_from_it() {
    let w = world().await;
    let c = ctx();
    let a = w.id.register_client(&c, "A", true, settings()).await.unwrap().id;
    let b = w.id.register_client(&c, "B", true, settings()).await.unwrap().id;
    user(&w, "sso").await;
    let browser = browser_session(&w, "sso").await;
    let other_browser = browser_session(&w, "sso").await;
    let mut children = Vec::new();
    for client in [a, b] {
        let code = w.id.issue_authorization_code(&c, code_request(client, &browser, None)).await.unwrap();
        children
            .push(w.id.redeem_authorization_code(&c, client, &code, REDIRECT, None).await.unwrap().grant.session_id);
    }
    w.id.end_browser_session(&c, browser.session_id).await.unwrap();
    let (gone, kept) =
        w.id.read(Some(w.id.last_write()), |m| {
            let gone = children.iter().chain([&browser.session_id]).all(|s| m.sessions.get(*s).is_none());
            (gone, m.sessions.get(other_browser.session_id).is_some())
        })
        .await
        .unwrap();
    assert!(gone, "the browser session and both client sessions ended");
    assert!(kept, "another browser's session is untouched");
}

#[tokio::test]
async fn the_second_factor_step_needs_a_live_ticket_and_counts_failures() {
    let w = world().await;
    let c = ctx();
    let id = user(&w, "twofa").await;
    let enrollment = w.id.begin_mfa(&c, id, PASSWORD).await.unwrap();
    let secret = totp_rs::Secret::Encoded(enrollment.secret.clone()).to_bytes().unwrap();
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap();
    let now = || (chrono::Utc::now().timestamp() + w.shift.load(Ordering::Relaxed)) as u64;
    w.id.confirm_mfa(&c, id, &enrollment.enrollment_token, &totp.generate(now()), PASSWORD).await.unwrap();

    let req = LoginRequest { identifier: "twofa".into(), password: PASSWORD.into(), ..Default::default() };
    let LoginStep::SecondFactor { ticket } = w.id.login_interactive(&c, req.clone()).await.unwrap() else {
        panic!("an MFA account needs a second step");
    };
    let wrong_password = LoginRequest { password: "not it at all".into(), ..req.clone() };
    assert!(matches!(w.id.login_interactive(&c, wrong_password).await, Err(DomainError::InvalidCredentials)));

    // A wrong code is a failed login; a forged ticket is refused outright.
    assert!(matches!(
        w.id.login_second_factor(&c, &ticket, "000000", None).await,
        Err(DomainError::InvalidCredentials)
    ));
    assert!(matches!(
        w.id.login_second_factor(&c, "forged", "123456", None).await,
        Err(DomainError::InvalidToken { .. })
    ));
    let failures = w.id.read(Some(w.id.last_write()), |m| m.audit.positions(id).len()).await.unwrap();
    assert!(failures > 0);

    w.shift.store(60, Ordering::Relaxed);
    let LoginStep::Done(grant) = w.id.login_second_factor(&c, &ticket, &totp.generate(now()), None).await.unwrap()
    else {
        panic!("a right code finishes the login");
    };
    assert!(grant.mfa_used);

    // The ticket dies with its lifetime, and with a password change.
    w.shift.store(60 + 301, Ordering::Relaxed);
    assert!(matches!(
        w.id.login_second_factor(&c, &ticket, &totp.generate(now()), None).await,
        Err(DomainError::InvalidToken { .. })
    ));
    w.shift.store(120, Ordering::Relaxed);
    let LoginStep::SecondFactor { ticket } = w.id.login_interactive(&c, req).await.unwrap() else { panic!() };
    w.id.change_password(&c, id, PASSWORD, "a brand new password").await.unwrap();
    assert!(matches!(
        w.id.login_second_factor(&c, &ticket, &totp.generate(now() + 30), None).await,
        Err(DomainError::InvalidCredentials)
    ));
}

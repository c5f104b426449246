//! The identity commands end to end against a real (SQLite) event log.

use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::*;
use perfect21_events::catalog::{PermissionSpec, UserStatus};
use perfect21_events::{Event, EventStore};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

struct World {
    id: Identity,
    secrets: SecretBox,
    _dir: tempfile::TempDir,
}

async fn world_with(config: IdentityConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store =
        perfect21_events::store::open(&format!("sqlite://{}", dir.path().join("events.db").display())).await.unwrap();
    let live = LiveModels::start(store.clone());
    let secrets = SecretBox::random();
    let id = Identity::new(store, live, secrets.clone(), config).unwrap();
    World { id, secrets, _dir: dir }
}

/// Most tests here log users in right after registering; the refusal of unverified
/// logins (the default) has a test of its own.
fn test_config() -> IdentityConfig {
    IdentityConfig { password_cost: PasswordCost::TEST, allow_unverified_login: true, ..IdentityConfig::default() }
}

async fn world() -> World {
    world_with(test_config()).await
}

fn ctx(ip: &str) -> RequestContext {
    RequestContext {
        client_ip: Some(ip.into()),
        user_agent: Some("identity-test/1".into()),
        correlation_id: Some(Uuid::now_v7()),
        source_service: Some("test".into()),
        ..Default::default()
    }
}

fn registration(email: &str, username: &str) -> Registration {
    Registration {
        email: email.into(),
        username: username.into(),
        password: "correct horse battery".into(),
        first_name: Some("Ada".into()),
        ..Default::default()
    }
}

fn login(identifier: &str, password: &str) -> LoginRequest {
    LoginRequest { identifier: identifier.into(), password: password.into(), ..Default::default() }
}

async fn events_of(store: &Arc<dyn EventStore>) -> Vec<(String, Event, perfect21_events::Metadata)> {
    store
        .read_all(1, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.stream_id.clone(), e.decode().unwrap(), e.metadata))
        .collect()
}

#[tokio::test]
async fn register_verify_login_refresh_and_reuse_detection() {
    let w = world().await;
    let c = ctx("198.51.100.1");
    let reg = w.id.register(&c, registration("Ada@Example.com", "ada")).await.unwrap();
    let user = w.id.read(Some(reg.position), |m| m.users.get(reg.user_id).cloned()).await.unwrap().unwrap();
    assert_eq!(user.status, UserStatus::PendingVerification);

    assert!(matches!(w.id.verify_email(&c, "nonsense").await, Err(DomainError::InvalidToken { .. })));
    let forged = format!("{}.{}", reg.user_id.simple(), "x".repeat(43));
    assert!(matches!(w.id.verify_email(&c, &forged).await, Err(DomainError::InvalidToken { .. })));
    let p = w.id.verify_email(&c, &reg.verification_token).await.unwrap();
    assert!(
        matches!(w.id.verify_email(&c, &reg.verification_token).await, Err(DomainError::InvalidToken { .. })),
        "single use"
    );
    let status = w.id.read(Some(p), |m| m.users.get(reg.user_id).unwrap().status).await.unwrap();
    assert_eq!(status, UserStatus::Active);

    let grant = w.id.login(&c, login("ada@example.com", "correct horse battery")).await.unwrap();
    assert_eq!(grant.user_id, reg.user_id);
    let by_name = w.id.login(&c, login("ADA", "correct horse battery")).await.unwrap();
    assert_ne!(by_name.session_id, grant.session_id);

    let rotated = w.id.refresh(&c, &grant.refresh_token).await.unwrap();
    assert_eq!(rotated.session_id, grant.session_id);
    assert_ne!(rotated.refresh_token, grant.refresh_token);
    let again = w.id.refresh(&c, &rotated.refresh_token).await.unwrap();
    // The first token again: reuse. The whole session ends.
    assert!(matches!(w.id.refresh(&c, &grant.refresh_token).await, Err(DomainError::InvalidToken { .. })));
    assert!(
        matches!(w.id.refresh(&c, &again.refresh_token).await, Err(DomainError::InvalidToken { .. })),
        "session family revoked"
    );
    let events = events_of(w.id.store()).await;
    assert!(events
        .iter()
        .any(|(_, e, _)| matches!(e, Event::RefreshTokenReuseDetected(r) if r.session_id == grant.session_id)));
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::SessionRevoked(r) if r.reason == "refresh_token_reuse")));
    // The other session is untouched.
    w.id.refresh(&c, &by_name.refresh_token).await.unwrap();

    // The verification token is not stored anywhere; whoever holds the server key re-derives it from the event.
    let registered = events.iter().find_map(|(_, e, _)| match e {
        Event::UserRegistered(r) => Some(r.clone()),
        _ => None,
    });
    let registered = registered.unwrap();
    assert_eq!(
        w.secrets.verification_token(registered.user_id, registered.verification_expires_at),
        reg.verification_token
    );
    // Passwords only as argon2id PHC strings; secrets never in the log in clear.
    assert!(events
        .iter()
        .any(|(_, e, _)| matches!(e, Event::UserRegistered(r) if r.password_hash.starts_with("$argon2id$v=19$m=64,"))));
    let log = format!("{events:?}");
    assert!(!log.contains("correct horse battery"));
    assert!(!log.contains(&grant.refresh_token) && !log.contains(&reg.verification_token));
    // Who and from where, on every event.
    for (_, _, m) in &events {
        assert_eq!(m.client_ip.as_deref(), Some("198.51.100.1"));
        assert!(m.actor.as_deref().unwrap().starts_with("user:"));
        assert!(m.correlation_id.is_some());
    }
}

/// One account signing in from many places at once (a shared kiosk account, a load
/// test, a user with many devices): every right password gets a session, none a
/// "concurrent modification", and wrong passwords in the crowd are still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_of_one_user_all_get_a_session() {
    let w = world().await;
    let c = ctx("198.51.100.7");
    let reg = w.id.register(&c, registration("crowd@example.com", "crowd")).await.unwrap();
    let logins: Vec<_> = (0..24)
        .map(|i| {
            let (id, c) = (w.id.clone(), c.clone());
            let password = if i % 8 == 7 { "wrong password!" } else { "correct horse battery" };
            tokio::spawn(async move { id.login(&c, login("crowd", password)).await })
        })
        .collect();
    let (mut sessions, mut refused) = (std::collections::HashSet::new(), 0);
    for l in logins {
        match l.await.unwrap() {
            Ok(grant) => {
                assert_eq!(grant.user_id, reg.user_id);
                sessions.insert(grant.session_id);
            }
            Err(DomainError::InvalidCredentials) => refused += 1,
            Err(e) => panic!("a login in the crowd got {e:?}"),
        }
    }
    assert_eq!((sessions.len(), refused), (21, 3), "every right password a session of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_email_let_exactly_one_win() {
    let w = world().await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let id = w.id.clone();
            tokio::spawn(async move {
                let email = if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" };
                id.register(&ctx("10.0.0.1"), registration(email, &format!("racer{i}"))).await
            })
        })
        .collect();
    // Every caller gets a registration's answer (a taken email is not revealed)…
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // …but exactly one user exists, and the owner is told of each other attempt.
    let events = events_of(w.id.store()).await;
    let registered: Vec<Uuid> = events
        .iter()
        .filter_map(|(_, e, _)| match e {
            Event::UserRegistered(r) if r.email.eq_ignore_ascii_case("race@example.com") => Some(r.user_id),
            _ => None,
        })
        .collect();
    assert_eq!(registered.len(), 1);
    let attempts = events
        .iter()
        .filter(|(_, e, _)| matches!(e, Event::UserRegistrationAttempted(a) if a.user_id == registered[0]))
        .count();
    assert_eq!(attempts, 11);
    // Usernames too, and a losing registration frees the email it claimed.
    w.id.register(&ctx("10.0.0.1"), registration("other@example.com", "solo")).await.unwrap();
    let err = w.id.register(&ctx("10.0.0.1"), registration("third@example.com", "SOLO")).await.unwrap_err();
    assert!(matches!(err, DomainError::AlreadyRegistered { kind: "username" }));
    w.id.register(&ctx("10.0.0.1"), registration("third@example.com", "solo2")).await.unwrap();
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_answer_the_same() {
    let w = world().await;
    w.id.register(&ctx("10.0.0.1"), registration("known@example.com", "known")).await.unwrap();
    let before = w.id.store().head_position().await.unwrap();
    let unknown = w.id.login(&ctx("10.0.0.1"), login("nobody@example.com", "whatever-password")).await.unwrap_err();
    assert_eq!(w.id.store().head_position().await.unwrap(), before, "no events about unknown users");
    let wrong = w.id.login(&ctx("10.0.0.1"), login("known@example.com", "whatever-password")).await.unwrap_err();
    assert_eq!(unknown.to_string(), wrong.to_string());
    assert!(matches!(unknown, DomainError::InvalidCredentials));
}

#[tokio::test]
async fn repeated_failures_lock_the_account_until_the_lock_expires() {
    let (clock, shift) = Clock::shifted();
    let config =
        IdentityConfig { lockout_threshold: 3, lockout_duration: Duration::from_secs(60), clock, ..test_config() };
    let w = world_with(config).await;
    let c = ctx("10.0.0.9");
    let reg = w.id.register(&c, registration("lock@example.com", "locky")).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(w.id.login(&c, login("locky", "bad password!")).await, Err(DomainError::InvalidCredentials)));
    }
    // Locked: even the right password is refused, with the same answer.
    assert!(matches!(
        w.id.login(&c, login("locky", "correct horse battery")).await,
        Err(DomainError::InvalidCredentials)
    ));
    let events = events_of(w.id.store()).await;
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::AccountLocked(l) if l.failed_attempts == 3)));
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::SecurityAlert(a) if a.alert_type == "account_locked" && !a.recommended_actions.is_empty())));
    let head = w.id.store().head_position().await.unwrap();
    let decision = w.id.check_permission(reg.user_id, "docs", "read", "own", Some(head)).await.unwrap();
    assert_eq!(decision.reason, "user is locked");

    // Still locked a moment before the lock ends; unlocked once it has (the clock moves, nobody sleeps).
    shift.store(58, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        w.id.login(&c, login("locky", "correct horse battery")).await,
        Err(DomainError::InvalidCredentials)
    ));
    shift.store(61, std::sync::atomic::Ordering::Relaxed);
    w.id.login(&c, login("locky", "correct horse battery")).await.unwrap();
    let events = events_of(w.id.store()).await;
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::AccountUnlocked(_))));
}

#[tokio::test]
async fn a_login_from_an_unfamiliar_client_after_failures_is_suspicious() {
    let w = world().await;
    w.id.register(&ctx("10.0.0.1"), registration("risk@example.com", "risky")).await.unwrap();
    w.id.login(&ctx("10.0.0.1"), login("risky", "correct horse battery")).await.unwrap();
    let stranger = RequestContext { user_agent: Some("curl/8".into()), ..ctx("203.0.113.66") };
    for _ in 0..2 {
        let _ = w.id.login(&stranger, login("risky", "wrong password")).await;
    }
    let grant = w.id.login(&stranger, login("risky", "correct horse battery")).await.unwrap();
    assert!(grant.risk_score > 0.7, "{}", grant.risk_score);
    let events = events_of(w.id.store()).await;
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::SuspiciousActivity(s) if s.risk_score > 0.7)));
    let familiar = w.id.login(&ctx("10.0.0.1"), login("risky", "correct horse battery")).await.unwrap();
    assert!(familiar.risk_score < 0.1);
}

fn current_code(base32: &str) -> String {
    let secret = totp_rs::Secret::Encoded(base32.into()).to_bytes().unwrap();
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap().generate_current().unwrap()
}

/// The code of `secret` for the time step after the current one (within the accepted skew).
fn next_code(secret: &str) -> (String, u64) {
    let secret = totp_rs::Secret::Encoded(secret.into()).to_bytes().unwrap();
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap();
    let next = (chrono::Utc::now().timestamp() as u64 / 30 + 1) * 30;
    (totp.generate(next), next / 30)
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn totp_mfa_with_single_use_codes_step_up_and_recovery_codes() {
    let w = world().await;
    let c = ctx("10.0.0.1");
    let reg = w.id.register(&c, registration("mfa@example.com", "mfa_user")).await.unwrap();
    // Step-up: enrolling needs the current password.
    assert!(matches!(w.id.begin_mfa(&c, reg.user_id, "not my password").await, Err(DomainError::InvalidCredentials)));
    let enrollment = w.id.begin_mfa(&c, reg.user_id, PASSWORD).await.unwrap();
    assert!(enrollment.otpauth_url.starts_with("otpauth://totp/perfect21:mfa%40example.com?secret="));
    let bad = w.id.confirm_mfa(&c, reg.user_id, &enrollment.enrollment_token, "000000", PASSWORD).await;
    assert!(
        matches!(bad, Err(DomainError::InvalidArgument { field: "code", .. }))
            || current_code(&enrollment.secret) == "000000"
    );
    let other_user = Uuid::now_v7();
    assert!(matches!(
        w.id.confirm_mfa(&c, other_user, &enrollment.enrollment_token, &current_code(&enrollment.secret), PASSWORD)
            .await,
        Err(DomainError::InvalidToken { .. })
    ));
    let confirm_code = current_code(&enrollment.secret);
    assert!(matches!(
        w.id.confirm_mfa(&c, reg.user_id, &enrollment.enrollment_token, &confirm_code, "wrong").await,
        Err(DomainError::InvalidCredentials)
    ));
    let (codes, _) =
        w.id.confirm_mfa(&c, reg.user_id, &enrollment.enrollment_token, &confirm_code, PASSWORD).await.unwrap();
    assert_eq!(codes.len(), 10);
    let log = format!("{:?}", events_of(w.id.store()).await);
    assert!(!log.contains(&codes[0]), "recovery codes are stored hashed");

    assert!(matches!(w.id.login(&c, login("mfa_user", PASSWORD)).await, Err(DomainError::MfaRequired)));
    // The code that confirmed enrollment cannot log in: its step is spent.
    let replayed_confirm = LoginRequest { mfa_code: Some(confirm_code.clone()), ..login("mfa_user", PASSWORD) };
    assert!(matches!(w.id.login(&c, replayed_confirm).await, Err(DomainError::InvalidCredentials)));
    // A fresh code logs in once; the same code again is refused.
    let (code, step) = next_code(&enrollment.secret);
    let with_code = LoginRequest { mfa_code: Some(code), ..login("mfa_user", PASSWORD) };
    assert!(w.id.login(&c, with_code.clone()).await.unwrap().mfa_used);
    assert!(
        matches!(w.id.login(&c, with_code).await, Err(DomainError::InvalidCredentials)),
        "a TOTP code is accepted once"
    );
    let events = events_of(w.id.store()).await;
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::UserLoginSucceeded(l) if l.totp_step == Some(step))));
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::UserLoginFailed(f) if f.reason == "totp_code_replayed")));
    let with_recovery =
        LoginRequest { mfa_code: Some(codes[3].to_uppercase()), ..login("mfa_user", "correct horse battery") };
    w.id.login(&c, with_recovery.clone()).await.unwrap();
    assert!(
        matches!(w.id.login(&c, with_recovery).await, Err(DomainError::InvalidCredentials)),
        "recovery codes are single-use"
    );
    let wrong = LoginRequest { mfa_code: Some("123456".into()), ..login("mfa_user", "correct horse battery") };
    if current_code(&enrollment.secret) != "123456" {
        assert!(matches!(w.id.login(&c, wrong).await, Err(DomainError::InvalidCredentials)));
    }
    // Disabling needs the password too.
    assert!(matches!(w.id.disable_mfa(&c, reg.user_id, "wrong").await, Err(DomainError::InvalidCredentials)));
    w.id.disable_mfa(&c, reg.user_id, PASSWORD).await.unwrap();
    w.id.login(&c, login("mfa_user", PASSWORD)).await.unwrap();
}

#[tokio::test]
async fn wrong_step_up_passwords_count_toward_lockout_and_enrollments_expire() {
    let w = world_with(IdentityConfig { lockout_threshold: 3, ..test_config() }).await;
    let c = ctx("10.0.0.1");
    let reg = w.id.register(&c, registration("step@example.com", "stepper")).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(w.id.begin_mfa(&c, reg.user_id, "guess").await, Err(DomainError::InvalidCredentials)));
    }
    let events = events_of(w.id.store()).await;
    let failures = events
        .iter()
        .filter(|(_, e, _)| matches!(e, Event::UserLoginFailed(f) if f.reason == "step_up_bad_password"))
        .count();
    assert_eq!(failures, 3);
    assert!(events.iter().any(|(_, e, _)| matches!(e, Event::AccountLocked(_))), "three guesses lock the account");
    assert!(matches!(w.id.login(&c, login("stepper", PASSWORD)).await, Err(DomainError::InvalidCredentials)));

    let short = world_with(IdentityConfig { mfa_enrollment_ttl: Duration::ZERO, ..test_config() }).await;
    let reg = short.id.register(&c, registration("late@example.com", "late")).await.unwrap();
    let enrollment = short.id.begin_mfa(&c, reg.user_id, PASSWORD).await.unwrap();
    let code = current_code(&enrollment.secret);
    assert!(matches!(
        short.id.confirm_mfa(&c, reg.user_id, &enrollment.enrollment_token, &code, PASSWORD).await,
        Err(DomainError::InvalidToken { .. })
    ));
}

#[tokio::test]
async fn roles_grants_and_checks_with_consistency_tokens() {
    let w = world().await;
    let admin = RequestContext::service("admin-cli");
    let reg = w.id.register(&ctx("10.0.0.1"), registration("rbac@example.com", "rbac")).await.unwrap();
    let u = reg.user_id;
    let spec =
        RoleSpec { role_id: "editor".into(), display_name: "Editor".into(), description: "edits".into(), priority: 50 };
    w.id.create_role(&admin, spec.clone()).await.unwrap();
    assert!(matches!(w.id.create_role(&admin, spec).await, Err(DomainError::FailedPrecondition(_))));
    let perm = |id: &str, r: &str, a: &str, s: &str| PermissionSpec {
        id: id.into(),
        resource: r.into(),
        action: a.into(),
        scope: s.into(),
        name: id.into(),
        description: String::new(),
    };
    w.id.grant_permission_to_role(&admin, "editor", perm("docs.write", "docs", "write", "*")).await.unwrap();
    let bad = w.id.grant_permission_to_role(&admin, "editor", perm("Bad Id", "docs", "write", "*")).await;
    assert!(matches!(bad, Err(DomainError::InvalidArgument { field: "permission.id", .. })));
    assert!(matches!(w.id.assign_role(&admin, u, "ghost", None).await, Err(DomainError::NotFound { .. })));

    let p = w.id.check_permission(u, "docs", "write", "team", None).await.unwrap();
    assert!(!p.allowed);
    let position = w.id.assign_role(&admin, u, "editor", None).await.unwrap();
    let d = w.id.check_permission(u, "docs", "write", "team", Some(position)).await.unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.applied_policies, vec!["role:editor:docs.write"]);

    let position = w.id.grant_permission(&admin, u, perm("billing.read", "billing", "read", "own")).await.unwrap();
    assert!(w.id.check_permission(u, "billing", "read", "own", Some(position)).await.unwrap().allowed);
    let position = w.id.revoke_permission(&admin, u, "billing.read").await.unwrap();
    assert!(!w.id.check_permission(u, "billing", "read", "own", Some(position)).await.unwrap().allowed);
    let position = w.id.revoke_role(&admin, u, "editor").await.unwrap();
    assert!(!w.id.check_permission(u, "docs", "write", "team", Some(position)).await.unwrap().allowed);

    let position = w.id.set_status(&admin, u, UserStatus::Suspended, "abuse").await.unwrap();
    let d = w.id.check_permission(u, "docs", "write", "team", Some(position)).await.unwrap();
    assert_eq!(d.reason, "user is suspended");

    // A position the log has not reached is no write's token: refused at once, naming
    // the head, rather than after the consistency timeout.
    let head = w.id.store().head_position().await.unwrap();
    let far = head + 1000;
    let started = std::time::Instant::now();
    let err = w.id.check_permission(u, "docs", "write", "team", Some(far)).await.unwrap_err();
    let DomainError::FailedPrecondition(message) = &err else { panic!("{err:?}") };
    assert!(message.contains(&far.to_string()) && message.contains(&format!("({head})")), "{message}");
    assert!(started.elapsed() < w.id.config().consistency_timeout, "answered without waiting");
    // The head itself is a position writes answered: it reads.
    w.id.check_permission(u, "docs", "write", "team", Some(head)).await.unwrap();
    // An empty resource, action or scope names no permission.
    for (r, a, sc) in [("", "write", "team"), ("docs", "", "team"), ("docs", "write", "")] {
        let err = w.id.check_permission(u, r, a, sc, None).await.unwrap_err();
        assert!(matches!(err, DomainError::InvalidArgument { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn deleting_a_user_frees_its_names_ends_its_sessions_and_forgets_its_data() {
    let w = world().await;
    let c = ctx("10.0.0.1");
    let reg = w.id.register(&c, registration("gone@example.com", "gone")).await.unwrap();
    let _ = w.id.login(&c, login("gone", "not the password")).await;
    let on_device = LoginRequest { device_id: Some("device-of-gone".into()), ..login("gone", "correct horse battery") };
    let grant = w.id.login(&c, on_device).await.unwrap();
    // What the user did elsewhere (as an administrator would) carries where they were.
    let own = c.clone().as_user(reg.user_id);
    let role = RoleSpec {
        role_id: "gone_made_this".into(),
        display_name: "Made by gone".into(),
        description: String::new(),
        priority: 0,
    };
    w.id.create_role(&own, role).await.unwrap();
    w.id.set_status(&RequestContext::service("admin"), reg.user_id, UserStatus::Suspended, "note: moved to Lyon")
        .await
        .unwrap();
    let before = w.id.store().read_chain(1, 100_000).await.unwrap();
    let position =
        w.id.delete_user(&RequestContext::service("admin"), reg.user_id, "user request: moved to Lyon").await.unwrap();
    // Erasing rewrote nothing: every event recorded before has the same bytes, and the
    // chain verifies without a single in-place redaction.
    let after = w.id.store().read_chain(1, 100_000).await.unwrap();
    assert_eq!(after[..before.len()], before[..], "an event recorded before the erasure changed");
    let mut verifier = perfect21_events::chain::Verifier::new();
    for record in &after {
        verifier.check(record).unwrap();
    }
    assert_eq!(verifier.redacted(), 0);
    let erased = events_of(w.id.store()).await;
    assert!(erased.iter().any(|(_, e, _)| matches!(e, Event::UserErased(u) if u.user_id == reg.user_id)));
    let (by_email, view, sessions_active) =
        w.id.read(Some(position), |m| {
            (
                m.users.by_email("gone@example.com").is_some(),
                m.users.get(reg.user_id).cloned().unwrap(),
                !m.sessions.of_user(reg.user_id).is_empty(),
            )
        })
        .await
        .unwrap();
    assert!(!by_email && !sessions_active);
    assert_eq!(view.status, UserStatus::Deleted);
    assert!(view.email.is_empty() && view.first_name.is_none());
    assert!(matches!(w.id.refresh(&c, &grant.refresh_token).await, Err(DomainError::InvalidToken { .. })));
    assert!(matches!(
        w.id.login(&c, login("gone", "correct horse battery")).await,
        Err(DomainError::InvalidCredentials)
    ));
    // Nothing personal is left in the log: not in payloads, not in metadata.
    let log = format!("{:?}", events_of(w.id.store()).await);
    for secret in [
        "gone@example.com",
        "\"gone\"",
        "Ada",
        "$argon2id",
        "10.0.0.1",
        "identity-test/1",
        "device-of-gone",
        "Lyon",
        "bad_password",
    ] {
        assert!(!log.contains(secret), "{secret} is still in the log");
    }
    // Nor in any byte on disk: the log, its WAL, the key file.
    for file in std::fs::read_dir(w._dir.path()).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for secret in ["gone@example.com", "device-of-gone", "Lyon", "10.0.0.1", "identity-test/1", "$argon2id"] {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} is in {} in clear", path.display());
        }
    }
    // Replaying the redacted log gives the same read models as following it live.
    let head = w.id.store().head_position().await.unwrap();
    let live = w.id.read(Some(head), |m| m.digest()).await.unwrap();
    let mut replayed = perfect21_projections::ReadModels::default();
    for e in w.id.store().read_all(1, 10_000).await.unwrap() {
        replayed.apply(&e).unwrap();
    }
    if replayed.digest() != live {
        let live_dbg = w.id.read(None, |m| format!("{m:#?}")).await.unwrap();
        std::fs::write("/tmp/live.txt", live_dbg).unwrap();
        std::fs::write("/tmp/replayed.txt", format!("{replayed:#?}")).unwrap();
    }
    assert_eq!(replayed.digest(), live);
    // The email and username can be registered again, by someone new.
    let again = w.id.register(&c, registration("gone@example.com", "gone")).await.unwrap();
    assert_ne!(again.user_id, reg.user_id);
}

#[tokio::test]
async fn password_change_needs_the_current_password_and_ends_sessions() {
    let w = world().await;
    let c = ctx("10.0.0.1");
    let reg = w.id.register(&c, registration("pw@example.com", "pw_user")).await.unwrap();
    let grant = w.id.login(&c, login("pw_user", "correct horse battery")).await.unwrap();
    assert!(matches!(
        w.id.change_password(&c, reg.user_id, "wrong one!", "new password 1").await,
        Err(DomainError::InvalidCredentials)
    ));
    assert!(matches!(
        w.id.change_password(&c, reg.user_id, "correct horse battery", "short").await,
        Err(DomainError::InvalidArgument { field: "password", .. })
    ));
    w.id.change_password(&c, reg.user_id, "correct horse battery", "new password 1").await.unwrap();
    assert!(matches!(w.id.refresh(&c, &grant.refresh_token).await, Err(DomainError::InvalidToken { .. })));
    assert!(w.id.login(&c, login("pw_user", "correct horse battery")).await.is_err());
    w.id.login(&c, login("pw_user", "new password 1")).await.unwrap();
}

#[tokio::test]
async fn audit_trail_lists_a_users_security_history_with_who_when_and_where() {
    let w = world().await;
    let c = ctx("192.0.2.7");
    let reg = w.id.register(&c, registration("audit@example.com", "audited")).await.unwrap();
    let _ = w.id.login(&c, login("audited", "wrong password")).await;
    let grant = w.id.login(&c, login("audited", "correct horse battery")).await.unwrap();
    let admin = RequestContext { client_ip: Some("10.9.9.9".into()), ..RequestContext::service("admin-cli") };
    w.id.create_role(&admin, RoleSpec { role_id: "auditor".into(), ..Default::default() }).await.unwrap();
    w.id.assign_role(&admin, reg.user_id, "auditor", None).await.unwrap();
    w.id.revoke_session(&admin, grant.session_id, "admin").await.unwrap();
    // Someone else's events stay out of it.
    w.id.register(&c, registration("other@example.com", "other")).await.unwrap();

    let trail = w.id.audit("AUDIT@example.com", &audit::AuditFilter::default()).await.unwrap();
    let types: Vec<_> = trail.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["user.registered", "user.login_failed", "user.login_succeeded", "permission.role_assigned", "session.revoked"]
    );
    let assigned = &trail[3];
    assert_eq!(assigned.actor.as_deref(), Some("service:admin-cli"));
    assert_eq!(assigned.client_ip.as_deref(), Some("10.9.9.9"));
    assert!(trail.windows(2).all(|p| p[0].position < p[1].position));

    let logins = audit::AuditFilter { types: vec!["user.login".into()], ..Default::default() };
    assert_eq!(w.id.audit("audited", &logins).await.unwrap().len(), 2);
    let later = audit::AuditFilter { since: Some(trail[3].recorded_at), ..Default::default() };
    assert_eq!(w.id.audit(&reg.user_id.to_string(), &later).await.unwrap().len(), 2);
    assert!(matches!(w.id.audit("nobody@example.com", &Default::default()).await, Err(DomainError::NotFound { .. })));
}

#[tokio::test]
async fn an_unverified_email_cannot_log_in_unless_allowed() {
    let w = world_with(IdentityConfig { password_cost: PasswordCost::TEST, ..IdentityConfig::default() }).await;
    let c = ctx("10.0.0.1");
    let reg = w.id.register(&c, registration("new@example.com", "newcomer")).await.unwrap();
    // A wrong password still answers like any wrong password.
    assert!(matches!(w.id.login(&c, login("newcomer", "wrong password")).await, Err(DomainError::InvalidCredentials)));
    // The right one is refused with its own error, and no session starts.
    assert!(matches!(
        w.id.login(&c, login("newcomer", "correct horse battery")).await,
        Err(DomainError::EmailNotVerified)
    ));
    assert!(!events_of(w.id.store()).await.iter().any(|(_, e, _)| matches!(e, Event::SessionStarted(_))));
    w.id.verify_email(&c, &reg.verification_token).await.unwrap();
    w.id.login(&c, login("newcomer", "correct horse battery")).await.unwrap();

    let allowed = world().await;
    allowed.id.register(&c, registration("early@example.com", "early")).await.unwrap();
    allowed.id.login(&c, login("early", "correct horse battery")).await.unwrap();
}

#[tokio::test]
async fn erasing_a_user_registered_in_v1_keeps_the_record_in_v1() {
    use perfect21_events::catalog::legacy::UserRegisteredV1;
    let w = world().await;
    let user_id = Uuid::now_v7();
    let v1 = UserRegisteredV1 {
        user_id,
        email: "old@example.com".into(),
        username: "oldtimer".into(),
        first_name: Some("Old".into()),
        last_name: None,
        password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        verification_token_hash: "00".repeat(32),
        verification_expires_at: 1_767_225_600,
    };
    let data = perfect21_events::EventData {
        event_id: Uuid::now_v7(),
        event_type: "user.registered".into(),
        schema_version: 1,
        metadata: perfect21_events::Metadata::default(),
        payload: postcard::to_stdvec(&v1).unwrap(),
    };
    let s = perfect21_events::StreamId::of("user", user_id).unwrap();
    w.id.store().append(&s, perfect21_events::ExpectedVersion::NoStream, vec![data]).await.unwrap();
    w.id.delete_user(&ctx("10.0.0.1"), user_id, "asked to be forgotten").await.unwrap();
    let first = w.id.store().read_stream(&s, 0, 1).await.unwrap().remove(0);
    assert_eq!(first.schema_version, 1, "the record keeps its version");
    let Event::UserRegistered(e) = first.decode().unwrap() else { panic!("not a registration") };
    assert_eq!((e.email.as_str(), e.username.as_str(), e.first_name), ("", "", None));
    // The v1 record, blanked, written by hand: exactly those bytes.
    let blank = UserRegisteredV1 {
        email: String::new(),
        username: String::new(),
        first_name: None,
        password_hash: String::new(),
        verification_token_hash: String::new(),
        ..v1
    };
    assert_eq!(first.payload, postcard::to_stdvec(&blank).unwrap(), "v1 bytes, not v2 bytes under a v1 label");
}

/// Reservation stream ids are an HMAC of the value under the server secret: the log
/// holds no bare hash of an address, and another secret names other streams.
#[tokio::test]
async fn reservation_streams_are_keyed_by_the_server_secret() {
    let w = world().await;
    w.id.register(&ctx("198.51.100.7"), registration("Keyed@Example.com", "keyed")).await.unwrap();
    let streams: Vec<String> = events_of(w.id.store()).await.into_iter().map(|(s, _, _)| s).collect();
    let email = Reservation::of(&w.secrets, "email", "keyed@example.com").unwrap();
    let username = Reservation::of(&w.secrets, "username", "keyed").unwrap();
    for r in [&email, &username] {
        assert!(streams.contains(&r.keyed.to_string()), "{} claimed: {streams:?}", r.keyed);
        assert!(!streams.contains(&r.legacy.to_string()), "no bare hash of the value: {streams:?}");
    }
    let other = Reservation::of(&SecretBox::random(), "email", "keyed@example.com").unwrap();
    assert_ne!(other.keyed, email.keyed);
    assert_eq!(other.legacy, email.legacy);
}

/// A log written before keyed ids (its reservations on bare-hash streams): what it
/// reserved stays taken and findable, its owner is told of attempts, and deleting the
/// owner frees the value.
#[tokio::test]
async fn values_reserved_before_keyed_ids_stay_taken_until_released() {
    // Log A as this build writes it; log B the same events with every keyed reservation
    // stream renamed to its legacy id, as a log written before keyed ids holds them.
    let a = world().await;
    let c = ctx("198.51.100.8");
    let old = a.id.register(&c, registration("Old@Example.com", "old_timer")).await.unwrap();
    a.id.verify_email(&c, &old.verification_token).await.unwrap();
    let b = world().await;
    let renamed: std::collections::HashMap<String, perfect21_events::StreamId> = [
        Reservation::of(&a.secrets, "email", "old@example.com").unwrap(),
        Reservation::of(&a.secrets, "username", "old_timer").unwrap(),
    ]
    .into_iter()
    .map(|r| (r.keyed.to_string(), r.legacy))
    .collect();
    for e in a.id.store().read_all(1, usize::MAX).await.unwrap() {
        let s = renamed
            .get(&e.stream_id)
            .cloned()
            .unwrap_or_else(|| perfect21_events::StreamId::new(&e.stream_id).unwrap());
        let data = perfect21_events::EventData {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            metadata: e.metadata.clone(),
            payload: e.payload.clone(),
        };
        b.id.store().append(&s, perfect21_events::ExpectedVersion::Any, vec![data]).await.unwrap();
    }
    let c = ctx("198.51.100.9");
    // The owner is found through the legacy stream.
    b.id.login(&c, login("old@example.com", "correct horse battery")).await.expect("the old owner logs in by email");
    assert!(matches!(
        b.id.register(&c, registration("someone@example.com", "old_timer")).await,
        Err(DomainError::AlreadyRegistered { kind: "username" })
    ));
    // A taken address answers like a registration, creates no user, and tells the owner.
    b.id.register(&c, registration("OLD@example.com", "newcomer")).await.unwrap();
    let events = events_of(b.id.store()).await;
    let registered = events.iter().filter(|(_, e, _)| matches!(e, Event::UserRegistered(_))).count();
    assert_eq!(registered, 1, "no second user for a legacy-reserved address");
    let legacy_email = Reservation::legacy("email", "old@example.com").unwrap().to_string();
    assert!(
        events.iter().any(|(s, e, _)| *s == legacy_email
            && matches!(e, Event::UserRegistrationAttempted(x) if x.user_id == old.user_id)),
        "the attempt is recorded where the owner's claim is"
    );
    let trail = b.id.audit("old@example.com", &audit::AuditFilter::default()).await.unwrap();
    assert!(trail.iter().any(|t| t.event_type == "user.registration_attempted"), "the audit trail shows it");

    // Deleting the owner releases the legacy claim; the address is free for a keyed claim.
    b.id.delete_user(&c, old.user_id, "asked to leave").await.unwrap();
    let again = b.id.register(&c, registration("old@example.com", "old_timer")).await.unwrap();
    assert_ne!(again.user_id, old.user_id);
    let streams: Vec<String> = events_of(b.id.store()).await.into_iter().map(|(s, _, _)| s).collect();
    assert!(streams.contains(&Reservation::of(&b.secrets, "email", "old@example.com").unwrap().keyed.to_string()));
}

/// The snapshot on disk is rewritten when a user is deleted: it no longer holds the
/// user's data, without waiting for the next periodic save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_rewrites_the_snapshot_without_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        perfect21_events::store::open(&format!("sqlite://{}", dir.path().join("events.db").display())).await.unwrap();
    let path = dir.path().join("read-models.snap");
    let policy = SnapshotPolicy { path: path.clone(), every_events: 1_000_000 };
    let live = LiveModels::open(store.clone(), Some(policy)).await;
    let id = Identity::new(store, live.clone(), SecretBox::random(), test_config()).unwrap();
    let c = ctx("198.51.100.10");
    let reg = id.register(&c, registration("Forget.Me@Example.com", "forget_me")).await.unwrap();
    live.wait_for(reg.position, Duration::from_secs(10)).await.unwrap();
    live.save_snapshot(&path).await.unwrap();
    let holds = |needle: &str| std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(holds("forget_me") && holds("Forget.Me@Example.com"), "the snapshot holds the user before");
    let deleted = id.delete_user(&c, reg.user_id, "asked to leave").await.unwrap();
    live.wait_for(deleted, Duration::from_secs(10)).await.unwrap();
    // Saved off the fold's path: wait for the file, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while holds("forget_me") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!holds("forget_me") && !holds("Forget.Me@Example.com"), "the rewritten snapshot forgets the user");
}

/// A log that cannot rewrite recorded events (as an append-only engine).
struct AppendOnly(Arc<dyn EventStore>);

#[async_trait::async_trait]
impl EventStore for AppendOnly {
    async fn append(
        &self,
        stream: &perfect21_events::StreamId,
        expected: perfect21_events::ExpectedVersion,
        events: Vec<perfect21_events::EventData>,
    ) -> Result<perfect21_events::AppendResult, perfect21_events::StoreError> {
        self.0.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &perfect21_events::StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<perfect21_events::RecordedEvent>, perfect21_events::StoreError> {
        self.0.read_stream(stream, from, limit).await
    }
    async fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<perfect21_events::RecordedEvent>, perfect21_events::StoreError> {
        self.0.read_all(from, limit).await
    }
    async fn redact(
        &self,
        _: &perfect21_events::StreamId,
        _: Vec<perfect21_events::Redaction>,
    ) -> Result<usize, perfect21_events::StoreError> {
        panic!("an append-only log was asked to rewrite events")
    }
    async fn read_chain(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<perfect21_events::chain::ChainRecord>, perfect21_events::StoreError> {
        self.0.read_chain(from, limit).await
    }
    async fn chain_head(&self) -> Result<Option<(u64, perfect21_events::chain::Digest)>, perfect21_events::StoreError> {
        self.0.chain_head().await
    }
    async fn head_position(&self) -> Result<u64, perfect21_events::StoreError> {
        self.0.head_position().await
    }
    async fn stats(&self) -> Result<perfect21_events::StoreStats, perfect21_events::StoreError> {
        self.0.stats().await
    }
    fn head_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.head_watch()
    }
    fn backend(&self) -> &'static str {
        "append-only"
    }
    async fn erase_subject(&self, subject: Uuid) -> Result<bool, perfect21_events::StoreError> {
        self.0.erase_subject(subject).await
    }
    fn rewrites_in_place(&self) -> bool {
        false
    }
}

/// Events recorded before sealing hold personal data in clear: erasing their user
/// rewrites those (and only those) in place, and a log that cannot rewrite says so.
#[tokio::test]
async fn events_recorded_before_sealing_are_rewritten_in_place_where_the_log_can() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let secrets = SecretBox::random();
    let identity = |store: Arc<dyn EventStore>| {
        let live = LiveModels::start(store.clone());
        Identity::new(store, live, secrets.clone(), test_config()).unwrap()
    };
    // Before sealing: the log as older builds wrote it.
    let unsealed: Arc<dyn EventStore> = Arc::new(
        perfect21_events::store::SqliteStore::open(perfect21_events::store::SqliteConfig::new(&path)).await.unwrap(),
    );
    let old = identity(unsealed.clone());
    let c = ctx("10.0.0.9");
    let early = old.register(&c, registration("early@example.com", "early_one")).await.unwrap();
    let stuck = old.register(&c, registration("stuck@example.com", "stuck_one")).await.unwrap();
    drop(old);
    drop(unsealed);
    let mut in_clear = std::fs::read(&path).unwrap();
    in_clear.extend(std::fs::read(dir.path().join("events.db-wal")).unwrap_or_default());
    assert!(in_clear.windows(17).any(|w| w == b"early@example.com"), "the old log holds the email in clear");

    let sealing = perfect21_events::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let now = identity(sealing.clone());
    let admin = RequestContext::service("admin");
    let position = now.delete_user(&admin, early.user_id, "user request").await.unwrap();
    now.read(Some(position), |_| ()).await.unwrap();
    let mut verifier = perfect21_events::chain::Verifier::new();
    for record in sealing.read_chain(1, 100_000).await.unwrap() {
        verifier.check(&record).unwrap();
    }
    assert!(verifier.redacted() > 0, "the events recorded in clear were rewritten");
    let log = format!("{:?}", events_of(&sealing).await);
    assert!(!log.contains("early@example.com") && log.contains("stuck@example.com"));
    drop(now);

    // On a log that cannot rewrite, the erasure stops with an error that says why.
    let append_only: Arc<dyn EventStore> = Arc::new(AppendOnly(sealing.clone()));
    let err = identity(append_only).delete_user(&admin, stuck.user_id, "user request").await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{message}");
    assert!(message.contains("before sealing") && message.contains("cannot rewrite"), "{message}");
}

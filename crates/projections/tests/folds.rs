//! The folds, fed hand-made recorded events: no database needed.

use perfect21_events::catalog::*;
use perfect21_events::{Event, Metadata, RecordedEvent};
use perfect21_projections::authz::Decision;
use perfect21_projections::{ProjectionError, ReadModels};
use uuid::Uuid;

/// The clock of the permission checks here (Unix seconds).
const NOW: i64 = 1_800_000_000;

/// Records `events` at positions 1.. as the log would.
fn record(events: Vec<Event>) -> Vec<RecordedEvent> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| RecordedEvent {
            event_id: Uuid::from_u128(i as u128 + 1),
            stream_id: "user-x".into(),
            stream_version: i as u64,
            position: i as u64 + 1,
            event_type: e.event_type().into(),
            schema_version: e.schema_version(),
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
            metadata: Metadata { client_ip: Some(format!("10.0.0.{i}")), ..Metadata::default() },
            payload: e.encode_payload().unwrap(),
        })
        .collect()
}

fn fold(events: &[RecordedEvent]) -> ReadModels {
    let mut m = ReadModels::default();
    for e in events {
        m.apply(e).unwrap();
    }
    m
}

fn registered(user_id: Uuid, email: &str, username: &str) -> Event {
    UserRegistered {
        user_id,
        email: email.into(),
        username: username.into(),
        first_name: Some("Ada".into()),
        last_name: None,
        phone_number: None,
        locale: "en".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$x$y".into(),
        verification_token_hash: "h".into(),
        verification_expires_at: 0,
    }
    .into()
}

/// `Authz::check`, asserting that `Authz::holds` (the verdict callers are admitted by)
/// agrees with it.
fn check(m: &ReadModels, user: Uuid, status: Option<UserStatus>, r: &str, a: &str, s: &str, now: i64) -> Decision {
    let d = m.authz.check(user, status, r, a, s, now);
    assert_eq!(m.authz.holds(user, status, r, a, s, now), d.allowed, "holds and check disagree on {r}:{a}:{s}: {d:?}");
    d
}

fn perm(id: &str, resource: &str, action: &str, scope: &str) -> PermissionSpec {
    PermissionSpec {
        id: id.into(),
        resource: resource.into(),
        action: action.into(),
        scope: scope.into(),
        name: id.into(),
        description: String::new(),
    }
}

#[test]
fn users_are_found_by_id_email_and_username_and_deletion_forgets_them() {
    let u = Uuid::from_u128(7);
    let events = record(vec![
        registered(u, "Ada@Example.com", "Ada"),
        UserEmailVerified { user_id: u }.into(),
        UserStatusChanged {
            user_id: u,
            from: UserStatus::PendingVerification,
            to: UserStatus::Active,
            reason: "verified".into(),
        }
        .into(),
        UserLoginSucceeded {
            user_id: u,
            session_id: Uuid::from_u128(9),
            mfa_used: false,
            risk_score: 0.1,
            device_id: None,
            totp_step: None,
        }
        .into(),
    ]);
    let m = fold(&events);
    let user = m.users.by_email("ada@example.COM").expect("case-insensitive email");
    assert_eq!(user.id, u);
    assert_eq!(m.users.by_username("ADA").unwrap().id, u);
    assert!(user.email_verified);
    assert_eq!(user.status, UserStatus::Active);
    assert_eq!(user.last_login_at, Some(events[3].recorded_at.timestamp_micros()));

    let mut all = events.clone();
    all.extend(record(vec![UserDeleted { user_id: u, reason: "request".into() }.into()]).into_iter().map(|mut e| {
        e.position = 5;
        e
    }));
    let m = fold(&all);
    assert!(m.users.by_email("ada@example.com").is_none());
    assert!(m.users.by_username("ada").is_none());
    let gone = m.users.get(u).unwrap();
    assert_eq!(gone.status, UserStatus::Deleted);
    assert!(gone.email.is_empty() && gone.username.is_empty() && gone.first_name.is_none());
}

#[test]
fn permission_checks_follow_roles_grants_wildcards_and_status() {
    let u = Uuid::from_u128(1);
    let events = record(vec![
        registered(u, "a@x.io", "a"),
        RoleCreated {
            role_id: "viewer".into(),
            name: "viewer".into(),
            display_name: "Viewer".into(),
            description: String::new(),
            priority: 10,
        }
        .into(),
        RoleCreated {
            role_id: "admin".into(),
            name: "admin".into(),
            display_name: "Admin".into(),
            description: String::new(),
            priority: 100,
        }
        .into(),
        RolePermissionGranted { role_id: "viewer".into(), permission: perm("docs.read", "docs", "read", "own") }.into(),
        RolePermissionGranted { role_id: "admin".into(), permission: perm("all", "*", "*", "*") }.into(),
        RoleAssigned { user_id: u, role_id: "viewer".into(), expires_at: None }.into(),
        PermissionGranted { user_id: u, permission: perm("billing.any", "billing.*", "read", "*") }.into(),
    ]);
    let m = fold(&events);
    let status = m.users.get(u).map(|u| u.status);
    let d = check(&m, u, status, "docs", "read", "own", NOW);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.applied_policies, vec!["role:viewer:docs.read"]);
    assert!(!check(&m, u, status, "docs", "write", "own", NOW).allowed);
    assert!(!check(&m, u, status, "docs", "read", "all", NOW).allowed);
    let d = check(&m, u, status, "billing.invoices", "read", "team", NOW);
    assert_eq!(d.applied_policies, vec!["direct:billing.any"]);
    assert!(!check(&m, u, status, "billingx", "read", "team", NOW).allowed);
    assert!(!check(&m, Uuid::from_u128(99), None, "docs", "read", "own", NOW).allowed);

    // Admin outranks viewer; revoking and locking take effect.
    let mut more = events.clone();
    let tail = record(vec![
        RoleAssigned { user_id: u, role_id: "admin".into(), expires_at: None }.into(),
        RoleRevoked { user_id: u, role_id: "viewer".into() }.into(),
        AccountLocked { user_id: u, reason: "failures".into(), failed_attempts: 5, locked_until: None }.into(),
    ]);
    for (i, mut e) in tail.into_iter().enumerate() {
        e.position = events.len() as u64 + 1 + i as u64;
        more.push(e);
    }
    let mut m = ReadModels::default();
    for e in &more[..more.len() - 1] {
        m.apply(e).unwrap();
    }
    let status = m.users.get(u).map(|u| u.status);
    let d = check(&m, u, status, "docs", "delete", "any", NOW);
    assert_eq!(d.applied_policies, vec!["role:admin:all"]);
    assert_eq!(m.authz.user_roles(u, NOW).iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["admin"]);
    m.apply(more.last().unwrap()).unwrap();
    let d = check(&m, u, m.users.get(u).map(|u| u.status), "docs", "read", "own", NOW);
    assert!(!d.allowed);
    assert_eq!(d.reason, "user is locked");
}

#[test]
fn refresh_rotation_and_revocation_are_tracked() {
    let (u, s) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let events = record(vec![
        SessionStarted {
            session_id: s,
            user_id: u,
            refresh_token_hash: "r1".into(),
            access_jti: "j1".into(),
            expires_at: i64::MAX,
            device_id: None,
        }
        .into(),
        SessionRefreshed {
            session_id: s,
            user_id: u,
            previous_token_hash: "r1".into(),
            refresh_token_hash: "r2".into(),
            access_jti: "j2".into(),
            expires_at: i64::MAX,
        }
        .into(),
        SessionTokenRevoked { session_id: s, user_id: u, jti: "j1".into(), expires_at: 0 }.into(),
    ]);
    let m = fold(&events);
    assert!(m.sessions.is_revoked("j1", s));
    assert!(!m.sessions.is_revoked("j2", s));
    assert_eq!(m.sessions.get(s).unwrap().expires_at, i64::MAX);
    assert!(m.sessions.get(s).unwrap().is_active(0));
    let mut all = events.clone();
    let mut revoked = record(vec![SessionRevoked { session_id: s, user_id: u, reason: "logout".into() }.into()]);
    revoked[0].position = 4;
    all.extend(revoked);
    let m = fold(&all);
    assert!(m.sessions.is_revoked("j2", s), "ending the session revokes its tokens");
    assert!(m.sessions.of_user(u).is_empty() && m.sessions.get(s).is_none(), "ended sessions leave the model");
    assert!(m.sessions.is_revoked("any", Uuid::from_u128(77)), "tokens of unknown sessions are not valid");
    assert_eq!(
        m.audit.positions(u),
        &[3, 4],
        "token and session revocations are audited, starts and refreshes are not"
    );
}

#[test]
fn login_history_is_bounded_and_records_where_from() {
    let u = Uuid::from_u128(1);
    let events: Vec<Event> = (0..25)
        .map(|i| {
            UserLoginFailed { user_id: u, reason: "bad_password".into(), failure_count: i, risk_score: 0.5 }.into()
        })
        .collect();
    let m = fold(&record(events));
    let logins: Vec<_> = m.audit.logins(u).collect();
    assert_eq!(logins.len(), perfect21_projections::audit::LOGIN_HISTORY_LEN);
    assert_eq!(logins.last().unwrap().position, 25);
    assert_eq!(logins.last().unwrap().client_ip, Some("10.0.0.24".parse().unwrap()));
    assert_eq!(m.audit.positions(u).len(), 25);
}

#[test]
fn checkpoints_make_folds_idempotent_and_refuse_holes() {
    let u = Uuid::from_u128(1);
    let events = record(vec![
        registered(u, "a@x.io", "a"),
        UserEmailVerified { user_id: u }.into(),
        UserMfaEnabled { user_id: u, method: "totp".into(), secret_ciphertext: vec![], recovery_code_hashes: vec![] }
            .into(),
    ]);
    let once = fold(&events);
    let mut twice = fold(&events);
    for e in &events {
        twice.apply(e).unwrap();
    }
    assert_eq!(once.digest(), twice.digest());
    assert_eq!(twice.checkpoint(), 3);

    let mut holed = ReadModels::default();
    holed.apply(&events[0]).unwrap();
    assert!(matches!(holed.apply(&events[2]), Err(ProjectionError::OutOfOrder { expected: 2, got: 3 })));
    // Different state, different digest.
    assert_ne!(fold(&events[..2]).digest(), once.digest());
}

#[test]
fn unknown_types_are_skipped_and_damaged_payloads_refused() {
    let mut events = record(vec![UserEmailVerified { user_id: Uuid::from_u128(1) }.into(); 2]);
    events[0].schema_version = 77;
    events[1].payload = vec![];
    let mut m = ReadModels::default();
    m.apply(&events[0]).unwrap();
    assert_eq!(m.skipped_unknown(), 1);
    assert!(matches!(m.apply(&events[1]), Err(ProjectionError::Undecodable { position: 2, .. })));
}

#[test]
fn snapshots_round_trip_and_refuse_other_formats() {
    use perfect21_projections::snapshot::SnapshotError;
    let u = Uuid::from_u128(1);
    let events = record(vec![
        registered(u, "snap@x.io", "snap"),
        RoleCreated {
            role_id: "r".into(),
            name: "r".into(),
            display_name: "R".into(),
            description: String::new(),
            priority: 1,
        }
        .into(),
        RoleAssigned { user_id: u, role_id: "r".into(), expires_at: None }.into(),
        UserLoginFailed { user_id: u, reason: "bad_password".into(), failure_count: 1, risk_score: 0.5 }.into(),
    ]);
    let m = fold(&events);
    let anchor = Some(events.last().unwrap().event_id);
    let bytes = m.to_snapshot(anchor);
    let (restored, got_anchor) = ReadModels::from_snapshot(&bytes).unwrap();
    assert_eq!(got_anchor, anchor);
    assert_eq!(restored.digest(), m.digest());
    assert_eq!(restored.checkpoint(), 4);
    assert_eq!(restored.users.by_email("snap@x.io").unwrap().id, u);

    let mut other = bytes.clone();
    other[8] = 99;
    assert!(matches!(ReadModels::from_snapshot(&other), Err(SnapshotError::OtherFormat { found: 99 })));
    assert!(matches!(ReadModels::from_snapshot(b"garbage"), Err(SnapshotError::NotASnapshot)));
    assert!(matches!(ReadModels::from_snapshot(&bytes[..bytes.len() / 2]), Err(SnapshotError::Decode(_))));
}

#[test]
fn a_role_assignment_stops_granting_at_its_expiry() {
    let u = Uuid::from_u128(1);
    let events = record(vec![
        registered(u, "oncall@example.com", "oncall"),
        RoleCreated {
            role_id: "oncall".into(),
            name: "oncall".into(),
            display_name: String::new(),
            description: String::new(),
            priority: 1,
        }
        .into(),
        RolePermissionGranted { role_id: "oncall".into(), permission: perm("pager", "pager", "ack", "*") }.into(),
        RoleAssigned { user_id: u, role_id: "oncall".into(), expires_at: Some(NOW + 60) }.into(),
    ]);
    let m = fold(&events);
    let status = m.users.get(u).map(|u| u.status);
    assert!(check(&m, u, status, "pager", "ack", "x", NOW + 59).allowed);
    let d = check(&m, u, status, "pager", "ack", "x", NOW + 60);
    assert!(!d.allowed, "an expired assignment still grants: {d:?}");
    assert_eq!(m.authz.user_roles(u, NOW + 59).len(), 1);
    assert!(m.authz.user_roles(u, NOW + 60).is_empty());
    assert!(m.authz.effective_permissions(u, NOW + 61).is_empty());

    // Assigning again moves the expiry; the digest sees the difference.
    let mut again = events.clone();
    let mut e = record(vec![RoleAssigned { user_id: u, role_id: "oncall".into(), expires_at: None }.into()]).remove(0);
    e.position = events.len() as u64 + 1;
    e.event_id = Uuid::from_u128(1000);
    again.push(e);
    let m2 = fold(&again);
    assert!(check(&m2, u, status, "pager", "ack", "x", NOW + 3600).allowed);
    assert_ne!(m.digest(), m2.digest());
}

/// Lives with every event type that has personal fields, each with them set (the
/// session's device, the login's device, the reasons), and a client address and user
/// agent on every event: what [`ReadModels::OPENING`] is checked against. The deletion
/// is another user's and the revocation another session's, so that neither wipes what
/// the first ones' events left.
fn personal_lives() -> Vec<Event> {
    let (u, s, ended, gone) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(4), Uuid::from_u128(3));
    vec![
        UserRegistered { phone_number: Some("+15555550100".into()), ..registered_event(u, "ada@example.com", "ada") }
            .into(),
        UserProfileUpdated {
            user_id: u,
            first_name: Some("Augusta".into()),
            last_name: Some("King".into()),
            phone_number: Some("+15555550199".into()),
            profile: vec![("timezone".into(), "Europe/London".into())],
        }
        .into(),
        UserPasswordChanged { user_id: u, password_hash: "$argon2id$new".into(), reason: "user".into() }.into(),
        UserStatusChanged {
            user_id: u,
            from: UserStatus::PendingVerification,
            to: UserStatus::Active,
            reason: "verified by support".into(),
        }
        .into(),
        UserMfaEnabled {
            user_id: u,
            method: "totp".into(),
            secret_ciphertext: vec![1, 2, 3],
            recovery_code_hashes: vec!["h1".into()],
        }
        .into(),
        SessionStarted {
            session_id: s,
            user_id: u,
            refresh_token_hash: "rt1".into(),
            access_jti: "j1".into(),
            expires_at: NOW + 3600,
            device_id: Some("ada's phone".into()),
        }
        .into(),
        UserLoginSucceeded {
            user_id: u,
            session_id: s,
            mfa_used: true,
            risk_score: 0.25,
            device_id: Some("ada's phone".into()),
            totp_step: Some(7),
        }
        .into(),
        UserLoginFailed { user_id: u, reason: "bad_password".into(), failure_count: 1, risk_score: 0.5 }.into(),
        SuspiciousActivity {
            user_id: u,
            activity_type: "new_device".into(),
            risk_score: 0.75,
            description: "login from a new device".into(),
            details: vec![("ip".into(), "203.0.113.9".into())],
        }
        .into(),
        SessionStarted {
            session_id: ended,
            user_id: u,
            refresh_token_hash: "rt2".into(),
            access_jti: "j2".into(),
            expires_at: NOW + 3600,
            device_id: Some("a shared computer".into()),
        }
        .into(),
        SessionRevoked { session_id: ended, user_id: u, reason: "forgot to log out".into() }.into(),
        registered(gone, "gone@example.com", "gone"),
        UserDeleted { user_id: gone, reason: "moved away".into() }.into(),
    ]
}

fn registered_event(user_id: Uuid, email: &str, username: &str) -> UserRegistered {
    match registered(user_id, email, username) {
        Event::UserRegistered(e) => e,
        _ => unreachable!(),
    }
}

/// `events` recorded, with the seals that `shut` names left shut as a sealing store
/// leaves them: the payload as its tombstone, the metadata without client address and
/// user agent.
fn recorded_shut(events: Vec<Event>, shut: impl Fn(&str) -> (bool, bool)) -> Vec<RecordedEvent> {
    let mut recorded = record(events);
    for r in &mut recorded {
        r.metadata.user_agent = Some(format!("agent {}", r.position));
        let (payload, metadata) = shut(&r.event_type);
        if payload {
            let event = r.decode().unwrap();
            let tombstone = perfect21_events::catalog::personal::blanked(&event).expect("a type with personal fields");
            r.payload = tombstone.encode_payload().unwrap();
        }
        if metadata {
            (r.metadata.client_ip, r.metadata.user_agent) = (None, None);
        }
    }
    recorded
}

#[test]
fn the_folds_read_no_sealed_field_but_those_replay_opens() {
    use perfect21_events::catalog::personal::SEALED_VERSIONS;
    let opening = ReadModels::OPENING;
    let sealed_types: Vec<&str> = SEALED_VERSIONS.iter().map(|(t, _, _)| *t).collect();
    let lives = personal_lives();
    for t in &sealed_types {
        assert!(lives.iter().any(|e| e.event_type() == *t), "the lives lack a {t}: add one with its personal fields");
    }
    for t in opening.payloads {
        assert!(sealed_types.contains(t), "{t} has no sealed payload to open");
    }
    let digest = |shut: &dyn Fn(&str) -> (bool, bool)| fold(&recorded_shut(lives.clone(), shut)).digest();
    let open = digest(&|_| (false, false));
    // As a replay reads the log: every seal not named shut, the read models the same.
    let shut_as_replayed = |t: &str| (sealed_types.contains(&t) && !opening.payload(t), !opening.metadata(t));
    let as_replayed = digest(&shut_as_replayed);
    assert_eq!(as_replayed, open, "a fold reads a personal field that ReadModels::OPENING does not open");
    // And as a replay folds it: each event handed over as a FoldEvent.
    let mut folded = ReadModels::default();
    for r in recorded_shut(lives.clone(), |t| (shut_as_replayed(t).0, false)) {
        folded.apply_folded(&perfect21_events::FoldEvent::from_recorded(r, &opening)).unwrap();
    }
    assert_eq!(folded.digest(), open, "a FoldEvent lacks what a fold reads");
    // And each seal it names is read: shutting it alone changes the read models.
    for t in opening.payloads {
        assert_ne!(digest(&|x| (x == *t, false)), open, "the folds read nothing sealed in {t}'s payload");
    }
    for t in opening.metadata {
        assert_ne!(digest(&|x| (false, x == *t)), open, "the folds read nothing sealed in {t}'s metadata");
    }
}

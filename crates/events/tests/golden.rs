//! Golden fixtures: the bytes of every released (event_type, schema_version),
//! checked in under `crates/events/fixtures/`, must decode forever into the same
//! value, and this build must still encode the current versions to exactly those bytes.
//!
//! Adding an event type or version: add a sample below, then run
//! `PERFECT21_BLESS_FIXTURES=1 cargo nextest run -p perfect21-events golden`: it writes
//! the missing fixtures and fails, so that they are reviewed; commit them and run
//! again. Existing fixtures are never rewritten.

use perfect21_events::catalog::legacy::{UserLoginSucceededV1, UserRegisteredV1};
use perfect21_events::catalog::*;
use perfect21_events::seal::{Binding, DataKey, Part, Seal};
use proptest::prelude::*;
use std::path::PathBuf;
use uuid::Uuid;

fn uid(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn perm() -> PermissionSpec {
    PermissionSpec {
        id: "users.read.own".into(),
        resource: "users".into(),
        action: "read".into(),
        scope: "own".into(),
        name: "Read own user".into(),
        description: "Read the caller's own user record".into(),
    }
}

fn v1_registration() -> UserRegisteredV1 {
    UserRegisteredV1 {
        user_id: uid(1),
        email: "ada@example.com".into(),
        username: "ada".into(),
        first_name: Some("Ada".into()),
        last_name: None,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        verification_token_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        verification_expires_at: 1_767_225_600,
    }
}

fn v1_login() -> UserLoginSucceededV1 {
    UserLoginSucceededV1 {
        user_id: uid(1),
        session_id: uid(2),
        mfa_used: true,
        risk_score: 0.5,
        device_id: Some("dev-1".into()),
    }
}

fn client_settings() -> ClientSettings {
    ClientSettings {
        redirect_uris: vec!["https://wiki.example.com/callback".into()],
        post_logout_redirect_uris: vec!["https://wiki.example.com/".into()],
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        scopes: vec!["openid".into(), "profile".into(), "email".into()],
        id_token_signed_response_alg: "RS256".into(),
    }
}

/// One sample of every current event type.
fn samples() -> Vec<Event> {
    let u = uid(1);
    let s = uid(2);
    vec![
        Event::UserRegistered(UserRegistered {
            phone_number: Some("+15555550100".into()),
            locale: "fr-CA".into(),
            ..v1_registration().into()
        }),
        UserEmailVerified { user_id: u }.into(),
        UserProfileUpdated {
            user_id: u,
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            phone_number: None,
            profile: vec![("timezone".into(), "Europe/London".into())],
        }
        .into(),
        UserPasswordChanged {
            user_id: u,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3".into(),
            reason: "user".into(),
        }
        .into(),
        UserStatusChanged {
            user_id: u,
            from: UserStatus::Active,
            to: UserStatus::Locked,
            reason: "too many failures".into(),
        }
        .into(),
        UserMfaEnabled {
            user_id: u,
            method: "totp".into(),
            secret_ciphertext: vec![1, 2, 3, 4],
            recovery_code_hashes: vec!["h1".into(), "h2".into()],
        }
        .into(),
        UserMfaDisabled { user_id: u, reason: "user".into() }.into(),
        UserLoginSucceeded {
            user_id: u,
            session_id: s,
            mfa_used: true,
            risk_score: 0.5,
            device_id: Some("dev-1".into()),
            totp_step: Some(58_925_000),
        }
        .into(),
        UserLoginFailed { user_id: u, reason: "bad_password".into(), failure_count: 3, risk_score: 0.75 }.into(),
        UserLoggedOut { user_id: u, session_id: s }.into(),
        UserDeleted { user_id: u, reason: "user request".into() }.into(),
        SessionStarted {
            session_id: s,
            user_id: u,
            refresh_token_hash: "rt1".into(),
            access_jti: "jti-1".into(),
            expires_at: 1_767_225_600,
            device_id: None,
        }
        .into(),
        SessionRefreshed {
            session_id: s,
            user_id: u,
            previous_token_hash: "rt1".into(),
            refresh_token_hash: "rt2".into(),
            access_jti: "jti-2".into(),
            expires_at: 1_767_229_200,
        }
        .into(),
        SessionRevoked { session_id: s, user_id: u, reason: "logout".into() }.into(),
        SessionExpired { session_id: s, user_id: u }.into(),
        SessionTokenRevoked { session_id: s, user_id: u, jti: "jti-2".into(), expires_at: 1_767_226_500 }.into(),
        RoleCreated {
            role_id: "admin".into(),
            name: "admin".into(),
            display_name: "Administrator".into(),
            description: "Everything".into(),
            priority: 100,
        }
        .into(),
        RoleUpdated {
            role_id: "admin".into(),
            display_name: "Admin".into(),
            description: "All of it".into(),
            priority: -5,
        }
        .into(),
        RoleDeleted { role_id: "admin".into() }.into(),
        RolePermissionGranted { role_id: "admin".into(), permission: perm() }.into(),
        RolePermissionRevoked { role_id: "admin".into(), permission_id: "users.read.own".into() }.into(),
        RoleAssigned { user_id: u, role_id: "admin".into(), expires_at: Some(1_767_225_600) }.into(),
        RoleRevoked { user_id: u, role_id: "admin".into() }.into(),
        PermissionGranted { user_id: u, permission: perm() }.into(),
        PermissionRevoked { user_id: u, permission_id: "users.read.own".into() }.into(),
        SuspiciousActivity {
            user_id: u,
            activity_type: "new_device".into(),
            risk_score: 0.875,
            description: "login from a new device".into(),
            details: vec![("ip".into(), "203.0.113.9".into())],
        }
        .into(),
        AccountLocked {
            user_id: u,
            reason: "5 failed logins in 15 min".into(),
            failed_attempts: 5,
            locked_until: Some(1_767_226_500),
        }
        .into(),
        AccountUnlocked { user_id: u, reason: "lock expired".into() }.into(),
        SecurityAlert {
            user_id: u,
            alert_type: "account_locked".into(),
            severity: Severity::High,
            description: "Account locked after repeated failures".into(),
            details: vec![("failed_attempts".into(), "5".into())],
            recommended_actions: vec!["Check login activity".into(), "Change your password".into()],
        }
        .into(),
        RefreshTokenReuseDetected { user_id: u, session_id: s, reused_token_hash: "rt1".into() }.into(),
        ReservationClaimed { owner: u, kind: "email".into() }.into(),
        ReservationReleased { owner: u, kind: "email".into() }.into(),
        UserRecoveryCodeUsed { user_id: u, code_hash: "c1".into() }.into(),
        ServiceAccountCreated {
            service_account_id: uid(5),
            name: "billing-api".into(),
            description: "Billing back end".into(),
            secret_hash: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
        }
        .into(),
        ServiceAccountSecretRotated {
            service_account_id: uid(5),
            secret_hash: "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9".into(),
        }
        .into(),
        ServiceAccountDisabled { service_account_id: uid(5), reason: "decommissioned".into() }.into(),
        ServiceAccountDeleted { service_account_id: uid(5) }.into(),
        UserRegistrationAttempted { user_id: u }.into(),
        UserErased { user_id: u }.into(),
        ClientRegistered {
            client_id: uid(6),
            name: "Wiki".into(),
            confidential: true,
            secret_hash: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
            settings: client_settings(),
        }
        .into(),
        ClientUpdated {
            client_id: uid(6),
            name: "Team wiki".into(),
            settings: ClientSettings { scopes: vec!["openid".into()], ..client_settings() },
        }
        .into(),
        ClientSecretRotated {
            client_id: uid(6),
            secret_hash: "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9".into(),
        }
        .into(),
        ClientDeleted { client_id: uid(6) }.into(),
        AuthorizationCodeIssued {
            code_id: uid(7),
            code_hash: "baa5a0964d3320fbc0c6a922140453c8513ea24ab8fd0577034804a967248096".into(),
            client_id: uid(6),
            user_id: u,
            browser_session_id: s,
            redirect_uri: "https://wiki.example.com/callback".into(),
            scope: "openid email".into(),
            nonce: Some("n-0S6_WzA2Mj".into()),
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            auth_time: 1_767_225_600,
            amr: vec!["pwd".into(), "otp".into()],
            expires_at: 1_767_225_660,
        }
        .into(),
        AuthorizationCodeRedeemed {
            code_id: uid(7),
            client_id: uid(6),
            user_id: u,
            session_id: uid(8),
            browser_session_id: s,
            scope: "openid email".into(),
            auth_time: 1_767_225_600,
            amr: vec!["pwd".into(), "otp".into()],
        }
        .into(),
    ]
}

fn fixture_path(event_type: &str, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(format!("{event_type}.v{version}.bin"))
}

/// The bytes of every readable (type, version) and the value they must decode to.
fn expected() -> Vec<(&'static str, u16, Vec<u8>, Event)> {
    let mut out: Vec<_> =
        samples().into_iter().map(|e| (e.event_type(), e.schema_version(), e.encode_payload().unwrap(), e)).collect();
    let v1 = v1_registration();
    out.push(("user.registered", 1, postcard::to_stdvec(&v1).unwrap(), Event::UserRegistered(v1.into())));
    let login_v1 = v1_login();
    // Built by hand, not through the upcaster: what a v1 login must read as.
    let login_v2 = UserLoginSucceeded {
        user_id: uid(1),
        session_id: uid(2),
        mfa_used: true,
        risk_score: 0.5,
        device_id: Some("dev-1".into()),
        totp_step: None,
    };
    out.push(("user.login_succeeded", 1, postcard::to_stdvec(&login_v1).unwrap(), Event::UserLoginSucceeded(login_v2)));
    // Sealed versions read, without their key, as the sample with its personal fields blanked.
    for (event_type, version, bytes, sample) in sealed() {
        out.push((event_type, version, bytes, personal::blanked(&sample).unwrap()));
    }
    out
}

/// The key, event id and nonce the sealed fixtures were made with.
const FIXTURE_KEY: [u8; 32] = [7; 32];
const FIXTURE_NONCE: [u8; 12] = [9; 12];

fn fixture_event_id() -> Uuid {
    uid(0xe0)
}

fn payload_binding(event_type: &str, version: u16) -> Binding<'_> {
    Binding { part: Part::Payload, event_id: fixture_event_id(), event_type, schema_version: version }
}

/// Every sealed version's bytes, made from the sample of the plain version it carries.
fn sealed() -> Vec<(&'static str, u16, Vec<u8>, Event)> {
    let key = DataKey::from_bytes(FIXTURE_KEY);
    samples()
        .into_iter()
        // The session sample of v1 has no device; the sealed one has one to seal.
        .map(|e| match e {
            Event::SessionStarted(s) => Event::SessionStarted(SessionStarted { device_id: Some("dev-1".into()), ..s }),
            e => e,
        })
        .filter_map(|e| {
            let version = personal::sealed_version_of(e.event_type(), e.schema_version())?;
            let plain = e.encode_payload().unwrap();
            let binding = payload_binding(e.event_type(), version);
            let seal = Seal::close_with_nonce(&key, e.subject().unwrap(), binding, &plain, FIXTURE_NONCE);
            let clear = personal::blanked(&e).unwrap().encode_payload().unwrap();
            Some((e.event_type(), version, personal::SealedPayload { clear, seal }.encode(), e))
        })
        .collect()
}

#[test]
fn sealed_fixtures_open_with_their_key_to_the_whole_sample_and_hold_none_of_it_in_clear() {
    let key = DataKey::from_bytes(FIXTURE_KEY);
    let sealed = sealed();
    assert_eq!(sealed.len(), personal::SEALED_VERSIONS.len(), "a sample for every sealed version");
    for (t, v, _, sample) in sealed {
        let golden = std::fs::read(fixture_path(t, v)).unwrap();
        let stored = personal::SealedPayload::decode(t, v, &golden).unwrap();
        let plain_version = personal::plain_version_of(t, v).unwrap();
        let opened = stored.seal.open(&key, payload_binding(t, v)).expect("the fixture opens with its key");
        assert_eq!(Event::decode(t, plain_version, &opened).unwrap(), sample, "{t} v{v}");
        assert!(stored.seal.open(&key, payload_binding(t, plain_version)).is_none(), "bound to its version");
        let tombstone = Event::decode(t, plain_version, &stored.clear).unwrap();
        assert_ne!(tombstone, sample, "{t} v{v}: a sealed type has personal fields to blank");
        for personal_value in ["ada@example.com", "Lovelace", "dev-1", "$argon2id"] {
            let found = golden.windows(personal_value.len()).any(|w| w == personal_value.as_bytes());
            assert!(!found, "{t} v{v} holds {personal_value} in clear");
        }
    }
}

#[test]
fn every_readable_version_has_a_sample_and_a_fixture() {
    let have: Vec<(&str, u16)> = expected().iter().map(|(t, v, _, _)| (*t, *v)).collect();
    for (t, v) in readable_versions() {
        assert!(have.contains(&(t, v)), "no sample for {t} v{v}: add one to samples()");
        assert!(
            fixture_path(t, v).exists(),
            "no fixture for {t} v{v} (PERFECT21_BLESS_FIXTURES=1 writes it; commit it)"
        );
    }
    assert_eq!(have.len(), readable_versions().count(), "a sample for a version the catalog does not list");
}

#[test]
fn golden_fixtures_decode_to_the_same_values_forever() {
    let bless = std::env::var_os("PERFECT21_BLESS_FIXTURES").is_some();
    let mut missing = Vec::new();
    let mut written = Vec::new();
    for (t, v, bytes, value) in expected() {
        let path = fixture_path(t, v);
        let Ok(golden) = std::fs::read(&path) else {
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
                written.push(path.display().to_string());
            } else {
                missing.push(path.display().to_string());
            }
            continue;
        };
        let decoded = Event::decode(t, v, &golden)
            .unwrap_or_else(|e| panic!("{t} v{v}: the released fixture no longer decodes: {e}"));
        assert_eq!(decoded, value, "{t} v{v}: the released fixture decodes to something else");
        if !perfect21_events::catalog::legacy::LEGACY_VERSIONS.contains(&(t, v)) {
            assert_eq!(golden, bytes, "{t} v{v}: this build encodes the released version differently");
        }
    }
    assert!(missing.is_empty(), "missing fixtures (PERFECT21_BLESS_FIXTURES=1 writes them): {missing:?}");
    // Blessing is a step of its own: a run that wrote fixtures did not check them.
    assert!(
        written.is_empty(),
        "wrote {} new fixtures ({written:?}): review and commit them, then run again",
        written.len()
    );
}

#[test]
fn v1_registrations_are_read_as_v2() {
    let bytes = std::fs::read(fixture_path("user.registered", 1)).unwrap();
    let Event::UserRegistered(v2) = Event::decode("user.registered", 1, &bytes).unwrap() else { panic!() };
    assert_eq!(v2.locale, legacy::DEFAULT_LOCALE);
    assert_eq!(v2.phone_number, None);
    assert_eq!(v2.email, "ada@example.com");
}

#[test]
fn truncated_payloads_are_decode_errors() {
    for (t, v, bytes, _) in expected() {
        if bytes.len() > 1 {
            let err = Event::decode(t, v, &bytes[..bytes.len() / 2]);
            assert!(err.is_err(), "{t} v{v} decoded from half its bytes");
        }
    }
}

proptest! {
    #[test]
    fn upcast_of_v1_equals_the_v2_it_describes(
        email in "[a-z]{1,12}@[a-z]{1,8}\\.com",
        username in "[a-z0-9_]{1,16}",
        first in proptest::option::of("[A-Za-z]{1,10}"),
        expires in any::<i64>(),
    ) {
        let v1 = UserRegisteredV1 { email: email.clone(), username: username.clone(), first_name: first.clone(), verification_expires_at: expires, ..v1_registration() };
        let bytes = postcard::to_stdvec(&v1).unwrap();
        let Event::UserRegistered(v2) = Event::decode("user.registered", 1, &bytes).unwrap() else { panic!() };
        // Built by hand from the v1 fields (not through the upcaster under test).
        let expected = UserRegistered {
            user_id: v1.user_id,
            email: email.clone(),
            username: username.clone(),
            first_name: first.clone(),
            last_name: None,
            phone_number: None,
            locale: "en".into(),
            password_hash: v1.password_hash.clone(),
            verification_token_hash: v1.verification_token_hash.clone(),
            verification_expires_at: expires,
        };
        prop_assert_eq!(v2, expected);
    }

    #[test]
    fn current_payloads_round_trip(
        reason in ".{0,40}",
        count in any::<u32>(),
        score in 0.0f32..=1.0,
        details in proptest::collection::vec((".{0,8}", ".{0,8}"), 0..4),
    ) {
        let events: Vec<Event> = vec![
            UserLoginFailed { user_id: uid(3), reason: reason.clone(), failure_count: count, risk_score: score }.into(),
            SuspiciousActivity { user_id: uid(4), activity_type: reason.clone(), risk_score: score, description: String::new(), details }.into(),
        ];
        for e in events {
            let bytes = e.encode_payload().unwrap();
            prop_assert_eq!(Event::decode(e.event_type(), e.schema_version(), &bytes).unwrap(), e);
        }
    }
}

//! Crypto-shredding at the store seam, on SQLite and on PostgreSQL: personal fields
//! are stored sealed and read back opened; erasing a subject turns every reader's view
//! of them into the tombstone (this instance's, another instance's once it reads
//! `user.erased`, and a fresh one's) without rewriting a byte of the log.
//!
//! The PostgreSQL cases need the server named by `PERFECT21_TEST_POSTGRES`
//! (`scripts/test` starts it).

use perfect21_events::catalog::*;
use perfect21_events::seal::{KeyState, KeyStore, PostgresKeys, SealingStore, SqliteKeys};
use perfect21_events::store::{PostgresConfig, PostgresStore, SqliteConfig, SqliteStore};
use perfect21_events::{EventData, EventStore, ExpectedVersion, Metadata, StoreError, StreamId};
use std::sync::Arc;
use uuid::Uuid;

/// One log, opened as often as a test likes: each opening is another instance.
struct Log {
    raw: Arc<dyn EventStore>,
    keys: Arc<dyn KeyStore>,
    /// Files to grep for what must not be on disk (SQLite only).
    dir: Option<tempfile::TempDir>,
    /// The PostgreSQL log's connections, to damage it behind the store's back.
    pool: Option<sqlx::PgPool>,
}

impl Log {
    fn instance(&self) -> SealingStore {
        SealingStore::new(self.raw.clone(), self.keys.clone())
    }
}

async fn sqlite_log() -> Log {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let raw = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let keys = SqliteKeys::open(SqliteKeys::path_for(&path)).await.unwrap();
    assert_eq!(SqliteKeys::path_for(&path), dir.path().join("events.keys.db"));
    Log { raw: Arc::new(raw), keys: Arc::new(keys), dir: Some(dir), pool: None }
}

async fn postgres_log() -> Log {
    let url =
        std::env::var("PERFECT21_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    let raw = PostgresStore::connect(PostgresConfig::new(url).with_schema(schema)).await.expect("PostgreSQL reachable");
    let keys: PostgresKeys = raw.keys();
    let pool = Some(raw.pool().clone());
    Log { raw: Arc::new(raw), keys: Arc::new(keys), dir: None, pool }
}

const EMAIL: &str = "ada@example.com";
const IP: &str = "198.51.100.7";
const AGENT: &str = "sealing-test/1";

fn registered(user_id: Uuid) -> Event {
    UserRegistered {
        user_id,
        email: EMAIL.into(),
        username: "ada_l".into(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        phone_number: Some("+15555550100".into()),
        locale: "en".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        verification_token_hash: "f00d".into(),
        verification_expires_at: 1_767_225_600,
    }
    .into()
}

fn from_client(actor: &str) -> Metadata {
    Metadata {
        actor: Some(actor.into()),
        client_ip: Some(IP.into()),
        user_agent: Some(AGENT.into()),
        ..Metadata::default()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn registration_of(store: &dyn EventStore, user: &StreamId) -> (UserRegistered, Metadata) {
    let recorded = store.read_stream(user, 0, 1).await.unwrap().remove(0);
    let Event::UserRegistered(e) = recorded.decode().unwrap() else { panic!("not a registration") };
    (e, recorded.metadata)
}

async fn seals_then_erases_without_rewriting(log: Log) {
    let one = log.instance();
    let other = log.instance();
    let user_id = Uuid::now_v7();
    let user = StreamId::of("user", user_id).unwrap();
    let role = StreamId::of("role", "made_by_ada").unwrap();
    let events = vec![
        EventData::new(&registered(user_id), from_client("anonymous")).unwrap(),
        EventData::new(
            &UserLoginSucceeded {
                user_id,
                session_id: Uuid::now_v7(),
                mfa_used: false,
                risk_score: 0.0,
                device_id: Some("ada-phone".into()),
                totp_step: None,
            }
            .into(),
            from_client("anonymous"),
        )
        .unwrap(),
    ];
    one.append(&user, ExpectedVersion::NoStream, events).await.unwrap();
    // What the user did elsewhere: sealed with their key, as the one who acted.
    let made = RoleCreated {
        role_id: "made_by_ada".into(),
        name: "made_by_ada".into(),
        display_name: "Made by Ada".into(),
        description: String::new(),
        priority: 0,
    };
    one.append(
        &role,
        ExpectedVersion::NoStream,
        vec![EventData::new(&made.into(), from_client(&format!("user:{user_id}"))).unwrap()],
    )
    .await
    .unwrap();

    // Stored sealed: the sealed version, nothing personal in the payload or the metadata.
    let stored = log.raw.read_all(1, 100).await.unwrap();
    assert_eq!((stored[0].event_type.as_str(), stored[0].schema_version), ("user.registered", 3));
    assert_eq!((stored[1].event_type.as_str(), stored[1].schema_version), ("user.login_succeeded", 3));
    assert_eq!(stored[2].schema_version, 1, "a role has no personal fields: only its metadata is sealed");
    for r in &stored {
        assert!(
            !contains(&r.payload, EMAIL) && !contains(&r.payload, "ada-phone") && !contains(&r.payload, "Lovelace")
        );
        assert_eq!((&r.metadata.client_ip, &r.metadata.user_agent), (&None, &None));
        let sealed = r.metadata.sealed.as_ref().expect("metadata sealed");
        assert_eq!(sealed.subject, user_id);
        let bytes = r.metadata.encode();
        assert!(!contains(&bytes, IP) && !contains(&bytes, AGENT));
        assert_eq!(perfect21_events::Metadata::decode(&bytes).unwrap(), r.metadata);
    }
    // Read opened, by this instance and by another that never saw the key made.
    for store in [&one, &other] {
        let (e, m) = registration_of(store, &user).await;
        assert_eq!((e.email.as_str(), e.last_name.as_deref()), (EMAIL, Some("Lovelace")));
        assert_eq!((m.client_ip.as_deref(), m.user_agent.as_deref(), &m.sealed), (Some(IP), Some(AGENT), &None));
        assert_eq!(store.read_all(1, 100).await.unwrap()[0].schema_version, 2, "readers see the plain version");
    }
    let KeyState::Live(key) = log.keys.keys(&[user_id]).await.unwrap().remove(0) else { panic!("no key made") };

    let chain_before = log.raw.read_chain(1, 100).await.unwrap();
    assert!(one.erase_subject(user_id).await.unwrap());
    assert!(!one.erase_subject(user_id).await.unwrap(), "a second erasure has no key to delete");
    assert_eq!(log.keys.keys(&[user_id]).await.unwrap(), vec![KeyState::Erased]);
    // This instance reads the tombstone at once.
    let (e, m) = registration_of(&one, &user).await;
    assert_eq!((e.email.as_str(), e.username.as_str(), e.last_name, e.password_hash.as_str()), ("", "", None, ""));
    assert_eq!((e.user_id, e.locale.as_str()), (user_id, "en"), "what is not personal stays");
    assert_eq!((m.client_ip, m.user_agent), (None, None));
    // The other instance still holds the key it looked up, until it reads `user.erased`.
    let erased = EventData::new(&UserErased { user_id }.into(), Metadata::default()).unwrap();
    one.append(&user, ExpectedVersion::StreamExists, vec![erased]).await.unwrap();
    let all = other.read_all(1, 100).await.unwrap();
    let Event::UserRegistered(e) = all[0].decode().unwrap() else { panic!() };
    assert_eq!(e.email, "", "another instance forgets once it reads user.erased");
    assert_eq!(registration_of(&log.instance(), &user).await.0.email, "", "and a fresh one never knew");
    let role_meta = &other.read_stream(&role, 0, 1).await.unwrap()[0].metadata;
    assert_eq!((&role_meta.client_ip, &role_meta.actor), (&None, &Some(format!("user:{user_id}"))));

    // Nothing recorded changed: the chain is the same, byte for byte.
    let chain_after = log.raw.read_chain(1, 100).await.unwrap();
    assert_eq!(chain_after[..chain_before.len()], chain_before[..]);
    // An erased subject gets no new key: what is appended about it now is recorded blanked.
    let again =
        EventData::new(&UserDeleted { user_id, reason: "moved to Lyon".into() }.into(), from_client("anonymous"))
            .unwrap();
    one.append(&user, ExpectedVersion::StreamExists, vec![again]).await.unwrap();
    let last = log.raw.read_stream(&user, 3, 1).await.unwrap().remove(0);
    assert_eq!(last.schema_version, 1);
    assert!(!contains(&last.payload, "Lyon") && last.metadata.client_ip.is_none() && last.metadata.sealed.is_none());
    assert_eq!(log.keys.keys_for_append(&[user_id]).await.unwrap(), vec![KeyState::Erased]);

    // On disk: neither the personal fields nor the deleted key, in any file.
    if let Some(dir) = &log.dir {
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let path = file.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            for secret in [EMAIL, "ada-phone", "Lovelace", IP, AGENT, "Lyon"] {
                assert!(!contains(&bytes, secret), "{secret} is in {} in clear", path.display());
            }
            let key_found = bytes.windows(32).any(|w| w == key.as_bytes());
            assert!(!key_found, "the erased key is still in {}", path.display());
        }
    }
}

async fn refuses_a_payload_it_cannot_seal(log: Log) {
    let store = log.instance();
    let user = StreamId::of("user", Uuid::now_v7()).unwrap();
    let mut bad = EventData::new(&registered(Uuid::now_v7()), Metadata::default()).unwrap();
    bad.payload.truncate(10);
    let err = store.append(&user, ExpectedVersion::Any, vec![bad]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsealable { .. }), "{err}");
    assert!(err.to_string().contains("user.registered v2"), "{err}");
    assert_eq!(store.head_position().await.unwrap(), 0, "nothing appended");
}

#[tokio::test]
async fn sqlite_seals_then_erases_without_rewriting() {
    seals_then_erases_without_rewriting(sqlite_log().await).await;
}

#[tokio::test]
async fn postgres_seals_then_erases_without_rewriting() {
    seals_then_erases_without_rewriting(postgres_log().await).await;
}

#[tokio::test]
async fn sqlite_refuses_a_payload_it_cannot_seal() {
    refuses_a_payload_it_cannot_seal(sqlite_log().await).await;
}

#[tokio::test]
async fn postgres_refuses_a_payload_it_cannot_seal() {
    refuses_a_payload_it_cannot_seal(postgres_log().await).await;
}

#[tokio::test]
async fn a_store_opened_by_url_seals() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        perfect21_events::store::open(&format!("sqlite://{}", dir.path().join("log.db").display())).await.unwrap();
    assert!(store.seals());
    assert!(dir.path().join("log.keys.db").exists());
}

fn login(user_id: Uuid, device: String) -> EventData {
    let event = UserLoginSucceeded {
        user_id,
        session_id: Uuid::now_v7(),
        mfa_used: false,
        risk_score: 0.0,
        device_id: Some(device),
        totp_step: None,
    };
    EventData::new(&event.into(), from_client(&format!("user:{user_id}"))).unwrap()
}

/// Appends long enough to be sealed by halves, about a user this instance knows, one it
/// has not met (whose key the key store makes) and one erased: each event is sealed with
/// its own user's key, in its place, the first time (keys looked up) and the next (keys
/// known); the erased user's fields are recorded blanked.
#[tokio::test]
async fn long_appends_about_known_new_and_erased_users_are_sealed_in_order() {
    let log = sqlite_log().await;
    let store = log.instance();
    let (known, erased, new) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let stream = StreamId::of("logins", "long").unwrap();
    store
        .append(&stream, ExpectedVersion::Any, vec![login(known, "first".into()), login(erased, "first".into())])
        .await
        .unwrap();
    assert!(store.erase_subject(erased).await.unwrap());
    let users = [known, erased, new];
    for round in 0..2 {
        let events: Vec<EventData> = (0..60).map(|i| login(users[i % 3], format!("device-{round}-{i}"))).collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
        let raw = log.raw.read_stream(&stream, 2 + round * 60, 60).await.unwrap();
        let fresh = log.instance();
        for reader in [&store as &dyn EventStore, &fresh] {
            let read = reader.read_stream(&stream, 2 + round * 60, 60).await.unwrap();
            assert_eq!(read.iter().map(|r| r.event_id).collect::<Vec<_>>(), ids, "in their order");
            for (i, (r, stored)) in read.iter().zip(&raw).enumerate() {
                let Event::UserLoginSucceeded(e) = r.decode().unwrap() else { panic!("not a login") };
                let device = format!("device-{round}-{i}");
                assert!(!contains(&stored.payload, &device), "the device id is not stored in clear");
                assert!(!contains(&stored.metadata.encode(), IP), "the address is not stored in clear");
                assert_eq!(e.user_id, users[i % 3]);
                if users[i % 3] == erased {
                    assert_eq!((e.device_id, r.metadata.client_ip.as_deref()), (None, None), "event {i}");
                } else {
                    assert_eq!((e.device_id, r.metadata.client_ip.as_deref()), (Some(device), Some(IP)), "event {i}");
                }
            }
        }
    }
}

/// A long append is sealed while the log writes the events sealed before (SQLite): one
/// that fails part-way, on an event it cannot seal or one too large once sealed, writes
/// nothing, and the next lands where the failed one would have.
#[tokio::test]
async fn a_long_append_that_fails_part_way_writes_nothing() {
    let log = sqlite_log().await;
    let store = log.instance();
    assert!(log.raw.writes_while_made(), "SQLite writes while the events are sealed");
    let user = Uuid::now_v7();
    let stream = StreamId::of("logins", "failing").unwrap();
    let logins = || (0..60).map(|i| login(user, format!("device-{i}"))).collect::<Vec<_>>();
    store.append(&stream, ExpectedVersion::Any, logins()).await.unwrap();

    let mut unsealable = logins();
    unsealable[40] = EventData::new(&registered(user), Metadata::default()).unwrap();
    unsealable[40].payload.truncate(10);
    let err = store.append(&stream, ExpectedVersion::Any, unsealable).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsealable { .. }), "{err}");
    let mut too_large = logins();
    too_large[50] = login(user, "x".repeat(perfect21_events::limits::MAX_EVENT_BYTES));
    let err = store.append(&stream, ExpectedVersion::Any, too_large).await.unwrap_err();
    assert!(matches!(err, StoreError::PayloadTooLarge { .. }), "{err}");
    assert_eq!(store.head_position().await.unwrap(), 60, "nothing of either was written");

    let events = logins();
    let result = store.append(&stream, ExpectedVersion::Exact(59), events.clone()).await.unwrap();
    assert_eq!((result.first_position, result.position), (61, 120));
    let read = store.read_stream(&stream, 60, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|r| r.event_id).collect::<Vec<_>>(),
        events.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    let whole = perfect21_events::chain::verify(&store, 1, |_| {}).await.expect("the chain holds");
    assert_eq!(whole.through, 120);
}

/// A reader that names the seals it needs (a replay) gets those opened and the rest
/// shut: those events read as their tombstones, their metadata without the client's
/// address and agent. Every other field, and every event, is read as by `read_all`.
#[tokio::test]
async fn a_reader_gets_the_seals_it_names_opened_and_the_rest_shut() {
    use perfect21_events::seal::Opening;
    static OPENING: Opening = Opening { payloads: &["user.registered"], metadata: &["user.login_failed"] };
    let log = sqlite_log().await;
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let actor = format!("user:{ada}");
    let events = [
        registered(ada),
        UserLoginFailed { user_id: ada, reason: "bad_password".into(), failure_count: 1, risk_score: 0.5 }.into(),
        UserStatusChanged { user_id: ada, from: UserStatus::Active, to: UserStatus::Locked, reason: "fraud".into() }
            .into(),
        Event::UserLoginFailed(UserLoginFailed {
            user_id: bob,
            reason: "locked".into(),
            failure_count: 2,
            risk_score: 0.0,
        }),
    ];
    let metadata = [from_client(&actor), from_client(&actor), from_client(&actor), from_client(&format!("user:{bob}"))];
    let data: Vec<EventData> = events.iter().zip(metadata).map(|(e, m)| EventData::new(e, m).unwrap()).collect();
    log.instance().append(&StreamId::of("user", ada).unwrap(), ExpectedVersion::Any, data).await.unwrap();
    let fresh = log.instance();
    let all = fresh.read_all(1, 10).await.unwrap();
    let named = log.instance().read_all_opening(1, 10, &OPENING).await.unwrap();
    assert_eq!(named.len(), 4);
    for (a, n) in all.iter().zip(&named) {
        assert_eq!(
            (a.event_id, a.position, &a.event_type, a.schema_version, a.metadata.correlation_id, &a.metadata.actor),
            (n.event_id, n.position, &n.event_type, n.schema_version, n.metadata.correlation_id, &n.metadata.actor),
        );
        assert_eq!(a.metadata.client_ip.as_deref(), Some(IP), "read_all opens every seal");
        assert!(n.metadata.sealed.is_none(), "no seal is handed out");
    }
    let decoded: Vec<Event> = named.iter().map(|r| r.decode().unwrap()).collect();
    // Registration: its payload named, its metadata not.
    let Event::UserRegistered(r) = &decoded[0] else { panic!("{:?}", decoded[0]) };
    assert_eq!((r.email.as_str(), named[0].metadata.client_ip.as_deref()), (EMAIL, None));
    // A failed login: its metadata named, its payload (the reason) not.
    assert_eq!(
        decoded[1],
        UserLoginFailed { user_id: ada, reason: String::new(), failure_count: 1, risk_score: 0.5 }.into()
    );
    assert_eq!(
        (named[1].metadata.client_ip.as_deref(), named[1].metadata.user_agent.as_deref()),
        (Some(IP), Some(AGENT))
    );
    // A status change: neither.
    assert_eq!(
        decoded[2],
        UserStatusChanged { user_id: ada, from: UserStatus::Active, to: UserStatus::Locked, reason: String::new() }
            .into()
    );
    assert_eq!(named[2].metadata.user_agent, None);
    // Bob's key opens the fourth event's metadata; after Bob is erased it reads shut too.
    assert_eq!(named[3].metadata.client_ip.as_deref(), Some(IP));
    assert!(log.instance().erase_subject(bob).await.unwrap());
    let after = log.instance().read_all_opening(4, 1, &OPENING).await.unwrap();
    assert_eq!(after[0].metadata.client_ip, None);
    assert_eq!(after[0].decode().unwrap(), decoded[3]);
}

/// What a fold is handed of every event (see [`FoldEvent`]): its payload decoded, and the
/// client's address and agent only where the opening names its metadata.
fn as_folded(e: &perfect21_events::FoldEvent) -> (u64, i64, Event, Option<&str>, Option<&str>) {
    let event = e.event.as_ref().unwrap_or_else(|err| panic!("position {}: {err}", e.position)).clone();
    (e.position, e.recorded_at.timestamp_micros(), event, e.client_ip.as_deref(), e.user_agent.as_deref())
}

/// A read for folding (one buffer per page, seals opened and payloads decoded where they
/// lie) gives every event as `read_all_opening` does: sealed and legacy payloads and
/// metadata, seals named and not, a subject erased by a `user.erased` this reader has not
/// seen before. Metadata that does not decode fails both reads alike where the fold reads
/// it; where it does not, only the chain (`events verify`) and whole reads notice.
async fn a_fold_read_gives_what_a_read_opening_the_same_gives(log: Log) {
    use perfect21_events::seal::Opening;
    use perfect21_events::FoldEvent;
    static OPENING: Opening = Opening {
        payloads: &["user.registered", "user.login_failed"],
        metadata: &["user.login_failed", "user.login_succeeded"],
    };
    let (ada, bob, carol) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let as_ada = from_client(&format!("user:{ada}"));
    let failed = |user_id, reason: &str| -> Event {
        UserLoginFailed { user_id, reason: reason.into(), failure_count: 1, risk_score: 0.5 }.into()
    };
    let succeeded = |user_id| -> Event {
        UserLoginSucceeded {
            user_id,
            session_id: Uuid::now_v7(),
            mfa_used: false,
            risk_score: 0.1,
            device_id: Some("phone".into()),
            totp_step: None,
        }
        .into()
    };
    let sealed = [
        (registered(ada), as_ada.clone()),
        (failed(ada, "bad_password"), as_ada.clone()),
        (succeeded(ada), as_ada.clone()),
        (
            UserStatusChanged { user_id: ada, from: UserStatus::Active, to: UserStatus::Locked, reason: "x".into() }
                .into(),
            as_ada.clone(),
        ),
        (failed(bob, "locked"), from_client(&format!("user:{bob}"))),
        (succeeded(bob), Metadata { correlation_id: Some(Uuid::now_v7()), ..Metadata::default() }),
    ];
    let data = sealed.iter().map(|(e, m)| EventData::new(e, m.clone()).unwrap()).collect();
    log.instance().append(&StreamId::of("user", ada).unwrap(), ExpectedVersion::Any, data).await.unwrap();
    // As written before sealing: a plain registration, a login with its address in clear.
    let legacy = vec![
        EventData::new(&registered(carol), from_client("anonymous")).unwrap(),
        EventData::new(&succeeded(carol), from_client(&format!("user:{carol}"))).unwrap(),
    ];
    log.raw.append(&StreamId::of("user", carol).unwrap(), ExpectedVersion::Any, legacy).await.unwrap();
    // Bob erased by another process: only its `user.erased` tells a reader so.
    let erased = vec![EventData::new(&UserErased { user_id: bob }.into(), Metadata::default()).unwrap()];
    log.raw.append(&StreamId::of("user", bob).unwrap(), ExpectedVersion::Any, erased).await.unwrap();

    let folded = log.instance().read_folding(1, 100, &OPENING).await.unwrap();
    let read = log.instance().read_all_opening(1, 100, &OPENING).await.unwrap();
    let expected: Vec<FoldEvent> = read.into_iter().map(|r| FoldEvent::from_recorded(r, &OPENING)).collect();
    assert_eq!(folded.len(), 9);
    for (f, e) in folded.iter().zip(&expected) {
        assert_eq!(as_folded(f), as_folded(e));
    }
    let at = |i: usize| as_folded(&folded[i]);
    let Event::UserRegistered(r) = at(0).2 else { panic!("{:?}", at(0)) };
    assert_eq!((r.email.as_str(), at(0).3), (EMAIL, None), "its payload named, its metadata not");
    assert_eq!((at(1).2, at(1).3, at(1).4), (failed(ada, "bad_password"), Some(IP), Some(AGENT)));
    let Event::UserLoginSucceeded(s) = at(2).2 else { panic!("{:?}", at(2)) };
    assert_eq!((s.device_id, at(2).3), (None, Some(IP)), "its metadata named, its payload not");
    let Event::UserStatusChanged(c) = at(3).2 else { panic!("{:?}", at(3)) };
    assert_eq!(c.reason, "", "neither named");
    assert_eq!((at(4).2, at(4).3), (failed(bob, ""), None), "bob is erased from the page's user.erased on");
    assert_eq!(at(5).3, None, "no address given");
    let Event::UserRegistered(r) = at(6).2 else { panic!("{:?}", at(6)) };
    assert_eq!((r.email.as_str(), at(7).3, at(7).4), (EMAIL, Some(IP), Some(AGENT)), "legacy events as written");

    // A page from the middle, and past the end.
    let middle = log.instance().read_folding(3, 2, &OPENING).await.unwrap();
    assert_eq!(middle.iter().map(|e| e.position).collect::<Vec<_>>(), [3, 4]);
    assert!(log.instance().read_folding(10, 5, &OPENING).await.unwrap().is_empty());

    // A failed login's metadata is read; a status change's is not, nor its id (which
    // PostgreSQL's uuid column cannot hold damaged).
    if let Some(dir) = &log.dir {
        let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
        db.execute("UPDATE events SET metadata = x'ff0102' WHERE position IN (2, 4)", []).unwrap();
        db.execute("UPDATE events SET event_id = x'ff01' WHERE position = 4", []).unwrap();
    }
    if let Some(pool) = &log.pool {
        let damage = "UPDATE events SET metadata = '\\xff0102'::bytea WHERE position IN (2, 4)";
        sqlx::query(damage).execute(pool).await.unwrap();
    }
    for (how, err) in [
        ("read_folding", log.instance().read_folding(1, 100, &OPENING).await.err()),
        ("read_all", log.instance().read_all(1, 100).await.err()),
    ] {
        assert!(matches!(err, Some(StoreError::Corrupt { position: 2, .. })), "{how}: {err:?}");
    }
    let past = log.instance().read_folding(3, 100, &OPENING).await.unwrap();
    assert_eq!(as_folded(&past[1]), as_folded(&folded[3]), "metadata no fold reads is not decoded");
    let err = log.instance().read_all(3, 100).await.err();
    assert!(matches!(err, Some(StoreError::Corrupt { position: 4, .. })), "read_all: {err:?}");

    // A type that is not UTF-8 is damage wherever it is.
    if let Some(dir) = &log.dir {
        let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
        db.execute("UPDATE events SET event_type = CAST(x'75ff' AS TEXT) WHERE position = 6", []).unwrap();
        let err = log.instance().read_folding(3, 100, &OPENING).await.err();
        assert!(matches!(err, Some(StoreError::Corrupt { position: 6, .. })), "read_folding: {err:?}");
    }
}

#[tokio::test]
async fn sqlite_a_fold_read_gives_what_a_read_opening_the_same_gives() {
    a_fold_read_gives_what_a_read_opening_the_same_gives(sqlite_log().await).await;
}

#[tokio::test]
async fn postgres_a_fold_read_gives_what_a_read_opening_the_same_gives() {
    a_fold_read_gives_what_a_read_opening_the_same_gives(postgres_log().await).await;
}

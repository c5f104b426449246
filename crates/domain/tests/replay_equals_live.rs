//! The law of the read models: replaying the log from position 1 gives exactly
//! the state that following it live gave — for any sequence of commands.

use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::*;
use perfect21_events::catalog::{PermissionSpec, UserStatus};
use perfect21_projections::ReadModels;
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Cmd {
    Register(u8),
    Verify(u8),
    Login(u8, bool),
    /// Log in with the right password and refresh at once (rotation is otherwise rare).
    LoginAndRefresh(u8),
    Refresh(u8),
    ReuseOldRefresh(u8),
    Logout(u8),
    CreateRole(u8),
    GrantToRole(u8, u8),
    Assign(u8, u8),
    Revoke(u8, u8),
    Grant(u8),
    SetStatus(u8, u8),
    Delete(u8),
    ChangePassword(u8),
    /// Assign a role that expires a day from now.
    AssignExpiring(u8, u8),
    EnableMfa(u8),
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let u = 0u8..4;
    let r = 0u8..3;
    prop_oneof![
        3 => u.clone().prop_map(Cmd::Register),
        2 => u.clone().prop_map(Cmd::Verify),
        4 => (u.clone(), any::<bool>()).prop_map(|(u, ok)| Cmd::Login(u, ok)),
        2 => u.clone().prop_map(Cmd::LoginAndRefresh),
        2 => u.clone().prop_map(Cmd::Refresh),
        1 => u.clone().prop_map(Cmd::ReuseOldRefresh),
        1 => u.clone().prop_map(Cmd::Logout),
        2 => r.clone().prop_map(Cmd::CreateRole),
        2 => (r.clone(), 0u8..3).prop_map(|(r, p)| Cmd::GrantToRole(r, p)),
        2 => (u.clone(), r.clone()).prop_map(|(u, r)| Cmd::Assign(u, r)),
        1 => (u.clone(), r.clone()).prop_map(|(u, r)| Cmd::Revoke(u, r)),
        1 => u.clone().prop_map(Cmd::Grant),
        1 => (u.clone(), 1u8..4).prop_map(|(u, s)| Cmd::SetStatus(u, s)),
        1 => u.clone().prop_map(Cmd::Delete),
        1 => u.clone().prop_map(Cmd::ChangePassword),
        1 => (u.clone(), r.clone()).prop_map(|(u, r)| Cmd::AssignExpiring(u, r)),
        1 => u.clone().prop_map(Cmd::EnableMfa),
    ]
}

#[derive(Default, Clone)]
struct Known {
    user: Option<Uuid>,
    token: Option<String>,
    refresh: Vec<String>,
    session: Option<Uuid>,
    password: String,
}

fn perm(i: u8) -> PermissionSpec {
    PermissionSpec {
        id: format!("p{i}"),
        resource: ["docs", "*", "billing.*"][i as usize % 3].into(),
        action: "read".into(),
        scope: "*".into(),
        name: format!("perm {i}"),
        description: String::new(),
    }
}

/// What a generated history actually did (refused commands do nothing).
#[derive(Default, Debug, Clone, Copy)]
struct Happened {
    logins: usize,
    refreshes: usize,
    role_changes: usize,
    mfa: usize,
}

impl std::ops::AddAssign for Happened {
    fn add_assign(&mut self, o: Self) {
        self.logins += o.logins;
        self.refreshes += o.refreshes;
        self.role_changes += o.role_changes;
        self.mfa += o.mfa;
    }
}

async fn run(cmds: Vec<Cmd>) -> (String, String, Happened) {
    let mut happened = Happened::default();
    let dir = tempfile::tempdir().unwrap();
    let store =
        perfect21_events::store::open(&format!("sqlite://{}", dir.path().join("e.db").display())).await.unwrap();
    let live = LiveModels::start(store.clone());
    // Logins before verification too, so that generated histories log in often.
    let config = IdentityConfig {
        password_cost: PasswordCost::TEST,
        lockout_threshold: 3,
        allow_unverified_login: true,
        ..Default::default()
    };
    let id = Identity::new(store.clone(), live, SecretBox::random(), config).unwrap();
    let ctx = RequestContext { client_ip: Some("192.0.2.1".into()), ..RequestContext::service("prop") };
    let mut users: Vec<Known> = vec![Known::default(); 4];
    for c in cmds {
        // Commands may be refused (unknown user, wrong state): that is part of the law too.
        match c {
            Cmd::Register(i) => {
                let reg = Registration {
                    email: format!("user{i}@example.com"),
                    username: format!("user{i}"),
                    password: "password-0".into(),
                    ..Default::default()
                };
                if let Ok(r) = id.register(&ctx, reg).await {
                    users[i as usize] = Known {
                        user: Some(r.user_id),
                        token: Some(r.verification_token),
                        password: "password-0".into(),
                        ..Default::default()
                    };
                }
            }
            Cmd::Verify(i) => {
                if let Some(t) = users[i as usize].token.clone() {
                    let _ = id.verify_email(&ctx, &t).await;
                }
            }
            Cmd::Login(i, ok) => {
                let k = &users[i as usize];
                let password = if ok { k.password.clone() } else { "wrong-password".into() };
                let req = LoginRequest { identifier: format!("user{i}"), password, ..Default::default() };
                if let Ok(g) = id.login(&ctx, req).await {
                    happened.logins += 1;
                    users[i as usize].refresh = vec![g.refresh_token];
                    users[i as usize].session = Some(g.session_id);
                }
            }
            Cmd::LoginAndRefresh(i) => {
                let k = &users[i as usize];
                let req =
                    LoginRequest { identifier: format!("user{i}"), password: k.password.clone(), ..Default::default() };
                if let Ok(g) = id.login(&ctx, req).await {
                    happened.logins += 1;
                    users[i as usize].session = Some(g.session_id);
                    users[i as usize].refresh = vec![g.refresh_token.clone()];
                    if let Ok(r) = id.refresh(&ctx, &g.refresh_token).await {
                        happened.refreshes += 1;
                        users[i as usize].refresh.push(r.refresh_token);
                    }
                }
            }
            Cmd::Refresh(i) => {
                if let Some(t) = users[i as usize].refresh.last().cloned() {
                    if let Ok(g) = id.refresh(&ctx, &t).await {
                        happened.refreshes += 1;
                        users[i as usize].refresh.push(g.refresh_token);
                    }
                }
            }
            Cmd::ReuseOldRefresh(i) => {
                if let Some(t) = users[i as usize].refresh.first().cloned() {
                    let _ = id.refresh(&ctx, &t).await;
                }
            }
            Cmd::Logout(i) => {
                if let Some(s) = users[i as usize].session {
                    let _ = id.logout(&ctx, s).await;
                }
            }
            Cmd::CreateRole(r) => {
                let spec = RoleSpec {
                    role_id: format!("role{r}"),
                    display_name: "R".into(),
                    description: String::new(),
                    priority: r as i32,
                };
                let _ = id.create_role(&ctx, spec).await;
            }
            Cmd::GrantToRole(r, p) => {
                let _ = id.grant_permission_to_role(&ctx, &format!("role{r}"), perm(p)).await;
            }
            Cmd::Assign(i, r) => {
                if let Some(u) = users[i as usize].user {
                    if id.assign_role(&ctx, u, &format!("role{r}"), None).await.is_ok() {
                        happened.role_changes += 1;
                    }
                }
            }
            Cmd::Revoke(i, r) => {
                if let Some(u) = users[i as usize].user {
                    if id.revoke_role(&ctx, u, &format!("role{r}")).await.is_ok() {
                        happened.role_changes += 1;
                    }
                }
            }
            Cmd::Grant(i) => {
                if let Some(u) = users[i as usize].user {
                    let _ = id.grant_permission(&ctx, u, perm(i)).await;
                }
            }
            Cmd::SetStatus(i, s) => {
                if let Some(u) = users[i as usize].user {
                    let status =
                        [UserStatus::Active, UserStatus::Active, UserStatus::Locked, UserStatus::Suspended][s as usize];
                    let _ = id.set_status(&ctx, u, status, "prop").await;
                }
            }
            Cmd::Delete(i) => {
                if let Some(u) = users[i as usize].user {
                    let _ = id.delete_user(&ctx, u, "prop").await;
                }
            }
            Cmd::AssignExpiring(i, r) => {
                if let Some(u) = users[i as usize].user {
                    let expires = chrono::Utc::now().timestamp() + 86_400;
                    if id.assign_role(&ctx, u, &format!("role{r}"), Some(expires)).await.is_ok() {
                        happened.role_changes += 1;
                    }
                }
            }
            Cmd::EnableMfa(i) => {
                let k = users[i as usize].clone();
                if let Some(u) = k.user {
                    if let Ok(e) = id.begin_mfa(&ctx, u, &k.password).await {
                        let secret = totp_rs::Secret::Encoded(e.secret.clone()).to_bytes().unwrap();
                        let code = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret)
                            .unwrap()
                            .generate_current()
                            .unwrap();
                        if id.confirm_mfa(&ctx, u, &e.enrollment_token, &code, &k.password).await.is_ok() {
                            happened.mfa += 1;
                        }
                    }
                }
            }
            Cmd::ChangePassword(i) => {
                let k = users[i as usize].clone();
                if let Some(u) = k.user {
                    let new = format!("{}x", k.password);
                    if id.change_password(&ctx, u, &k.password, &new).await.is_ok() {
                        users[i as usize].password = new;
                    }
                }
            }
        }
    }
    let head = store.head_position().await.unwrap();
    let live = id.read(Some(head), |m| m.digest()).await.unwrap();
    let mut replayed = ReadModels::default();
    for e in store.read_all(1, 1_000_000).await.unwrap() {
        replayed.apply(&e).unwrap();
    }
    (live, replayed.digest(), happened)
}

/// Generated histories (`PERFECT21_REPLAY_CASES`, default 64, for a longer run) each
/// replay to the live state; and across them logins, refreshes, MFA and role changes
/// really happened, so the law was tested on histories that do something.
#[test]
fn replayed_state_equals_live_state() {
    let cases = std::env::var("PERFECT21_REPLAY_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let total = std::cell::RefCell::new(Happened::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let result = runner.run(&proptest::collection::vec(cmd(), 1..60), |cmds| {
        let (live, replayed, happened) = rt.block_on(run(cmds));
        *total.borrow_mut() += happened;
        prop_assert_eq!(live, replayed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let total = total.into_inner();
    eprintln!("the generated histories did: {total:?}");
    assert!(
        total.logins > 0 && total.refreshes > 0 && total.mfa > 0 && total.role_changes > 0,
        "the generated histories did too little to test the law: {total:?}"
    );
}

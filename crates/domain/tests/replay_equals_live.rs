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
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let u = 0u8..4;
    let r = 0u8..3;
    prop_oneof![
        3 => u.clone().prop_map(Cmd::Register),
        2 => u.clone().prop_map(Cmd::Verify),
        4 => (u.clone(), any::<bool>()).prop_map(|(u, ok)| Cmd::Login(u, ok)),
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

async fn run(cmds: Vec<Cmd>) -> (String, String) {
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
                    users[i as usize].refresh = vec![g.refresh_token];
                    users[i as usize].session = Some(g.session_id);
                }
            }
            Cmd::Refresh(i) => {
                if let Some(t) = users[i as usize].refresh.last().cloned() {
                    if let Ok(g) = id.refresh(&ctx, &t).await {
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
                    let _ = id.assign_role(&ctx, u, &format!("role{r}"), None).await;
                }
            }
            Cmd::Revoke(i, r) => {
                if let Some(u) = users[i as usize].user {
                    let _ = id.revoke_role(&ctx, u, &format!("role{r}")).await;
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
    (live, replayed.digest())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn replayed_state_equals_live_state(cmds in proptest::collection::vec(cmd(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (live, replayed) = rt.block_on(run(cmds));
        prop_assert_eq!(live, replayed);
    }
}

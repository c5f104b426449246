//! A `perfect21 serve` process over loopback for end-to-end tests: bootstrapped
//! with an administrator (`root`) and a service account (`gateway`, holding the
//! `admin` role), on free ports.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use tonic::metadata::MetadataValue;

pub const ROOT_PASSWORD: &str = "root password 1";

pub struct Server {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub data: String,
    /// The `gateway` service account's client id and secret.
    pub sa_id: String,
    pub sa_secret: String,
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn api(&self) -> String {
        format!("{}/api/v1", self.http)
    }
}

pub fn perfect21() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perfect21"))
}

/// Runs `perfect21 <args>` to completion; its stdout.
pub fn run(args: &[&str]) -> String {
    let out = perfect21().args(args).output().unwrap();
    assert!(out.status.success(), "perfect21 {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Creates a service account with `roles` in the log of `data`: its client id and secret.
pub fn create_service_account(data: &str, name: &str, roles: &[&str]) -> (String, String) {
    let mut args = vec!["admin", "service-account", "create", name, "--json", "--data-dir", data];
    for r in roles {
        args.extend(["--role", r]);
    }
    let v: Value = serde_json::from_str(&run(&args)).unwrap();
    (v["client_id"].as_str().unwrap().to_string(), v["client_secret"].as_str().unwrap().to_string())
}

pub fn start() -> Server {
    start_with(&[])
}

/// The first administrator, `root`, in the log of `data`.
pub fn bootstrap(data: &str) {
    bootstrap_with(data, &[]);
}

/// [`bootstrap`] with more flags (`--store`, `--keys-dir`).
pub fn bootstrap_with(data: &str, extra: &[&str]) {
    let mut args = vec!["admin", "bootstrap", "--data-dir", data, "--insecure-fast-passwords"];
    args.extend(["--email", "root@example.com", "--username", "root", "--password", ROOT_PASSWORD]);
    args.extend(extra);
    run(&args);
}

/// Two `serve` replicas of one shared log (`store`, a URL with a forwarding secret),
/// each with a data directory of its own and the signing keys of `keys`, `root`
/// bootstrapped through the first.
pub struct Replicas {
    pub a: Server,
    pub b: Server,
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Replicas {
    pub fn start(store: &str, keys: &str) -> Replicas {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a_data, b_data) = (dirs.0.path().to_str().unwrap(), dirs.1.path().to_str().unwrap());
        let shared = ["--store", store, "--keys-dir", keys];
        bootstrap_with(a_data, &shared);
        let a = serve_on(a_data, &shared);
        let b = serve_on(b_data, &shared);
        Replicas { a, b, dirs }
    }

    /// Stops both; the first's data directory, kept for what runs after.
    pub fn stop(self) -> tempfile::TempDir {
        let Replicas { a, b, dirs } = self;
        drop((a, b));
        dirs.0
    }

    /// A user registered through the second replica (whose appends go to the first)
    /// logs in through both and reads itself back; a wrong password through the
    /// second is refused. The user's id.
    pub async fn one_user_across_both(&self, http: &reqwest::Client, username: &str, password: &str) -> String {
        let user_id = register(http, &self.b, username, password).await;
        for server in [&self.a, &self.b] {
            let tokens = login(http, server, username, password).await;
            let (status, me) = get(http, format!("{}/users/me", server.api()), tokens["access_token"].as_str()).await;
            assert_eq!(status, 200, "{me}");
            assert_eq!(
                (me["username"].as_str(), me["user_id"].as_str().or(me["id"].as_str())),
                (Some(username), Some(user_id.as_str()))
            );
        }
        let wrong = json!({"identifier": username, "password": "wrong password 1"});
        let (status, body) = post(http, format!("{}/auth/login", self.b.api()), None, wrong).await;
        assert_eq!(status, 401, "{body}");
        user_id
    }
}

/// A fresh data directory with `root` and `gateway`, served with `extra` flags.
pub fn start_with(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    bootstrap(&data);
    let (sa_id, sa_secret) = create_service_account(&data, "gateway", &["admin"]);
    let mut server = serve_on(&data, extra);
    server.dir = Some(dir);
    server.sa_id = sa_id;
    server.sa_secret = sa_secret;
    server
}

/// `perfect21 serve` over an existing data directory.
pub fn serve_on(data: &str, extra: &[&str]) -> Server {
    let mut child = perfect21()
        .args(["serve", "--data-dir", data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--dev", "--insecure-fast-passwords"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |prefix: &str| {
        let line = lines.next().expect("server printed its addresses").unwrap();
        let rest = line.strip_prefix(prefix).unwrap_or_else(|| panic!("unexpected line {line}"));
        rest.split_whitespace().next().unwrap_or_default().to_string()
    };
    let grpc = format!("http://{}", addr("perfect21 gRPC listening on "));
    let http = format!("http://{}", addr("perfect21 HTTP listening on "));
    Server { child, grpc, http, data: data.to_string(), sa_id: String::new(), sa_secret: String::new(), dir: None }
}

pub async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

pub async fn get(http: &reqwest::Client, url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A gRPC request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    req
}

/// An access token of a service account, through the client-credentials grant.
pub async fn client_token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let res = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "client credentials grant: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// The `gateway` service account's access token.
pub async fn gateway_token(http: &reqwest::Client, server: &Server) -> String {
    client_token(http, &server.http, &server.sa_id, &server.sa_secret).await
}

/// Registers and verifies a user (dev mode answers with the verification token): its id.
pub async fn register(http: &reqwest::Client, server: &Server, username: &str, password: &str) -> String {
    let api = server.api();
    let email = format!("{username}@example.com");
    let (status, reg) = post(
        http,
        format!("{api}/auth/register"),
        None,
        json!({"email": email, "username": username, "password": password}),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let (status, body) =
        post(http, format!("{api}/auth/verify-email"), None, json!({"token": reg["verification_token"]})).await;
    assert_eq!(status, 200, "{body}");
    reg["user_id"].as_str().unwrap().to_string()
}

/// Logs a user in over REST: the answer (access_token, refresh_token, …).
pub async fn login(http: &reqwest::Client, server: &Server, identifier: &str, password: &str) -> Value {
    let (status, body) = post(
        http,
        format!("{}/auth/login", server.api()),
        None,
        json!({"identifier": identifier, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "login of {identifier}: {body}");
    body
}

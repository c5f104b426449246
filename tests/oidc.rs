//! perfect21 as an OpenID Connect provider, over loopback against `perfect21 serve`:
//! - the refusals each step owes (redirect-URI mismatch, code replay, PKCE
//!   mismatch, CSRF, `prompt=none` without a session, a wrong client secret),
//!   driven with a cookie-keeping HTTP client;
//! - every flow through a relying-party library nobody here wrote (Python
//!   `authlib`): code + PKCE with ID tokens in RS256, ES256 and EdDSA checked
//!   against discovery and JWKS, refresh, userinfo, introspection, revocation,
//!   client credentials, logout;
//! - the login pages in headless Chromium (Debian's, driven by Playwright):
//!   password, TOTP step, single sign-on into a second client, logout of both.

mod common;

use common::serve::{gateway_token, login, register, start, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PASSWORD: &str = "oidc user password";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// A browser without JavaScript: follows no redirects, keeps cookies.
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, cookies: HashMap::new() }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let res = req.header("cookie", cookie).send().await.unwrap();
        for set in res.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let status = res.status().as_u16();
        let location = res.headers().get("location").map(|l| l.to_str().unwrap().to_string());
        Answer { status, location, body: res.text().await.unwrap() }
    }

    async fn get(&mut self, url: &str) -> Answer {
        let req = self.http.get(url);
        self.send(req).await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Answer {
        let req = self.http.post(url).form(form);
        self.send(req).await
    }
}

/// The value of a hidden field of a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap_or_else(|| panic!("no field {name} in {page}")) + marker.len();
    // As a browser reads the attribute: the page escapes values for HTML.
    let raw = page[start..].split('"').next().unwrap();
    [("&#x2f;", "/"), ("&quot;", "\""), ("&#x27;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")]
        .iter()
        .fold(raw.to_string(), |v, (entity, c)| v.replace(entity, c))
}

fn param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(location).unwrap();
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string())
}

struct Client {
    id: String,
    secret: Option<String>,
    redirect: String,
}

async fn register_client(http: &reqwest::Client, server: &Server, token: &str, body: Value) -> Client {
    let res = http.post(format!("{}/clients", server.api())).bearer_auth(token).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{answer}");
    Client {
        id: answer["client"]["client_id"].as_str().unwrap().to_string(),
        secret: answer["client_secret"].as_str().map(String::from),
        redirect: body["redirect_uris"][0].as_str().unwrap().to_string(),
    }
}

fn authorize_url(server: &Server, client: &Client, extra: &str) -> String {
    let redirect = url::form_urlencoded::byte_serialize(client.redirect.as_bytes()).collect::<String>();
    format!(
        "{}/oauth2/authorize?response_type=code&client_id={}&redirect_uri={redirect}&scope=openid%20email%20profile&state=st-1&nonce=n-1{extra}",
        server.http, client.id
    )
}

/// Signs in through the login form; the redirect back to the client.
async fn sign_in(browser: &mut Browser, server: &Server, url: &str, user: &str) -> String {
    let page = browser.get(url).await;
    assert_eq!(page.status, 200, "the login page: {}", page.body);
    let form = [
        ("request", hidden(&page.body, "request")),
        ("csrf", hidden(&page.body, "csrf")),
        ("step", "password".into()),
        ("identifier", user.into()),
        ("password", PASSWORD.into()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let done = browser.post(&format!("{}/oauth2/authorize", server.http), &form).await;
    assert_eq!(done.status, 303, "{}", done.body);
    done.location.unwrap()
}

async fn exchange(http: &reqwest::Client, server: &Server, client: &Client, form: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http.post(format!("{}/oauth2/token", server.http));
    let mut form: Vec<(&str, &str)> = form.to_vec();
    match &client.secret {
        Some(secret) => req = req.basic_auth(&client.id, Some(secret)),
        None => form.push(("client_id", &client.id)),
    }
    let res = req.form(&form).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn userinfo(http: &reqwest::Client, server: &Server, token: &str) -> (u16, Value) {
    common::serve::get(http, format!("{}/oauth2/userinfo", server.http), Some(token)).await
}

fn other_client_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn code_form<'a>(code: &'a str, redirect: &'a str, verifier: &'a str) -> [(&'a str, &'a str); 4] {
    [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect), ("code_verifier", verifier)]
}

fn confidential(redirect: &str) -> Value {
    json!({"name": "Wiki", "redirect_uris": [redirect], "post_logout_redirect_uris": ["https://wiki.example.com/bye"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_endpoint_refuses_what_it_must_and_never_redirects_blindly() {
    let server = start();
    let http = reqwest::Client::new();
    let admin = gateway_token(&http, &server).await;
    let wiki = register_client(&http, &server, &admin, confidential("https://wiki.example.com/cb")).await;
    let spa = register_client(
        &http,
        &server,
        &admin,
        json!({"name": "SPA", "client_type": "public", "redirect_uris": ["http://127.0.0.1:3000/cb"]}),
    )
    .await;
    register(&http, &server, "olga", PASSWORD).await;
    let mut browser = Browser::new();

    // Unknown client, missing or unregistered redirect URI: an error page, no redirect.
    for url in [
        format!("{}/oauth2/authorize?response_type=code&client_id=00000000-0000-0000-0000-000000000000&redirect_uri=https://wiki.example.com/cb", server.http),
        format!("{}/oauth2/authorize?response_type=code&client_id={}", server.http, wiki.id),
        format!("{}/oauth2/authorize?response_type=code&client_id={}&redirect_uri=https://evil.example.com/cb", server.http, wiki.id),
        format!("{}/oauth2/authorize?response_type=code&client_id={}&redirect_uri=https://wiki.example.com/cb/", server.http, wiki.id),
        // A repeated parameter: which one was meant is unknowable (RFC 6749 §3.1).
        format!("{}&client_id={}", authorize_url(&server, &wiki, ""), other_client_id()),
    ] {
        let a = browser.get(&url).await;
        assert_eq!(a.status, 400, "{url}: {}", a.body);
        assert!(a.location.is_none(), "{url}: never a redirect to an unchecked URI");
        assert!(a.body.contains("<h1>"), "an HTML error page: {}", a.body);
    }
    // With a trusted redirect URI, errors go back to the client with the state (RFC 6749 §4.1.2.1).
    let cases = [
        (
            authorize_url(&server, &wiki, "").replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
        ),
        (authorize_url(&server, &wiki, "").replace("scope=openid", "scope=openid%20admin"), "invalid_scope"),
        (authorize_url(&server, &spa, ""), "invalid_request"), // a public client without PKCE
        (authorize_url(&server, &wiki, "&code_challenge=abc&code_challenge_method=plain"), "invalid_request"),
        (authorize_url(&server, &wiki, "&max_age=-1"), "invalid_request"),
        (authorize_url(&server, &wiki, "&prompt=none"), "login_required"),
    ];
    for (url, error) in cases {
        let a = browser.get(&url).await;
        assert_eq!(a.status, 303, "{url}: {}", a.body);
        let location = a.location.unwrap();
        assert!(location.starts_with(&wiki.redirect) || location.starts_with(&spa.redirect), "{location}");
        assert_eq!(param(&location, "error").as_deref(), Some(error), "{url} -> {location}");
        assert_eq!(param(&location, "state").as_deref(), Some("st-1"), "{location}");
        assert_eq!(param(&location, "iss").as_deref(), Some(server.http.as_str()), "RFC 9207 iss: {location}");
    }

    // The login form needs its CSRF token: without the cookie, or with another token, nothing happens.
    let page = browser.get(&authorize_url(&server, &wiki, "")).await;
    assert_eq!(page.status, 200);
    let request = hidden(&page.body, "request");
    let csrf = hidden(&page.body, "csrf");
    let login_url = format!("{}/oauth2/authorize", server.http);
    let attempt = |csrf: String| {
        vec![
            ("request", request.clone()),
            ("csrf", csrf),
            ("step", "password".to_string()),
            ("identifier", "olga".into()),
            ("password", PASSWORD.into()),
        ]
    };
    for forged in [String::new(), "x".repeat(43)] {
        let form = attempt(forged);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = browser.post(&login_url, &form).await;
        assert_eq!(a.status, 403, "a forged form post is refused: {}", a.body);
        assert!(a.location.is_none());
    }
    let mut stranger = Browser::new(); // the right token, but not this browser's cookie
    let form = attempt(csrf.clone());
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(stranger.post(&login_url, &form).await.status, 403);
    assert!(!browser.cookies.contains_key("p21_sso"), "no session came of the forged posts");

    // A wrong password shows the form again with a message; the right one signs in.
    let form = attempt(csrf.clone());
    let mut wrong: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wrong[4].1 = "not the password";
    let again = browser.post(&login_url, &wrong).await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("role=\"alert\"") && again.body.contains("value=\"olga\""), "{}", again.body);
    let location = sign_in(&mut browser, &server, &authorize_url(&server, &wiki, ""), "olga").await;
    assert!(location.starts_with("https://wiki.example.com/cb?"), "{location}");
    assert_eq!(param(&location, "state").as_deref(), Some("st-1"));

    // Signed in: prompt=none now answers with a code; prompt=login asks again; max_age=0 too.
    let silent = browser.get(&authorize_url(&server, &wiki, "&prompt=none")).await;
    assert!(param(silent.location.as_deref().unwrap(), "code").is_some(), "{:?}", silent.location);
    for extra in ["&prompt=login", "&max_age=0"] {
        let a = browser.get(&authorize_url(&server, &wiki, extra)).await;
        assert_eq!(a.status, 200, "{extra} shows the login form again");
        assert!(a.body.contains("name=\"password\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_single_use_bound_to_pkce_and_client_and_a_replay_revokes_their_tokens() {
    let server = start();
    let http = reqwest::Client::new();
    let admin = gateway_token(&http, &server).await;
    let wiki = register_client(&http, &server, &admin, confidential("https://wiki.example.com/cb")).await;
    let other = register_client(&http, &server, &admin, confidential("https://wiki.example.com/cb")).await;
    let user_id = register(&http, &server, "pkce", PASSWORD).await;
    let mut browser = Browser::new();
    let pkce = format!("&code_challenge={CHALLENGE}&code_challenge_method=S256");
    let location = sign_in(&mut browser, &server, &authorize_url(&server, &wiki, &pkce), "pkce").await;
    let code = param(&location, "code").unwrap();
    let redirect = wiki.redirect.as_str();
    let grant = |verifier| code_form(&code, redirect, verifier);

    // A wrong client secret, another client, a wrong verifier: refused.
    let forger = Client { id: wiki.id.clone(), secret: Some("not the secret".into()), redirect: redirect.into() };
    let (status, body) = exchange(&http, &server, &forger, &grant(VERIFIER)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    let (status, body) = exchange(&http, &server, &other, &grant(VERIFIER)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let wrong = "A".repeat(43);
    let (status, body) = exchange(&http, &server, &wiki, &grant(&wrong)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "PKCE mismatch: {body}");

    let (status, tokens) = exchange(&http, &server, &wiki, &grant(VERIFIER)).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "openid email profile");
    let access = tokens["access_token"].as_str().unwrap();
    let (status, info) = userinfo(&http, &server, access).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!((info["sub"].as_str(), info["email"].as_str()), (Some(user_id.as_str()), Some("pkce@example.com")));
    assert_eq!(info["preferred_username"], "pkce");

    // The sign-in and the exchange went through the identity domain, naming the client.
    for event_type in
        ["user.login_succeeded", "authorization_code.issued", "authorization_code.redeemed", "session.started"]
    {
        let tail = common::serve::run(&["events", "tail", "--data-dir", &server.data, "--type", event_type]);
        let events: Vec<Value> = tail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let via = format!("oidc-client:{}", wiki.id);
        assert!(
            events.iter().any(|e| e["metadata"]["source_service"] == via.as_str()
                && e["metadata"]["actor"] == format!("user:{user_id}")),
            "{event_type} names the client in its metadata: {tail}"
        );
    }

    // The same code again: refused, and what it bought stops working (RFC 6749 §4.1.2).
    let (status, body) = exchange(&http, &server, &wiki, &grant(VERIFIER)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let (status, _) = userinfo(&http, &server, access).await;
    assert_eq!(status, 401, "the access token of a replayed code is revoked");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, body) =
        exchange(&http, &server, &wiki, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // userinfo wants a user's token that was granted openid.
    let first_party = login(&http, &server, "pkce", PASSWORD).await["access_token"].as_str().unwrap().to_string();
    let (status, body) = userinfo(&http, &server, &first_party).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("insufficient_scope")), "{body}");
    assert_eq!(userinfo(&http, &server, &admin).await.0, 403, "a service account is no user");
    assert_eq!(userinfo(&http, &server, "not-a-token").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_one_client_cannot_be_refreshed_introspected_or_revoked_by_another() {
    let server = start();
    let http = reqwest::Client::new();
    let admin = gateway_token(&http, &server).await;
    let wiki = register_client(&http, &server, &admin, confidential("https://wiki.example.com/cb")).await;
    let other = register_client(&http, &server, &admin, confidential("https://other.example.com/cb")).await;
    register(&http, &server, "bound", PASSWORD).await;
    let mut browser = Browser::new();
    let location = sign_in(&mut browser, &server, &authorize_url(&server, &wiki, ""), "bound").await;
    let code = param(&location, "code").unwrap();
    let form =
        [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", wiki.redirect.as_str())];
    let (status, tokens) = exchange(&http, &server, &wiki, &form).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();

    let (status, body) =
        exchange(&http, &server, &other, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    let introspect = |client: &Client, token: &str| {
        let req = http
            .post(format!("{}/oauth2/introspect", server.http))
            .basic_auth(&client.id, client.secret.as_deref())
            .form(&[("token", token)]);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (_, mine) = introspect(&wiki, access).await;
    assert_eq!(mine["active"], true, "{mine}");
    assert_eq!(mine["client_id"].as_str(), Some(wiki.id.as_str()));
    assert_eq!(mine["scope"], "openid email profile");
    let (_, theirs) = introspect(&other, access).await;
    assert_eq!(theirs, json!({"active": false}), "another client learns nothing");
    let resource_server =
        Client { id: server.sa_id.clone(), secret: Some(server.sa_secret.clone()), redirect: String::new() };
    let (_, rs) = introspect(&resource_server, access).await;
    assert_eq!(rs["active"], true, "a service account (resource server) may introspect: {rs}");
    let (id, secret) = common::serve::create_service_account(&server.data, "no-roles", &[]);
    let nobody = Client { id, secret: Some(secret), redirect: String::new() };
    let (status, body) = introspect(&nobody, access).await;
    assert_eq!(status, 403, "a service account without perfect21.tokens:validate: {body}");
    assert!(body["error_description"].as_str().unwrap().contains("perfect21.tokens:validate"), "{body}");
    let (_, refresh_info) = introspect(&wiki, refresh).await;
    assert_eq!(
        (refresh_info["active"].as_bool(), refresh_info["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );
    let (status, _) =
        introspect(&Client { id: wiki.id.clone(), secret: Some("wrong".into()), redirect: String::new() }, access)
            .await;
    assert_eq!(status, 401);

    // Revocation by another client is a silent no-op; by the owner it takes effect.
    let revoke = |client: &Client, token: &str| {
        let req = http
            .post(format!("{}/oauth2/revoke", server.http))
            .basic_auth(&client.id, client.secret.as_deref())
            .form(&[("token", token)]);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(revoke(&other, access).await, 200);
    assert_eq!(userinfo(&http, &server, access).await.0, 200, "still valid");
    assert_eq!(revoke(&wiki, access).await, 200);
    assert_eq!(userinfo(&http, &server, access).await.0, 401, "revoked");
    assert_eq!(revoke(&wiki, refresh).await, 200);
    let (status, _) =
        exchange(&http, &server, &wiki, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!(status, 400, "the revoked refresh token is dead");
    assert_eq!(introspect(&wiki, refresh).await.1, json!({"active": false}));
}

/// The browser script's next report (one JSON line); an error report fails the test.
async fn next_step(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser answers within a minute")
        .unwrap()
        .expect("the browser script printed its step");
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    assert_ne!(report["step"], "error", "the browser failed: {report}");
    report
}

/// Answers every request with 200 and reports its request line: the clients'
/// redirect URIs for the browser test.
async fn callback_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match socket.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let request = String::from_utf8_lossy(&buf[..read]);
                let target = request.split_whitespace().nth(1).unwrap_or_default().to_string();
                if target != "/favicon.ico" {
                    let _ = tx.send(target);
                }
                let body = "<!doctype html><title>client</title><p>back at the client</p>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (base, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_with_a_totp_code_then_single_sign_on_then_logout_ends_both() {
    let server = start();
    let http = reqwest::Client::new();
    let admin = gateway_token(&http, &server).await;
    let (callbacks, mut landed) = callback_server().await;
    let mut clients = Vec::new();
    for name in ["a", "b"] {
        let body = json!({
            "name": format!("Client {}", name.to_uppercase()),
            "redirect_uris": [format!("{callbacks}/cb-{name}")],
            "post_logout_redirect_uris": [format!("{callbacks}/bye")],
        });
        clients.push(register_client(&http, &server, &admin, body).await);
    }
    // A user with TOTP.
    register(&http, &server, "chrome", PASSWORD).await;
    let token = login(&http, &server, "chrome", PASSWORD).await["access_token"].as_str().unwrap().to_string();
    let api = server.api();
    let (_, enrollment) =
        common::serve::post(&http, format!("{api}/auth/mfa/enroll"), Some(&token), json!({"password": PASSWORD})).await;
    let secret = totp_rs::Secret::Encoded(enrollment["secret"].as_str().unwrap().into()).to_bytes().unwrap();
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap();
    let now = chrono::Utc::now().timestamp() as u64;
    let confirm =
        json!({"enrollment_token": enrollment["enrollment_token"], "code": totp.generate(now), "password": PASSWORD});
    let (status, body) = common::serve::post(&http, format!("{api}/auth/mfa/confirm"), Some(&token), confirm).await;
    assert_eq!(status, 200, "{body}");
    // The confirming step is spent; the next one is within the accepted skew.
    let code = totp.generate(now + 30);

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("oidc-login-page.png");
    let mut node = tokio::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/browser/oidc_login.mjs"))
        .env("AUTHORIZE_A", authorize_url(&server, &clients[0], ""))
        .env("AUTHORIZE_B", authorize_url(&server, &clients[1], ""))
        .env("CALLBACKS", &callbacks)
        .env("USERNAME", "chrome")
        .env("PASSWORD", PASSWORD)
        .env("TOTP_CODE", &code)
        .env("SCREENSHOT", &screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (scripts/test installs tests/browser)");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut exchanged = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let report = next_step(&mut lines).await;
        if i == 0 {
            assert_eq!(report["login_title"], "Sign in — perfect21", "{report}");
            assert_eq!(report["mfa_title"], "Verification code — perfect21", "{report}");
        } else {
            assert_eq!(
                report["login_form_shown"], false,
                "single sign-on: no password for the second client: {report}"
            );
        }
        let target = landed.recv().await.unwrap();
        assert!(target.starts_with(&format!("/cb-{}", ["a", "b"][i])), "{target}");
        let code = param(&format!("{callbacks}{target}"), "code").unwrap();
        let form =
            [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", client.redirect.as_str())];
        let (status, tokens) = exchange(&http, &server, client, &form).await;
        assert_eq!(status, 200, "{tokens}");
        exchanged.push(tokens);
    }
    assert!(screenshot.exists(), "the login page screenshot was saved");

    // Both clients' tokens work until the browser logs out.
    for tokens in &exchanged {
        assert_eq!(userinfo(&http, &server, tokens["access_token"].as_str().unwrap()).await.0, 200);
    }
    let id_token = exchanged[0]["id_token"].as_str().unwrap();
    let logout = format!(
        "{}/oauth2/logout?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye-1",
        server.http,
        url::form_urlencoded::byte_serialize(format!("{callbacks}/bye").as_bytes()).collect::<String>()
    );
    stdin.write_all(format!("{logout}\n").as_bytes()).await.unwrap();
    let report = next_step(&mut lines).await;
    assert_eq!(report["step"], "logout", "{report}");
    let target = landed.recv().await.unwrap();
    assert_eq!(target, "/bye?state=bye-1");
    for tokens in &exchanged {
        assert_eq!(userinfo(&http, &server, tokens["access_token"].as_str().unwrap()).await.0, 401, "logout ended it");
        let refresh = tokens["refresh_token"].as_str().unwrap();
        let (status, _) =
            exchange(&http, &server, &clients[0], &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
        assert_eq!(status, 400);
    }
    let report = next_step(&mut lines).await;
    assert_eq!(report["login_form_shown"], true, "after logout the browser must sign in again: {report}");
    assert!(node.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relying_party_library_drives_every_flow() {
    let server = start();
    let http = reqwest::Client::new();
    let admin = gateway_token(&http, &server).await;
    let mut clients = Vec::new();
    for alg in ["RS256", "ES256", "EdDSA"] {
        let body = json!({
            "name": format!("RP {alg}"),
            "redirect_uris": ["https://rp.example.com/callback"],
            "post_logout_redirect_uris": ["https://rp.example.com/signed-out"],
            "id_token_signed_response_alg": alg,
        });
        let c = register_client(&http, &server, &admin, body).await;
        clients.push(json!({"id": c.id, "secret": c.secret, "alg": alg, "redirect": c.redirect}));
    }
    let public = register_client(
        &http,
        &server,
        &admin,
        json!({"name": "RP public", "client_type": "public", "redirect_uris": ["http://127.0.0.1:9/callback"], "id_token_signed_response_alg": "ES256"}),
    )
    .await;
    clients.push(json!({"id": public.id, "secret": null, "alg": "ES256", "redirect": public.redirect}));
    register(&http, &server, "rp-user", PASSWORD).await;

    let out = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/oidc_rp.py"))
        .env("ISSUER", &server.http)
        .env("CLIENTS", json!(clients).to_string())
        .env("SERVICE_ACCOUNT", json!({"id": server.sa_id, "secret": server.sa_secret}).to_string())
        .env("USERNAME", "rp-user")
        .env("PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the relying party failed:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["flows"], 4, "{report}");
    assert_eq!(report["id_token_algs"], json!(["RS256", "ES256", "EdDSA", "ES256"]), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployers_replace_pages_and_stylesheet_and_name_the_issuer() {
    let pages = tempfile::tempdir().unwrap();
    let dir = pages.path().to_str().unwrap();
    let printed = common::serve::run(&["serve", "--print-pages", dir]);
    assert_eq!(printed.lines().count(), 5, "{printed}");
    let login = std::fs::read_to_string(pages.path().join("login.html")).unwrap();
    std::fs::write(pages.path().join("login.html"), login.replace("<h1>Sign in</h1>", "<h1>Welcome to ACME</h1>"))
        .unwrap();
    std::fs::write(pages.path().join("perfect21.css"), "/* ACME house style */ body { color: #123; }").unwrap();

    let server = common::serve::start_with(&["--pages-dir", dir, "--public-url", "https://id.example.com/"]);
    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!("{}/.well-known/openid-configuration", server.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], "https://id.example.com");
    assert_eq!(meta["authorization_endpoint"], "https://id.example.com/oauth2/authorize");
    let css = http.get(format!("{}/assets/perfect21.css", server.http)).send().await.unwrap().text().await.unwrap();
    assert!(css.contains("ACME house style"), "{css}");

    let admin = gateway_token(&http, &server).await;
    let wiki = register_client(&http, &server, &admin, confidential("https://wiki.example.com/cb")).await;
    let mut browser = Browser::new();
    let page = browser.get(&authorize_url(&server, &wiki, "")).await;
    assert!(page.body.contains("<h1>Welcome to ACME</h1>"), "{}", page.body);
    assert!(page.body.contains("to continue to <strong>Wiki</strong>"), "the replaced page still gets its values");
    // Behind https, the cookies are Secure.
    let res = reqwest::Client::new().get(authorize_url(&server, &wiki, "")).send().await.unwrap();
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // A page that does not parse stops the start, naming the file.
    std::fs::write(pages.path().join("message.html"), "{% if %}").unwrap();
    let out = common::serve::perfect21()
        .args(["serve", "--data-dir", &server.data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--pages-dir", dir])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("message.html"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_hint_asks_first_and_never_redirects_to_an_unregistered_address() {
    let server = start();
    let http = reqwest::Client::new();
    let admin = gateway_token(&http, &server).await;
    let wiki = register_client(&http, &server, &admin, confidential("https://wiki.example.com/cb")).await;
    register(&http, &server, "leaver", PASSWORD).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &server, &authorize_url(&server, &wiki, "&login_hint=leaver"), "leaver").await;
    let logout = format!("{}/oauth2/logout", server.http);
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();

    // Refused outright: an unregistered return address, a forged hint.
    for query in [
        format!("client_id={}&post_logout_redirect_uri={}", wiki.id, encode("https://evil.example.com/")),
        format!("post_logout_redirect_uri={}", encode("https://wiki.example.com/bye")),
        "id_token_hint=not.a.token".to_string(),
    ] {
        let a = browser.get(&format!("{logout}?{query}")).await;
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        assert!(a.location.is_none(), "{query}: no redirect");
    }
    // Without a hint: a confirmation page; its form needs the CSRF token.
    let query =
        format!("client_id={}&post_logout_redirect_uri={}&state=s-9", wiki.id, encode("https://wiki.example.com/bye"));
    let page = browser.get(&format!("{logout}?{query}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign out?"), "{}", page.body);
    let form = [
        ("csrf", hidden(&page.body, "csrf")),
        ("client_id", hidden(&page.body, "client_id")),
        ("post_logout_redirect_uri", hidden(&page.body, "post_logout_redirect_uri")),
        ("state", hidden(&page.body, "state")),
    ];
    let mut forged: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    forged[0].1 = "forged";
    assert_eq!(browser.post(&logout, &forged).await.status, 403, "a forged logout post changes nothing");
    let still = browser.get(&authorize_url(&server, &wiki, "&prompt=none")).await;
    assert!(param(still.location.as_deref().unwrap(), "code").is_some(), "still signed in");

    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let done = browser.post(&logout, &form).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("https://wiki.example.com/bye?state=s-9"));
    assert!(!browser.cookies.contains_key("p21_sso"), "the SSO cookie is cleared");
    let after = browser.get(&authorize_url(&server, &wiki, "&prompt=none&login_hint=leaver")).await;
    assert_eq!(param(after.location.as_deref().unwrap(), "error").as_deref(), Some("login_required"));
    let form_again = browser.get(&authorize_url(&server, &wiki, "&login_hint=leaver")).await;
    assert!(form_again.body.contains("value=\"leaver\""), "login_hint fills the form: {}", form_again.body);
}

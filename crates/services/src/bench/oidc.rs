//! OpenID Connect benchmarks on a real server over loopback (HTTP/1.1).
//!
//! `bench oidc-code`: complete authorization-code flows per second — the login
//! page, the sign-in form (argon2id on the blocking pool, login events, the
//! browser session), the redirect with a code, and the code exchange with PKCE
//! (the client's session, an access token and an RS256 ID token) — against raw
//! argon2id verifications with the same parameters (the cost every flow pays).
//!
//! `bench introspect`: RFC 7662 introspections of an access token by its client
//! per second, against an empty handler (`/healthz`) on the same server.

use super::oauth::{alternated, serve, Served};
use super::{Measurement, Scratch};
use perfect21_domain::clients::pkce_challenge;
use perfect21_domain::password::PasswordCost;
use perfect21_domain::{Registration, RequestContext};
use perfect21_events::catalog::ClientSettings;
use std::time::Duration;

const PASSWORD: &str = "benchmark password 1";
const REDIRECT: &str = "https://app.example.com/callback";
const VERIFIER: &str = "bench-verifier-bench-verifier-bench-verifier-0001";

/// A confidential client and one user per benchmark client (`oidc0`, `oidc1`, …; a
/// user signing in from 16 browsers at once would only measure conflicts on one stream).
async fn setup(scratch: &Scratch, name: &str, cost: PasswordCost) -> anyhow::Result<(Served, String, String)> {
    let served = serve(scratch, name, cost).await?;
    let ctx = RequestContext::service("bench");
    let settings = ClientSettings {
        redirect_uris: vec![REDIRECT.into()],
        post_logout_redirect_uris: vec![],
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        scopes: vec!["openid".into(), "email".into()],
        id_token_signed_response_alg: "RS256".into(),
    };
    let client = served.identity.register_client(&ctx, "bench", true, settings).await?;
    let mut last = client.position;
    for i in 0..super::oauth::CLIENTS {
        let reg = Registration {
            email: format!("oidc{i}@example.com"),
            username: format!("oidc{i}"),
            password: PASSWORD.into(),
            ..Default::default()
        };
        last = last.max(served.identity.register(&ctx, reg).await?.position);
    }
    served.identity.live().wait_for(last, Duration::from_secs(10)).await?;
    Ok((served, client.id.to_string(), client.secret.unwrap_or_default()))
}

fn hidden(page: &str, name: &str) -> anyhow::Result<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).ok_or_else(|| anyhow::anyhow!("the page has no field {name}"))? + marker.len();
    Ok(page[start..].split('"').next().unwrap_or_default().to_string())
}

/// One whole flow, as a browser and a client would make it.
async fn code_flow(http: &reqwest::Client, base: &str, user: &str, id: &str, secret: &str) -> anyhow::Result<()> {
    let challenge = pkce_challenge(VERIFIER);
    let url = format!(
        "{base}/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={REDIRECT}&scope=openid%20email\
         &state=s&nonce=n&code_challenge={challenge}&code_challenge_method=S256"
    );
    let page = http.get(&url).send().await?;
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no CSRF cookie"))?
        .to_string();
    let page = page.text().await?;
    let form = [
        ("request", hidden(&page, "request")?),
        ("csrf", hidden(&page, "csrf")?),
        ("step", "password".into()),
        ("identifier", user.into()),
        ("password", PASSWORD.into()),
    ];
    let signed_in = http.post(format!("{base}/oauth2/authorize")).header("cookie", cookie).form(&form).send().await?;
    if signed_in.status() != 303 {
        let status = signed_in.status();
        anyhow::bail!("sign-in answered {status}: {}", signed_in.text().await.unwrap_or_default());
    }
    let location = signed_in.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
    let code = url::Url::parse(location)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .ok_or_else(|| anyhow::anyhow!("no code in {location}"))?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let tokens = http.post(format!("{base}/oauth2/token")).basic_auth(id, Some(secret)).form(&form).send().await?;
    anyhow::ensure!(tokens.status().is_success(), "token endpoint answered {}", tokens.status());
    let body: serde_json::Value = tokens.json().await?;
    anyhow::ensure!(body["id_token"].is_string(), "no ID token: {body}");
    Ok(())
}

pub async fn code(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let (served, id, secret) = setup(scratch, "oidc-code", PasswordCost::OWASP).await?;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let base = format!("http://{}", served.addr);
    let flows = super::drive(super::oauth::CLIENTS, duration, move |i| {
        let (http, base, id, secret) = (http.clone(), base.clone(), id.clone(), secret.clone());
        async move { code_flow(&http, &base, &format!("oidc{i}"), &id, &secret).await }
    })
    .await?;
    let argon = tokio::task::spawn_blocking(move || super::login::raw_argon2(duration)).await??;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    // ZITADEL v4's published figure: 39 login flows/s on 2 to 7 pods of 6 vCPU.
    eprintln!(
        "{:.1} flows/s per core (p50 {:.0} ms, p99 {:.0} ms); ZITADEL: 39 flows/s on 12 to 42 vCPU = {:.2} to {:.2} per vCPU",
        flows.per_sec / cores,
        flows.p50_us / 1000.0,
        flows.p99_us / 1000.0,
        39.0 / 42.0,
        39.0 / 12.0
    );
    Ok(vec![
        Measurement::rate("oidc-code", "flows", flows.per_sec, argon, "per s"),
        // Against ZITADEL's best case per vCPU (39 flows/s on 2 pods of 6 vCPU).
        Measurement::rate("oidc-code", "flows_per_core", flows.per_sec / cores, 39.0 / 12.0, "per s"),
    ])
}

pub async fn introspect(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let (served, id, secret) = setup(scratch, "introspect", PasswordCost::TEST).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(super::oauth::CLIENTS)
        .build()?;
    let base = format!("http://{}", served.addr);
    // An access token of the client's, to introspect.
    let login =
        perfect21_domain::LoginRequest { identifier: "oidc0".into(), password: PASSWORD.into(), ..Default::default() };
    let grant = served.identity.login(&RequestContext::service("bench"), login).await?;
    served.identity.live().wait_for(grant.position, Duration::from_secs(10)).await?;
    let token = served.app.client_access_token(&grant, uuid::Uuid::parse_str(&id)?, "openid email")?;
    // The baseline is the empty handler receiving the same request (the client's
    // credentials and the form), so that only the introspection's work differs.
    let request = |method: reqwest::Method, url: String| {
        let (http, id, secret, token) = (http.clone(), id.clone(), secret.clone(), token.clone());
        move || http.request(method.clone(), &url).basic_auth(&id, Some(&secret)).form(&[("token", token.as_str())])
    };
    let (ours, base_run) = alternated(
        duration,
        request(reqwest::Method::POST, format!("{base}/oauth2/introspect")),
        request(reqwest::Method::GET, format!("{base}/healthz")),
    )
    .await?;
    Ok(vec![
        Measurement::rate("introspect", "introspections", ours.per_sec, base_run.per_sec, "req/s"),
        Measurement::latency("introspect", "p50", ours.p50_us, base_run.p50_us, "us"),
        Measurement::latency("introspect", "p99", ours.p99_us, base_run.p99_us, "us"),
    ])
}

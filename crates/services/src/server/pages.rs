//! Server-rendered pages: the links perfect21 sends by email, and the OpenID
//! Connect login pages. Plain HTML forms that work without JavaScript, templated
//! with minijinja (compiled into the binary, each replaceable by a file of the
//! same name in `serve --pages-dir`), styled by `/assets/perfect21.css`.
//!
//! `GET /verify-email?token=…` only shows what the link would do and a button;
//! the `POST` from that button verifies. Mail scanners that prefetch links
//! therefore consume nothing.

use super::rest::{Origin, RestState};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use perfect21_domain::VerificationState;
use serde::Deserialize;
use std::sync::OnceLock;

/// The built-in pages and stylesheet, by file name.
const BUILT_IN: [(&str, &str); 5] = [
    ("verify_email.html", include_str!("../../../../templates/pages/verify_email.html")),
    ("login.html", include_str!("../../../../templates/pages/login.html")),
    ("mfa.html", include_str!("../../../../templates/pages/mfa.html")),
    ("message.html", include_str!("../../../../templates/pages/message.html")),
    (STYLESHEET, include_str!("../../../../templates/pages/perfect21.css")),
];
const STYLESHEET: &str = "perfect21.css";

/// The pages and stylesheet in use: the built-in ones, each replaced by the file of
/// the same name in `--pages-dir` when there is one.
struct Pages {
    env: minijinja::Environment<'static>,
    stylesheet: &'static str,
}

static PAGES: OnceLock<Pages> = OnceLock::new();

/// Loads the pages once, at start-up, replacing built-in files by those of `dir`;
/// a template that does not parse stops the start with its name and error.
pub fn load(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let pages = build(dir)?;
    anyhow::ensure!(PAGES.set(pages).is_ok(), "the pages were loaded already");
    Ok(())
}

fn build(dir: Option<&std::path::Path>) -> anyhow::Result<Pages> {
    let mut env = minijinja::Environment::new();
    let mut stylesheet = "";
    for (name, built_in) in BUILT_IN {
        let source: &'static str = match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
            // Read once per process and kept for its lifetime.
            Some(path) => Box::leak(
                std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
                    .into_boxed_str(),
            ),
            None => built_in,
        };
        if name == STYLESHEET {
            stylesheet = source;
        } else {
            // HTML escaping of every value (the file name ends in .html).
            env.add_template(name, source).map_err(|e| anyhow::anyhow!("page template {name}: {e}"))?;
        }
    }
    Ok(Pages { env, stylesheet })
}

/// Writes the built-in pages and stylesheet into `dir` (to edit them); their paths.
pub fn write_defaults(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    BUILT_IN
        .iter()
        .map(|(name, source)| {
            let path = dir.join(name);
            std::fs::write(&path, source).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            Ok(path)
        })
        .collect()
}

fn pages() -> &'static Pages {
    PAGES.get_or_init(|| build(None).expect("the built-in pages parse"))
}

/// Renders one of the built-in pages (never cached: they may carry CSRF tokens).
/// Framing is refused, so a page cannot be overlaid by another site (clickjacking).
pub(super) fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> Response {
    match pages().env.get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'",
                ),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the page failed: {e}")).into_response(),
    }
}

/// A page with a title and one message; `kind` is `error`, `ok` or `info`.
pub(super) fn message(status: StatusCode, kind: &str, title: &str, message: &str) -> Response {
    page(status, "message.html", minijinja::context! { kind, title, message })
}

fn render(status: StatusCode, state: &str, title: &str, token: &str) -> Response {
    page(status, "verify_email.html", minijinja::context! { state, title, token })
}

fn page_for(state: VerificationState, token: &str) -> Response {
    match state {
        VerificationState::Pending => render(StatusCode::OK, "pending", "Confirm your email address", token),
        VerificationState::AlreadyUsed => render(StatusCode::OK, "used", "Already verified", ""),
        VerificationState::Expired => render(StatusCode::GONE, "expired", "This link has expired", ""),
        VerificationState::Invalid => render(StatusCode::NOT_FOUND, "invalid", "This link is not valid", ""),
    }
}

#[derive(Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[into_params(parameter_in = Query)]
pub struct TokenParam {
    /// The token of the welcome email's link.
    #[serde(default)]
    token: String,
}

/// `GET /verify-email?token=…`: what the link would do, and a button to do it.
#[utoipa::path(get, path = "/verify-email", tag = "pages",
    summary = "HTML page of the welcome email's link: shows a button that confirms",
    params(TokenParam),
    responses(
        (status = 200, description = "The button (or: already verified)", content_type = "text/html", body = String),
        (status = 404, description = "Not a valid link", content_type = "text/html", body = String),
        (status = 410, description = "The link has expired", content_type = "text/html", body = String),
        (status = 503, description = "Try again", content_type = "text/html", body = String)))]
pub async fn verify_email_page(State(s): State<RestState>, Query(q): Query<TokenParam>) -> Response {
    match s.app.identity.verification_state(&q.token).await {
        Ok(state) => page_for(state, &q.token),
        Err(e) => render(StatusCode::SERVICE_UNAVAILABLE, "invalid", &format!("Please try again ({e})"), ""),
    }
}

/// `POST /verify-email` (form field `token`): verifies, then shows the outcome.
#[utoipa::path(post, path = "/verify-email", tag = "pages",
    summary = "HTML form target: verifies the address",
    request_body(content = TokenParam, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Verified (or already verified)", content_type = "text/html", body = String),
        (status = 400, description = "The form could not be read", content_type = "text/html", body = String),
        (status = 404, description = "Not a valid link", content_type = "text/html", body = String),
        (status = 410, description = "The link has expired", content_type = "text/html", body = String),
        (status = 503, description = "Try again", content_type = "text/html", body = String)))]
pub async fn verify_email_submit(State(s): State<RestState>, Origin(ctx): Origin, body: axum::body::Bytes) -> Response {
    let Ok(q) = serde_urlencoded::from_bytes::<TokenParam>(&body) else {
        return message(StatusCode::BAD_REQUEST, "error", "Invalid form", "The form could not be read.");
    };
    match s.app.identity.verify_email(&ctx, &q.token).await {
        Ok(_) => render(StatusCode::OK, "verified", "Email address verified", ""),
        Err(_) => match s.app.identity.verification_state(&q.token).await {
            Ok(state) => page_for(state, ""),
            Err(e) => render(StatusCode::SERVICE_UNAVAILABLE, "invalid", &format!("Please try again ({e})"), ""),
        },
    }
}

/// `GET /assets/perfect21.css`.
#[utoipa::path(get, path = "/assets/perfect21.css", tag = "pages",
    summary = "Stylesheet of the HTML pages",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String)))]
pub async fn stylesheet() -> Response {
    let css = pages().stylesheet;
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], css)
        .into_response()
}

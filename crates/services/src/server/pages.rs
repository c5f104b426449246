//! Server-rendered pages for the links perfect21 sends by email. Plain HTML
//! forms that work without JavaScript, templated with minijinja (compiled into
//! the binary), styled by `/assets/perfect21.css`.
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

const VERIFY_EMAIL: &str = include_str!("../../../../templates/pages/verify_email.html");
const LOGIN: &str = include_str!("../../../../templates/pages/login.html");
const MFA: &str = include_str!("../../../../templates/pages/mfa.html");
const MESSAGE: &str = include_str!("../../../../templates/pages/message.html");
const STYLESHEET: &str = include_str!("../../../../templates/pages/perfect21.css");

fn pages() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        // HTML escaping of every value (the file name ends in .html).
        env.add_template("verify_email.html", VERIFY_EMAIL).expect("the built-in page parses");
        env.add_template("login.html", LOGIN).expect("the built-in page parses");
        env.add_template("mfa.html", MFA).expect("the built-in page parses");
        env.add_template("message.html", MESSAGE).expect("the built-in page parses");
        env
    })
}

/// Renders one of the built-in pages (never cached: they may carry CSRF tokens).
/// Framing is refused, so a page cannot be overlaid by another site (clickjacking).
pub(super) fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> Response {
    match pages().get_template(template).and_then(|t| t.render(ctx)) {
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

#[derive(Deserialize)]
pub struct TokenParam {
    #[serde(default)]
    token: String,
}

/// `GET /verify-email?token=…`: what the link would do, and a button to do it.
pub async fn verify_email_page(State(s): State<RestState>, Query(q): Query<TokenParam>) -> Response {
    match s.app.identity.verification_state(&q.token).await {
        Ok(state) => page_for(state, &q.token),
        Err(e) => render(StatusCode::SERVICE_UNAVAILABLE, "invalid", &format!("Please try again ({e})"), ""),
    }
}

/// `POST /verify-email` (form field `token`): verifies, then shows the outcome.
pub async fn verify_email_submit(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    axum::Form(q): axum::Form<TokenParam>,
) -> Response {
    match s.app.identity.verify_email(&ctx, &q.token).await {
        Ok(_) => render(StatusCode::OK, "verified", "Email address verified", ""),
        Err(_) => match s.app.identity.verification_state(&q.token).await {
            Ok(state) => page_for(state, ""),
            Err(e) => render(StatusCode::SERVICE_UNAVAILABLE, "invalid", &format!("Please try again ({e})"), ""),
        },
    }
}

/// `GET /assets/perfect21.css`.
pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], STYLESHEET)
        .into_response()
}

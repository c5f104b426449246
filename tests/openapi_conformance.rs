//! The served OpenAPI document against the server that serves it: `schemathesis run
//! --checks all` (every check: server errors, status codes, content types, response
//! schemas, schema-valid data accepted, schema-violating data refused, authentication
//! not ignored, ...) as an anonymous caller, as a user and as an administrator.
//!
//! Bounded: `PERFECT21_ST_SECONDS` per caller (default 60) and a fixed seed
//! (`PERFECT21_ST_SEED` picks another, to explore). The protocol exceptions the checks
//! cannot know are in `tests/schemathesis.toml`; the sign-in per test case is
//! `tests/python/schemathesis_auth.py`.

mod common;

use common::serve::{register, start, ROOT_PASSWORD};
use serde_json::Value;
use std::process::Command;

const DEFAULT_SEED: &str = "2112";

fn schemathesis(base: &str, who: &str, credentials: Option<(&str, &str)>) {
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests");
    let seconds = std::env::var("PERFECT21_ST_SECONDS").unwrap_or_else(|_| "60".into());
    let seed = std::env::var("PERFECT21_ST_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let mut st = Command::new("st");
    st.args(["--no-color", "--config-file", &format!("{tests}/schemathesis.toml"), "run"])
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--checks", "all", "--workers", "1", "--max-examples", "25", "--output-sanitize", "false"])
        .args(["--max-time", &seconds, "--seed", &seed])
        .env("PERFECT21_ST_BASE", base)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_auth")
        .env("PYTHONPATH", format!("{tests}/python"))
        .env_remove("PERFECT21_ST_IDENTIFIER");
    if let Some((identifier, password)) = credentials {
        st.env("PERFECT21_ST_IDENTIFIER", identifier).env("PERFECT21_ST_PASSWORD", password);
    }
    let out = st.output().expect("schemathesis (pip install schemathesis; scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout.lines().skip_while(|l| !l.contains("SUMMARY")).collect();
    println!("schemathesis as {who}:\n{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "schemathesis as {who} found failures (reproduce: PERFECT21_ST_SEED={seed}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().rev().find(|l| l.starts_with('=')).unwrap_or_default();
    assert!(!last.contains("failure") && !last.contains("error"), "as {who}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_holds_against_the_server_for_every_caller() {
    let server = start();
    let http = reqwest::Client::new();
    register(&http, &server, "plain", "plain password 1").await;

    let doc: Value = http.get(format!("{}/openapi.json", server.api())).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    schemathesis(&server.http, "an anonymous caller", None);
    schemathesis(&server.http, "a user", Some(("plain", "plain password 1")));
    schemathesis(&server.http, "an administrator", Some(("root", ROOT_PASSWORD)));
}

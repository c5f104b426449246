//! Erasure, as a user of the running server sees it: after an administrator deletes
//! a user, no surface (REST, gRPC, the audit trail, `events tail`, the export) and no
//! byte under the data directory (log, key file, snapshot) holds their personal data,
//! and the log verifies without a single event rewritten.

mod common;

use common::serve::{bearer, gateway_token, login, register, run, start};
use perfect21_proto::user;

const AGENT: &str = "erasure-test-agent/9";

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_user_is_gone_from_every_surface_and_every_file_with_nothing_rewritten() {
    let server = start();
    let http = reqwest::Client::builder().user_agent(AGENT).build().unwrap();
    let id = register(&http, &server, "to_be_erased", "erase password 1").await;
    let session = login(&http, &server, "to_be_erased", "erase password 1").await;
    let token = session["access_token"].as_str().unwrap();
    let (status, me) = common::serve::get(&http, format!("{}/users/me", server.api()), Some(token)).await;
    assert_eq!((status, me["email"].as_str()), (200, Some("to_be_erased@example.com")), "{me}");
    let tail_before = run(&["events", "tail", "--data-dir", &server.data]);
    assert!(tail_before.contains("to_be_erased@example.com"), "readers see the opened log");

    let admin = gateway_token(&http, &server).await;
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut users = user::user_service_client::UserServiceClient::new(channel);
    let delete = user::UpdateUserStatusRequest {
        user_id: id.clone(),
        status: user::UserStatus::Deleted as i32,
        reason: "asked to be forgotten".into(),
    };
    users.update_user_status(bearer(delete, &admin)).await.unwrap();

    let personal = ["to_be_erased@example.com", "to_be_erased", AGENT, "127.0.0.1", "asked to be forgotten"];
    let mut answers = Vec::new();
    for path in [format!("/users/{id}"), format!("/audit/users/{id}"), format!("/users/{id}/export")] {
        let (status, body) = common::serve::get(&http, format!("{}{path}", server.api()), Some(&admin)).await;
        answers.push(format!("{path} {status}: {body}"));
    }
    let got = users
        .get_user(bearer(
            user::GetUserRequest {
                identifier: Some(user::get_user_request::Identifier::UserId(id.clone())),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    answers.push(format!("gRPC GetUser: {got:?}"));
    answers.push(format!("events tail: {}", run(&["events", "tail", "--data-dir", &server.data])));
    for answer in &answers {
        for value in personal {
            assert!(!answer.contains(value), "{value} is still served: {answer}");
        }
    }
    assert!(answers[1].contains("user.erased"), "the audit trail records the erasure: {}", answers[1]);

    // The chain verifies with no event rewritten in place: everything was sealed.
    let verify: serde_json::Value =
        serde_json::from_str(&run(&["events", "verify", "--data-dir", &server.data, "--json"])).unwrap();
    assert_eq!(verify["redacted"], 0, "{verify}");

    // Not a byte on disk: the log, its WAL, the key file, the snapshot.
    let mut files = Vec::new();
    files_under(std::path::Path::new(&server.data), &mut files);
    assert!(files.iter().any(|f| f.ends_with("events.keys.db")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("read-models.snap")), "the snapshot was rewritten: {files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for value in ["to_be_erased@example.com", AGENT, "asked to be forgotten"] {
            let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
            assert!(!found, "{value} is in {} in clear", file.display());
        }
    }
}

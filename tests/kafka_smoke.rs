//! The Kafka broker that `scripts/kafka` starts takes records and gives them back,
//! through a client that is not ours (Python confluent-kafka).

use std::process::Command;

fn bootstrap() -> String {
    std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

#[test]
fn a_python_client_produces_and_consumes_through_the_local_broker() {
    let bootstrap = bootstrap();
    assert!(
        std::net::TcpStream::connect(&bootstrap).is_ok(),
        "no Kafka broker on {bootstrap}: start one with `scripts/kafka start` (scripts/test does)"
    );
    let topic = format!("p21-smoke-{}", uuid::Uuid::new_v4().simple());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/kafka_smoke.py");
    let out = Command::new("python3")
        .args([script, &bootstrap, &topic, "25"])
        .output()
        .expect("python3 with confluent-kafka");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok 25",
        "the smoke client failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}

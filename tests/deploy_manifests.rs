//! Every manifest in deploy/ passes real validators (see deploy/validate).

#[test]
fn deploy_manifests_are_valid() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/validate");
    let out = std::process::Command::new("bash").arg(script).output().expect("run deploy/validate");
    assert!(
        out.status.success(),
        "deploy/validate failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The repository speaks of itself only: no file points outside it, so a clone
//! has every document it refers to.

use std::process::Command;

#[test]
fn no_tracked_file_refers_to_a_path_outside_the_repository() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new("git").args(["-C", root, "ls-files", "-z"]).output().expect("git");
    assert!(out.status.success(), "git ls-files failed");
    let mut checked = 0;
    let mut offending = Vec::new();
    for path in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path).to_string();
        let Ok(text) = std::fs::read_to_string(format!("{root}/{path}")) else { continue };
        checked += 1;
        for (n, line) in text.lines().enumerate() {
            // A relative path that climbs out of the repository, or a section of a document it does not hold.
            let climbs = line.contains("](../") && !path.contains('/')
                || line.contains("../shared")
                || line.contains("DESIGN §")
                || line.contains("DESIGN.md");
            if climbs && path != "tests/repository.rs" {
                offending.push(format!("{path}:{}: {line}", n + 1));
            }
        }
    }
    assert!(checked > 50, "only {checked} files read");
    assert!(offending.is_empty(), "references outside the repository:\n{}", offending.join("\n"));
}

//! The workspace itself, held to the tidy rules and to `cargo machete` (no unused dependency).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

#[test]
fn the_workspace_keeps_the_tidy_rules() {
    let sources = tidy::workspace_sources(&workspace_root()).unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    });
    assert!(
        sources.len() > 50,
        "found only {} source files",
        sources.len()
    );
    let findings = tidy::check(&sources);
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        findings.is_empty(),
        "{} tidy findings:\n{}",
        findings.len(),
        report.join("\n")
    );
}

#[test]
fn every_declared_dependency_is_used() {
    // The binary itself, given the root: run as `cargo machete` from inside a test, it reads
    // the subcommand's name as the path to scan.
    let root = workspace_root();
    let output = Command::new("cargo-machete")
        .arg(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!("cargo-machete is not installed ({e}): ./scripts/test.sh installs it (cargo install cargo-machete --locked)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "cargo machete found dependencies that no code uses (remove them, or list a false positive under [package.metadata.cargo-machete] ignored with a reason):\n{text}"
    );
}

//! Keeps the workspace's declared `rust-version` true: no package in the
//! lock file may declare a newer minimum Rust than ours, or a build with the
//! Rust we name fails inside a dependency. Reads `cargo metadata` and names
//! each offender. Not offline: the lock file also holds crates for other
//! platforms (Android, Windows), which `cargo test` here never downloads and
//! `cargo metadata` wants, so on a fresh machine it fetches them.
//!
//! What it cannot see: a standard library API of ours newer than the
//! declared version; clippy's `incompatible_msrv` lint (on by default, and
//! run with `-D warnings`) covers that.

use std::process::Command;

use serde_json::Value;

/// "1.89" or "1.88.0" as comparable numbers (missing parts are 0).
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn declared_rust_version_covers_every_locked_dependency() {
    let ours = env!("CARGO_PKG_RUST_VERSION");
    assert!(!ours.is_empty(), "the workspace declares no rust-version");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    // Every package cargo resolved, whether or not it declares a minimum.
    assert!(packages.len() > 100, "only {} packages", packages.len());
    let mut newest = (0, 0, 0);
    let mut newer = Vec::new();
    for p in packages {
        let Some(needs) = p["rust_version"].as_str() else {
            continue;
        };
        newest = newest.max(version(needs));
        if version(needs) > version(ours) {
            let (name, at) = (p["name"].as_str(), p["version"].as_str());
            newer.push(format!(
                "{} {} needs Rust {needs}",
                name.unwrap_or("?"),
                at.unwrap_or("?")
            ));
        }
    }
    assert!(
        newer.is_empty(),
        "rust-version = \"{ours}\" in Cargo.toml is not true: {}",
        newer.join("; ")
    );
    // Declared above the newest minimum is allowed: our own code may need
    // a newer standard library (clippy's `incompatible_msrv` tells).
    assert!(
        newest > (1, 0, 0),
        "no locked package declares a rust-version"
    );
}

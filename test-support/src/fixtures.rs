//! The shared fixtures (`../shared/fixtures`, beside the repository): real
//! AWS attestation documents and real KMS responses, which cannot be
//! generated. They are not in the repository, so every test that reads them
//! follows one rule: when they are absent the test says so and skips, except
//! under `CI=true`, where it fails (CI must not pass by skipping).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `../shared/fixtures/<name>` (whether or not it exists).
pub fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(name)
}

/// Whether tests run under `CI=true` (fixtures are then required).
pub fn required() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The fixtures folder `name`, present when it holds the file `marker` (or,
/// with an empty `marker`, when it is a folder). `None` with a note on
/// stderr when it is absent; panics under `CI=true` instead.
pub fn dir(name: &str, marker: &str) -> Option<PathBuf> {
    let dir = path(name);
    let present = if marker.is_empty() {
        dir.is_dir()
    } else {
        dir.join(marker).is_file()
    };
    if present {
        return Some(dir);
    }
    assert!(
        !required(),
        "fixtures missing at {} (required under CI=true)",
        dir.display()
    );
    eprintln!("note: {} is absent; skipping", dir.display());
    None
}

/// The attestation fixtures (`attestation/`, with its `manifest.json`),
/// by [`dir`]'s rule.
pub fn attestation() -> Option<PathBuf> {
    dir("attestation", "manifest.json")
}

/// The CMS fixtures (`cms-kms/`: real `CiphertextForRecipient` values), by
/// [`dir`]'s rule.
pub fn cms_kms() -> Option<PathBuf> {
    dir("cms-kms", "")
}

/// The entries of `dir/manifest.json` (a JSON array of objects).
pub fn manifest(dir: &Path) -> Vec<Value> {
    let path = dir.join("manifest.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match manifest {
        Value::Array(entries) => entries,
        other => panic!("{}: not an array: {other}", path.display()),
    }
}

/// The manifest entry of `file` in `dir/manifest.json`.
pub fn manifest_entry(dir: &Path, file: &str) -> Value {
    manifest(dir)
        .into_iter()
        .find(|e| e["file"] == file)
        .unwrap_or_else(|| panic!("{file} is not in the manifest"))
}

/// The bytes of `dir/name`.
pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

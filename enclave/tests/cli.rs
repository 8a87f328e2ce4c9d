//! The `keybroker-enclave` binary as a workspace build makes it: there the
//! library has the `mock-nsm` feature (the harness enables it, and Cargo
//! unifies features), but the binary does not reach the mock NSM: only a
//! build with `--features dangerous-mock-nsm-cli` does (`cli_mock.rs`).
//! Features resolve the same way in a workspace `cargo build --release`.
#![cfg(not(feature = "dangerous-mock-nsm-cli"))]

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_keybroker-enclave");

#[test]
fn version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn refused(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no mock NSM"), "{what}: {err}");
    assert!(out.stdout.is_empty(), "{what}: {out:?}");
}

#[test]
fn the_workspace_binary_refuses_the_mock_nsm_and_the_mock_kms_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let run = |args: &[&str], env: Option<(&str, &std::path::Path)>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_remove("KEYBROKER_MOCK_NSM_CA");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let ca_str = ca.to_str().unwrap();
    refused(&run(&["mock-nsm", "pcr0"], None), "mock-nsm pcr0");
    refused(
        &run(&["mock-nsm", "init", "--dir", ca_str], None),
        "mock-nsm init",
    );
    assert!(!ca.exists(), "no CA was made");
    let gr = [
        "generate-random",
        "--mode",
        "broker",
        "--number-of-bytes",
        "8",
    ];
    let mut with_flag = gr.to_vec();
    with_flag.extend(["--mock-nsm-ca", ca_str]);
    refused(&run(&with_flag, None), "--mock-nsm-ca");
    refused(
        &run(&gr, Some(("KEYBROKER_MOCK_NSM_CA", &ca))),
        "KEYBROKER_MOCK_NSM_CA",
    );
    let mut kms_ca = gr.to_vec();
    kms_ca.extend(["--mock-kms-ca", "/nonexistent/ca.pem"]);
    refused(&run(&kms_ca, None), "--mock-kms-ca");
    // Without the mock, the real NSM is what it needs (there is none here).
    let out = run(&gr, None);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

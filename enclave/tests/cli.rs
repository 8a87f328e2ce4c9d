//! The `keybroker-enclave` binary: `--version`, `mock-nsm init|pcr0`, and
//! `demo` against the fake proxy with the mock NSM.

mod support;

use std::process::Command;
use std::time::Duration;

use keybroker_common::attestation::Verifier;
use keybroker_enclave::mock_nsm::{self, MockCa};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_keybroker-enclave");

#[test]
fn version_and_mock_nsm_tools() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["mock-nsm", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.trim(),
        dir.path()
            .join(mock_nsm::ROOT_CERT_PEM_FILE)
            .display()
            .to_string()
    );
    // The same root loads in this process.
    let ca = MockCa::load(dir.path()).unwrap();
    assert!(ca.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    let out = Command::new(BIN)
        .args(["mock-nsm", "pcr0"])
        .output()
        .unwrap();
    let expected = hex::encode(mock_nsm::default_pcr0_for(BIN.as_ref()).unwrap());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), expected);
    let out = Command::new(BIN)
        .args(["mock-nsm", "pcr0", "--binary", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_round_trips_a_file_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = MockCa::load_or_create(&ca_dir).unwrap();
    let verifier = Verifier::from_trusted_roots([ca.root_der()]).unwrap();
    let proxy = FakeProxy::tcp(kms_handler(verifier, Duration::ZERO)).await;
    let input = dir.path().join("input.txt");
    std::fs::write(&input, b"attack at dawn\n".repeat(1000)).unwrap();

    let out = tokio::process::Command::new(BIN)
        .arg("demo")
        .args(["--mode", "broker"])
        .args(["--proxy", &proxy.address.to_string(), "--key", "alias/demo"])
        .arg("--input")
        .arg(&input)
        .args(["--context", "purpose=demo"])
        .arg("--mock-nsm-ca")
        .arg(&ca_dir)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["file_roundtrip_ok"], true);
    assert_eq!(report["kms_calls"], 2);
    assert_eq!(report["nsm"], "mock");
    assert_eq!(report["input_bytes"], 15_000);
    // The envelope adds a header and per-frame tags to the 15,000 bytes.
    assert!(
        report["encrypted_file_bytes"].as_u64().unwrap() > 15_016,
        "{report}"
    );
    assert_eq!(report["encryption_context"]["purpose"], "demo");
    assert_eq!(
        report["pcr0"],
        hex::encode(mock_nsm::default_pcr0_for(BIN.as_ref()).unwrap())
    );
    assert!(
        report["timings_ms"]["generate_data_key_and_encrypt_file"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Requests went through the proxy with the encryption context.
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(s.request.recipient().is_some());
    }
    // No key material in the report: no string value looks like a 32-byte
    // key in hex or base64 (PCR0 is 48 bytes, 96 hex digits).
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    strings(&report, &mut all);
    assert!(
        all.iter().all(|s| s.len() != 64 && s.len() != 44),
        "{all:?}"
    );
}

#[test]
fn demo_without_a_proxy_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, b"x").unwrap();
    let out = Command::new(BIN)
        .args([
            "demo",
            "--mode",
            "broker",
            "--proxy",
            "tcp://127.0.0.1:1",
            "--key",
            "k",
            "--timeout-ms",
            "200",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--mock-nsm-ca")
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parent unavailable"), "{err}");
}

//! The `keybroker-enclave` binary built with `--features
//! dangerous-mock-nsm-cli` (the boot-test image's, and the only build whose
//! binary reaches the mock NSM): `mock-nsm init|pcr0`, `demo` against the
//! fake proxy with the mock NSM, and the e2e settings on the command line.
//! CI runs it with `cargo test -p keybroker-enclave --features
//! dangerous-mock-nsm-cli --test cli_mock`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use keybroker_common::attestation::Verifier;
use keybroker_enclave::mock_nsm::{self, MockCa};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_keybroker-enclave");

#[test]
fn mock_nsm_tools() {
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

fn run(args: &[&str], extra: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .args(extra)
        // The new settings have no environment variables: these are ignored.
        .env("KEYBROKER_MODE", "broker")
        .env("KEYBROKER_REGION", "us-east-1")
        .output()
        .unwrap()
}

#[test]
fn cli_mode_flags_and_config_file() {
    use clap::Parser as _;
    use keybroker_enclave::cli::{Cli, Command};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kms.toml");
    std::fs::write(
        &file,
        format!("mode = \"e2e\"\nregion = \"eu-west-1\"\nallow-key = [\"{ARN}\"]\n"),
    )
    .unwrap();
    let cli = Cli::try_parse_from([
        "keybroker-enclave",
        "generate-data-key",
        "--key-id",
        "alias/app",
        "--config",
        file.to_str().unwrap(),
        "--region",
        "us-east-1",
        "--kms-endpoint",
        "https://kms-fips.us-east-1.amazonaws.com",
        "--mock-kms-ca",
        "/x/ca.pem",
    ])
    .unwrap();
    let Command::GenerateDataKey(a) = cli.command else {
        panic!()
    };
    let settings = a.broker.kms_settings().unwrap();
    assert_eq!(
        settings.mode(),
        keybroker_enclave::Mode::E2e,
        "from the file"
    );
    assert_eq!(
        settings.region.as_deref(),
        Some("us-east-1"),
        "command line wins"
    );
    assert_eq!(settings.allow_key, [ARN]);
    assert_eq!(
        a.broker.mock_kms_ca.as_deref(),
        Some(std::path::Path::new("/x/ca.pem"))
    );

    // `--allow-key` repeats; the default mode is e2e.
    let cli = Cli::try_parse_from([
        "keybroker-enclave",
        "serve",
        "--allow-key",
        ARN,
        "--allow-key",
        "arn:aws:kms:us-east-1:111122223333:*",
    ])
    .unwrap();
    let Command::Serve(a) = cli.command else {
        panic!()
    };
    assert_eq!(a.broker.allow_key.len(), 2);
    assert_eq!(
        a.broker.kms_settings().unwrap().mode(),
        keybroker_enclave::Mode::E2e
    );
    assert!(Cli::try_parse_from(["keybroker-enclave", "serve", "--mode", "tunnel"]).is_err());

    // E2e without a region or allowed keys is a usage error (exit 2), and
    // environment variables do not supply them.
    let ca = dir.path().join("nsm");
    let out = run(
        &[
            "generate-data-key",
            "--key-id",
            "alias/app",
            "--mode",
            "e2e",
            "--mock-nsm-ca",
        ],
        &[ca.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--region"),
        "{out:?}"
    );
    // A complete e2e configuration from the file; the parent link reports
    // itself unavailable (exit 3) rather than falling back to broker mode.
    let out = run(
        &[
            "generate-data-key",
            "--key-id",
            "alias/app",
            "--timeout-ms",
            "300",
            "--config",
        ],
        &[
            file.as_os_str(),
            std::ffi::OsStr::new("--mock-nsm-ca"),
            ca.as_os_str(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // The e2e path: it asked the parent for credentials (broker mode would
    // have connected for typed requests instead).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("credentials from the parent"),
        "{out:?}"
    );
}

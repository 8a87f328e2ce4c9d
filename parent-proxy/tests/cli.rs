//! Runs the built `keybroker-proxy` binary on genuine attestation documents
//! from `../shared/fixtures/attestation`.

// Test helpers outside `#[test]` functions may fail loudly.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Output;

use keybroker_test_support::fixtures;
use keybroker_test_support::process::run_with_stdin;

const BIN: &str = env!("CARGO_BIN_EXE_keybroker-proxy");
/// `nitro-attest_attestation.cbor`: its `timestamp_ms` in the manifest.
const NITRO_ATTEST_TS: u64 = 1_736_179_625_472;

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_with_stdin(BIN, args, stdin.unwrap_or_default())
}

#[test]
fn valid_at_its_timestamp_prints_a_summary() {
    let Some(dir) = fixtures::attestation() else {
        return;
    };
    let file = dir.join("nitro-attest_attestation.cbor");
    let entry = fixtures::manifest_entry(&dir, "nitro-attest_attestation.cbor");
    assert_eq!(entry["timestamp_ms"].as_u64(), Some(NITRO_ATTEST_TS));

    let at = NITRO_ATTEST_TS.to_string();
    let out = run(
        &["attestation", "verify", "--at", &at, file.to_str().unwrap()],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["module_id"], entry["module_id"]);
    assert_eq!(json["digest"], "SHA384");
    assert_eq!(json["timestamp_ms"], NITRO_ATTEST_TS);
    assert_eq!(json["timestamp"], "2025-01-06T16:07:05.472Z");
    assert_eq!(json["pcrs"]["0"], entry["pcr0"]);
    assert_eq!(json["pcrs"].as_object().unwrap().len(), 16);
    assert_eq!(
        json["public_key"],
        "RSA-2048 SubjectPublicKeyInfo (294 bytes)"
    );
    assert_eq!(json["user_data_len"], serde_json::Value::Null);
    assert_eq!(json["nonce_len"], serde_json::Value::Null);
    let chain = json["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 5);
    assert!(chain[4].as_str().unwrap().contains("CN=aws.nitro-enclaves"));
}

#[test]
fn expired_now_exits_1() {
    let Some(dir) = fixtures::attestation() else {
        return;
    };
    let file = dir.join("nitro-attest_attestation.cbor");
    let out = run(&["attestation", "verify", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("invalid: "), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn base64_on_stdin_rfc3339_time_and_pem_root() {
    let Some(dir) = fixtures::attestation() else {
        return;
    };
    let raw = std::fs::read(dir.join("blocky-nitrite_nitro_attestation.cbor")).unwrap();
    let b64 = base64_lines(&raw);
    let root = dir.join("aws_nitro_root_g1.pem");
    let out = run(
        &[
            "attestation",
            "verify",
            "--root",
            root.to_str().unwrap(),
            "--at",
            "2024-09-07T14:37:39.545Z",
            "-",
        ],
        Some(b64.as_bytes()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["public_key"], "opaque (1024 bytes)");
    assert_eq!(json["user_data_len"], 1024);
    assert_eq!(json["nonce_len"], 1024);
}

#[test]
fn bad_signature_exits_1_and_usage_errors_exit_2() {
    let Some(dir) = fixtures::attestation() else {
        return;
    };
    let file = dir.join("eternis_invalid_attestation_BADSIG.cbor");
    let out = run(
        &[
            "attestation",
            "verify",
            "--at",
            "1721770180771",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("COSE signature does not verify"));

    let out = run(&["attestation", "verify", "/nonexistent/doc.cbor"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &[
            "attestation",
            "verify",
            "--root",
            "/nonexistent/root.pem",
            "-",
        ],
        Some(b""),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["attestation", "frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
}

/// Standard base64 with 76-character lines, as `base64` prints it.
fn base64_lines(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out.as_bytes()
        .chunks(76)
        .map(|l| String::from_utf8(l.to_vec()).unwrap() + "\n")
        .collect()
}

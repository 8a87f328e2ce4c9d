//! `keybroker-proxy policy` as a process: flags or nitro-cli JSON in, a KMS
//! key policy out, exit 0; bad input exits 2 with a reason and writes
//! nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::Output;

use keybroker_test_support::process::run_with_stdin;

const BIN: &str = env!("CARGO_BIN_EXE_keybroker-proxy");
const ROLE: &str = "arn:aws:iam::111122223333:role/keybroker-parent";
const ADMIN: &str = "arn:aws:iam::111122223333:role/KeyAdmins";

fn pcr(byte: u8) -> String {
    hex::encode([byte; 48])
}

fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(BIN, args, stdin)
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("policy_cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `nitro-cli describe-eif`-shaped output (written for these tests; PCR
/// values made up).
fn describe_eif(p0: u8, p1: u8, p2: u8) -> String {
    serde_json::json!({
        "EifVersion": 4,
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": pcr(p0), "PCR1": pcr(p1), "PCR2": pcr(p2)
        },
        "IsSigned": false,
        "CheckCRC": true,
        "ImageName": "keybroker-enclave",
        "ImageVersion": "0.1.0"
    })
    .to_string()
}

fn statement<'a>(policy: &'a serde_json::Value, sid: &str) -> &'a serde_json::Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid} in {policy:#}"))
}

#[test]
fn flags_write_the_policy_to_stdout() {
    let upper = pcr(0xab).to_uppercase();
    let p1 = pcr(0x01);
    let out = run(
        &[
            "policy",
            "--principal",
            ROLE,
            "--pcr0",
            &upper,
            "--pcr1",
            &p1,
            "--key-admin",
            ADMIN,
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "no warnings with a named administrator");
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let allow = statement(&policy, "PlaintextOnlyToAttestedEnclaveImage1");
    assert_eq!(allow["Principal"]["AWS"], ROLE);
    assert_eq!(
        allow["Condition"]["StringEqualsIgnoreCase"],
        serde_json::json!({
            "kms:RecipientAttestation:ImageSha384": pcr(0xab),
            "kms:RecipientAttestation:PCR1": p1,
        })
    );
    let deny = statement(&policy, "DenyParentPlaintextUnlessAttestedImage");
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(
        deny["Condition"]["StringNotEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"],
        pcr(0xab)
    );
    let admin = statement(&policy, "KeyAdministratorsManageTheKeyButCannotUseIt");
    assert_eq!(admin["Principal"]["AWS"], ADMIN);
}

#[test]
fn pcrs_json_files_admit_one_image_each_and_output_goes_to_a_file() {
    let dir = scratch("files");
    let old = dir.join("old.json");
    let new = dir.join("new.json");
    std::fs::write(&old, describe_eif(0x10, 0x11, 0x12)).unwrap();
    // As captured from `nitro-cli build-enclave ... 2>&1`.
    std::fs::write(
        &new,
        format!(
            "Start building the Enclave Image...\nEnclave Image successfully created.\n{}\n",
            serde_json::json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }",
                "PCR0": pcr(0x20), "PCR1": pcr(0x11), "PCR2": pcr(0x22)}})
        ),
    )
    .unwrap();
    let output = dir.join("policy.json");
    let out = run(
        &[
            "policy",
            "--principal",
            ROLE,
            "--key-admin",
            ADMIN,
            "--pcrs-json",
            old.to_str().unwrap(),
            "--pcrs-json",
            new.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let policy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let first = statement(&policy, "PlaintextOnlyToAttestedEnclaveImage1");
    let second = statement(&policy, "PlaintextOnlyToAttestedEnclaveImage2");
    let cond = |s: &serde_json::Value, key: &str| {
        s["Condition"]["StringEqualsIgnoreCase"][key]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        cond(first, "kms:RecipientAttestation:ImageSha384"),
        pcr(0x10)
    );
    assert_eq!(cond(first, "kms:RecipientAttestation:PCR2"), pcr(0x12));
    assert_eq!(
        cond(second, "kms:RecipientAttestation:ImageSha384"),
        pcr(0x20)
    );
    assert_eq!(cond(second, "kms:RecipientAttestation:PCR2"), pcr(0x22));
    let deny = statement(&policy, "DenyParentPlaintextUnlessAttestedImage");
    assert_eq!(
        deny["Condition"]["StringNotEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"],
        serde_json::json!([pcr(0x10), pcr(0x20)])
    );
}

#[test]
fn pcrs_json_from_stdin_and_warnings_on_stderr() {
    let out = run(
        &["policy", "--principal", ROLE, "--pcrs-json", "-"],
        describe_eif(0x30, 0x31, 0x32).as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: no --key-admin: arn:aws:iam::111122223333:root administers"),
        "{stderr}"
    );
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = statement(&policy, "KeyAdministratorsManageTheKeyButCannotUseIt");
    assert_eq!(admin["Principal"]["AWS"], "arn:aws:iam::111122223333:root");
}

#[test]
fn usage_and_invalid_input_exit_2_and_write_nothing() {
    let dir = scratch("invalid");
    let output = dir.join("policy.json");
    let out_path = output.to_str().unwrap();
    let zeros = pcr(0);
    let good = pcr(0x42);
    let short = "ab".repeat(47);
    let json = dir.join("m.json");
    std::fs::write(&json, describe_eif(1, 2, 3)).unwrap();
    let json_path = json.to_str().unwrap();
    let session = "arn:aws:sts::111122223333:assumed-role/keybroker-parent/i-0123456789abcdef0";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["policy", "--pcr0", &good], "--principal"),
        (vec!["policy", "--principal", ROLE], "--pcr0"),
        (
            vec![
                "policy",
                "--principal",
                ROLE,
                "--pcr0",
                &good,
                "--pcrs-json",
                json_path,
            ],
            "cannot be used with",
        ),
        (
            vec!["policy", "--principal", ROLE, "--pcr1", &good],
            "--pcr0",
        ),
        (
            vec!["policy", "--principal", ROLE, "--pcr0", &short],
            "error: key policy: PCR0 is 47 bytes",
        ),
        (
            vec!["policy", "--principal", ROLE, "--pcr0", &zeros],
            "debug-mode",
        ),
        (
            vec![
                "policy",
                "--principal",
                ROLE,
                "--pcr0",
                &good,
                "--pcr8",
                &zeros,
            ],
            "PCR8 is all zeros",
        ),
        (
            vec!["policy", "--principal", session, "--pcr0", &good],
            "arn:aws:iam::111122223333:role/keybroker-parent",
        ),
        (
            vec![
                "policy",
                "--principal",
                ROLE,
                "--pcr0",
                &good,
                "--key-admin",
                ROLE,
            ],
            "cannot also administer",
        ),
        (
            vec![
                "policy",
                "--principal",
                ROLE,
                "--pcrs-json",
                "/nonexistent/measurements.json",
            ],
            "/nonexistent/measurements.json",
        ),
        (
            vec![
                "policy",
                "--principal",
                ROLE,
                "--pcrs-json",
                "-",
                "--pcrs-json",
                "-",
            ],
            "given twice",
        ),
    ];
    for (mut args, needle) in cases {
        args.extend(["--output", out_path]);
        let out = run(&args, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!output.exists(), "{args:?} wrote {}", output.display());
    }
    // An unwritable output is an error too.
    let out = run(
        &[
            "policy",
            "--principal",
            ROLE,
            "--pcr0",
            &good,
            "--output",
            "/nonexistent/dir/policy.json",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir/policy.json"));
}

/// The command is `key-policy`; `policy`, its old name (README, deploy
/// guides), is an alias: both write the same document.
#[test]
fn key_policy_and_policy_are_one_command() {
    let good = pcr(0xA0);
    let args = |command: &'static str| -> Vec<String> {
        [
            command,
            "--principal",
            ROLE,
            "--pcr0",
            &good,
            "--key-admin",
            ADMIN,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let new = args("key-policy");
    let old = args("policy");
    let new = run(&new.iter().map(String::as_str).collect::<Vec<_>>(), b"");
    let old = run(&old.iter().map(String::as_str).collect::<Vec<_>>(), b"");
    assert_eq!(
        new.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    assert_eq!(
        old.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    assert!(!new.stdout.is_empty());
    assert_eq!(new.stdout, old.stdout);
}

//! State (`--state`) and seed (`--seed`) files, in process and through the
//! `keybroker-mock-kms` binary across process restarts.
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::BufRead as _;
use std::path::Path;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyState};
use base64::Engine as _;
use keybroker_harness::mock_kms::{MockKms, MockKmsConfig};
use support::{client, created, expect_code, start};

const SEED_ID: &str = "11111111-2222-4333-8444-555555555555";

fn write_seed(path: &Path) {
    let seed = serde_json::json!({"keys": [{
        "key_id": SEED_ID,
        "material": base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]),
        "description": "seeded",
        "aliases": ["alias/seeded"]
    }]});
    std::fs::write(path, seed.to_string()).unwrap();
}

#[tokio::test]
async fn state_file_keeps_keys_aliases_policies_and_states_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("kms-state.json");
    let config = MockKmsConfig {
        state_file: Some(state.clone()),
        ..MockKmsConfig::default()
    };
    let (kms, c) = start(config.clone()).await;
    let id = created(c.create_key()).await.key_id;
    let other = created(c.create_key()).await.key_id;
    c.create_alias()
        .alias_name("alias/kept")
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Sid": "kept",
        "Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    c.put_key_policy()
        .key_id(&id)
        .policy(&policy)
        .send()
        .await
        .unwrap();
    c.disable_key().key_id(&other).send().await.unwrap();
    let ct = c
        .encrypt()
        .key_id("alias/kept")
        .plaintext(Blob::new(b"survives restarts".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    drop(c);
    kms.shutdown().await;

    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.contains("\"material\""),
        "state file holds the key material"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let (_kms2, c2) = start(config).await;
    let d = c2.decrypt().ciphertext_blob(ct).send().await.unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref(), b"survives restarts");
    assert_eq!(
        c2.describe_key()
            .key_id("alias/kept")
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .key_id,
        id
    );
    assert_eq!(
        c2.get_key_policy()
            .key_id(&id)
            .send()
            .await
            .unwrap()
            .policy(),
        Some(policy.as_str())
    );
    assert_eq!(
        c2.describe_key()
            .key_id(&other)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .key_state,
        Some(KeyState::Disabled)
    );
}

#[tokio::test]
async fn seed_file_creates_keys_with_fixed_ids_and_material_on_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    write_seed(&seed);
    let config = MockKmsConfig {
        seed_file: Some(seed),
        ..MockKmsConfig::default()
    };
    let (_a, ca) = start(config.clone()).await;
    let (_b, cb) = start(config).await;
    let md = ca
        .describe_key()
        .key_id("alias/seeded")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(md.key_id(), SEED_ID);
    assert_eq!(md.description(), Some("seeded"));
    // A ciphertext from one instance decrypts on the other: same material.
    let r = ca
        .generate_data_key()
        .key_id(SEED_ID)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    let d = cb
        .decrypt()
        .ciphertext_blob(r.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.plaintext().unwrap().as_ref(),
        r.plaintext().unwrap().as_ref()
    );
}

#[test]
fn corrupt_state_or_seed_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{ not json").unwrap();
    let e = MockKms::new(MockKmsConfig {
        state_file: Some(state),
        ..MockKmsConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, keybroker_harness::Error::State(_)), "{e:?}");
    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, r#"{"keys": [{"key_id": "x", "material": "AA=="}]}"#).unwrap();
    let e = MockKms::new(MockKmsConfig {
        seed_file: Some(seed),
        ..MockKmsConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, keybroker_harness::Error::Seed(_)), "{e:?}");
}

/// The binary, started as a process; killed (by its own handle) on drop.
struct Proc(std::process::Child, String);

impl Proc {
    fn start(args: &[&std::ffi::OsStr]) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker-mock-kms"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
        Proc(child, endpoint)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_address_and_keeps_state_across_process_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let seed = dir.path().join("seed.json");
    write_seed(&seed);
    let args = [
        std::ffi::OsStr::new("--state"),
        state.as_os_str(),
        std::ffi::OsStr::new("--seed"),
        seed.as_os_str(),
    ];
    let first = Proc::start(&args);
    let c = client(&first.1);
    let id = created(c.create_key().description("made at runtime"))
        .await
        .key_id;
    let ct = c
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"process restart".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    drop(c);
    drop(first);

    let second = Proc::start(&args);
    let c = client(&second.1);
    let d = c.decrypt().ciphertext_blob(ct).send().await.unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref(), b"process restart");
    c.describe_key()
        .key_id("alias/seeded")
        .send()
        .await
        .unwrap();
    let keys = c.list_keys().send().await.unwrap();
    assert_eq!(
        keys.keys().len(),
        2,
        "seeded key plus the runtime key, no duplicates"
    );
    expect_code(
        c.describe_key().key_id("alias/nothing").send().await,
        "NotFoundException",
    );
}

#[test]
fn binary_refuses_a_bad_attestation_root_file() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("root.pem");
    std::fs::write(&pem, "no certificate here").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker-mock-kms"))
        .args(["--listen", "127.0.0.1:0", "--attestation-root"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CERTIFICATE"));
}

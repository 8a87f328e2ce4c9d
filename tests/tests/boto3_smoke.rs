//! Runs `tests/python/boto3_smoke.py` (the common KMS calls from Python's
//! boto3) against an in-process mock KMS.
//!
//! Skipped with a note when python3 or boto3 is missing; under `CI=true` a
//! python3 without boto3 fails the test (CI installs boto3).
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use keybroker_harness::mock_kms::MockKmsConfig;

fn python_has_boto3() -> Option<bool> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .output()
        .ok()?;
    Some(out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_smoke_script_passes_against_the_mock() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    match python_has_boto3() {
        None => {
            eprintln!("note: python3 not found; skipping the boto3 smoke test");
            return;
        }
        Some(false) => {
            assert!(
                !ci,
                "python3 is present but cannot import boto3 (CI must pip install boto3)"
            );
            eprintln!("note: boto3 is not installed; skipping the boto3 smoke test");
            return;
        }
        Some(true) => {}
    }
    let running = keybroker_harness::mock_kms::MockKms::new(MockKmsConfig::default())
        .unwrap()
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = running.endpoint();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/boto3_smoke.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(&endpoint)
            // Keep the developer's AWS configuration out of the test.
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_KMS")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 smoke test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("8 checks passed, 0 failed"), "{stdout}");
    running.shutdown().await;
}

//! Runs `tests/python/boto3_smoke.py` (the common KMS calls from Python's
//! boto3) and `tests/python/boto3_asymmetric.py` (asymmetric keys,
//! `DeriveSharedSecret`, RSA-OAEP) against an in-process mock KMS.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_smoke_script_passes_against_the_mock() {
    let running = keybroker_harness::mock_kms::MockKms::new(MockKmsConfig::default())
        .unwrap()
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let Some(out) = support::run_boto3_script("boto3_smoke.py", vec![running.endpoint()]).await
    else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 smoke test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("8 checks passed, 0 failed"), "{stdout}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_asymmetric_script_passes_against_the_mock() {
    let running = keybroker_harness::mock_kms::MockKms::new(MockKmsConfig::default())
        .unwrap()
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    // The caller's ECDH and RSA-OAEP: the `cryptography` package when
    // python has it, and the openssl CLI (which CI always has) in any case.
    for extra in [None, Some("--openssl")] {
        let mut args = vec![running.endpoint()];
        args.extend(extra.map(str::to_owned));
        let Some(out) = support::run_boto3_script("boto3_asymmetric.py", args).await else {
            return;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "boto3 asymmetric test ({extra:?}) failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("5 checks passed, 0 failed"), "{stdout}");
        if extra.is_some() {
            assert!(stdout.contains("caller-side crypto: openssl"), "{stdout}");
        }
    }
    running.shutdown().await;
}

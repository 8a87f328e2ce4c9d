//! Shared helpers for the mock KMS integration tests: start a mock in
//! process, build a real `aws-sdk-kms` client for it, make attestation
//! documents signed by a test CA, speak raw HTTP.
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use keybroker_common::UnixMillis;
use keybroker_harness::mock_kms::{MockKms, MockKmsConfig, RunningMockKms};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub const ACCOUNT: &str = "111122223333";
pub const ROOT_PRINCIPAL: &str = "arn:aws:iam::111122223333:root";

/// The SDK client and error-code assertions, from their one home in
/// `keybroker-test-support` (starting the mock stays here: test-support
/// cannot depend on this crate).
#[allow(unused_imports)] // each test file uses some of them
pub use keybroker_test_support::sdk::{client, code_of, created, expect_code};

/// Starts a mock on 127.0.0.1:0.
pub async fn spawn(config: MockKmsConfig) -> RunningMockKms {
    MockKms::new(config)
        .unwrap()
        .spawn("127.0.0.1:0")
        .await
        .unwrap()
}

/// Starts a mock on 127.0.0.1:0 and returns it with a client.
pub async fn start(config: MockKmsConfig) -> (RunningMockKms, aws_sdk_kms::Client) {
    let running = spawn(config).await;
    let c = client(&running.endpoint());
    (running, c)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    keybroker_test_support::now().0
}

/// The test attestation PKI (root -> intermediate -> leaf, P-384), from
/// its one home in `keybroker-test-support`.
#[allow(unused_imports)] // each test file uses some of them
pub use keybroker_test_support::pki::{TestPki, pcrs};

/// A new test PKI.
pub fn test_pki() -> TestPki {
    TestPki::new()
}

/// A signed attestation document from `pki` carrying `public_key`.
pub fn attestation(
    pki: &TestPki,
    pcrs: BTreeMap<u8, Vec<u8>>,
    public_key: Option<Vec<u8>>,
    timestamp_ms: u64,
) -> Vec<u8> {
    pki.document(pcrs, public_key, UnixMillis(timestamp_ms))
}

/// A `Recipient` carrying the attestation document `doc` (RSAES-OAEP-SHA256,
/// the one algorithm KMS offers).
pub fn recipient(doc: Vec<u8>) -> aws_sdk_kms::types::RecipientInfo {
    aws_sdk_kms::types::RecipientInfo::builder()
        .key_encryption_algorithm(aws_sdk_kms::types::KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(aws_sdk_kms::primitives::Blob::new(doc))
        .build()
}

/// An attested enclave: documents from `pki` carrying the public half of
/// its RSA recipient key.
pub struct Enclave {
    pub pki: TestPki,
    pub key: keybroker_common::cms::RecipientPrivateKey,
}

impl Enclave {
    /// An enclave with a new 2048-bit recipient key.
    pub fn new(pki: TestPki) -> Self {
        Self {
            pki,
            key: keybroker_common::cms::RecipientPrivateKey::generate_2048().unwrap(),
        }
    }

    /// A document made now, with PCR0 = `pcr0` and the recipient key.
    pub fn doc(&self, pcr0: [u8; 48]) -> Vec<u8> {
        attestation(
            &self.pki,
            pcrs(pcr0),
            Some(self.key.public_key_spki_der()),
            now_ms(),
        )
    }
}

/// A config trusting `pki`'s root (through the PEM path, as the CLI does).
pub fn config_trusting(pki: &TestPki) -> MockKmsConfig {
    let mut c = MockKmsConfig::default();
    c.add_attestation_roots_pem(&pki.root_pem).unwrap();
    c
}

/// A raw HTTP/1.1 exchange over TCP; returns (status, body).
pub async fn raw_http(
    addr: std::net::SocketAddr,
    request_head: &str,
    body: &[u8],
) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw_http_on(s, &addr.to_string(), request_head, body).await
}

/// A raw HTTP/1.1 exchange on a connected stream (TCP or Unix socket);
/// returns (status, body).
pub async fn raw_http_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    request_head: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!(
        "{request_head}\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and stop reading) before an oversized body is
    // fully sent: keep whatever response arrived.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs the Python script `tests/python/<script>` with `args` and a clean
/// AWS environment, and returns its output; `None` (with a note) when
/// python3 or boto3 is missing. Under `CI=true` a python3 without boto3
/// fails the test (CI installs boto3).
pub async fn run_boto3_script(script: &str, args: Vec<String>) -> Option<std::process::Output> {
    let has_boto3 = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .output()
        .ok()
        .map(|o| o.status.success());
    match has_boto3 {
        None => {
            eprintln!("note: python3 not found; skipping {script}");
            return None;
        }
        Some(false) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 is present but cannot import boto3 (CI must pip install boto3)"
            );
            eprintln!("note: boto3 is not installed; skipping {script}");
            return None;
        }
        Some(true) => {}
    }
    let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(path)
            .args(args)
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
    Some(out)
}

/// A KMS JSON request head for `op` with a (fake) SigV4 header.
pub fn kms_head(op: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.{op}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIAMOCK/20240101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00"
    )
}

//! A real `aws-sdk-kms` client for a test endpoint (the mock KMS, a fake
//! KMS, the enclave's KMS-compatible endpoint), and assertions on the KMS
//! error codes it reports.
//!
//! Starting the mock KMS itself stays with the harness's tests
//! (`tests/tests/support`): this crate must not depend on the harness,
//! whose tests depend on this crate.

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::operation::create_key::builders::CreateKeyFluentBuilder;
use aws_sdk_kms::types::KeyMetadata;

/// The region of every test client.
pub const REGION: &str = "us-east-1";

/// Static credentials (`access_key_id`, `secret`, session `token`),
/// named `provider` in the SDK's logs.
pub fn credentials(
    access_key_id: &str,
    secret: &str,
    token: Option<&str>,
    provider: &'static str,
) -> Credentials {
    Credentials::new(
        access_key_id,
        secret,
        token.map(str::to_owned),
        None,
        provider,
    )
}

/// An SDK configuration for `endpoint` with `credentials`, region
/// [`REGION`] and the latest behaviour version; the caller adds what its
/// test needs (retries, timeouts, an HTTPS client) and builds it.
pub fn config(endpoint: &str, credentials: Credentials) -> aws_sdk_kms::config::Builder {
    aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
}

/// A client for `endpoint` with the harness's static test credentials
/// (the mock KMS does not verify signatures unless configured to).
pub fn client(endpoint: &str) -> aws_sdk_kms::Client {
    let creds = credentials(
        "AKIAMOCKKMSTEST00000",
        "mock-kms-test-secret",
        None,
        "keybroker-harness-tests",
    );
    aws_sdk_kms::Client::from_conf(config(endpoint, creds).build())
}

/// The KMS error code and message of an SDK error.
pub fn code_of<E: ProvideErrorMetadata>(e: &E) -> (String, String) {
    (
        e.code().unwrap_or("<no code>").to_owned(),
        e.message().unwrap_or("").to_owned(),
    )
}

/// The KMS error code and message of a call that must fail.
#[track_caller]
pub fn error_of<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, E>,
) -> (String, String) {
    code_of(&r.expect_err("expected an error"))
}

/// Asserts the error code of a failed SDK call and returns its message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, E>,
    code: &str,
) -> String {
    match r {
        Ok(v) => panic!("expected {code}, got success: {v:?}"),
        Err(e) => {
            let (c, m) = code_of(&e);
            assert_eq!(c, code, "unexpected error: {e:?}");
            m
        }
    }
}

/// Sends a CreateKey (`c.create_key()` with the caller's settings) and
/// returns the new key's metadata.
pub async fn created(request: CreateKeyFluentBuilder) -> KeyMetadata {
    request.send().await.unwrap().key_metadata.unwrap()
}

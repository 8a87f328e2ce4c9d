//! The in-enclave KMS-compatible endpoint (`keybroker_enclave::endpoint`)
//! with the whole stack in process (mock NSM, enclave client, parent proxy,
//! mock KMS): a stock `aws-sdk-kms` client and boto3, pointed at the
//! endpoint, perform each operation and get plaintext; errors keep KMS's
//! `__type` and status; unsigned requests, the Unix socket and the
//! loopback-only rule.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeyPairSpec, DataKeySpec};
use keybroker_enclave::endpoint::{self, KmsEndpoint};
use keybroker_enclave::{Client, Error};
use keybroker_harness::testkit::{ALIAS, InProcessStack, spawn_kms_endpoint};
use support::{expect_code, raw_http, raw_http_on};

/// Serves `client` on a fresh loopback port; returns the endpoint URL's
/// socket address.
async fn serve(client: Client) -> SocketAddr {
    serve_endpoint(KmsEndpoint::new(client)).await
}

async fn serve_endpoint(endpoint: KmsEndpoint) -> SocketAddr {
    spawn_kms_endpoint(endpoint).await.unwrap()
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Status of an SDK error's HTTP response.
fn status_of<E>(
    e: &aws_sdk_kms::error::SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_sdk_kms_performs_each_operation_through_the_enclave() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let sdk = support::client(&url(serve(stack.client.clone()).await));
    let arn = stack.key_arn.as_str();

    // GenerateDataKey: Plaintext, decrypted in the enclave; no
    // CiphertextForRecipient, as KMS answers a call without Recipient.
    let key = sdk
        .generate_data_key()
        .key_id(ALIAS)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("tenant", "t1")
        .send()
        .await
        .unwrap();
    assert_eq!(key.key_id(), Some(arn));
    assert_eq!(key.plaintext().unwrap().as_ref().len(), 32);
    assert!(key.ciphertext_for_recipient().is_none());

    // Decrypt gives the same key back, only with the same context.
    let dec = sdk
        .decrypt()
        .ciphertext_blob(key.ciphertext_blob().unwrap().clone())
        .encryption_context("tenant", "t1")
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext(), key.plaintext());
    assert_eq!(dec.key_id(), Some(arn));
    let wrong = sdk
        .decrypt()
        .ciphertext_blob(key.ciphertext_blob().unwrap().clone())
        .encryption_context("tenant", "t2")
        .send()
        .await;
    let err = wrong.as_ref().err().unwrap();
    assert_eq!(status_of(err), Some(400));
    expect_code(wrong, "InvalidCiphertextException");

    // NumberOfBytes.
    let n = sdk
        .generate_data_key()
        .key_id(arn)
        .number_of_bytes(17)
        .send()
        .await
        .unwrap();
    assert_eq!(n.plaintext().unwrap().as_ref().len(), 17);

    // GenerateDataKeyPair: PrivateKeyPlaintext (PKCS#8 DER), which Decrypt
    // of the private key ciphertext reproduces.
    for spec in [
        DataKeyPairSpec::Rsa2048,
        DataKeyPairSpec::EccNistP256,
        DataKeyPairSpec::EccNistP384,
        DataKeyPairSpec::EccNistEdwards25519,
    ] {
        let pair = sdk
            .generate_data_key_pair()
            .key_id(arn)
            .key_pair_spec(spec.clone())
            .send()
            .await
            .unwrap();
        let private = pair.private_key_plaintext().unwrap().as_ref();
        assert_eq!(private.first(), Some(&0x30), "{spec:?}");
        assert_eq!(pair.key_pair_spec(), Some(&spec));
        let again = sdk
            .decrypt()
            .ciphertext_blob(pair.private_key_ciphertext_blob().unwrap().clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.plaintext().unwrap().as_ref(), private, "{spec:?}");
    }

    // GenerateRandom.
    let random = sdk
        .generate_random()
        .number_of_bytes(64)
        .send()
        .await
        .unwrap();
    assert_eq!(random.plaintext().unwrap().as_ref().len(), 64);

    // The without-plaintext operations and DescribeKey are relayed.
    let w = sdk
        .generate_data_key_without_plaintext()
        .key_id(arn)
        .key_spec(DataKeySpec::Aes128)
        .send()
        .await
        .unwrap();
    assert!(w.ciphertext_blob().is_some());
    let wp = sdk
        .generate_data_key_pair_without_plaintext()
        .key_id(arn)
        .key_pair_spec(DataKeyPairSpec::EccNistP256)
        .send()
        .await
        .unwrap();
    assert!(wp.public_key().is_some() && wp.private_key_ciphertext_blob().is_some());
    let described = sdk.describe_key().key_id(ALIAS).send().await.unwrap();
    assert_eq!(described.key_metadata().unwrap().arn(), Some(arn));

    // KMS errors keep their code and status.
    let missing = sdk
        .generate_data_key()
        .key_id("alias/missing")
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await;
    assert_eq!(status_of(missing.as_ref().err().unwrap()), Some(400));
    expect_code(missing, "NotFoundException");

    // Encrypt would carry plaintext through the parent: refused, with why.
    let encrypt = sdk
        .encrypt()
        .key_id(arn)
        .plaintext(Blob::new(b"secret".to_vec()))
        .send()
        .await;
    assert_eq!(status_of(encrypt.as_ref().err().unwrap()), Some(400));
    let msg = expect_code(encrypt, "UnsupportedOperationException");
    assert!(msg.contains("untrusted parent"), "{msg}");
    expect_code(
        sdk.list_keys().send().await,
        "UnsupportedOperationException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enclave_outside_the_key_policy_gets_access_denied() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let other = stack.client_with_pcr0([0x5A; 48]).await.unwrap();
    let sdk = support::client(&url(serve(other).await));
    let denied = sdk
        .generate_data_key()
        .key_id(ALIAS)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await;
    assert_eq!(status_of(denied.as_ref().err().unwrap()), Some(400));
    expect_code(denied, "AccessDeniedException");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_requests_work_and_bad_requests_get_kms_errors() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let addr = serve_endpoint(KmsEndpoint::with_max_body_bytes(stack.client.clone(), 4096)).await;
    let head = |op: &str| {
        format!(
            "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.{op}"
        )
    };

    // No Authorization header: the enclave is the trust boundary.
    let body = format!(r#"{{"KeyId":"{ALIAS}","KeySpec":"AES_256"}}"#);
    let (status, text) = raw_http(addr, &head("GenerateDataKey"), body.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["KeyId"], stack.key_arn.as_str());
    assert_eq!(v["Plaintext"].as_str().unwrap().len(), 44, "{v}");
    assert!(v.get("CiphertextForRecipient").is_none());

    let cases: [(&str, &[u8], u16, &str); 5] = [
        (
            "GenerateDataKey",
            b"{\"KeyId\": 7}",
            400,
            "SerializationException",
        ),
        (
            "GenerateDataKey",
            b"not json",
            400,
            "SerializationException",
        ),
        ("Sign", b"{}", 400, "UnsupportedOperationException"),
        ("GenerateRandom", &[b' '; 5000], 400, "ValidationException"),
        (
            "GenerateDataKey",
            br#"{"KeyId":"alias/none","KeySpec":"AES_256"}"#,
            400,
            "NotFoundException",
        ),
    ];
    for (op, body, want_status, want_type) in cases {
        let (status, text) = raw_http(addr, &head(op), body).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (status, v["__type"].as_str()),
            (want_status, Some(want_type)),
            "{op}: {text}"
        );
    }
    let (status, text) = raw_http(addr, "GET / HTTP/1.1", b"").await;
    assert_eq!(status, 400);
    assert!(text.contains("UnknownOperationException"), "{text}");
    let (status, text) = raw_http(
        addr,
        "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1",
        b"{}",
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("UnknownOperationException"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_proxy_is_a_retryable_503() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let client = stack.client.with_timeout(Duration::from_millis(300));
    let addr = serve(client).await;
    stack.proxy.shutdown_and_wait().await.unwrap();
    let (status, text) = raw_http(
        addr,
        "POST / HTTP/1.1\r\nX-Amz-Target: TrentService.GenerateRandom",
        br#"{"NumberOfBytes":16}"#,
    )
    .await;
    assert_eq!(status, 503, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["__type"], "DependencyTimeoutException", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_on_a_unix_socket_and_refuses_non_loopback_tcp() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.sock");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listener = endpoint::bind_unix(&path).unwrap();
    let ep = KmsEndpoint::new(stack.client.clone());
    tokio::spawn(async move { ep.serve_unix(listener, std::future::pending()).await });
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (status, text) = raw_http_on(
        stream,
        "localhost",
        "POST / HTTP/1.1\r\nX-Amz-Target: TrentService.GenerateRandom",
        br#"{"NumberOfBytes":16}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"Plaintext\""), "{text}");

    // A regular file is never replaced.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep").unwrap();
    assert!(matches!(
        endpoint::bind_unix(&file),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");

    let open = endpoint::bind_tcp("0.0.0.0:0".parse().unwrap(), false).await;
    assert!(matches!(open, Err(Error::InvalidArgument(_))), "{open:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_gets_plaintext_from_the_enclave_endpoint() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let endpoint = url(serve(stack.client.clone()).await);
    let Some(out) = support::run_boto3_script(
        "enclave_endpoint_boto3.py",
        vec![endpoint, stack.key_arn.clone()],
    )
    .await
    else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "boto3 failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("7 checks passed, 0 failed"), "{stdout}");
}

//! The mock KMS's HTTP layer spoken to raw: AWS JSON 1.1 error shapes,
//! unknown targets, the SigV4 header requirement, body limits.
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use keybroker_harness::mock_kms::MockKmsConfig;
use support::{kms_head, raw_http, start};

fn parse(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn unknown_or_missing_target_is_unknown_operation_exception_400() {
    let (kms, _) = start(MockKmsConfig::default()).await;
    let (status, body) = raw_http(kms.addr(), &kms_head("Frobnicate"), b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(parse(&body)["__type"], "UnknownOperationException");

    let head = "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\nAuthorization: AWS4-HMAC-SHA256 x";
    let (status, body) = raw_http(kms.addr(), head, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(parse(&body)["__type"], "UnknownOperationException");

    let head = "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nAuthorization: AWS4-HMAC-SHA256 x";
    let (status, body) = raw_http(kms.addr(), head, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(parse(&body)["__type"], "UnknownOperationException");

    let (status, body) = raw_http(kms.addr(), "GET /health HTTP/1.1", b"").await;
    assert_eq!(status, 400);
    assert_eq!(parse(&body)["__type"], "UnknownOperationException");
}

#[tokio::test]
async fn errors_are_aws_json_with_type_and_message_and_success_is_json() {
    let (kms, _) = start(MockKmsConfig::default()).await;
    let (status, body) = raw_http(
        kms.addr(),
        &kms_head("DescribeKey"),
        br#"{"KeyId": "alias/none"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let v = parse(&body);
    assert_eq!(v["__type"], "NotFoundException");
    assert_eq!(
        v["message"],
        "Alias arn:aws:kms:us-east-1:111122223333:alias/none is not found."
    );

    let (status, body) = raw_http(kms.addr(), &kms_head("ListKeys"), b"{}").await;
    assert_eq!(status, 200);
    assert_eq!(
        parse(&body),
        serde_json::json!({"Keys": [], "Truncated": false})
    );

    // InvalidCiphertextException carries no message, as in KMS.
    let (status, body) = raw_http(
        kms.addr(),
        &kms_head("Decrypt"),
        br#"{"CiphertextBlob": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        parse(&body),
        serde_json::json!({"__type": "InvalidCiphertextException"})
    );
}

#[tokio::test]
async fn malformed_json_is_serialization_exception() {
    let (kms, _) = start(MockKmsConfig::default()).await;
    for body in [
        &b"{"[..],
        b"[]",
        br#"{"NumberOfBytes": "many"}"#,
        br#"{"CiphertextBlob": "%%%"}"#,
    ] {
        let op = if body.starts_with(br#"{"C"#) {
            "Decrypt"
        } else {
            "GenerateRandom"
        };
        let (status, resp) = raw_http(kms.addr(), &kms_head(op), body).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(parse(&resp)["__type"], "SerializationException", "{resp}");
    }
}

#[tokio::test]
async fn unsigned_requests_are_refused_unless_allowed() {
    let head = "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.ListKeys";
    let (kms, _) = start(MockKmsConfig::default()).await;
    let (status, body) = raw_http(kms.addr(), head, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        parse(&body)["__type"],
        "MissingAuthenticationTokenException"
    );

    let (open, _) = start(MockKmsConfig {
        allow_unsigned: true,
        ..MockKmsConfig::default()
    })
    .await;
    let (status, _) = raw_http(open.addr(), head, b"{}").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oversized_body_is_a_validation_error_and_the_server_keeps_serving() {
    let (kms, c) = start(MockKmsConfig {
        max_body_bytes: 64 * 1024,
        ..MockKmsConfig::default()
    })
    .await;
    let big = format!(r#"{{"CiphertextBlob": "{}"}}"#, "A".repeat(100 * 1024));
    let (status, body) = raw_http(kms.addr(), &kms_head("Decrypt"), big.as_bytes()).await;
    assert_eq!(status, 400);
    let v = parse(&body);
    assert_eq!(v["__type"], "ValidationException");
    assert!(v["message"].as_str().unwrap().contains("65536"), "{body}");
    // Still alive.
    c.list_keys().send().await.unwrap();
}

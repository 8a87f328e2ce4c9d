//! The real `aws-sdk-kms` backend against a tiny local HTTP stub that answers
//! canned AWS JSON 1.1 responses: every field of the seven operations is
//! converted both ways, KMS errors keep their `__type` code, HTTP status and
//! retryability, an unreachable endpoint is `Unavailable`, and the whole path
//! works through the proxy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use keybroker_common::kms::*;
use keybroker_common::protocol::{ErrorCode, Message};
use keybroker_common::secret::SecretBytes;
use keybroker_proxy::backend::{KmsBackend, SdkKmsBackend};
use keybroker_proxy::server::{Proxy, ProxyConfig};
use keybroker_test_support::sdk;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the stub saw it.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    authorization: String,
    body: Value,
}

/// A one-request-per-connection HTTP/1.1 server answering canned
/// `(status, body)` pairs in order.
struct Stub {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<(u16, String)>>>,
}

impl Stub {
    async fn start() -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies: Arc<Mutex<VecDeque<(u16, String)>>> = Arc::default();
        let (s, r) = (seen.clone(), replies.clone());
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let header_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < header_end + len {
                        let n = sock.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "body truncated");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = serde_json::from_slice(&buf[header_end..header_end + len])
                        .unwrap_or(Value::Null);
                    s.lock().unwrap().push(Seen {
                        target: header("x-amz-target"),
                        authorization: header("authorization"),
                        body,
                    });
                    let (status, reply) = r.lock().unwrap().pop_front().expect("no canned reply");
                    let response = format!(
                        "HTTP/1.1 {status} Canned\r\nContent-Type: application/x-amz-json-1.1\r\n\
                         x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    sock.write_all(response.as_bytes()).await.unwrap();
                    let _ = sock.shutdown().await;
                });
            }
        });
        Stub { url, seen, replies }
    }

    fn reply(&self, status: u16, body: Value) {
        self.replies
            .lock()
            .unwrap()
            .push_back((status, body.to_string()));
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn backend(endpoint: &str) -> SdkKmsBackend {
    let creds = sdk::credentials("AKIDTESTTESTTESTTEST", "test-secret", None, "test");
    let config = sdk::config(endpoint, creds)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    SdkKmsBackend::new(aws_sdk_kms::Client::from_conf(config))
}

fn ctx() -> EncryptionContext {
    [
        ("purpose".to_string(), "test".to_string()),
        ("app".to_string(), "kb".to_string()),
    ]
    .into()
}

fn grants() -> Option<Vec<String>> {
    Some(vec!["grant-1".into(), "grant-2".into()])
}

/// A fresh, well-formed document with a public key (the proxy refuses
/// others before they reach KMS).
fn recipient() -> Option<RecipientInfo> {
    Some(RecipientInfo::new(support::Nsm::new().document(0xAA, 0xA2)))
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// Sends `request`; checks the SDK put exactly the common crate's KMS JSON
/// for it on the wire (so every field was converted) and that the canned
/// `reply` comes back as `expected`.
async fn round_trip(
    stub: &Stub,
    kms: &SdkKmsBackend,
    request: KmsRequest,
    request_json: Value,
    reply: Value,
) -> KmsResponse {
    stub.reply(200, reply);
    let op = request.operation();
    let response = kms.call(request).await.unwrap();
    let seen = stub.last();
    assert_eq!(seen.target, format!("TrentService.{}", op.as_str()));
    assert!(
        seen.authorization
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDTESTTESTTESTTEST/"),
        "{}",
        seen.authorization
    );
    assert_eq!(seen.body, request_json, "{op:?} request body");
    assert_eq!(response.operation(), op);
    response
}

#[tokio::test]
async fn every_operation_converts_every_field() {
    let stub = Stub::start().await;
    let kms = backend(&stub.url);

    // GenerateDataKey (KeySpec and NumberOfBytes both set only to prove both
    // are mapped; KMS itself accepts one of them).
    let req = GenerateDataKeyRequest {
        key_id: Some("alias/app".into()),
        key_spec: Some(DataKeySpec::Aes256),
        number_of_bytes: Some(32),
        encryption_context: Some(ctx()),
        grant_tokens: grants(),
        recipient: recipient(),
        dry_run: Some(false),
    };
    let expected = GenerateDataKeyResponse {
        key_id: Some(ARN.into()),
        ciphertext_blob: Some(Blob(vec![1; 40])),
        plaintext: None,
        ciphertext_for_recipient: Some(Blob(vec![2; 300])),
        key_material_id: Some("km-1".into()),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::GenerateDataKey(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(got, KmsResponse::GenerateDataKey(expected));

    let req = GenerateDataKeyWithoutPlaintextRequest {
        key_id: Some(ARN.into()),
        key_spec: Some(DataKeySpec::Aes128),
        number_of_bytes: Some(16),
        encryption_context: Some(ctx()),
        grant_tokens: grants(),
        dry_run: Some(true),
    };
    let expected = GenerateDataKeyWithoutPlaintextResponse {
        key_id: Some(ARN.into()),
        ciphertext_blob: Some(Blob(vec![3; 40])),
        key_material_id: Some("km-2".into()),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::GenerateDataKeyWithoutPlaintext(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(got, KmsResponse::GenerateDataKeyWithoutPlaintext(expected));

    let req = DecryptRequest {
        ciphertext_blob: Some(Blob(vec![4; 64])),
        encryption_context: Some(ctx()),
        grant_tokens: grants(),
        key_id: Some(ARN.into()),
        encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
        recipient: recipient(),
        dry_run: Some(false),
        dry_run_modifiers: Some(vec![DryRunModifier::IgnoreCiphertext]),
    };
    let expected = DecryptResponse {
        key_id: Some(ARN.into()),
        plaintext: None,
        encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
        ciphertext_for_recipient: Some(Blob(vec![5; 300])),
        key_material_id: Some("km-3".into()),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::Decrypt(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(got, KmsResponse::Decrypt(expected));

    let req = GenerateDataKeyPairRequest {
        encryption_context: Some(ctx()),
        key_id: Some("alias/app".into()),
        key_pair_spec: Some(DataKeyPairSpec::EccNistP384),
        grant_tokens: grants(),
        recipient: recipient(),
        dry_run: Some(false),
    };
    let expected = GenerateDataKeyPairResponse {
        private_key_ciphertext_blob: Some(Blob(vec![6; 100])),
        private_key_plaintext: None,
        public_key: Some(Blob(vec![7; 120])),
        key_id: Some(ARN.into()),
        key_pair_spec: Some(DataKeyPairSpec::EccNistP384),
        ciphertext_for_recipient: Some(Blob(vec![8; 400])),
        key_material_id: Some("km-4".into()),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::GenerateDataKeyPair(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(got, KmsResponse::GenerateDataKeyPair(expected));

    let req = GenerateDataKeyPairWithoutPlaintextRequest {
        encryption_context: Some(ctx()),
        key_id: Some("alias/app".into()),
        key_pair_spec: Some(DataKeyPairSpec::Rsa4096),
        grant_tokens: grants(),
        dry_run: Some(true),
    };
    let expected = GenerateDataKeyPairWithoutPlaintextResponse {
        private_key_ciphertext_blob: Some(Blob(vec![9; 100])),
        public_key: Some(Blob(vec![10; 550])),
        key_id: Some(ARN.into()),
        key_pair_spec: Some(DataKeyPairSpec::Rsa4096),
        key_material_id: Some("km-5".into()),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::GenerateDataKeyPairWithoutPlaintext(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(
        got,
        KmsResponse::GenerateDataKeyPairWithoutPlaintext(expected)
    );

    let req = GenerateRandomRequest {
        number_of_bytes: Some(64),
        custom_key_store_id: Some("cks-1234567890abcdef0".into()),
        recipient: recipient(),
    };
    // A plaintext field is converted too (into SecretBytes); the server,
    // not the backend, refuses to relay it.
    let expected = GenerateRandomResponse {
        plaintext: Some(SecretBytes::from_slice(&[11; 64])),
        ciphertext_for_recipient: Some(Blob(vec![12; 300])),
    };
    let reply = to_json(&expected);
    assert!(reply["Plaintext"].is_string());
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::GenerateRandom(req.clone()),
        to_json(&req),
        reply,
    )
    .await;
    assert_eq!(got, KmsResponse::GenerateRandom(expected));

    let req = DescribeKeyRequest {
        key_id: Some("alias/app".into()),
        grant_tokens: grants(),
    };
    let expected = DescribeKeyResponse {
        key_metadata: Some(KeyMetadata {
            aws_account_id: Some("111122223333".into()),
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            arn: Some(ARN.into()),
            creation_date: Some(1_700_000_000.0),
            enabled: true,
            description: Some("keybroker test key".into()),
            key_usage: Some("ENCRYPT_DECRYPT".into()),
            key_state: Some("PendingDeletion".into()),
            deletion_date: Some(1_800_000_000.0),
            origin: Some("AWS_KMS".into()),
            key_manager: Some("CUSTOMER".into()),
            key_spec: Some("SYMMETRIC_DEFAULT".into()),
            customer_master_key_spec: Some("SYMMETRIC_DEFAULT".into()),
            encryption_algorithms: Some(vec![EncryptionAlgorithm::SymmetricDefault]),
            signing_algorithms: None,
            key_agreement_algorithms: None,
            multi_region: Some(false),
        }),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::DescribeKey(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(got, KmsResponse::DescribeKey(expected));

    let req = DeriveSharedSecretRequest {
        key_id: Some("alias/agree".into()),
        key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
        public_key: Some(Blob(vec![0x30; 91])),
        grant_tokens: grants(),
        dry_run: Some(false),
        recipient: recipient(),
    };
    let expected = DeriveSharedSecretResponse {
        key_id: Some(ARN.into()),
        shared_secret: None,
        ciphertext_for_recipient: Some(Blob(vec![5; 280])),
        key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
        key_origin: Some("AWS_KMS".into()),
    };
    let got = round_trip(
        &stub,
        &kms,
        KmsRequest::DeriveSharedSecret(req.clone()),
        to_json(&req),
        to_json(&expected),
    )
    .await;
    assert_eq!(got, KmsResponse::DeriveSharedSecret(expected));
}

#[tokio::test]
async fn kms_errors_keep_code_status_and_retryability() {
    let stub = Stub::start().await;
    let kms = backend(&stub.url);
    let describe = || support::describe("alias/missing");

    stub.reply(400, json!({"__type": "NotFoundException", "message": "Alias arn:aws:kms:us-east-1:111122223333:alias/missing is not found."}));
    let err = kms.call(describe()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Kms);
    let k = err.kms_error().unwrap();
    assert_eq!(k.code, "NotFoundException");
    assert_eq!(k.status, 400);
    assert!(!k.retryable);
    assert!(k.message.contains("alias/missing is not found"), "{k}");

    // A qualified `__type` is normalized; a 500 is retryable (one attempt
    // configured, so the stub sees exactly one request).
    let before = stub.seen.lock().unwrap().len();
    stub.reply(
        500,
        json!({"__type": "com.amazonaws.kms#KMSInternalException", "message": "boom"}),
    );
    let err = kms.call(describe()).await.unwrap_err();
    let k = err.kms_error().unwrap();
    assert_eq!(
        (k.code.as_str(), k.status, k.retryable),
        ("KMSInternalException", 500, true)
    );
    assert_eq!(stub.seen.lock().unwrap().len(), before + 1);

    stub.reply(
        400,
        json!({"__type": "AccessDeniedException", "Message": "no attestation"}),
    );
    let err = kms.call(describe()).await.unwrap_err();
    let k = err.kms_error().unwrap();
    assert_eq!(
        (k.code.as_str(), k.status, k.retryable),
        ("AccessDeniedException", 400, false)
    );
    assert_eq!(k.message, "no attestation");
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let kms = backend(&format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let err = kms.call(support::describe("alias/app")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(err.retryable());
    assert!(err.kms_error().is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn through_the_proxy_with_the_sdk_backend() {
    let stub = Stub::start().await;
    let proxy = Proxy::bind(
        ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap()),
        backend(&stub.url),
    )
    .await
    .unwrap()
    .spawn();
    let mut c = support::Client::handshake(proxy.local_addr()).await;

    stub.reply(
        200,
        json!({"KeyId": ARN, "CiphertextBlob": "AQID", "CiphertextForRecipient": "BAUG"}),
    );
    c.request(
        1,
        Some(5000),
        KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            recipient: recipient(),
            ..Default::default()
        }),
    )
    .await;
    match c.recv().await {
        Some(Message::Response {
            id: 1,
            result: Ok(KmsResponse::GenerateDataKey(r)),
        }) => {
            assert_eq!(r.key_id.as_deref(), Some(ARN));
            assert_eq!(r.ciphertext_blob, Some(Blob(vec![1, 2, 3])));
            assert_eq!(r.ciphertext_for_recipient, Some(Blob(vec![4, 5, 6])));
            assert!(r.plaintext.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stub.last().body["Recipient"]["KeyEncryptionAlgorithm"],
        "RSAES_OAEP_SHA_256"
    );

    // KMS answers with plaintext (a key policy that ignored the Recipient):
    // the proxy refuses to relay it.
    stub.reply(200, json!({"KeyId": ARN, "Plaintext": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}));
    c.request(
        2,
        None,
        KmsRequest::Decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(vec![9; 32])),
            recipient: recipient(),
            ..Default::default()
        }),
    )
    .await;
    let e = c.refusal(2).await;
    assert_eq!(e.code(), ErrorCode::PolicyDenied);
    assert!(e.message().starts_with("PlaintextInResponse:"), "{e}");

    // A KMS error is relayed unchanged.
    stub.reply(
        400,
        json!({"__type": "DisabledException", "message": "key is disabled"}),
    );
    c.request(3, None, support::describe(ARN)).await;
    let e = c.refusal(3).await;
    let k = e.kms_error().unwrap();
    assert_eq!((k.code.as_str(), k.status), ("DisabledException", 400));
    proxy.shutdown_and_wait().await.unwrap();
}

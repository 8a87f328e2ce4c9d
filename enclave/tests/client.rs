//! The client against an in-test fake proxy (see `support`): every operation,
//! pass-through of request fields, concurrency on one connection,
//! reconnection, deadlines, refusal of plaintext on the wire, error relaying.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybroker_common::Error as CommonError;
use keybroker_common::kms::*;
use keybroker_common::protocol::{ErrorCode, ProtocolError, WireError};
use keybroker_enclave::{Client, ClientConfig, Error};
use support::*;

fn config(proxy: &FakeProxy) -> ClientConfig {
    let mut c = ClientConfig::new(proxy.address.clone());
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(200);
    c
}

fn ctx() -> EncryptionContext {
    [
        ("tenant".to_string(), "42".to_string()),
        ("purpose".to_string(), "test".to_string()),
    ]
    .into()
}

#[tokio::test]
async fn every_operation_round_trips_and_fields_pass_through() {
    let (keys, verifier) = keys().await;
    let proxy = FakeProxy::tcp(kms_handler(verifier, Duration::ZERO)).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();

    let dk = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            encryption_context: Some(ctx()),
            grant_tokens: Some(vec!["grant-1".into(), "grant-2".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.key_id.as_deref(), Some(ARN));
    assert_eq!(&dk.ciphertext_blob.0[4..], dk.plaintext.expose());

    let seen = proxy.seen();
    let KmsRequest::GenerateDataKey(sent) = &seen[0].request else {
        panic!("{:?}", seen[0].request)
    };
    assert_eq!(sent.key_id.as_deref(), Some("alias/app"));
    assert_eq!(sent.encryption_context, Some(ctx()));
    assert_eq!(
        sent.grant_tokens,
        Some(vec!["grant-1".to_string(), "grant-2".to_string()])
    );
    // The Recipient is the current attestation document, which carries the
    // current public key.
    let recipient = sent.recipient.as_ref().unwrap();
    let current = client.keys().current();
    assert_eq!(
        recipient.attestation_document.0,
        current.attestation_document()
    );
    assert_eq!(current.public_key_spki_der().len(), 294);
    // The proxy learns the remaining deadline.
    let t = seen[0].timeout_ms.unwrap();
    assert!(t <= 10_000 && t > 9_000, "{t}");

    let dec = client
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(dk.ciphertext_blob.clone()),
            encryption_context: Some(ctx()),
            key_id: Some("alias/app".into()),
            grant_tokens: Some(vec!["g".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dec.plaintext.expose(), dk.plaintext.expose());
    assert_eq!(
        dec.encryption_algorithm,
        Some(EncryptionAlgorithm::SymmetricDefault)
    );
    let KmsRequest::Decrypt(sent) = &proxy.seen()[1].request else {
        panic!()
    };
    assert_eq!(sent.encryption_context, Some(ctx()));
    assert_eq!(sent.grant_tokens, Some(vec!["g".to_string()]));

    let pair = client
        .generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some("alias/app".into()),
            key_pair_spec: Some(DataKeyPairSpec::EccNistP256),
            encryption_context: Some(ctx()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pair.private_key_plaintext.len(), 1200);
    assert_eq!(
        &pair.private_key_ciphertext_blob.0[4..],
        pair.private_key_plaintext.expose()
    );
    assert_eq!(pair.key_pair_spec, Some(DataKeyPairSpec::EccNistP256));

    let random = client
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(64),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(random.len(), 64);

    let wp = client
        .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            encryption_context: Some(ctx()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(wp.ciphertext_blob.unwrap().0.len(), 36);

    let wpp = client
        .generate_data_key_pair_without_plaintext(GenerateDataKeyPairWithoutPlaintextRequest {
            key_id: Some("alias/app".into()),
            key_pair_spec: Some(DataKeyPairSpec::Rsa2048),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(wpp.key_pair_spec, Some(DataKeyPairSpec::Rsa2048));

    let dkr = client
        .describe_key(DescribeKeyRequest {
            key_id: Some("alias/app".into()),
            grant_tokens: None,
        })
        .await
        .unwrap();
    assert_eq!(dkr.key_metadata.unwrap().key_id, "alias/app");

    let peer = p384_spki();
    let secret = client
        .derive_shared_secret(DeriveSharedSecretRequest {
            key_id: Some("alias/agree".into()),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: Some(Blob(peer.clone())),
            grant_tokens: Some(vec!["g2".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(secret.shared_secret.len(), 48, "P-384");
    assert_eq!(
        secret.key_agreement_algorithm,
        Some(KeyAgreementAlgorithm::Ecdh)
    );
    assert_eq!(secret.key_origin.as_deref(), Some("AWS_KMS"));
    let KmsRequest::DeriveSharedSecret(sent) = &proxy.seen()[7].request else {
        panic!()
    };
    assert_eq!(sent.public_key, Some(Blob(peer)));
    assert_eq!(sent.grant_tokens, Some(vec!["g2".to_string()]));

    // The operations without plaintext carry no Recipient.
    for s in proxy.seen() {
        let op = s.request.operation();
        assert_eq!(
            s.request.recipient().is_some(),
            op.returns_plaintext(),
            "{op:?}"
        );
    }
    let stats = client.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.requests_sent, 8);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn a_recipient_from_the_caller_is_refused() {
    let (keys, verifier) = keys().await;
    let proxy = FakeProxy::tcp(kms_handler(verifier, Duration::ZERO)).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let err = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            recipient: Some(RecipientInfo::new(vec![1, 2, 3])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(proxy.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_requests_in_flight_on_one_connection_answered_out_of_order() {
    let (keys, verifier) = keys().await;
    // Each answer is delayed by a pseudo-random 20..100 ms, so answers come
    // back in a different order than the requests went out.
    let handler: Handler = Arc::new(move |s| {
        let (verifier, s) = (verifier.clone(), s.clone());
        Action::Later {
            delay: Duration::from_millis(20 + (s.id * 7919) % 80),
            answer: Box::new(move || kms_answer(&verifier, &s)),
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();

    const N: usize = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let client = client.clone();
        tasks.spawn(async move {
            let mine = format!("caller-{i:04}").into_bytes();
            let blob = Blob([b"FAKE".as_slice(), &mine].concat());
            let d = client
                .decrypt(DecryptRequest {
                    ciphertext_blob: Some(blob),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(d.plaintext.expose(), mine.as_slice(), "caller {i}");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let seen = proxy.seen();
    assert_eq!(seen.len(), N);
    assert!(seen.iter().all(|s| s.connection == 0));
    let max = proxy.max_in_flight.load(Ordering::SeqCst);
    assert!(max >= 100, "only {max} requests were in flight at once");
    let stats = client.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.in_flight, 0);
    // Ids are unique.
    let ids: std::collections::HashSet<_> = seen.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), N);
}

#[tokio::test]
async fn a_dropped_connection_is_reestablished_and_safe_requests_retried() {
    let (keys, verifier) = keys().await;
    // Connection 0 dies at its first request; connection 1 at its first
    // GenerateDataKey; everything else is answered.
    let handler: Handler = Arc::new(move |s| {
        let op = s.request.operation();
        if s.connection == 0 || (s.connection == 1 && op == Operation::GenerateDataKey) {
            Action::Drop
        } else {
            Action::Reply {
                delay: Duration::ZERO,
                result: kms_answer(&verifier, s),
            }
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();

    // Decrypt is read-only at KMS: retried once on the new connection.
    let blob = Blob(b"FAKEsecret".to_vec());
    let d = client
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(blob),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"secret");
    let stats = client.stats();
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.connections, 2);

    // GenerateDataKey in flight when the connection dies is not retried.
    let err = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost {
                operation: Operation::GenerateDataKey
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());

    // The client reconnects again and works.
    let r = client
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(16),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 16);
    assert_eq!(client.stats().connections, 3);
    assert_eq!(proxy.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn proxy_restart_requests_fail_within_deadline_then_recover() {
    let (keys, verifier) = keys().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    let proxy =
        FakeProxy::unix_at(path.clone(), kms_handler(verifier.clone(), Duration::ZERO)).await;
    let client = Client::connect(config(&proxy), keys)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(400));
    let req = || GenerateRandomRequest {
        number_of_bytes: Some(32),
        ..Default::default()
    };
    client.generate_random(req()).await.unwrap();

    // The proxy goes away (listener and connections).
    drop(proxy);
    let _ = std::fs::remove_file(&path);
    let start = Instant::now();
    let err = client.generate_random(req()).await.unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(
            err,
            Error::Unavailable { .. } | Error::ConnectionLost { .. }
        ),
        "{err}"
    );

    // It comes back at the same address: the client reconnects by itself.
    let proxy = FakeProxy::unix_at(path, kms_handler(verifier, Duration::ZERO)).await;
    client.wait_connected(Duration::from_secs(5)).await.unwrap();
    assert_eq!(client.generate_random(req()).await.unwrap().len(), 32);
    assert!(client.stats().connections >= 2);
    drop(proxy);
}

#[tokio::test]
async fn deadline_is_honoured_when_the_proxy_never_answers() {
    let (keys, _) = keys().await;
    let proxy = FakeProxy::tcp(Arc::new(|_| Action::Ignore)).await;
    let client = Client::connect(config(&proxy), keys)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let err = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    assert!(
        matches!(
            err,
            Error::Timeout {
                operation: Operation::GenerateDataKey,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(proxy.seen()[0].timeout_ms.unwrap() <= 300);
    // The abandoned request is forgotten.
    assert_eq!(client.stats().in_flight, 0);
}

#[tokio::test]
async fn deadline_is_honoured_when_no_proxy_listens() {
    let (keys, _) = keys().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", l.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(l);
    let mut c = ClientConfig::new(address);
    c.request_timeout = Duration::from_millis(300);
    c.connect_timeout = Duration::from_millis(300);
    assert!(matches!(
        Client::connect(c.clone(), keys.clone()).await,
        Err(Error::Unavailable { .. })
    ));
    let client = Client::new(c, keys).unwrap();
    let start = Instant::now();
    let err = client
        .describe_key(DescribeKeyRequest {
            key_id: Some("k".into()),
            grant_tokens: None,
        })
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(1000));
    let Error::Unavailable { reason } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("connect"), "{reason}");
}

/// A `Response` frame carrying `Plaintext`, hand-made because the protocol
/// encoder refuses to produce one.
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
fn plaintext_response_frame(id: u64) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ResponseP {
        id: u64,
        result: Result<KmsResponse, WireError>,
    }
    let resp = KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
        key_id: Some(ARN.into()),
        ciphertext_blob: Some(Blob(vec![1; 40])),
        plaintext: Some(keybroker_common::secret::SecretBytes::from_slice(&[9; 32])),
        ..Default::default()
    });
    let mut body = Vec::new();
    ciborium::into_writer(
        &(
            4u8,
            ResponseP {
                id,
                result: Ok(resp),
            },
        ),
        &mut body,
    )
    .unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test]
async fn a_response_with_plaintext_is_refused_and_the_connection_replaced() {
    let (keys, verifier) = keys().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let handler: Handler = Arc::new(move |s| {
        if c2.fetch_add(1, Ordering::SeqCst) == 0 {
            Action::Raw(plaintext_response_frame(s.id))
        } else {
            Action::Reply {
                delay: Duration::ZERO,
                result: kms_answer(&verifier, s),
            }
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let req = || GenerateDataKeyRequest {
        key_id: Some("alias/app".into()),
        key_spec: Some(DataKeySpec::Aes256),
        ..Default::default()
    };
    let err = client.generate_data_key(req()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Common(CommonError::Protocol(ProtocolError::PlaintextOnWire {
                operation: Operation::GenerateDataKey
            }))
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    // The next call runs on a fresh connection.
    assert_eq!(
        client
            .generate_data_key(req())
            .await
            .unwrap()
            .plaintext
            .len(),
        32
    );
    assert_eq!(client.stats().connections, 2);
}

#[tokio::test]
async fn kms_and_proxy_errors_pass_through() {
    let (keys, _) = keys().await;
    let handler: Handler = Arc::new(|s| {
        let error = match s.request.key_id() {
            Some("alias/missing") => WireError::kms(KmsError::new(
                "NotFoundException",
                "Alias alias/missing is not found.",
            )),
            Some("alias/busy") => {
                WireError::kms(KmsError::new("ThrottlingException", "Rate exceeded"))
            }
            _ => WireError::new(ErrorCode::PolicyDenied, "key not in the allowlist"),
        };
        Action::Reply {
            delay: Duration::ZERO,
            result: Err(error),
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let call = |key: &str| {
        let client = client.clone();
        let key = key.to_owned();
        async move {
            client
                .generate_data_key(GenerateDataKeyRequest {
                    key_id: Some(key),
                    key_spec: Some(DataKeySpec::Aes256),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };
    let e = call("alias/missing").await;
    let k = e.kms_error().unwrap();
    assert_eq!(k.code, "NotFoundException");
    assert_eq!(k.message, "Alias alias/missing is not found.");
    assert_eq!(k.status, 400);
    assert!(!e.is_retryable());

    let e = call("alias/busy").await;
    assert_eq!(e.kms_error().unwrap().code, "ThrottlingException");
    assert!(e.is_retryable());

    let e = call("alias/other").await;
    assert_eq!(
        e.remote_error(),
        Some((ErrorCode::PolicyDenied, "key not in the allowlist"))
    );
    assert!(!e.is_retryable());
    assert!(e.kms_error().is_none());
}

/// A plaintext of the wrong length, and a ciphertext for another key, are
/// not errors (that would be an oracle) but the ciphertext's implicit
/// rejection value: of the requested length, deterministic (the same
/// ciphertext twice gets the same value, as a real decryption would), and
/// not what the parent encrypted.
#[tokio::test]
async fn wrong_length_or_foreign_key_plaintext_gets_the_rejection_value() {
    let (keys, verifier) = keys().await;
    let other = keybroker_common::cms::RecipientPrivateKey::generate_2048().unwrap();
    let other_spki = other.public_key_spki_der();
    // One forged answer per case, reused, so the same ciphertext comes twice.
    let forged: Arc<Mutex<HashMap<String, Blob>>> = Arc::default();
    let handler: Handler = Arc::new(move |s| {
        let KmsRequest::GenerateDataKey(r) = &s.request else {
            panic!()
        };
        let spki = recipient_spki(&verifier, r.recipient.as_ref());
        let key = r.key_id.clone().unwrap();
        let cfr = forged
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_insert_with(|| match key.as_str() {
                // 16 bytes where AES_256 asked for 32.
                "short" => seal(&spki, &[1; 16]),
                // Sealed to a key that is not the enclave's.
                _ => seal(&other_spki, &[1; 32]),
            })
            .clone();
        Action::Reply {
            delay: Duration::ZERO,
            result: Ok(KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
                key_id: Some(ARN.into()),
                ciphertext_blob: Some(Blob(vec![0; 8])),
                ciphertext_for_recipient: Some(cfr),
                ..Default::default()
            })),
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let call = |key: &'static str| {
        let client = client.clone();
        async move {
            client
                .generate_data_key(GenerateDataKeyRequest {
                    key_id: Some(key.into()),
                    key_spec: Some(DataKeySpec::Aes256),
                    ..Default::default()
                })
                .await
                .unwrap()
                .plaintext
        }
    };
    for key in ["short", "foreign"] {
        let first = call(key).await;
        assert_eq!(first.len(), 32, "{key}");
        assert_ne!(&first.expose()[..16], &[1; 16], "{key}");
        assert_eq!(call(key).await, first, "{key}: deterministic");
    }
    assert_ne!(call("short").await, call("foreign").await);
    // Nor are they counted as decryption failures: the parent reads that
    // counter in the enclave's metrics.
    assert_eq!(client.stats().decrypt_failures, 0);
}

/// A `CiphertextForRecipient` that does not parse, or is missing, is an
/// error and counts as a decryption failure, in the client's counters and
/// in the metrics report the enclave sends to the proxy.
#[tokio::test]
async fn unparseable_or_missing_ciphertext_for_recipient_counts_as_a_decrypt_failure() {
    let (keys, _) = keys().await;
    let handler: Handler = Arc::new(move |s| {
        let KmsRequest::GenerateDataKey(r) = &s.request else {
            panic!()
        };
        let cfr = match r.key_id.as_deref() {
            Some("garbage") => Some(Blob(vec![0x30, 0x03, 1, 2, 3])),
            _ => None,
        };
        Action::Reply {
            delay: Duration::ZERO,
            result: Ok(KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
                key_id: Some(ARN.into()),
                ciphertext_blob: Some(Blob(vec![0; 8])),
                ciphertext_for_recipient: cfr,
                ..Default::default()
            })),
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    for key in ["garbage", "missing"] {
        let e = client
            .generate_data_key(GenerateDataKeyRequest {
                key_id: Some(key.into()),
                key_spec: Some(DataKeySpec::Aes256),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(!e.is_retryable(), "{key}: {e}");
    }
    assert_eq!(client.stats().decrypt_failures, 2);
    let reporter = keybroker_enclave::telemetry::Reporter::new(client).unwrap();
    let report = reporter.report();
    assert_eq!(report.decrypt_failures, 2);
    assert!(report.enclave.starts_with("i-mock"), "{}", report.enclave);
    assert_eq!(report.keys.generated, 2, "the first pair and its spare");
}

/// The padding-oracle attack of a broker-mode parent (issue 11): it lets
/// KMS answer `Decrypt` and modifies the `CiphertextForRecipient` so that
/// the padding is valid (`alias/valid`) or invalid (`alias/invalid`). It
/// watches what it can: the requests that arrive, the answer an SDK gets
/// from the in-enclave endpoint, and what the caller does next (an
/// envelope's open, and opening again). Both cases look the same.
#[tokio::test]
async fn a_parents_padding_probes_cannot_be_told_apart() {
    use keybroker_enclave::endpoint::KmsEndpoint;
    use keybroker_enclave::envelope::{CachingConfig, DataKeyCache, Envelope};

    let (keys, verifier) = keys().await;
    let handler: Handler = Arc::new(move |s| {
        let mut result = kms_answer(&verifier, s);
        if let (KmsRequest::Decrypt(req), Ok(KmsResponse::Decrypt(r))) = (&s.request, &mut result) {
            let cfr = r.ciphertext_for_recipient.as_mut().unwrap();
            match req.key_id.as_deref() {
                Some("alias/valid") => cfr.0 = probe_padding(&cfr.0, true),
                Some("alias/invalid") => cfr.0 = probe_padding(&cfr.0, false),
                _ => {}
            }
        }
        Action::Reply {
            delay: Duration::ZERO,
            result,
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let context = ctx();
    let message = Envelope::new(client.clone(), "alias/app")
        .seal(b"the secret", &context)
        .await
        .unwrap();
    let blob = keybroker_enclave::envelope::peek_header(&message)
        .unwrap()
        .ciphertext_blob()
        .to_vec();

    // What the parent observes of one probe.
    #[derive(Debug, PartialEq)]
    struct Observed {
        envelope_error: String,
        retryable: bool,
        kms_code: String,
        decrypts_per_open: Vec<usize>,
        endpoint_status: u16,
        endpoint_decrypts: usize,
        cached: usize,
        /// What the enclave's metrics report tells the parent: decryption
        /// failures counted, endpoint requests, cache lookups.
        reported: (
            u64,
            Vec<keybroker_common::protocol::EndpointCount>,
            u64,
            u64,
        ),
    }
    let decrypts = || {
        proxy
            .seen()
            .iter()
            .filter(|s| s.request.operation() == Operation::Decrypt)
            .count()
    };
    let mut observed = Vec::new();
    for probe in ["alias/valid", "alias/invalid"] {
        let failures_before = client.stats().decrypt_failures;
        let cache = DataKeyCache::new(CachingConfig::new(Duration::from_secs(60))).unwrap();
        let envelope = Envelope::new(client.clone(), probe).with_cache(cache.clone());
        let mut decrypts_per_open = Vec::new();
        let mut error = None;
        // The caller opens, fails, and opens again.
        for _ in 0..2 {
            let before = decrypts();
            let e = envelope.open(&message, &context).await.unwrap_err();
            decrypts_per_open.push(decrypts() - before);
            error = Some(e);
        }
        let e = error.unwrap();
        // An SDK's Decrypt through the in-enclave endpoint.
        let body = serde_json::to_vec(&DecryptRequest {
            ciphertext_blob: Some(Blob(blob.clone())),
            key_id: Some(probe.into()),
            encryption_context: Some(context.clone()),
            ..Default::default()
        })
        .unwrap();
        let before = decrypts();
        let endpoint = KmsEndpoint::new(client.clone());
        let answer = endpoint.call(Some("TrentService.Decrypt"), &body).await;
        let endpoint_decrypts = decrypts() - before;
        let response: DecryptResponse = serde_json::from_slice(answer.body()).unwrap();
        let len = response.plaintext.unwrap().len();
        if probe == "alias/valid" {
            // Really valid padding: without a stated length the (garbled)
            // real plaintext comes back, 15 bytes longer. Only the app in
            // the enclave sees it.
            assert_eq!(len, 47);
        }
        // A caller that states the length gets exactly that many bytes.
        let d = client
            .decrypt_expecting(
                DecryptRequest {
                    ciphertext_blob: Some(Blob(blob.clone())),
                    key_id: Some(probe.into()),
                    encryption_context: Some(context.clone()),
                    ..Default::default()
                },
                32,
            )
            .await
            .unwrap();
        assert_eq!(d.plaintext.len(), 32, "{probe}");
        assert_ne!(
            d.plaintext.expose(),
            &blob[4..],
            "{probe}: not the data key"
        );
        observed.push(Observed {
            envelope_error: e.to_string(),
            retryable: e.is_retryable(),
            kms_code: e.to_kms_error().code,
            decrypts_per_open,
            endpoint_status: answer.status,
            endpoint_decrypts,
            cached: cache.stats().entries,
            reported: (
                client.stats().decrypt_failures - failures_before,
                endpoint.stats().snapshot(),
                cache.stats().hits,
                cache.stats().misses,
            ),
        });
    }
    assert_eq!(observed[0], observed[1]);
    let o = &observed[0];
    assert!(o.envelope_error.contains("does not authenticate"), "{o:?}");
    assert!(!o.retryable);
    assert_eq!(
        o.decrypts_per_open,
        [1, 1],
        "nothing cached, nothing retried"
    );
    assert_eq!(
        (o.endpoint_status, o.endpoint_decrypts, o.cached),
        (200, 1, 0)
    );
    // The metrics report: no decryption failure (implicit rejection), one
    // Decrypt answered 200 by the endpoint, two cache misses.
    let decrypt_ok = keybroker_common::protocol::EndpointCount {
        operation: keybroker_common::protocol::EndpointOperation::Decrypt,
        outcome: keybroker_common::protocol::EndpointOutcome::Ok,
        count: 1,
    };
    assert_eq!(o.reported, (0, vec![decrypt_ok], 0, 2));

    // The honest answer still opens.
    let honest = Envelope::new(client.clone(), "alias/app");
    assert_eq!(
        &honest.open(&message, &context).await.unwrap()[..],
        b"the secret"
    );
}

/// Requests whose plaintext length is not fixed are refused before anything
/// is sent: `GenerateDataKey` with neither or both of `KeySpec` and
/// `NumberOfBytes`, `GenerateRandom` without `NumberOfBytes`, and a
/// `Decrypt` expecting zero bytes.
#[tokio::test]
async fn requests_without_a_fixed_length_are_refused_locally() {
    let (keys, verifier) = keys().await;
    let proxy = FakeProxy::tcp(kms_handler(verifier, Duration::ZERO)).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let gdk = |key_spec, number_of_bytes| GenerateDataKeyRequest {
        key_id: Some("alias/app".into()),
        key_spec,
        number_of_bytes,
        ..Default::default()
    };
    for bad in [
        gdk(None, None),
        gdk(Some(DataKeySpec::Aes256), Some(32)),
        gdk(None, Some(0)),
        gdk(None, Some(1025)),
    ] {
        let e = client.generate_data_key(bad).await.unwrap_err();
        assert!(
            matches!(e, Error::Common(CommonError::InvalidArgument(_))),
            "{e}"
        );
        assert_eq!(e.to_kms_error().code, "ValidationException");
    }
    let e = client
        .generate_random(GenerateRandomRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Common(CommonError::InvalidArgument(_))),
        "{e}"
    );
    let e = client
        .decrypt_expecting(
            DecryptRequest {
                ciphertext_blob: Some(Blob(b"FAKEx".to_vec())),
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Common(CommonError::InvalidArgument(_))),
        "{e}"
    );
    let derive = |algorithm, public_key: Option<Vec<u8>>| DeriveSharedSecretRequest {
        key_id: Some("alias/agree".into()),
        key_agreement_algorithm: algorithm,
        public_key: public_key.map(Blob),
        ..Default::default()
    };
    let rsa = client.keys().current().public_key_spki_der().to_vec();
    for bad in [
        derive(Some(KeyAgreementAlgorithm::Ecdh), None),
        derive(None, Some(p384_spki())),
        derive(Some(KeyAgreementAlgorithm::Ecdh), Some(rsa)),
        derive(Some(KeyAgreementAlgorithm::Ecdh), Some(b"junk".to_vec())),
    ] {
        let e = client.derive_shared_secret(bad).await.unwrap_err();
        assert!(
            matches!(e, Error::Common(CommonError::InvalidArgument(_))),
            "{e}"
        );
        assert_eq!(e.to_kms_error().code, "ValidationException");
    }
    assert!(proxy.seen().is_empty(), "nothing was sent");
    // NumberOfBytes alone is a length too.
    let k = client.generate_data_key(gdk(None, Some(24))).await.unwrap();
    assert_eq!(k.plaintext.len(), 24);
}

/// A parent that answers `GenerateRandom` with bytes of its choosing (all
/// zero, here, encrypted to the enclave's key) does not get them through:
/// the NSM's randomness is mixed in, so the results are neither its bytes
/// nor equal to each other.
#[tokio::test]
async fn a_parent_does_not_choose_generate_random_bytes() {
    let (keys, verifier) = keys().await;
    let handler: Handler = Arc::new(move |s| {
        let KmsRequest::GenerateRandom(r) = &s.request else {
            panic!("{:?}", s.request)
        };
        let spki = recipient_spki(&verifier, r.recipient.as_ref());
        let n = r.number_of_bytes.unwrap() as usize;
        Action::Reply {
            delay: Duration::ZERO,
            result: Ok(KmsResponse::GenerateRandom(GenerateRandomResponse {
                plaintext: None,
                ciphertext_for_recipient: Some(seal(&spki, &vec![0; n])),
            })),
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let random = |n| {
        let client = client.clone();
        async move {
            client
                .generate_random(GenerateRandomRequest {
                    number_of_bytes: Some(n),
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    // 1000 bytes take several NSM answers (256 bytes each at most).
    let (a, b) = (random(1000).await, random(1000).await);
    assert_eq!((a.len(), b.len()), (1000, 1000));
    assert_ne!(a.expose(), &[0u8; 1000][..], "not the parent's bytes");
    assert_ne!(a, b);
    // Every byte value shows up: the output is not the zeros with a few changes.
    let distinct: std::collections::HashSet<u8> = a.expose().iter().copied().collect();
    assert!(distinct.len() > 200, "{}", distinct.len());
}

#[tokio::test]
async fn a_response_without_ciphertext_for_recipient_is_invalid() {
    let (keys, _) = keys().await;
    let handler: Handler = Arc::new(|_| Action::Reply {
        delay: Duration::ZERO,
        result: Ok(KmsResponse::GenerateRandom(
            GenerateRandomResponse::default(),
        )),
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let err = client
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(8),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidResponse {
                operation: Operation::GenerateRandom,
                ..
            }
        ),
        "{err}"
    );
    // A response for another operation is a protocol violation.
    let err = client
        .describe_key(DescribeKeyRequest {
            key_id: Some("k".into()),
            grant_tokens: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Common(CommonError::Protocol(
                ProtocolError::ResponseMismatch { .. }
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_draining_proxy_is_left_and_shutdown_answers_are_retried() {
    let (keys, verifier) = keys().await;
    let handler: Handler = Arc::new(move |s| {
        if s.connection == 0 && s.id > 1 {
            // Draining: Goodbye, and the request is not forwarded.
            Action::GoodbyeThen(Err(WireError::new(ErrorCode::Shutdown, "draining")))
        } else {
            Action::Reply {
                delay: Duration::ZERO,
                result: kms_answer(&verifier, s),
            }
        }
    });
    let proxy = FakeProxy::tcp(handler).await;
    let client = Client::connect(config(&proxy), keys).await.unwrap();
    let req = || GenerateDataKeyRequest {
        key_id: Some("alias/app".into()),
        key_spec: Some(DataKeySpec::Aes128),
        ..Default::default()
    };
    assert_eq!(
        client
            .generate_data_key(req())
            .await
            .unwrap()
            .plaintext
            .len(),
        16
    );
    // Answered Shutdown on connection 0, retried on connection 1, even though
    // GenerateDataKey is never retried after a lost connection.
    assert_eq!(
        client
            .generate_data_key(req())
            .await
            .unwrap()
            .plaintext
            .len(),
        16
    );
    let stats = client.stats();
    assert_eq!((stats.connections, stats.retries), (2, 1));
    let seen = proxy.seen();
    assert_eq!(seen.last().unwrap().connection, 1);
}

#[tokio::test]
async fn a_proxy_without_a_common_version_is_unavailable() {
    let (keys, _) = keys().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", l.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 256];
            let _ = s.read(&mut b).await;
            let m = keybroker_common::protocol::Message::Error {
                error: WireError::new(ErrorCode::UnsupportedVersion, "speaks 7..=9 only"),
            };
            let _ = s
                .write_all(&keybroker_common::protocol::encode(&m).unwrap())
                .await;
        }
    });
    let mut c = ClientConfig::new(address);
    c.connect_timeout = Duration::from_millis(500);
    let err = Client::connect(c, keys).await.unwrap_err();
    let Error::Unavailable { reason } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("7..=9"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_while_connects_while_the_keys_are_made() {
    let (keys, verifier) = keys().await;
    let proxy = FakeProxy::tcp(kms_handler(verifier, Duration::ZERO)).await;
    let connections = proxy.connections.clone();
    // The keys are "made" only once the proxy has accepted the client's
    // connection: a client that connected only after its keys existed
    // would never get there. (The timeout only keeps such a regression from
    // hanging the test run.)
    let pending_keys = async move {
        while connections.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(keys)
    };
    let client = tokio::time::timeout(
        Duration::from_secs(60),
        Client::connect_while(config(&proxy), pending_keys),
    )
    .await
    .expect("the client did not connect before its keys existed")
    .unwrap();
    assert!(client.is_connected());
    let dk = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    // The keys' error is the client's.
    let failing = std::future::ready(Err(Error::Nsm {
        request: "open",
        detail: "cannot open /dev/nsm".into(),
    }));
    let err = Client::connect_while(config(&proxy), failing)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Nsm { .. }), "{err}");
}

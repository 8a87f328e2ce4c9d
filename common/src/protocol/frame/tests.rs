use super::super::{AwsCredentialsWire, MAX_HOST_LEN, MAX_SESSION_TOKEN_LEN};
use super::super::{
    CacheCounts, EnclaveReport, EndpointCount, EndpointOperation, EndpointOutcome, KeyCounts,
    NSM_LATENCY_BUCKETS, NsmLatency, NsmRequest,
};
use super::super::{ErrorCode, MessageKind, VersionRange, WireError};
use super::*;
use crate::kms::*;
use crate::secret::{SecretBytes, SecretString};

fn ctx() -> EncryptionContext {
    [
        ("purpose".to_string(), "test".to_string()),
        ("tenant".to_string(), "42".to_string()),
    ]
    .into()
}

fn recipient() -> RecipientInfo {
    RecipientInfo::new(vec![0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0])
}

fn all_requests() -> Vec<KmsRequest> {
    vec![
        KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            encryption_context: Some(ctx()),
            grant_tokens: Some(vec!["g1".into(), "g2".into()]),
            recipient: Some(recipient()),
            dry_run: Some(false),
            ..Default::default()
        }),
        KmsRequest::GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: Some("1234abcd-12ab-34cd-56ef-1234567890ab".into()),
            number_of_bytes: Some(64),
            encryption_context: Some(ctx()),
            ..Default::default()
        }),
        KmsRequest::Decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(vec![1, 2, 3, 0, 255])),
            encryption_context: Some(ctx()),
            key_id: Some("alias/app".into()),
            encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            recipient: Some(recipient()),
            ..Default::default()
        }),
        KmsRequest::GenerateDataKeyPair(GenerateDataKeyPairRequest {
            key_id: Some("alias/app".into()),
            key_pair_spec: Some(DataKeyPairSpec::EccNistP384),
            recipient: Some(recipient()),
            ..Default::default()
        }),
        KmsRequest::GenerateDataKeyPairWithoutPlaintext(
            GenerateDataKeyPairWithoutPlaintextRequest {
                key_id: Some("alias/app".into()),
                key_pair_spec: Some(DataKeyPairSpec::Rsa4096),
                dry_run: Some(true),
                ..Default::default()
            },
        ),
        KmsRequest::GenerateRandom(GenerateRandomRequest {
            number_of_bytes: Some(32),
            recipient: Some(recipient()),
            ..Default::default()
        }),
        KmsRequest::DescribeKey(DescribeKeyRequest {
            key_id: Some("alias/app".into()),
            grant_tokens: None,
        }),
        KmsRequest::DeriveSharedSecret(DeriveSharedSecretRequest {
            key_id: Some("alias/agree".into()),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: Some(Blob(vec![0x30; 91])),
            grant_tokens: Some(vec!["g".into()]),
            dry_run: Some(false),
            recipient: Some(recipient()),
        }),
    ]
}

fn all_responses() -> Vec<KmsResponse> {
    let arn = Some("arn:aws:kms:us-east-1:111122223333:key/k".to_string());
    vec![
        KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
            key_id: arn.clone(),
            ciphertext_blob: Some(Blob(vec![9; 184])),
            ciphertext_for_recipient: Some(Blob(vec![0x30; 600])),
            key_material_id: Some("m".into()),
            ..Default::default()
        }),
        KmsResponse::GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextResponse {
            key_id: arn.clone(),
            ciphertext_blob: Some(Blob(vec![9; 184])),
            key_material_id: None,
        }),
        KmsResponse::Decrypt(DecryptResponse {
            key_id: arn.clone(),
            encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            ciphertext_for_recipient: Some(Blob(vec![0x30; 600])),
            ..Default::default()
        }),
        KmsResponse::GenerateDataKeyPair(GenerateDataKeyPairResponse {
            private_key_ciphertext_blob: Some(Blob(vec![7; 1200])),
            public_key: Some(Blob(vec![0x30; 120])),
            key_id: arn.clone(),
            key_pair_spec: Some(DataKeyPairSpec::EccNistP384),
            ciphertext_for_recipient: Some(Blob(vec![0x30; 4400])),
            ..Default::default()
        }),
        KmsResponse::GenerateDataKeyPairWithoutPlaintext(
            GenerateDataKeyPairWithoutPlaintextResponse {
                private_key_ciphertext_blob: Some(Blob(vec![7; 1200])),
                public_key: Some(Blob(vec![0x30; 120])),
                key_id: arn.clone(),
                key_pair_spec: Some(DataKeyPairSpec::Rsa2048),
                key_material_id: None,
            },
        ),
        KmsResponse::GenerateRandom(GenerateRandomResponse {
            plaintext: None,
            ciphertext_for_recipient: Some(Blob(vec![0x30; 500])),
        }),
        KmsResponse::DescribeKey(DescribeKeyResponse {
            key_metadata: Some(KeyMetadata {
                aws_account_id: Some("111122223333".into()),
                key_id: "k".into(),
                arn,
                creation_date: Some(1_700_000_000.25),
                enabled: true,
                key_usage: Some("ENCRYPT_DECRYPT".into()),
                key_state: Some("Enabled".into()),
                key_spec: Some("SYMMETRIC_DEFAULT".into()),
                encryption_algorithms: Some(vec![EncryptionAlgorithm::SymmetricDefault]),
                multi_region: Some(false),
                ..Default::default()
            }),
        }),
        KmsResponse::DeriveSharedSecret(DeriveSharedSecretResponse {
            key_id: Some("arn:aws:kms:us-east-1:111122223333:key/a".into()),
            ciphertext_for_recipient: Some(Blob(vec![0x30; 480])),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            key_origin: Some("AWS_KMS".into()),
            ..Default::default()
        }),
    ]
}

fn all_messages() -> Vec<Message> {
    let mut v = vec![
        Message::hello("keybroker-enclave/0.1.0"),
        Message::Hello {
            versions: VersionRange::new(1, 9),
            client: String::new(),
        },
        Message::HelloAck {
            version: 1,
            server: "keybroker-proxy/0.1.0".into(),
        },
        Message::Error {
            error: WireError::new(ErrorCode::UnsupportedVersion, "supported 1..=1"),
        },
        Message::Goodbye,
        Message::Response {
            id: u64::MAX,
            result: Err(WireError::kms(KmsError::new(
                KmsErrorCode::NotFound,
                "Key 'alias/x' does not exist",
            ))),
        },
    ];
    for code in ErrorCode::ALL {
        v.push(Message::Response {
            id: 7,
            result: Err(WireError::new(code, format!("{code} happened"))),
        });
    }
    for (i, request) in all_requests().into_iter().enumerate() {
        v.push(Message::Request {
            id: i as u64,
            timeout_ms: (i % 2 == 0).then_some(1500),
            request,
        });
    }
    for (i, response) in all_responses().into_iter().enumerate() {
        v.push(Message::Response {
            id: 1000 + i as u64,
            result: Ok(response),
        });
    }
    v.extend(v2_messages());
    v.extend(v3_messages());
    v
}

/// A full report: every field set, the largest endpoint table.
fn report() -> EnclaveReport {
    let mut endpoint = Vec::new();
    for (i, operation) in EndpointOperation::ALL.into_iter().enumerate() {
        for outcome in EndpointOutcome::ALL {
            endpoint.push(EndpointCount {
                operation,
                outcome,
                count: i as u64,
            });
        }
    }
    EnclaveReport {
        enclave: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        keys: KeyCounts {
            generated: 4,
            rotations: 2,
            overused: 1,
        },
        nsm: NsmRequest::ALL
            .into_iter()
            .map(|request| NsmLatency {
                request,
                buckets: vec![u64::MAX; NSM_LATENCY_BUCKETS],
                sum_us: 12,
            })
            .collect(),
        decrypt_failures: 3,
        endpoint,
        cache: CacheCounts {
            hits: 10,
            misses: 1,
        },
        tls_handshakes: 5,
    }
}

/// One of each version 3 message.
fn v3_messages() -> Vec<Message> {
    vec![
        Message::Metrics { report: report() },
        Message::Metrics {
            report: EnclaveReport {
                enclave: "e".into(),
                ..EnclaveReport::default()
            },
        },
    ]
}

fn credentials() -> AwsCredentialsWire {
    AwsCredentialsWire {
        access_key_id: "ASIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: SecretString::from_str_copy("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        session_token: Some(SecretString::new("IQoJb3JpZ2luX2Vj".repeat(100))),
        expiration_ms: Some(1_800_000_000_000),
    }
}

/// One of each version 2 message.
fn v2_messages() -> Vec<Message> {
    vec![
        Message::GetCredentials { id: 0 },
        Message::GetCredentials { id: u64::MAX },
        Message::Credentials {
            id: 3,
            result: Ok(credentials()),
        },
        Message::Credentials {
            id: 4,
            result: Ok(AwsCredentialsWire {
                session_token: None,
                expiration_ms: None,
                ..credentials()
            }),
        },
        Message::Credentials {
            id: 5,
            result: Err(WireError::new(
                ErrorCode::PolicyDenied,
                "this proxy hands out no credentials",
            )),
        },
        Message::OpenTunnel {
            host: "kms.us-east-1.amazonaws.com".into(),
            port: 443,
        },
        Message::OpenTunnel {
            host: "::1".into(),
            port: u16::MAX,
        },
        Message::TunnelOpened,
    ]
}

fn complete(buf: &[u8]) -> (Message, usize) {
    match decode_frame(buf, &Limits::default()).unwrap() {
        Decoded::Complete { message, consumed } => (message, consumed),
        other => panic!("expected a complete frame, got {other:?}"),
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn cbor(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

#[test]
fn every_message_and_kms_variant_round_trips() {
    let msgs = all_messages();
    assert_eq!(all_requests().len(), Operation::ALL.len());
    assert_eq!(all_responses().len(), Operation::ALL.len());
    for m in &msgs {
        let bytes = encode(m).unwrap();
        let (back, consumed) = complete(&bytes);
        assert_eq!(&back, m);
        assert_eq!(consumed, bytes.len());
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - 4
        );
    }
}

#[test]
fn body_layout_is_kind_then_payload() {
    let bytes = encode(&Message::Goodbye).unwrap();
    // length 3, then [6, {}]
    assert_eq!(bytes, [0, 0, 0, 3, 0x82, 0x06, 0xA0]);
    let bytes = encode(&Message::hello("e")).unwrap();
    let v: ciborium::Value = ciborium::from_reader(&bytes[4..]).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(
        arr[0],
        ciborium::Value::Integer(MessageKind::Hello.to_wire().into())
    );
    let keys: Vec<_> = arr[1]
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_text().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["min", "max", "client"]);
}

#[test]
fn large_blobs_decode() {
    // Bigger than ciborium's default 4 KiB scratch buffer (which
    // `ciborium::from_reader` uses and `kms::Blob` would fail with).
    let doc = vec![0xA5; 20_000];
    let m = Message::Request {
        id: 1,
        timeout_ms: None,
        request: KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            recipient: Some(RecipientInfo::new(doc)),
            ..Default::default()
        }),
    };
    assert_eq!(complete(&encode(&m).unwrap()).0, m);
}

#[test]
fn the_largest_kms_request_fits() {
    let m = Message::Request {
        id: u64::MAX,
        timeout_ms: Some(u32::MAX),
        request: KmsRequest::Decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(vec![0xFF; 6144])),
            encryption_context: Some(
                (0..64)
                    .map(|i| (format!("{i:0>64}"), "v".repeat(1024)))
                    .collect(),
            ),
            grant_tokens: Some(vec!["t".repeat(8192); 10]),
            key_id: Some("k".repeat(2048)),
            encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            recipient: Some(RecipientInfo::new(vec![0xAB; 262_144])),
            dry_run: Some(true),
            dry_run_modifiers: Some(vec![DryRunModifier::IgnoreCiphertext]),
        }),
    };
    let bytes = encode(&m).unwrap();
    assert!(bytes.len() - 4 <= MAX_FRAME_LEN, "{}", bytes.len());
    assert_eq!(complete(&bytes).0, m);
    // ... and a larger one is refused by the encoder.
    let too_big = Message::Request {
        id: 0,
        timeout_ms: None,
        request: KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            recipient: Some(RecipientInfo::new(vec![0; MAX_FRAME_LEN])),
            ..Default::default()
        }),
    };
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        encode_into(&too_big, &mut out),
        Err(ProtocolError::FrameTooLarge {
            max: MAX_FRAME_LEN,
            ..
        })
    ));
    assert_eq!(out, [1, 2, 3], "output restored after a failed encode");
}

#[test]
fn every_prefix_is_incomplete_with_the_right_need() {
    for m in all_messages() {
        let bytes = encode(&m).unwrap();
        for n in 0..bytes.len() {
            let needed = match decode_frame(&bytes[..n], &Limits::default()).unwrap() {
                Decoded::Incomplete { needed } => needed,
                other => panic!("prefix of {n} bytes: {other:?}"),
            };
            if n < 4 {
                assert_eq!(needed, 4 - n);
            } else {
                assert_eq!(needed, bytes.len() - n);
            }
        }
        assert_eq!(
            decode_frame(&bytes, &Limits::default()),
            Ok(Decoded::Complete {
                message: m,
                consumed: bytes.len()
            })
        );
    }
}

#[test]
fn frames_back_to_back() {
    let msgs = all_messages();
    let mut stream = Vec::new();
    for m in &msgs {
        encode_into(m, &mut stream).unwrap();
    }
    // Slice API.
    let mut rest = &stream[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let (m, consumed) = complete(rest);
        got.push(m);
        rest = &rest[consumed..];
    }
    assert_eq!(got, msgs);
    // Streaming API, fed one byte at a time.
    let mut dec = FrameDecoder::default();
    let mut got = Vec::new();
    for b in &stream {
        dec.push(std::slice::from_ref(b));
        while let Some(m) = dec.next_message().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, msgs);
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.needed(), 4);
    // Fed everything at once.
    let mut dec = FrameDecoder::new(Limits::default());
    dec.push(&stream);
    let mut n = 0;
    while dec.next_message().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, msgs.len());
}

#[test]
fn oversized_prefix_is_rejected_before_the_body() {
    let max = MAX_FRAME_LEN;
    let prefix = u32::try_from(max + 1).unwrap().to_be_bytes();
    assert_eq!(
        decode_frame(&prefix, &Limits::default()),
        Err(ProtocolError::FrameTooLarge { len: max + 1, max })
    );
    assert_eq!(
        decode_frame(&u32::MAX.to_be_bytes(), &Limits::default()),
        Err(ProtocolError::FrameTooLarge {
            len: u32::MAX as usize,
            max
        })
    );
    // A lower configured limit.
    let limits = Limits::new(100);
    assert_eq!(limits.max_frame_len(), 100);
    assert!(matches!(
        decode_frame(&101u32.to_be_bytes(), &limits),
        Err(ProtocolError::FrameTooLarge { len: 101, max: 100 })
    ));
    assert!(matches!(
        decode_frame(&100u32.to_be_bytes(), &limits),
        Ok(Decoded::Incomplete { needed: 100 })
    ));
    assert_eq!(Limits::new(usize::MAX).max_frame_len(), MAX_FRAME_LEN);
    assert_eq!(Limits::new(0).max_frame_len(), 1);
    // The streaming decoder fails on the prefix and buffers nothing more.
    let mut dec = FrameDecoder::new(limits);
    dec.push(&1000u32.to_be_bytes());
    assert_eq!(dec.needed(), 0);
    assert!(dec.next_message().is_err());
    dec.push(&[0; 1000]);
    assert_eq!(dec.buffered(), 0);
    assert!(dec.next_message().is_err(), "the error is sticky");
}

#[test]
fn zero_length_frame_is_rejected() {
    assert_eq!(
        decode_frame(&[0, 0, 0, 0], &Limits::default()),
        Err(ProtocolError::EmptyFrame)
    );
}

#[test]
fn garbage_is_malformed() {
    for body in [
        &[0xFF][..],                                     // break
        &[0x1C][..],                                     // reserved
        &[0x82, 0x01][..],                               // truncated array
        &[0x01][..],                                     // not an array
        &[0x80][..],                                     // empty array
        &[0x81, 0x01][..],                               // no payload
        &[0x82, 0x01, 0x01][..],                         // payload of the wrong type
        &[0x82, 0x06, 0xA0, 0x00][..],                   // trailing byte (see below) ...
        &[0x83, 0x06, 0xA0, 0x00][..],                   // ... vs. a third element
        &[0x82, 0x61, b'x', 0xA0][..],                   // text kind
        &[0x82, 0x03, 0xA1, 0x62, b'i', b'd', 0x01][..], // request without `request`
    ] {
        assert!(
            decode_frame(&frame(body), &Limits::default()).is_err(),
            "{body:02x?}"
        );
    }
    // Invalid UTF-8 in a text string.
    let bad_utf8 = [0x82, 0x01, 0xA1, 0x66, b'c', b'l', b'i', b'e', b'n', 0xC3];
    assert!(matches!(
        decode_frame(&frame(&bad_utf8), &Limits::default()),
        Err(ProtocolError::Malformed(_))
    ));
}

#[test]
fn trailing_bytes_in_a_body_are_rejected() {
    let mut body = encode(&Message::Goodbye).unwrap()[4..].to_vec();
    body.extend_from_slice(&[0xF6, 0xF6]);
    assert_eq!(
        decode_frame(&frame(&body), &Limits::default()),
        Err(ProtocolError::TrailingBytes { extra: 2 })
    );
}

#[test]
fn unknown_message_types_are_typed() {
    use ciborium::Value;
    let body = cbor(&Value::Array(vec![
        Value::Integer(42.into()),
        Value::Map(vec![]),
    ]));
    assert_eq!(
        decode_frame(&frame(&body), &Limits::default()),
        Err(ProtocolError::UnknownMessageType(42))
    );
}

#[test]
fn unknown_payload_fields_are_ignored() {
    use ciborium::Value;
    let body = cbor(&Value::Array(vec![
        Value::Integer(2.into()),
        Value::Map(vec![
            (Value::Text("version".into()), Value::Integer(1.into())),
            (Value::Text("server".into()), Value::Text("p".into())),
            (
                Value::Text("future".into()),
                Value::Array(vec![Value::Bytes(vec![1; 10]), Value::Null]),
            ),
        ]),
    ]));
    assert_eq!(
        complete(&frame(&body)).0,
        Message::HelloAck {
            version: 1,
            server: "p".into()
        }
    );
}

#[test]
fn huge_declared_lengths_error_quickly() {
    // A Request whose attestation document declares 4 GiB - 1 bytes
    // inside a 60-byte frame; and the same for a text string and an
    // array count.
    let mut body = vec![0x82, 0x03, 0xA2, 0x62, b'i', b'd', 0x01, 0x67];
    body.extend_from_slice(b"request");
    body.extend_from_slice(&[0xA1, 0x6E]);
    body.extend_from_slice(b"GenerateRandom");
    body.extend_from_slice(&[0xA1, 0x69]);
    body.extend_from_slice(b"Recipient");
    body.extend_from_slice(&[0xA2, 0x76]);
    body.extend_from_slice(b"KeyEncryptionAlgorithm");
    body.push(0x72);
    body.extend_from_slice(b"RSAES_OAEP_SHA_256");
    body.push(0x73);
    body.extend_from_slice(b"AttestationDocument");
    body.extend_from_slice(&[0x5A, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
    let start = std::time::Instant::now();
    let e = decode_frame(&frame(&body), &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("exceeds the frame"), "{e}");
    // With the real length the same layout decodes (so the error above is
    // about the length, not the layout).
    let n = body.len();
    body[n - 7..n - 3].copy_from_slice(&[0, 0, 0, 3]);
    let ok = decode_frame(&frame(&body), &Limits::default());
    assert!(matches!(ok, Ok(Decoded::Complete { .. })), "{ok:?}");
    for tail in [
        &[0x7B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..],
        &[0x9B, 0, 0, 0, 1, 0, 0, 0, 0, 0][..],
        &[0xBA, 0x7F, 0xFF, 0xFF, 0xFF][..],
    ] {
        let body = [&[0x82, 0x06][..], tail].concat();
        assert!(decode_frame(&frame(&body), &Limits::default()).is_err());
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn deep_nesting_is_rejected() {
    // [6, [[[[ ... ]]]]] nested 100 deep.
    let mut body = vec![0x82, 0x06];
    body.extend(std::iter::repeat_n(0x81, 100));
    body.push(0xA0);
    assert!(matches!(
        decode_frame(&frame(&body), &Limits::default()),
        Err(ProtocolError::NestingTooDeep { .. })
    ));
    // In an ignored field too.
    let mut body = vec![0x82, 0x06, 0xA1, 0x61, b'x'];
    body.extend(std::iter::repeat_n(0x9F, 5000));
    assert!(matches!(
        decode_frame(&frame(&body), &Limits::default()),
        Err(ProtocolError::NestingTooDeep { .. })
    ));
}

#[test]
fn tags_are_rejected() {
    // [6, 0({})]
    assert!(decode_frame(&frame(&[0x82, 0x06, 0xC0, 0xA0]), &Limits::default()).is_err());
}

#[test]
fn kms_error_keeps_code_message_status_and_retryable() {
    let k = KmsError {
        code: "ThrottlingException".into(),
        message: "Rate exceeded".into(),
        status: 400,
        retryable: true,
    };
    let m = Message::Response {
        id: 5,
        result: Err(WireError::kms(k.clone())),
    };
    let (back, _) = complete(&encode(&m).unwrap());
    let Message::Response {
        id: 5,
        result: Err(w),
    } = back
    else {
        panic!("{back:?}")
    };
    assert_eq!(w.code(), ErrorCode::Kms);
    assert_eq!(w.kms_error(), Some(&k));
    assert_eq!(w.message(), "Rate exceeded");
    assert!(w.retryable());
    assert_eq!(crate::Error::from(w), crate::Error::Kms(k));
}

#[test]
fn plaintext_never_crosses_the_wire() {
    let secret = [0x5Eu8; 32];
    let m = Message::Response {
        id: 1,
        result: Ok(KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
            plaintext: Some(SecretBytes::from_slice(&secret)),
            ..Default::default()
        })),
    };
    let e = encode(&m).unwrap_err();
    assert_eq!(
        e,
        ProtocolError::PlaintextOnWire {
            operation: Operation::GenerateDataKey
        }
    );
    // A peer that sends one anyway is refused too.
    #[derive(serde::Serialize)]
    struct P<'a> {
        id: u64,
        result: &'a Result<KmsResponse, WireError>,
    }
    let Message::Response { result, .. } = &m else {
        unreachable!()
    };
    let mut body = Vec::new();
    ciborium::into_writer(&(4u8, P { id: 1, result }), &mut body).unwrap();
    let e = decode_frame(&frame(&body), &Limits::default()).unwrap_err();
    assert!(matches!(e, ProtocolError::PlaintextOnWire { .. }));
    assert!(!e.to_string().contains("5e5e"));
}

#[test]
fn error_messages_do_not_echo_long_input() {
    // A 10 KB string where a u16 belongs.
    let long = "s".repeat(10_000);
    let body = cbor(&ciborium::Value::Array(vec![
        ciborium::Value::Integer(1.into()),
        ciborium::Value::Map(vec![(
            ciborium::Value::Text("min".into()),
            ciborium::Value::Text(long),
        )]),
    ]));
    let e = decode_frame(&frame(&body), &Limits::default()).unwrap_err();
    assert!(e.to_string().len() < 400, "{e}");
}

#[test]
fn v2_kinds_have_their_wire_values_and_version() {
    let kinds: Vec<_> = v2_messages()
        .iter()
        .map(|m| (m.kind().to_wire(), m.kind().since_version()))
        .collect();
    assert_eq!(
        kinds,
        [
            (7, 2),
            (7, 2),
            (8, 2),
            (8, 2),
            (8, 2),
            (9, 2),
            (9, 2),
            (10, 2)
        ]
    );
    let bytes = encode(&Message::TunnelOpened).unwrap();
    assert_eq!(bytes, [0, 0, 0, 3, 0x82, 0x0A, 0xA0]);
    // A version 1 connection refuses them; version 2 allows every kind.
    for m in v2_messages() {
        assert_eq!(
            m.kind().check_version(1),
            Err(ProtocolError::NotInVersion {
                kind: m.kind(),
                version: 1
            })
        );
        assert_eq!(m.kind().check_version(2), Ok(()));
    }
    assert_eq!(MessageKind::Request.check_version(1), Ok(()));
    let e = MessageKind::OpenTunnel.check_version(1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "OpenTunnel is not a message of protocol version 1"
    );
}

#[test]
fn v3_metrics_has_its_wire_value_and_version_and_is_checked_both_ways() {
    for m in v3_messages() {
        assert_eq!((m.kind().to_wire(), m.kind().since_version()), (11, 3));
        assert_eq!(
            m.kind().check_version(2),
            Err(ProtocolError::NotInVersion {
                kind: MessageKind::Metrics,
                version: 2
            })
        );
        assert_eq!(m.kind().check_version(3), Ok(()));
    }
    // The encoder refuses an id that could break a label...
    let mut bad = report();
    bad.enclave = "x\"} 1\nkeybroker_fake{a=\"".into();
    let e = encode(&Message::Metrics {
        report: bad.clone(),
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::InvalidField {
                field: "enclave",
                ..
            }
        ),
        "{e}"
    );
    // ... and so does the decoder, given the same payload built by hand.
    let body = {
        let mut out = Vec::new();
        ciborium::into_writer(
            &(11u8, std::collections::BTreeMap::from([("report", &bad)])),
            &mut out,
        )
        .unwrap();
        out
    };
    let e = decode_frame(&frame(&body), &Limits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::InvalidField {
                field: "enclave",
                ..
            }
        ),
        "{e}"
    );
    // A name outside the fixed tables is refused, not carried along.
    let mut value = ciborium::Value::serialized(&report()).unwrap();
    if let ciborium::Value::Map(fields) = &mut value {
        for (k, v) in fields.iter_mut() {
            if k.as_text() == Some("endpoint") {
                *v = ciborium::Value::Array(vec![ciborium::Value::Map(vec![
                    ("operation".into(), "Encrypt".into()),
                    ("outcome".into(), "ok".into()),
                    ("count".into(), 1.into()),
                ])]);
            }
        }
    }
    let body = cbor(&ciborium::Value::Array(vec![
        11.into(),
        ciborium::Value::Map(vec![("report".into(), value)]),
    ]));
    assert!(matches!(
        decode_frame(&frame(&body), &Limits::default()),
        Err(ProtocolError::Malformed(_))
    ));
    // Unknown fields are ignored and missing ones are zero: `{enclave}` alone.
    let body = cbor(&ciborium::Value::Array(vec![
        11.into(),
        ciborium::Value::Map(vec![(
            "report".into(),
            ciborium::Value::Map(vec![
                ("enclave".into(), "e".into()),
                ("future_counter".into(), 9.into()),
            ]),
        )]),
    ]));
    assert_eq!(complete(&frame(&body)).0, v3_messages()[1]);
}

/// `[9, {host, port}]` built by hand, bypassing the encoder's checks.
fn raw_open_tunnel(host: ciborium::Value, port: ciborium::Value) -> Vec<u8> {
    use ciborium::Value;
    frame(&cbor(&Value::Array(vec![
        Value::Integer(9.into()),
        Value::Map(vec![
            (Value::Text("host".into()), host),
            (Value::Text("port".into()), port),
        ]),
    ])))
}

#[test]
fn bad_tunnel_targets_are_refused_both_ways() {
    use ciborium::Value;
    let port = || Value::Integer(443.into());
    for host in [
        "kms.amazonaws.com\n2026-12-01T00:00:00Z INFO keybroker_proxy::audit: tunnel",
        "",
        "a b",
        "under_score",
        "127.1",
    ] {
        let m = Message::OpenTunnel {
            host: host.to_string(),
            port: 443,
        };
        assert!(
            matches!(
                encode(&m),
                Err(ProtocolError::InvalidField { field: "host", .. })
            ),
            "{host:?}"
        );
        assert!(
            matches!(
                decode_frame(
                    &raw_open_tunnel(Value::Text(host.to_string()), port()),
                    &Limits::default()
                ),
                Err(ProtocolError::InvalidField { field: "host", .. })
            ),
            "{host:?}"
        );
    }
    let long = "a.".repeat(MAX_HOST_LEN / 2) + "ab";
    assert!(long.len() > MAX_HOST_LEN);
    assert!(
        decode_frame(
            &raw_open_tunnel(Value::Text(long), port()),
            &Limits::default()
        )
        .is_err()
    );
    // Port 0, a port over u16, a missing port, a host of the wrong type.
    for (host, port) in [
        (Value::Text("kms".into()), Value::Integer(0.into())),
        (Value::Text("kms".into()), Value::Integer(65_536.into())),
        (Value::Text("kms".into()), Value::Null),
        (Value::Bytes(b"kms".to_vec()), Value::Integer(443.into())),
    ] {
        assert!(
            decode_frame(
                &raw_open_tunnel(host.clone(), port.clone()),
                &Limits::default()
            )
            .is_err(),
            "{host:?} {port:?}"
        );
    }
    assert!(
        encode(&Message::OpenTunnel {
            host: "kms".into(),
            port: 0
        })
        .is_err()
    );
}

#[test]
fn bad_credentials_are_refused_both_ways() {
    let mut oversized = credentials();
    oversized.session_token = Some(SecretString::new("t".repeat(MAX_SESSION_TOKEN_LEN + 1)));
    let mut header_injection = credentials();
    header_injection.secret_access_key =
        SecretString::from_str_copy("abc\r\nX-Amz-Security-Token: x");
    let mut bad_id = credentials();
    bad_id.access_key_id = "ASIA OSFODNN7EXAMPLE".into();
    for creds in [oversized, header_injection, bad_id] {
        let m = Message::Credentials {
            id: 1,
            result: Ok(creds.clone()),
        };
        assert!(matches!(
            encode(&m),
            Err(ProtocolError::InvalidField { .. })
        ));
        // Built by hand with the same layout: the decoder refuses it too.
        #[derive(serde::Serialize)]
        struct P<'a> {
            id: u64,
            result: Result<&'a AwsCredentialsWire, WireError>,
        }
        let mut body = Vec::new();
        ciborium::into_writer(
            &(
                8u8,
                P {
                    id: 1,
                    result: Ok(&creds),
                },
            ),
            &mut body,
        )
        .unwrap();
        let e = decode_frame(&frame(&body), &Limits::default()).unwrap_err();
        assert!(matches!(e, ProtocolError::InvalidField { .. }), "{e}");
        assert!(!e.to_string().contains("X-Amz"), "{e}");
    }
    // Malformed payloads: no secret, a secret of the wrong type.
    use ciborium::Value;
    for fields in [
        vec![(
            Value::Text("access_key_id".into()),
            Value::Text("ASIAIOSFODNN7EXAMPLE".into()),
        )],
        vec![
            (
                Value::Text("access_key_id".into()),
                Value::Text("ASIAIOSFODNN7EXAMPLE".into()),
            ),
            (
                Value::Text("secret_access_key".into()),
                Value::Bytes(vec![1, 2]),
            ),
        ],
    ] {
        let body = cbor(&Value::Array(vec![
            Value::Integer(8.into()),
            Value::Map(vec![
                (Value::Text("id".into()), Value::Integer(1.into())),
                (
                    Value::Text("result".into()),
                    Value::Map(vec![(Value::Text("Ok".into()), Value::Map(fields))]),
                ),
            ]),
        ]));
        assert!(matches!(
            decode_frame(&frame(&body), &Limits::default()),
            Err(ProtocolError::Malformed(_))
        ));
    }
}

#[test]
fn credentials_debug_redacts_the_secrets() {
    let m = Message::Credentials {
        id: 1,
        result: Ok(credentials()),
    };
    let shown = format!("{m:?}");
    assert!(
        !shown.contains("wJalr") && !shown.contains("IQoJ"),
        "{shown}"
    );
    assert!(shown.contains("ASIAIOSFODNN7EXAMPLE"), "{shown}");
}

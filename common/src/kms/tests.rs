//! Tests of the KMS shapes: JSON bodies as KMS reads and writes them, CBOR
//! on the enclave <-> proxy wire, and the error table.

use super::*;
use crate::secret::SecretBytes;

#[test]
fn request_bodies_parse_by_operation() {
    let r = KmsRequest::from_json(
        Operation::GenerateDataKey,
        br#"{"KeyId":"alias/a","KeySpec":"AES_256"}"#,
    )
    .unwrap();
    assert_eq!(r.operation(), Operation::GenerateDataKey);
    assert_eq!(r.key_id(), Some("alias/a"));
    let r = KmsRequest::from_json(Operation::GenerateRandom, br#"{"NumberOfBytes":8}"#);
    let r = r.unwrap();
    assert_eq!(r.operation(), Operation::GenerateRandom);
    assert_eq!(r.to_json().unwrap(), br#"{"NumberOfBytes":8}"#);
    // Malformed JSON or a field of the wrong type is an error.
    assert!(KmsRequest::from_json(Operation::GenerateDataKey, br#"{"KeyId": 7}"#).is_err());
    assert!(KmsRequest::from_json(Operation::GenerateDataKey, b"[").is_err());
}

#[test]
fn generate_data_key_json_matches_kms_shape() {
    let req = GenerateDataKeyRequest {
        key_id: Some("alias/app".into()),
        key_spec: Some(DataKeySpec::Aes256),
        encryption_context: Some([("purpose".to_string(), "test".to_string())].into()),
        recipient: Some(RecipientInfo::new(vec![1, 2, 3])),
        ..Default::default()
    };
    let json = serde_json::to_value(&req).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "KeyId": "alias/app",
            "KeySpec": "AES_256",
            "EncryptionContext": {"purpose": "test"},
            "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "AQID"}
        })
    );
    let back: GenerateDataKeyRequest = serde_json::from_value(json).unwrap();
    assert_eq!(back, req);
}

/// A DER SubjectPublicKeyInfo with algorithm `alg` and parameters `params`.
fn spki_with(alg: &str, params: Option<&str>, key: &[u8]) -> Vec<u8> {
    use der::Encode;
    let algorithm = spki::AlgorithmIdentifierOwned {
        oid: alg.parse().unwrap(),
        parameters: params.map(|p| {
            let oid: const_oid::ObjectIdentifier = p.parse().unwrap();
            der::Any::encode_from(&oid).unwrap()
        }),
    };
    spki::SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: der::asn1::BitString::from_bytes(key).unwrap(),
    }
    .to_der()
    .unwrap()
}

#[test]
fn derive_shared_secret_length_follows_the_public_key_curve() {
    use aws_lc_rs::agreement::{self, PrivateKey};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    for (alg, curve, len) in [
        (&agreement::ECDH_P256, EcdhCurve::NistP256, 32),
        (&agreement::ECDH_P384, EcdhCurve::NistP384, 48),
        (&agreement::ECDH_P521, EcdhCurve::NistP521, 66),
    ] {
        let key = PrivateKey::generate(alg).unwrap();
        let der: PublicKeyX509Der<'_> = key.compute_public_key().unwrap().as_der().unwrap();
        assert_eq!(EcdhCurve::of_spki(der.as_ref()).unwrap(), curve);
        let req = DeriveSharedSecretRequest {
            key_id: Some("alias/agree".into()),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: Some(Blob(der.as_ref().to_vec())),
            ..Default::default()
        };
        assert_eq!(req.shared_secret_len().unwrap(), len);
    }
    let k1 = spki_with("1.2.840.10045.2.1", Some("1.3.132.0.10"), &[4; 65]);
    assert_eq!(EcdhCurve::of_spki(&k1).unwrap(), EcdhCurve::SecgP256k1);

    // Refused locally, before anything is sent.
    let x25519 = spki_with("1.3.101.110", None, &[9; 32]);
    let rsa = spki_with("1.2.840.113549.1.1.1", None, &[0x30, 0]);
    let brainpool = spki_with("1.2.840.10045.2.1", Some("1.3.36.3.3.2.8.1.1.7"), &[4; 65]);
    let no_curve = spki_with("1.2.840.10045.2.1", None, &[4; 65]);
    for bad in [
        &x25519[..],
        &rsa,
        &brainpool,
        &no_curve,
        b"not der",
        &[],
        &vec![0x30; PUBLIC_KEY_MAX + 1],
    ] {
        assert!(
            matches!(
                EcdhCurve::of_spki(bad),
                Err(crate::Error::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    let mut req = DeriveSharedSecretRequest {
        key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
        ..Default::default()
    };
    assert!(req.shared_secret_len().is_err(), "no PublicKey");
    req.public_key = Some(Blob(k1));
    req.key_agreement_algorithm = None;
    assert!(req.shared_secret_len().is_err(), "no algorithm");
}

#[test]
fn derive_shared_secret_json_matches_kms_shape() {
    let body = br#"{"KeyId":"alias/agree","KeyAgreementAlgorithm":"ECDH","PublicKey":"AQI=","GrantTokens":["g"],"DryRun":false,"Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256","AttestationDocument":"AwQ="}}"#;
    let KmsRequest::DeriveSharedSecret(req) =
        KmsRequest::from_json(Operation::DeriveSharedSecret, body).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(req.public_key, Some(Blob(vec![1, 2])));
    assert_eq!(req.recipient, Some(RecipientInfo::new(vec![3, 4])));
    let resp = KmsResponse::from_json(
        Operation::DeriveSharedSecret,
        br#"{"KeyId":"arn:k","SharedSecret":"BQY=","KeyAgreementAlgorithm":"ECDH","KeyOrigin":"AWS_KMS"}"#,
    )
    .unwrap();
    assert!(resp.has_plaintext());
    assert_eq!(resp.key_id(), Some("arn:k"));
    assert!(Operation::DeriveSharedSecret.returns_plaintext());
    let d: DecryptRequest = serde_json::from_str(
        r#"{"CiphertextBlob":"AA==","DryRun":true,"DryRunModifiers":["IGNORE_CIPHERTEXT"]}"#,
    )
    .unwrap();
    assert_eq!(
        d.dry_run_modifiers,
        Some(vec![DryRunModifier::IgnoreCiphertext])
    );
}

#[test]
fn response_ignores_unknown_fields_and_decodes_blobs() {
    let r: GenerateDataKeyResponse = serde_json::from_str(
        r#"{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/x","CiphertextBlob":"AAE=","CiphertextForRecipient":"AgM=","SomethingNew":1}"#,
    )
    .unwrap();
    assert_eq!(r.ciphertext_blob, Some(Blob(vec![0, 1])));
    assert_eq!(r.ciphertext_for_recipient, Some(Blob(vec![2, 3])));
    assert!(r.plaintext.is_none());
}

#[test]
fn requested_lengths_need_exactly_one_spec_in_range() {
    let gdk = |key_spec, number_of_bytes| GenerateDataKeyRequest {
        key_spec,
        number_of_bytes,
        ..Default::default()
    };
    assert_eq!(gdk(Some(DataKeySpec::Aes256), None).data_key_len(), Ok(32));
    assert_eq!(gdk(Some(DataKeySpec::Aes128), None).data_key_len(), Ok(16));
    assert_eq!(gdk(None, Some(1024)).data_key_len(), Ok(1024));
    for bad in [
        gdk(None, None),
        gdk(Some(DataKeySpec::Aes256), Some(32)),
        gdk(None, Some(0)),
        gdk(None, Some(1025)),
    ] {
        assert!(
            matches!(bad.data_key_len(), Err(crate::Error::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    let random = |number_of_bytes| GenerateRandomRequest {
        number_of_bytes,
        ..Default::default()
    };
    assert_eq!(random(Some(1)).random_len(), Ok(1));
    assert!(random(None).random_len().is_err());
    assert!(random(Some(1025)).random_len().is_err());
}

#[test]
fn bad_base64_is_an_error_not_a_panic() {
    let r = serde_json::from_str::<DecryptRequest>(r#"{"CiphertextBlob":"!!!"}"#);
    assert!(r.is_err());
}

#[test]
fn error_codes_map_to_kms_status() {
    assert_eq!(KmsError::new("NotFoundException", "x").status, 400);
    assert!(!KmsError::new("AccessDeniedException", "x").retryable);
    assert!(KmsError::new("ThrottlingException", "x").retryable);
    let e = KmsError::new("KMSInternalException", "x");
    assert_eq!((e.status, e.retryable), (500, true));
    assert_eq!(KmsError::new("DependencyTimeoutException", "x").status, 503);
    assert_eq!(
        KmsError::normalize_code("com.amazonaws.kms#NotFoundException"),
        "NotFoundException"
    );
    // A typed code gives the same error as its spelling; an unknown one is
    // kept as sent, 400 and not retryable.
    for code in KmsErrorCode::ALL {
        let typed = KmsError::new(code, "m");
        assert_eq!(typed, KmsError::new(code.as_str(), "m"));
        assert_eq!(
            (typed.status, typed.retryable),
            (code.http_status(), code.is_retryable())
        );
        assert_eq!(typed.kind(), Some(code));
        assert!(typed.is(code));
    }
    let e = KmsError::new("SomeNewException", "m");
    assert_eq!(
        (e.code.as_str(), e.status, e.retryable, e.kind()),
        ("SomeNewException", 400, false, None)
    );
    assert!(!e.is(KmsErrorCode::NotFound));
    assert!(!KmsError::new("LimitExceededException", "x").retryable);
}

#[test]
fn blobs_are_cbor_byte_strings() {
    let r = KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
        key_id: Some("k".into()),
        ciphertext_blob: Some(Blob(vec![0xAA; 4])),
        plaintext: Some(SecretBytes::from_slice(&[7; 3])),
        ..Default::default()
    });
    let mut out = Vec::new();
    ciborium::into_writer(&r, &mut out).unwrap();
    let big = DecryptRequest {
        ciphertext_blob: Some(Blob(vec![0x5A; 10_000])),
        recipient: Some(RecipientInfo::new(vec![0xA5; 20_000])),
        ..Default::default()
    };
    let mut big_cbor = Vec::new();
    ciborium::into_writer(&big, &mut big_cbor).unwrap();
    let back: DecryptRequest = ciborium::from_reader(big_cbor.as_slice()).unwrap();
    assert_eq!(
        back, big,
        "blobs larger than ciborium's scratch buffer decode"
    );
    // A byte string header for 4 bytes (0x44), not base64 text.
    assert!(out.windows(5).any(|w| w == [0x44, 0xAA, 0xAA, 0xAA, 0xAA]));
    let back: KmsResponse = ciborium::from_reader(out.as_slice()).unwrap();
    assert_eq!(back, r);
}

//! Unit tests of the engine.

use super::*;

fn engine() -> Engine {
    Engine::new(
        EngineConfig {
            region: "us-east-1".into(),
            account_id: "111122223333".into(),
            caller_principal: "arn:aws:iam::111122223333:root".into(),
            state_file: None,
        },
        Store::new("us-east-1", "111122223333"),
        RecipientVerifier::new([], 300_000).unwrap(),
    )
}

fn call(e: &Engine, op: &str, body: Value) -> Result<Value, KmsError> {
    e.handle(op, body.to_string().as_bytes())
}

#[test]
fn validation_messages_use_kms_wording() {
    let e = engine();
    let m = call(
        &e,
        "GenerateDataKey",
        json!({"KeyId": "alias/x", "NumberOfBytes": 1025}),
    )
    .unwrap_err();
    assert_eq!(m.code, "ValidationException");
    assert_eq!(
        m.message,
        "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"
    );
    let m = call(
        &e,
        "GenerateDataKey",
        json!({"NumberOfBytes": 0, "KeySpec": "AES-256"}),
    )
    .unwrap_err();
    assert!(
        m.message.starts_with("3 validation errors detected: "),
        "{}",
        m.message
    );
    assert!(
        m.message.contains(
            "Value null at 'keyId' failed to satisfy constraint: Member must not be null"
        )
    );
    assert!(m.message.contains("Value 'AES-256' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"));
    let m = call(&e, "GenerateDataKey", json!({"KeyId": "alias/x"})).unwrap_err();
    assert_eq!(
        m.message,
        "Please specify either number of bytes or key spec."
    );
    let m = call(
        &e,
        "Decrypt",
        json!({"CiphertextBlob": STANDARD.encode(vec![0u8; 6145])}),
    )
    .unwrap_err();
    assert_eq!(
        m.message,
        "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length less than or equal to 6144"
    );
    let tokens: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let m = call(
        &e,
        "GenerateDataKey",
        json!({"KeyId": "k", "KeySpec": "AES_256", "GrantTokens": tokens}),
    )
    .unwrap_err();
    assert!(
        m.message
            .contains("Value '[t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10]' at 'grantTokens'"),
        "{}",
        m.message
    );
}

#[test]
fn bad_bodies_are_serialization_errors() {
    let e = engine();
    assert_eq!(
        e.handle("ListKeys", b"{").unwrap_err().code,
        "SerializationException"
    );
    assert_eq!(
        e.handle("ListKeys", b"[1]").unwrap_err().code,
        "SerializationException"
    );
    assert_eq!(
        e.handle("Decrypt", br#"{"CiphertextBlob": "!!notbase64"}"#)
            .unwrap_err()
            .code,
        "SerializationException"
    );
    assert!(e.handle("ListKeys", b"").is_ok());
    assert_eq!(
        e.handle("Frobnicate", b"{}").unwrap_err().code,
        "UnknownOperationException"
    );
}

#[test]
fn key_pairs_of_every_supported_spec_are_pkcs8_and_spki() {
    for spec in DataKeyPairSpec::ALL {
        match generate_key_pair(spec) {
            Ok((private, public)) => {
                // Both are DER SEQUENCEs.
                assert_eq!(private[0], 0x30, "{spec:?}");
                assert_eq!(public[0], 0x30, "{spec:?}");
                if spec == DataKeyPairSpec::EccNistP256 {
                    use aws_lc_rs::signature::KeyPair as _;
                    let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        &private,
                    )
                    .unwrap();
                    assert!(public.ends_with(kp.public_key().as_ref()));
                }
            }
            Err(e) => {
                assert_eq!(spec, DataKeyPairSpec::Sm2);
                assert_eq!(e.code, "UnsupportedOperationException");
            }
        }
    }
}

#[test]
fn key_ids_are_v4_uuids() {
    let e = engine();
    let id = e.new_key_id().unwrap();
    assert!(super::super::store::is_key_id(&id), "{id}");
    assert_eq!(id.as_bytes()[14], b'4');
}

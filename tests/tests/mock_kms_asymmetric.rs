//! Asymmetric keys of the mock KMS through the real `aws-sdk-kms` client and
//! the `openssl` CLI: `CreateKey` with `KeySpec`/`KeyUsage`, `GetPublicKey`,
//! `DeriveSharedSecret` (with and without `Recipient`) against the ECDH the
//! caller computes itself, RSA `Encrypt`/`Decrypt` (also of OpenSSL's
//! RSA-OAEP ciphertext), the errors KMS gives, `KeyMaterialId` and
//! `DryRunModifiers`.
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::process::Command;

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::{AsBigEndian as _, AsDer as _};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{ECDSA_P256K1_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeyPairSpec, DataKeySpec, DryRunModifierType, EncryptionAlgorithmSpec,
    KeyAgreementAlgorithmSpec, KeySpec, KeyUsageType, OriginType,
};
use keybroker_common::cms::decrypt as cms_decrypt;
use keybroker_common::kms::EcdhCurve;
use keybroker_harness::mock_kms::MockKmsConfig;
use support::{Enclave, config_trusting, created, expect_code, recipient, start, test_pki};

const CURVES: [(KeySpec, EcdhCurve); 4] = [
    (KeySpec::EccNistP256, EcdhCurve::NistP256),
    (KeySpec::EccNistP384, EcdhCurve::NistP384),
    (KeySpec::EccNistP521, EcdhCurve::NistP521),
    (KeySpec::EccSecgP256K1, EcdhCurve::SecgP256k1),
];

const PCR0: [u8; 48] = [0xA5; 48];

async fn create(c: &aws_sdk_kms::Client, spec: KeySpec, usage: KeyUsageType) -> (String, String) {
    let m = created(c.create_key().key_spec(spec).key_usage(usage)).await;
    (m.key_id, m.arn.unwrap())
}

async fn public_key(c: &aws_sdk_kms::Client, id: &str) -> Vec<u8> {
    c.get_public_key()
        .key_id(id)
        .send()
        .await
        .unwrap()
        .public_key
        .unwrap()
        .into_inner()
}

/// The caller's own key pair on `curve`: (its SPKI, a function computing
/// the raw ECDH secret with a peer's SPKI), independent of the mock's code.
/// Computes the raw ECDH secret of the caller's private key with a peer's SPKI.
type Agree = Box<dyn Fn(&[u8]) -> Vec<u8>>;

fn caller_key(curve: EcdhCurve) -> (Vec<u8>, Agree) {
    let alg = match curve {
        EcdhCurve::NistP256 => &agreement::ECDH_P256,
        EcdhCurve::NistP384 => &agreement::ECDH_P384,
        EcdhCurve::NistP521 => &agreement::ECDH_P521,
        EcdhCurve::SecgP256k1 => {
            // aws-lc-rs makes the key pair, k256 does the ECDH.
            let kp = EcdsaKeyPair::generate(&ECDSA_P256K1_SHA256_ASN1_SIGNING).unwrap();
            let spki = kp.public_key().as_der().unwrap().as_ref().to_vec();
            let scalar = kp.private_key().as_be_bytes().unwrap().as_ref().to_vec();
            let secret = k256::SecretKey::from_slice(&scalar).unwrap();
            return (
                spki,
                Box::new(move |peer: &[u8]| {
                    use der::Decode as _;
                    let info = spki::SubjectPublicKeyInfoRef::from_der(peer).unwrap();
                    let point = info.subject_public_key.as_bytes().unwrap();
                    let peer = k256::PublicKey::from_sec1_bytes(point).unwrap();
                    k256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine())
                        .raw_secret_bytes()
                        .to_vec()
                }),
            );
        }
    };
    let private = agreement::PrivateKey::generate(alg).unwrap();
    let spki = private
        .compute_public_key()
        .unwrap()
        .as_der()
        .unwrap()
        .as_ref()
        .to_vec();
    (
        spki,
        Box::new(move |peer: &[u8]| {
            agreement::agree(
                &private,
                agreement::UnparsedPublicKey::new(alg, peer),
                (),
                |s| Ok(s.to_vec()),
            )
            .unwrap()
        }),
    )
}

#[tokio::test]
async fn every_curve_derives_the_ecdh_secret_the_caller_computes() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    for (spec, curve) in CURVES {
        let (id, arn) = create(&c, spec.clone(), KeyUsageType::KeyAgreement).await;
        let md = c
            .describe_key()
            .key_id(&id)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        assert_eq!(md.key_spec(), Some(&spec));
        assert_eq!(md.key_usage(), Some(&KeyUsageType::KeyAgreement));
        assert_eq!(
            md.key_agreement_algorithms(),
            &[KeyAgreementAlgorithmSpec::Ecdh]
        );
        assert!(md.encryption_algorithms().is_empty(), "{spec:?}");

        let g = c.get_public_key().key_id(&id).send().await.unwrap();
        assert_eq!(g.key_id(), Some(arn.as_str()));
        assert_eq!(g.key_spec(), Some(&spec));
        assert_eq!(g.key_usage(), Some(&KeyUsageType::KeyAgreement));
        assert_eq!(
            g.key_agreement_algorithms(),
            &[KeyAgreementAlgorithmSpec::Ecdh]
        );
        assert!(g.encryption_algorithms().is_empty());
        let kms_spki = g.public_key().unwrap().as_ref().to_vec();
        assert_eq!(EcdhCurve::of_spki(&kms_spki).unwrap(), curve);

        let (mine, agree) = caller_key(curve);
        let expected = agree(&kms_spki);
        assert_eq!(expected.len(), curve.shared_secret_len());
        let d = c
            .derive_shared_secret()
            .key_id(&id)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(mine.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            d.shared_secret().unwrap().as_ref(),
            expected.as_slice(),
            "{spec:?}"
        );
        assert_eq!(d.key_id(), Some(arn.as_str()));
        assert_eq!(
            d.key_agreement_algorithm(),
            Some(&KeyAgreementAlgorithmSpec::Ecdh)
        );
        assert_eq!(d.key_origin(), Some(&OriginType::AwsKms));
        assert!(d.ciphertext_for_recipient().is_none());
        // The same answer through an alias, with grant tokens.
        let alias = format!("alias/ecdh-{}", curve.as_str().to_lowercase());
        c.create_alias()
            .alias_name(&alias)
            .target_key_id(&id)
            .send()
            .await
            .unwrap();
        let again = c
            .derive_shared_secret()
            .key_id(&alias)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(mine))
            .grant_tokens("token")
            .send()
            .await
            .unwrap();
        assert_eq!(again.shared_secret(), d.shared_secret());
    }
}

/// Everything for the account root, DeriveSharedSecret and Decrypt only for
/// an enclave whose PCR0 is [`PCR0`].
fn attested_policy() -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": support::ROOT_PRINCIPAL},
             "NotAction": ["kms:DeriveSharedSecret", "kms:Decrypt"], "Resource": "*"},
            {"Sid": "EnclaveOnly", "Effect": "Allow", "Principal": {"AWS": support::ROOT_PRINCIPAL},
             "Action": ["kms:DeriveSharedSecret", "kms:Decrypt"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {
                 "kms:RecipientAttestation:ImageSha384": hex::encode(PCR0)}}}
        ]
    })
    .to_string()
}

#[tokio::test]
async fn derive_shared_secret_with_recipient_returns_it_only_in_cms_for_the_enclave() {
    let pki = test_pki();
    let (_kms, c) = start(config_trusting(&pki)).await;
    let enclave = Enclave::new(pki);
    for (spec, curve) in [CURVES[0].clone(), CURVES[3].clone()] {
        let id = created(
            c.create_key()
                .key_spec(spec)
                .key_usage(KeyUsageType::KeyAgreement)
                .policy(attested_policy()),
        )
        .await
        .key_id;
        let kms_spki = public_key(&c, &id).await;
        let (mine, agree) = caller_key(curve);
        let expected = agree(&kms_spki);
        let send = |doc: Option<Vec<u8>>| {
            let mut b = c
                .derive_shared_secret()
                .key_id(&id)
                .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
                .public_key(Blob::new(mine.clone()));
            if let Some(d) = doc {
                b = b.recipient(recipient(d));
            }
            b
        };
        let r = send(Some(enclave.doc(PCR0))).send().await.unwrap();
        assert!(r.shared_secret().is_none(), "SharedSecret with a Recipient");
        let cfr = r.ciphertext_for_recipient().unwrap().as_ref();
        // BER as KMS sends it: ContentInfo SEQUENCE with indefinite length.
        assert_eq!(&cfr[..2], &[0x30, 0x80]);
        let opened = cms_decrypt(cfr, &enclave.key, None).unwrap();
        assert_eq!(opened.expose(), expected.as_slice());
        assert_eq!(r.key_origin(), Some(&OriginType::AwsKms));

        // The policy's attestation condition decides.
        expect_code(send(None).send().await, "AccessDeniedException");
        expect_code(
            send(Some(enclave.doc([0x5A; 48]))).send().await,
            "AccessDeniedException",
        );
        // DryRun: the full check, then DryRunOperationException.
        expect_code(
            send(Some(enclave.doc(PCR0))).dry_run(true).send().await,
            "DryRunOperationException",
        );
        expect_code(
            send(None).dry_run(true).send().await,
            "AccessDeniedException",
        );
        // Grant tokens: at most 10.
        let m = expect_code(
            send(Some(enclave.doc(PCR0)))
                .set_grant_tokens(Some((0..11).map(|i| format!("t{i}")).collect()))
                .send()
                .await,
            "ValidationException",
        );
        assert!(m.contains("at 'grantTokens'"), "{m}");
        // An attestation document the mock cannot verify.
        let m = expect_code(
            send(Some(b"not a document".to_vec())).send().await,
            "ValidationException",
        );
        assert!(m.contains("attestation document"), "{m}");
    }
}

#[tokio::test]
async fn derive_shared_secret_refuses_what_kms_refuses() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (p256, p256_arn) = create(&c, KeySpec::EccNistP256, KeyUsageType::KeyAgreement).await;
    let (mine, _) = caller_key(EcdhCurve::NistP256);
    let derive = |key: &str, pk: Vec<u8>| {
        c.derive_shared_secret()
            .key_id(key)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(pk))
    };
    // Wrong key usage: a symmetric key, an RSA key.
    let sym = created(c.create_key()).await.key_id;
    let m = expect_code(
        derive(&sym, mine.clone()).send().await,
        "InvalidKeyUsageException",
    );
    assert!(m.contains("SYMMETRIC_DEFAULT"), "{m}");
    let (rsa, _) = create(&c, KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt).await;
    expect_code(
        derive(&rsa, mine.clone()).send().await,
        "InvalidKeyUsageException",
    );
    // A public key on another curve.
    let (p384_pk, _) = caller_key(EcdhCurve::NistP384);
    let m = expect_code(derive(&p256, p384_pk).send().await, "ValidationException");
    assert!(
        m.contains("ECC_NIST_P384") && m.contains("ECC_NIST_P256"),
        "{m}"
    );
    let (k1_pk, _) = caller_key(EcdhCurve::SecgP256k1);
    expect_code(derive(&p256, k1_pk).send().await, "ValidationException");
    // Malformed public keys: garbage, an RSA key, a point off the curve.
    expect_code(
        derive(&p256, b"\x30\x03\x02\x01\x00".to_vec()).send().await,
        "ValidationException",
    );
    let rsa_pk = public_key(&c, &rsa).await;
    expect_code(derive(&p256, rsa_pk).send().await, "ValidationException");
    let mut off = mine.clone();
    *off.last_mut().unwrap() ^= 1;
    expect_code(
        derive(&p256, off.clone()).send().await,
        "ValidationException",
    );
    // ... also in a dry run: the request is checked before DryRun answers.
    expect_code(
        derive(&p256, off).dry_run(true).send().await,
        "ValidationException",
    );
    expect_code(
        derive(&p256, mine.clone()).dry_run(true).send().await,
        "DryRunOperationException",
    );
    // Key states.
    c.disable_key().key_id(&p256).send().await.unwrap();
    let m = expect_code(
        derive(&p256, mine.clone()).send().await,
        "DisabledException",
    );
    assert_eq!(m, format!("{p256_arn} is disabled."));
    c.enable_key().key_id(&p256).send().await.unwrap();
    derive(&p256, mine.clone()).send().await.unwrap();
    c.schedule_key_deletion()
        .key_id(&p256)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    expect_code(
        derive(&p256, mine.clone()).send().await,
        "KMSInvalidStateException",
    );
    expect_code(derive("alias/none", mine).send().await, "NotFoundException");
}

#[tokio::test]
async fn derive_shared_secret_schema_errors_name_the_member() {
    let kms = keybroker_harness::mock_kms::MockKms::new(MockKmsConfig::default()).unwrap();
    let id = kms
        .call(
            "CreateKey",
            &serde_json::json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"}),
        )
        .unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = kms
        .call("DeriveSharedSecret", &serde_json::json!({"KeyId": id}))
        .unwrap_err();
    assert_eq!(e.code, "ValidationException");
    assert!(
        e.message.starts_with("2 validation errors detected: ")
            && e.message.contains("at 'keyAgreementAlgorithm'")
            && e.message.contains("at 'publicKey'"),
        "{}",
        e.message
    );
    let e = kms
        .call(
            "DeriveSharedSecret",
            &serde_json::json!({"KeyId": id, "KeyAgreementAlgorithm": "ECMQV", "PublicKey": "AA=="}),
        )
        .unwrap_err();
    assert_eq!(
        e.message,
        "1 validation error detected: Value 'ECMQV' at 'keyAgreementAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [ECDH]"
    );
}

#[tokio::test]
async fn create_key_refuses_invalid_spec_and_usage_combinations() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    for (spec, usage) in [
        (KeySpec::EccNistP256, None),
        (KeySpec::EccNistP256, Some(KeyUsageType::EncryptDecrypt)),
        (KeySpec::Rsa2048, Some(KeyUsageType::KeyAgreement)),
        (KeySpec::SymmetricDefault, Some(KeyUsageType::KeyAgreement)),
    ] {
        let mut b = c.create_key().key_spec(spec.clone());
        if let Some(u) = usage.clone() {
            b = b.key_usage(u);
        }
        let m = expect_code(b.send().await, "ValidationException");
        assert!(
            m.contains("is not compatible with KeySpec") || m.contains("KeyUsage is required"),
            "{spec:?} {usage:?}: {m}"
        );
    }
    // Valid in KMS, not emulated by the mock.
    for (spec, usage) in [
        (KeySpec::EccNistP256, KeyUsageType::SignVerify),
        (KeySpec::Rsa2048, KeyUsageType::SignVerify),
        (KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac),
    ] {
        expect_code(
            c.create_key().key_spec(spec).key_usage(usage).send().await,
            "UnsupportedOperationException",
        );
    }
    // GetPublicKey of a symmetric key.
    let sym = created(c.create_key()).await.key_id;
    expect_code(
        c.get_public_key().key_id(&sym).send().await,
        "UnsupportedOperationException",
    );
}

async fn rsa_key(c: &aws_sdk_kms::Client, spec: KeySpec) -> (String, Vec<u8>) {
    let (id, _) = create(c, spec, KeyUsageType::EncryptDecrypt).await;
    let pk = public_key(c, &id).await;
    (id, pk)
}

const RSA_ALGS: [EncryptionAlgorithmSpec; 2] = [
    EncryptionAlgorithmSpec::RsaesOaepSha1,
    EncryptionAlgorithmSpec::RsaesOaepSha256,
];

#[tokio::test]
async fn rsa_keys_encrypt_and_decrypt_with_both_algorithms_within_kms_limits() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    // KMS's documented plaintext limits (SHA-1, SHA-256).
    for (spec, bytes, limits) in [
        (KeySpec::Rsa2048, 256, [214, 190]),
        (KeySpec::Rsa3072, 384, [342, 318]),
        (KeySpec::Rsa4096, 512, [470, 446]),
    ] {
        let (id, spki) = rsa_key(&c, spec.clone()).await;
        let g = c.get_public_key().key_id(&id).send().await.unwrap();
        assert_eq!(g.key_usage(), Some(&KeyUsageType::EncryptDecrypt));
        assert_eq!(g.encryption_algorithms(), &RSA_ALGS);
        assert!(g.key_agreement_algorithms().is_empty());
        let md = c
            .describe_key()
            .key_id(&id)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        assert_eq!(md.key_spec(), Some(&spec));
        assert_eq!(md.encryption_algorithms(), &RSA_ALGS);
        assert_eq!(
            PublicEncryptingKey::from_der(&spki)
                .unwrap()
                .key_size_bytes(),
            bytes
        );
        for (alg, max) in RSA_ALGS.iter().zip(limits) {
            let pt = vec![0x42u8; max];
            let e = c
                .encrypt()
                .key_id(&id)
                .encryption_algorithm(alg.clone())
                .plaintext(Blob::new(pt.clone()))
                .send()
                .await
                .unwrap();
            assert_eq!(e.encryption_algorithm(), Some(alg));
            let ct = e.ciphertext_blob().unwrap().clone();
            assert_eq!(ct.as_ref().len(), bytes);
            let d = c
                .decrypt()
                .key_id(&id)
                .encryption_algorithm(alg.clone())
                .ciphertext_blob(ct.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(d.plaintext().unwrap().as_ref(), pt.as_slice());
            assert_eq!(d.encryption_algorithm(), Some(alg));
            assert!(d.key_id().unwrap().ends_with(&id));
            // One byte more than KMS documents.
            let m = expect_code(
                c.encrypt()
                    .key_id(&id)
                    .encryption_algorithm(alg.clone())
                    .plaintext(Blob::new(vec![0u8; max + 1]))
                    .send()
                    .await,
                "ValidationException",
            );
            assert!(m.contains(&format!("at most {max} bytes")), "{m}");
        }
    }
}

#[tokio::test]
async fn rsa_errors_are_the_ones_kms_gives() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, spki) = rsa_key(&c, KeySpec::Rsa2048).await;
    // No EncryptionAlgorithm: SYMMETRIC_DEFAULT, refused with KMS's text.
    let m = expect_code(
        c.encrypt()
            .key_id(&id)
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await,
        "InvalidKeyUsageException",
    );
    assert_eq!(
        m,
        "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048."
    );
    // An encryption context.
    expect_code(
        c.encrypt()
            .key_id(&id)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .encryption_context("k", "v")
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await,
        "ValidationException",
    );
    let ct = local_rsa_encrypt(&spki, &EncryptionAlgorithmSpec::RsaesOaepSha256, b"secret");
    // Decrypt without KeyId: the blob is not a KMS symmetric ciphertext.
    expect_code(
        c.decrypt()
            .ciphertext_blob(Blob::new(ct.clone()))
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .send()
            .await,
        "InvalidCiphertextException",
    );
    // Without EncryptionAlgorithm, and with the other hash.
    expect_code(
        c.decrypt()
            .key_id(&id)
            .ciphertext_blob(Blob::new(ct.clone()))
            .send()
            .await,
        "InvalidKeyUsageException",
    );
    expect_code(
        c.decrypt()
            .key_id(&id)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha1)
            .ciphertext_blob(Blob::new(ct.clone()))
            .send()
            .await,
        "InvalidCiphertextException",
    );
    // The right one decrypts; DryRun checks the ciphertext first.
    let d = c
        .decrypt()
        .key_id(&id)
        .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
        .ciphertext_blob(Blob::new(ct.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref(), b"secret");
    expect_code(
        c.decrypt()
            .key_id(&id)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .ciphertext_blob(Blob::new(ct))
            .dry_run(true)
            .send()
            .await,
        "DryRunOperationException",
    );
    // Symmetric operations under asymmetric keys.
    let (ecc, _) = create(&c, KeySpec::EccNistP256, KeyUsageType::KeyAgreement).await;
    for key in [&id, &ecc] {
        expect_code(
            c.generate_data_key()
                .key_id(key)
                .key_spec(DataKeySpec::Aes256)
                .send()
                .await,
            "InvalidKeyUsageException",
        );
        expect_code(
            c.generate_data_key_without_plaintext()
                .key_id(key)
                .key_spec(DataKeySpec::Aes256)
                .send()
                .await,
            "InvalidKeyUsageException",
        );
        expect_code(
            c.generate_data_key_pair()
                .key_id(key)
                .key_pair_spec(DataKeyPairSpec::EccNistP256)
                .send()
                .await,
            "InvalidKeyUsageException",
        );
    }
    // Encrypt under a key-agreement key.
    expect_code(
        c.encrypt()
            .key_id(&ecc)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await,
        "InvalidKeyUsageException",
    );
    // A symmetric key refuses the RSA algorithms.
    let sym = created(c.create_key()).await.key_id;
    expect_code(
        c.encrypt()
            .key_id(&sym)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await,
        "InvalidKeyUsageException",
    );
    // Disabled.
    c.disable_key().key_id(&id).send().await.unwrap();
    expect_code(
        c.encrypt()
            .key_id(&id)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await,
        "DisabledException",
    );
    expect_code(
        c.get_public_key().key_id(&id).send().await,
        "DisabledException",
    );
}

fn local_rsa_encrypt(spki: &[u8], alg: &EncryptionAlgorithmSpec, pt: &[u8]) -> Vec<u8> {
    let key = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).unwrap()).unwrap();
    let oaep = match alg {
        EncryptionAlgorithmSpec::RsaesOaepSha1 => &OAEP_SHA1_MGF1SHA1,
        _ => &OAEP_SHA256_MGF1SHA256,
    };
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key.encrypt(oaep, pt, &mut out, None).unwrap().len();
    out.truncate(n);
    out
}

#[tokio::test]
async fn rsa_ciphertext_made_outside_kms_decrypts_with_a_recipient() {
    let pki = test_pki();
    let (_kms, c) = start(config_trusting(&pki)).await;
    let enclave = Enclave::new(pki);
    let id = created(
        c.create_key()
            .key_spec(KeySpec::Rsa3072)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .policy(attested_policy()),
    )
    .await
    .key_id;
    let spki = public_key(&c, &id).await;
    for alg in RSA_ALGS {
        let ct = local_rsa_encrypt(&spki, &alg, b"for the enclave only");
        let decrypt = || {
            c.decrypt()
                .key_id(&id)
                .encryption_algorithm(alg.clone())
                .ciphertext_blob(Blob::new(ct.clone()))
        };
        let d = decrypt()
            .recipient(recipient(enclave.doc(PCR0)))
            .send()
            .await
            .unwrap();
        assert!(d.plaintext().is_none());
        assert!(d.key_material_id().is_none());
        let pt = cms_decrypt(
            d.ciphertext_for_recipient().unwrap().as_ref(),
            &enclave.key,
            None,
        )
        .unwrap();
        assert_eq!(pt.expose(), b"for the enclave only");
        expect_code(decrypt().send().await, "AccessDeniedException");
    }
}

#[tokio::test]
async fn key_material_ids_are_stable_per_key_and_absent_where_kms_omits_them() {
    let pki = test_pki();
    let (_kms, c) = start(config_trusting(&pki)).await;
    let enclave = Enclave::new(pki);
    let a = created(c.create_key()).await.key_id;
    let b = created(c.create_key()).await.key_id;
    let g = c
        .generate_data_key()
        .key_id(&a)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    let id = g.key_material_id().unwrap().to_owned();
    assert_eq!(id.len(), 64);
    assert!(
        id.bytes()
            .all(|x| x.is_ascii_hexdigit() && !x.is_ascii_uppercase())
    );
    let ids = [
        c.generate_data_key_without_plaintext()
            .key_id(&a)
            .number_of_bytes(8)
            .send()
            .await
            .unwrap()
            .key_material_id
            .unwrap(),
        c.generate_data_key_pair()
            .key_id(&a)
            .key_pair_spec(DataKeyPairSpec::EccNistP256)
            .send()
            .await
            .unwrap()
            .key_material_id
            .unwrap(),
        c.generate_data_key_pair_without_plaintext()
            .key_id(&a)
            .key_pair_spec(DataKeyPairSpec::EccNistP256)
            .send()
            .await
            .unwrap()
            .key_material_id
            .unwrap(),
        c.decrypt()
            .ciphertext_blob(g.ciphertext_blob().unwrap().clone())
            .send()
            .await
            .unwrap()
            .key_material_id
            .unwrap(),
    ];
    assert!(ids.iter().all(|i| *i == id), "{ids:?}");
    let re = c
        .re_encrypt()
        .ciphertext_blob(g.ciphertext_blob().unwrap().clone())
        .destination_key_id(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(re.source_key_material_id(), Some(id.as_str()));
    let other = re.destination_key_material_id().unwrap();
    assert_eq!(other.len(), 64);
    assert_ne!(other, id);
    // With a Recipient, KMS omits it from Decrypt.
    let d = c
        .decrypt()
        .ciphertext_blob(g.ciphertext_blob().unwrap().clone())
        .recipient(recipient(enclave.doc(PCR0)))
        .send()
        .await
        .unwrap();
    assert!(d.key_material_id().is_none());
}

#[tokio::test]
async fn decrypt_dry_run_modifiers_ignore_ciphertext_only_in_a_dry_run() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let a = created(c.create_key()).await.key_id;
    let garbage = Blob::new(vec![0u8; 64]);
    // Without the modifier a dry run validates the ciphertext.
    expect_code(
        c.decrypt()
            .key_id(&a)
            .ciphertext_blob(garbage.clone())
            .dry_run(true)
            .send()
            .await,
        "InvalidCiphertextException",
    );
    // With it, only permissions and key state: garbage and no blob at all.
    for blob in [Some(garbage.clone()), None] {
        expect_code(
            c.decrypt()
                .key_id(&a)
                .set_ciphertext_blob(blob)
                .dry_run(true)
                .dry_run_modifiers(DryRunModifierType::IgnoreCiphertext)
                .send()
                .await,
            "DryRunOperationException",
        );
    }
    // Without DryRun the modifier is ignored: the ciphertext is checked.
    expect_code(
        c.decrypt()
            .key_id(&a)
            .ciphertext_blob(garbage.clone())
            .dry_run_modifiers(DryRunModifierType::IgnoreCiphertext)
            .send()
            .await,
        "InvalidCiphertextException",
    );
    // No KeyId and no readable blob: nothing to check permissions on.
    expect_code(
        c.decrypt()
            .ciphertext_blob(garbage)
            .dry_run(true)
            .dry_run_modifiers(DryRunModifierType::IgnoreCiphertext)
            .send()
            .await,
        "ValidationException",
    );
    // Key state still applies.
    c.disable_key().key_id(&a).send().await.unwrap();
    expect_code(
        c.decrypt()
            .key_id(&a)
            .dry_run(true)
            .dry_run_modifiers(DryRunModifierType::IgnoreCiphertext)
            .send()
            .await,
        "DisabledException",
    );
}

#[tokio::test]
async fn asymmetric_keys_survive_a_restart_through_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = || MockKmsConfig {
        state_file: Some(dir.path().join("state.json")),
        ..MockKmsConfig::default()
    };
    let (mine, _) = caller_key(EcdhCurve::NistP384);
    let (kms, c) = start(config()).await;
    let (ecc, _) = create(&c, KeySpec::EccNistP384, KeyUsageType::KeyAgreement).await;
    let (rsa, spki) = rsa_key(&c, KeySpec::Rsa2048).await;
    let derive = |c: &aws_sdk_kms::Client| {
        c.derive_shared_secret()
            .key_id(&ecc)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(mine.clone()))
            .send()
    };
    let before = derive(&c).await.unwrap().shared_secret.unwrap();
    let ecc_pk = public_key(&c, &ecc).await;
    kms.shutdown().await;

    let (_kms, c) = start(config()).await;
    assert_eq!(public_key(&c, &ecc).await, ecc_pk);
    assert_eq!(public_key(&c, &rsa).await, spki);
    assert_eq!(derive(&c).await.unwrap().shared_secret.unwrap(), before);
    let ct = local_rsa_encrypt(&spki, &EncryptionAlgorithmSpec::RsaesOaepSha1, b"kept");
    let d = c
        .decrypt()
        .key_id(&rsa)
        .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha1)
        .ciphertext_blob(Blob::new(ct))
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref(), b"kept");
}

// ---------------------------------------------------------------------------
// The openssl CLI (OpenSSL 3) as the other party.

/// Runs openssl; `None` when it is not installed (CI must have it).
fn openssl(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("openssl").args(args).output() {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "openssl is not runnable on CI: {e}"
            );
            eprintln!("note: openssl not found ({e}); skipping");
            None
        }
    }
}

#[track_caller]
fn openssl_ok(args: &[&str]) -> Option<()> {
    let out = openssl(args)?;
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn openssl_rsa_oaep_ciphertext_decrypts_with_and_without_recipient() {
    if openssl(&["version"]).is_none() {
        return;
    }
    let pki = test_pki();
    let (_kms, c) = start(config_trusting(&pki)).await;
    let enclave = Enclave::new(pki);
    let dir = tempfile::tempdir().unwrap();
    let (pub_der, pt_file, ct_file) = (
        dir.path().join("pub.der"),
        dir.path().join("pt.bin"),
        dir.path().join("ct.bin"),
    );
    let plaintext = b"encrypted by openssl pkeyutl";
    std::fs::write(&pt_file, plaintext).unwrap();
    for spec in [KeySpec::Rsa2048, KeySpec::Rsa4096] {
        let (id, spki) = rsa_key(&c, spec.clone()).await;
        std::fs::write(&pub_der, &spki).unwrap();
        for (alg, md) in [
            (EncryptionAlgorithmSpec::RsaesOaepSha1, "sha1"),
            (EncryptionAlgorithmSpec::RsaesOaepSha256, "sha256"),
        ] {
            let oaep_md = format!("rsa_oaep_md:{md}");
            let mgf1_md = format!("rsa_mgf1_md:{md}");
            openssl_ok(&[
                "pkeyutl",
                "-encrypt",
                "-pubin",
                "-keyform",
                "DER",
                "-inkey",
                path(&pub_der),
                "-in",
                path(&pt_file),
                "-out",
                path(&ct_file),
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                &oaep_md,
                "-pkeyopt",
                &mgf1_md,
            ])
            .unwrap();
            let ct = std::fs::read(&ct_file).unwrap();
            let decrypt = || {
                c.decrypt()
                    .key_id(&id)
                    .encryption_algorithm(alg.clone())
                    .ciphertext_blob(Blob::new(ct.clone()))
            };
            let d = decrypt().send().await.unwrap();
            assert_eq!(d.plaintext().unwrap().as_ref(), plaintext, "{spec:?} {md}");
            let r = decrypt()
                .recipient(recipient(enclave.doc(PCR0)))
                .send()
                .await
                .unwrap();
            assert!(r.plaintext().is_none());
            let pt = cms_decrypt(
                r.ciphertext_for_recipient().unwrap().as_ref(),
                &enclave.key,
                None,
            )
            .unwrap();
            assert_eq!(pt.expose(), plaintext);
        }
    }
}

#[tokio::test]
async fn openssl_ecdh_with_the_kms_public_key_equals_derive_shared_secret() {
    if openssl(&["version"]).is_none() {
        return;
    }
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (mine_pem, mine_der, kms_der, secret_file) = (
        dir.path().join("mine.pem"),
        dir.path().join("mine.der"),
        dir.path().join("kms.der"),
        dir.path().join("secret.bin"),
    );
    let supported = openssl(&["ecparam", "-list_curves"]).unwrap();
    let supported = String::from_utf8_lossy(&supported.stdout).into_owned();
    let mut checked = Vec::new();
    for ((spec, curve), name) in CURVES
        .into_iter()
        .zip(["P-256", "P-384", "P-521", "secp256k1"])
    {
        if name == "secp256k1" && !supported.contains("secp256k1") {
            eprintln!("note: this openssl has no secp256k1; skipping it");
            continue;
        }
        let (id, _) = create(&c, spec, KeyUsageType::KeyAgreement).await;
        std::fs::write(&kms_der, public_key(&c, &id).await).unwrap();
        let paramgen = format!("ec_paramgen_curve:{name}");
        openssl_ok(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            &paramgen,
            "-out",
            path(&mine_pem),
        ])
        .unwrap();
        openssl_ok(&[
            "pkey",
            "-in",
            path(&mine_pem),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            path(&mine_der),
        ])
        .unwrap();
        openssl_ok(&[
            "pkeyutl",
            "-derive",
            "-inkey",
            path(&mine_pem),
            "-peerkey",
            path(&kms_der),
            "-peerform",
            "DER",
            "-out",
            path(&secret_file),
        ])
        .unwrap();
        let expected = std::fs::read(&secret_file).unwrap();
        assert_eq!(expected.len(), curve.shared_secret_len(), "{name}");
        let d = c
            .derive_shared_secret()
            .key_id(&id)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(std::fs::read(&mine_der).unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            d.shared_secret().unwrap().as_ref(),
            expected.as_slice(),
            "{name}"
        );
        checked.push(name);
    }
    assert!(checked.starts_with(&["P-256", "P-384"]), "{checked:?}");
}

//! Unit tests of the admission policy.

use super::*;
use crate::measurements::AllowedImage;
use crate::refusal::Refusal;
use crate::text::short;
use keybroker_common::protocol::{ErrorCode, WireError};
use std::collections::BTreeMap;

/// What the enclave receives for a denial (the one mapping, in
/// [`Refusal`]).
trait ToWire {
    fn to_wire(&self) -> WireError;
}

impl ToWire for Denial {
    fn to_wire(&self) -> WireError {
        WireError::from(Refusal::Denied(self.clone()))
    }
}
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use keybroker_common::attestation::{AttestationDocument, Digest, build_signed_document};
use keybroker_common::kms::*;
use keybroker_common::secret::SecretBytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384, date_time_ymd,
};

/// 2024-06-01T00:00:00Z, inside the test chain's validity.
const NOW: UnixMillis = UnixMillis(1_717_200_000_000);

pub(crate) struct TestPki {
    pub root: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: EcdsaKeyPair,
}

fn params(cn: &str, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    p
}

/// A P-384 root -> leaf chain like the mock NSM's.
pub(crate) fn pki() -> TestPki {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let root_params = params("policy test root", true);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let leaf = params("policy test leaf", false)
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    TestPki {
        root: root.der().to_vec(),
        leaf: leaf.der().to_vec(),
        leaf_key: EcdsaKeyPair::from_pkcs8(
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            &leaf_key.serialize_der(),
        )
        .unwrap(),
    }
}

impl TestPki {
    /// A signed document whose PCR i is 48 bytes of `pcr_byte + i`.
    pub(crate) fn document(&self, pcr_byte: u8) -> Vec<u8> {
        let pcrs: Vec<(u8, u8)> = (0u8..16).map(|i| (i, pcr_byte.wrapping_add(i))).collect();
        self.document_with(&pcrs)
    }

    /// A signed document with PCR i = 48 bytes of b for each `(i, b)`.
    pub(crate) fn document_with(&self, pcrs: &[(u8, u8)]) -> Vec<u8> {
        self.build(AttestationDocument {
            pcrs: pcrs.iter().map(|(i, b)| (*i, vec![*b; 48])).collect(),
            ..self.payload()
        })
    }

    /// The payload of [`TestPki::document`]`(0x10)`: made at `NOW`, with
    /// a public key.
    pub(crate) fn payload(&self) -> AttestationDocument {
        AttestationDocument {
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            digest: Digest::Sha384,
            timestamp: NOW,
            pcrs: (0u8..16).map(|i| (i, vec![0x10 + i; 48])).collect(),
            certificate: self.leaf.clone(),
            cabundle: vec![self.root.clone()],
            public_key: Some(vec![0x30; 294]),
            user_data: None,
            nonce: None,
        }
    }

    /// Signs `doc` with the leaf key.
    pub(crate) fn build(&self, doc: AttestationDocument) -> Vec<u8> {
        build_signed_document(&doc, &self.leaf_key, &SystemRandom::new()).unwrap()
    }

    pub(crate) fn verifier(&self) -> Verifier {
        let mut v = Verifier::aws_nitro();
        v.add_trusted_root(&self.root).unwrap();
        v
    }
}

/// A well-formed document (made at `NOW`, with a public key) of a chain
/// no policy trusts unless told to.
fn doc() -> Vec<u8> {
    pki().document(0x10)
}

fn with_recipient(op: Operation, doc: Option<Vec<u8>>) -> KmsRequest {
    let recipient = doc.map(RecipientInfo::new);
    let key_id = Some("alias/app".to_string());
    match op {
        Operation::GenerateDataKey => KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            key_id,
            key_spec: Some(DataKeySpec::Aes256),
            recipient,
            ..Default::default()
        }),
        Operation::Decrypt => KmsRequest::Decrypt(DecryptRequest {
            key_id,
            ciphertext_blob: Some(Blob(vec![1; 32])),
            recipient,
            ..Default::default()
        }),
        Operation::GenerateDataKeyPair => {
            KmsRequest::GenerateDataKeyPair(GenerateDataKeyPairRequest {
                key_id,
                key_pair_spec: Some(DataKeyPairSpec::Rsa2048),
                recipient,
                ..Default::default()
            })
        }
        Operation::GenerateRandom => KmsRequest::GenerateRandom(GenerateRandomRequest {
            number_of_bytes: Some(32),
            recipient,
            ..Default::default()
        }),
        Operation::GenerateDataKeyWithoutPlaintext => {
            KmsRequest::GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextRequest {
                key_id,
                key_spec: Some(DataKeySpec::Aes256),
                ..Default::default()
            })
        }
        Operation::GenerateDataKeyPairWithoutPlaintext => {
            KmsRequest::GenerateDataKeyPairWithoutPlaintext(
                GenerateDataKeyPairWithoutPlaintextRequest {
                    key_id,
                    key_pair_spec: Some(DataKeyPairSpec::EccNistP256),
                    ..Default::default()
                },
            )
        }
        Operation::DescribeKey => KmsRequest::DescribeKey(DescribeKeyRequest {
            key_id,
            ..Default::default()
        }),
        Operation::DeriveSharedSecret => {
            KmsRequest::DeriveSharedSecret(DeriveSharedSecretRequest {
                key_id,
                key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
                public_key: Some(Blob(vec![0x30; 91])),
                recipient,
                ..Default::default()
            })
        }
    }
}

fn rule(d: &Decision) -> Option<Rule> {
    d.verdict.as_ref().err().map(|e| e.rule)
}

#[test]
fn plaintext_operations_without_recipient_are_denied() {
    let policy = AdmissionPolicy::default();
    let plaintext_ops: Vec<_> = Operation::ALL
        .into_iter()
        .filter(|op| op.returns_plaintext())
        .collect();
    assert_eq!(plaintext_ops.len(), 5);
    for op in plaintext_ops {
        let d = policy.evaluate(&with_recipient(op, None), 100, NOW);
        assert_eq!(rule(&d), Some(Rule::RecipientRequired), "{op:?}");
        let denial = d.verdict.unwrap_err();
        assert!(denial.message.contains(op.as_str()));
        let wire = denial.to_wire();
        assert_eq!(wire.code(), ErrorCode::PolicyDenied);
        assert!(!wire.retryable());
        assert!(wire.message().starts_with("RecipientRequired: "), "{wire}");
        assert_eq!(d.caller_pcr0, None);
        // With a Recipient (parsed, not verified: no image configured)
        // it passes.
        let d = policy.evaluate(&with_recipient(op, Some(doc())), 100, NOW);
        assert_eq!(d.verdict, Ok(()), "{op:?}");
        assert!(!d.attestation_verified);
    }
}

#[test]
fn operations_without_plaintext_are_allowed() {
    let policy = AdmissionPolicy::default();
    for op in Operation::ALL
        .into_iter()
        .filter(|op| !op.returns_plaintext())
    {
        let d = policy.evaluate(&with_recipient(op, None), 100, NOW);
        assert_eq!(d.verdict, Ok(()), "{op:?}");
    }
}

#[test]
fn dangerous_switch_forwards_without_recipient() {
    let policy = AdmissionPolicy {
        dangerous_forward_without_recipient: true,
        ..AdmissionPolicy::default()
    };
    let d = policy.evaluate(&with_recipient(Operation::Decrypt, None), 100, NOW);
    assert_eq!(d.verdict, Ok(()));
}

#[test]
fn operation_allowlist() {
    let policy = AdmissionPolicy {
        allowed_operations: Some([Operation::GenerateDataKey].into()),
        ..AdmissionPolicy::default()
    };
    let ok = policy.evaluate(
        &with_recipient(Operation::GenerateDataKey, Some(doc())),
        10,
        NOW,
    );
    assert_eq!(ok.verdict, Ok(()));
    let d = policy.evaluate(&with_recipient(Operation::DescribeKey, None), 10, NOW);
    assert_eq!(rule(&d), Some(Rule::OperationNotAllowed));
    assert!(d.verdict.unwrap_err().message.contains("DescribeKey"));
}

#[test]
fn key_allowlist() {
    let policy = AdmissionPolicy {
        allowed_keys: Some(["alias/app".to_string()].into()),
        ..AdmissionPolicy::default()
    };
    let op = Operation::GenerateDataKeyWithoutPlaintext;
    assert_eq!(
        policy.evaluate(&with_recipient(op, None), 10, NOW).verdict,
        Ok(())
    );
    let other =
        KmsRequest::GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: Some("alias/other".into()),
            ..Default::default()
        });
    let d = policy.evaluate(&other, 10, NOW);
    assert_eq!(rule(&d), Some(Rule::KeyNotAllowed));
    assert!(d.verdict.unwrap_err().message.contains("alias/other"));
    // Case matters, as in KMS.
    let upper = KmsRequest::DescribeKey(DescribeKeyRequest {
        key_id: Some("alias/APP".into()),
        ..Default::default()
    });
    assert_eq!(
        rule(&policy.evaluate(&upper, 10, NOW)),
        Some(Rule::KeyNotAllowed)
    );
    // Decrypt without KeyId cannot be checked against the allowlist.
    let decrypt = KmsRequest::Decrypt(DecryptRequest {
        ciphertext_blob: Some(Blob(vec![1])),
        recipient: Some(RecipientInfo::new(doc())),
        ..Default::default()
    });
    assert_eq!(
        rule(&policy.evaluate(&decrypt, 10, NOW)),
        Some(Rule::KeyIdRequired)
    );
    // GenerateRandom uses no key.
    let random = with_recipient(Operation::GenerateRandom, Some(doc()));
    assert_eq!(policy.evaluate(&random, 10, NOW).verdict, Ok(()));
}

#[test]
fn request_size_limit() {
    let policy = AdmissionPolicy {
        max_request_len: Some(1000),
        ..AdmissionPolicy::default()
    };
    let req = with_recipient(Operation::DescribeKey, None);
    assert_eq!(policy.evaluate(&req, 1000, NOW).verdict, Ok(()));
    let d = policy.evaluate(&req, 1001, NOW);
    assert_eq!(rule(&d), Some(Rule::RequestTooLarge));
}

/// An image requiring, for each `(index, byte)`, 48 bytes of `byte`.
fn image(pcrs: &[(u8, u8)]) -> AllowedImage {
    AllowedImage::new(pcrs.iter().map(|(i, b)| (*i, vec![*b; 48])).collect()).unwrap()
}

/// A policy trusting `pki` and admitting `images`.
fn admitting(pki: &TestPki, images: Vec<AllowedImage>) -> AdmissionPolicy {
    AdmissionPolicy {
        allowed_images: images,
        verifier: pki.verifier(),
        ..AdmissionPolicy::default()
    }
}

#[test]
fn pcr_match_and_mismatch() {
    let pki = pki();
    // PCR i of this document is 0x10 + i.
    let req = with_recipient(Operation::GenerateDataKey, Some(pki.document(0x10)));
    let policy = admitting(&pki, vec![image(&[(0, 0x10), (2, 0x12)])]);
    assert!(policy.verifies_attestation());
    let d = policy.evaluate(&req, 100, NOW);
    assert_eq!(d.verdict, Ok(()));
    assert!(d.attestation_verified);
    assert_eq!(d.caller_pcr0, Some("10".repeat(48)));
    assert_eq!(d.admitted_image, Some(format!("PCR0 {}…", "10".repeat(8))));

    // A different measurement is refused, naming the PCR and both values.
    let policy = admitting(&pki, vec![image(&[(0, 0x10), (2, 0x99)])]);
    let d = policy.evaluate(&req, 100, NOW);
    let denial = d.verdict.unwrap_err();
    assert_eq!(denial.rule, Rule::PcrMismatch);
    assert!(
        denial.message.contains(&format!(
            "PCR2 is {}…, expected {}…",
            "12".repeat(8),
            "99".repeat(8)
        )),
        "{denial}"
    );
    assert_eq!(d.caller_pcr0, Some("10".repeat(48)));
    assert_eq!(d.admitted_image, None);

    // A PCR the document does not carry (it has 0..=15).
    let policy = admitting(&pki, vec![image(&[(0, 0x10), (20, 0x24)])]);
    let d = policy.evaluate(&req, 100, NOW);
    assert_eq!(rule(&d), Some(Rule::PcrMismatch));
    assert!(
        d.verdict
            .unwrap_err()
            .message
            .contains("PCR20 is absent from the attestation document")
    );
}

#[test]
fn two_images_are_admitted_each_as_a_whole() {
    let pki = pki();
    let doc_a = pki.document(0x10); // PCR0 0x10, PCR1 0x11, PCR2 0x12
    let doc_b = pki.document(0x20); // PCR0 0x20, PCR1 0x21, PCR2 0x22
    let a = image(&[(0, 0x10), (2, 0x12)]).with_name("v1.2").unwrap();
    let b = image(&[(0, 0x20), (2, 0x22)]).with_name("v1.3").unwrap();
    let policy = admitting(&pki, vec![a.clone(), b.clone()]);
    for (doc, name) in [(doc_a, "v1.2"), (doc_b.clone(), "v1.3")] {
        let d = policy.evaluate(&with_recipient(Operation::Decrypt, Some(doc)), 100, NOW);
        assert_eq!(d.verdict, Ok(()), "{name}");
        assert_eq!(d.admitted_image.as_deref(), Some(name));
    }

    // Only A allowed: B's document is refused, and the message says
    // which image was expected and what the caller had.
    let only_a = admitting(&pki, vec![a]);
    let d = only_a.evaluate(&with_recipient(Operation::Decrypt, Some(doc_b)), 100, NOW);
    let denial = d.verdict.unwrap_err();
    assert_eq!(denial.rule, Rule::PcrMismatch);
    assert_eq!(
        denial.message,
        format!(
            "caller PCR0 {} matches none of the 1 allowed image: v1.2: PCR0 is {}…, expected {}…",
            "20".repeat(48),
            "20".repeat(8),
            "10".repeat(8)
        )
    );
    assert!(
        denial
            .to_wire()
            .message()
            .starts_with("PcrMismatch: caller PCR0 2020")
    );
}

#[test]
fn pcrs_of_different_images_are_never_combined() {
    let pki = pki();
    // Image A: PCR0 0x10, PCR2 0x12. Image B: PCR0 0x20, PCR2 0x22.
    let a = image(&[(0, 0x10), (2, 0x12)]);
    let b = image(&[(0, 0x20), (2, 0x22)]);
    // A document with A's PCR0 and B's PCR2: each PCR is allowed by some
    // image, but no image allows both.
    let doc = pki.document_with(&[(0, 0x10), (1, 0x11), (2, 0x22)]);
    let req = with_recipient(Operation::GenerateDataKey, Some(doc));
    let d = admitting(&pki, vec![a, b]).evaluate(&req, 100, NOW);
    assert!(d.attestation_verified);
    let denial = d.verdict.unwrap_err();
    assert_eq!(denial.rule, Rule::PcrMismatch);
    // Each image is reported with its first differing PCR.
    assert!(
        denial.message.contains(&format!(
            "PCR0 {}…: PCR2 is {}…, expected {}…",
            "10".repeat(8),
            "22".repeat(8),
            "12".repeat(8)
        )),
        "{denial}"
    );
    assert!(
        denial.message.contains(&format!(
            "PCR0 {}…: PCR0 is {}…, expected {}…",
            "20".repeat(8),
            "10".repeat(8),
            "20".repeat(8)
        )),
        "{denial}"
    );
    // The document itself is fine: an image with exactly that set admits it.
    let mixed = admitting(&pki, vec![image(&[(0, 0x10), (2, 0x22)])]);
    assert_eq!(mixed.evaluate(&req, 100, NOW).verdict, Ok(()));
}

#[test]
fn a_missing_pcr_is_refused() {
    let pki = pki();
    // The document carries PCR0..=15 only; image A requires PCR16.
    let doc = pki.document(0x10);
    let a = image(&[(0, 0x10), (16, 0x20)]);
    let policy = admitting(&pki, vec![a.clone()]);
    let req = with_recipient(Operation::GenerateRandom, Some(doc));
    let d = policy.evaluate(&req, 100, NOW);
    assert_eq!(rule(&d), Some(Rule::PcrMismatch));
    assert!(d.verdict.unwrap_err().message.contains("PCR16 is absent"));
    // Adding an image that the document does match admits it.
    let policy = admitting(&pki, vec![a, image(&[(0, 0x10)])]);
    assert_eq!(policy.evaluate(&req, 100, NOW).verdict, Ok(()));
}

#[test]
fn mismatch_message_lists_at_most_eight_images() {
    let pki = pki();
    let images = (0x30..0x3A).map(|b| image(&[(0, b)])).collect();
    let policy = admitting(&pki, images);
    let req = with_recipient(Operation::Decrypt, Some(pki.document(0x10)));
    let message = policy.evaluate(&req, 100, NOW).verdict.unwrap_err().message;
    assert!(
        message.contains("none of the 10 allowed images"),
        "{message}"
    );
    assert_eq!(message.matches(", expected ").count(), 8, "{message}");
    assert!(message.ends_with("; and 2 more"), "{message}");
}

#[test]
fn invalid_images_are_refused() {
    // Debug-mode (all-zero) values, in any PCR and any length.
    for (index, len) in [(0, 48), (2, 48), (8, 32), (0, 64)] {
        let err = AllowedImage::new([(index, vec![0; len])].into()).unwrap_err();
        assert!(err.to_string().contains("debug-mode"), "{err}");
    }
    assert!(AllowedImage::new(BTreeMap::new()).is_err());
    assert!(AllowedImage::new([(0, vec![1; 47])].into()).is_err());
    assert!(AllowedImage::new([(32, vec![1; 48])].into()).is_err());
    let ok = AllowedImage::new([(0, vec![1; 48])].into()).unwrap();
    assert!(ok.clone().with_name("").is_err());
    assert!(ok.clone().with_name("a\nb").is_err());
    assert!(ok.clone().with_name(&"x".repeat(65)).is_err());
    assert_eq!(ok.with_name(" v1.2 ").unwrap().name(), Some("v1.2"));
}

#[test]
fn images_from_key_policy_measurements() {
    let m = crate::key_policy::ImageMeasurements::new(&"ab".repeat(48))
        .unwrap()
        .with_pcr(2, &"CD".repeat(48))
        .unwrap();
    let image = AllowedImage::from_measurements(&m).unwrap();
    assert_eq!(
        image.pcrs(),
        &[(0, vec![0xab; 48]), (2, vec![0xcd; 48])].into()
    );
}

#[test]
fn attestation_must_verify_when_images_are_allowed() {
    let pki = pki();
    let expected = vec![image(&[(0, 0x10)])];
    // Signed by a chain that is not trusted: only the AWS root is.
    let untrusted = AdmissionPolicy {
        allowed_images: expected.clone(),
        ..AdmissionPolicy::default()
    };
    let req = with_recipient(Operation::Decrypt, Some(pki.document(0x10)));
    let d = untrusted.evaluate(&req, 100, NOW);
    assert_eq!(rule(&d), Some(Rule::AttestationInvalid));
    assert!(!d.attestation_verified);
    // PCR0 is still reported from the parsed document for the audit line.
    assert_eq!(d.caller_pcr0, Some("10".repeat(48)));

    let policy = admitting(&pki, expected);
    // Outside the chain's validity (a fresh document of an expired chain).
    let late = UnixMillis(2_300_000_000_000);
    let expired = pki.build(AttestationDocument {
        timestamp: late,
        ..pki.payload()
    });
    let d = policy.evaluate(
        &with_recipient(Operation::Decrypt, Some(expired)),
        100,
        late,
    );
    assert_eq!(rule(&d), Some(Rule::AttestationInvalid));
    assert!(d.verdict.unwrap_err().message.contains("expired"));
    // Garbage document.
    let garbage = with_recipient(Operation::Decrypt, Some(vec![0x84, 1, 2]));
    let d = policy.evaluate(&garbage, 100, NOW);
    assert_eq!(rule(&d), Some(Rule::AttestationInvalid));
    assert_eq!(d.caller_pcr0, None);
    // A tampered signature.
    let mut tampered = pki.document(0x10);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let d = policy.evaluate(
        &with_recipient(Operation::Decrypt, Some(tampered)),
        100,
        NOW,
    );
    assert_eq!(rule(&d), Some(Rule::AttestationInvalid));
    // Operations without plaintext carry no document and pass.
    let d = policy.evaluate(&with_recipient(Operation::DescribeKey, None), 100, NOW);
    assert_eq!(d.verdict, Ok(()));
    // A plaintext operation forwarded without Recipient cannot be checked.
    let lax = AdmissionPolicy {
        dangerous_forward_without_recipient: true,
        ..policy
    };
    let d = lax.evaluate(&with_recipient(Operation::GenerateRandom, None), 100, NOW);
    assert_eq!(rule(&d), Some(Rule::AttestationRequired));
}

#[test]
fn a_recipient_document_must_parse_and_carry_a_public_key() {
    let pki = pki();
    let policy = AdmissionPolicy::default();
    let no_key = pki.build(AttestationDocument {
        public_key: None,
        ..pki.payload()
    });
    let empty_key = pki.build(AttestationDocument {
        public_key: Some(Vec::new()),
        ..pki.payload()
    });
    for op in [
        Operation::GenerateDataKey,
        Operation::Decrypt,
        Operation::GenerateDataKeyPair,
        Operation::GenerateRandom,
    ] {
        for garbage in [vec![0x84, 1, 2], vec![1, 2, 3], Vec::new()] {
            let d = policy.evaluate(&with_recipient(op, Some(garbage)), 100, NOW);
            assert_eq!(rule(&d), Some(Rule::AttestationInvalid), "{op:?}");
            let wire = d.verdict.unwrap_err().to_wire();
            assert!(
                wire.message()
                    .starts_with("AttestationInvalid: the Recipient attestation document"),
                "{wire}"
            );
            assert!(wire.message().contains("does not parse"), "{wire}");
        }
        for keyless in [&no_key, &empty_key] {
            let d = policy.evaluate(&with_recipient(op, Some(keyless.clone())), 100, NOW);
            assert_eq!(rule(&d), Some(Rule::RecipientKeyMissing), "{op:?}");
            assert!(d.verdict.unwrap_err().message.contains("no public_key"));
            // The caller is still named in the audit line.
            assert_eq!(d.caller_pcr0, Some("10".repeat(48)));
        }
    }
    // With images configured the same documents are refused the same way
    // (before any verification).
    let admitting_all = admitting(&pki, vec![image(&[(0, 0x10)])]);
    let d = admitting_all.evaluate(
        &with_recipient(Operation::Decrypt, Some(no_key.clone())),
        100,
        NOW,
    );
    assert_eq!(rule(&d), Some(Rule::RecipientKeyMissing));
    assert!(!d.attestation_verified);
    // The dangerous switch lets KMS decide about both.
    let lax = AdmissionPolicy {
        dangerous_forward_without_recipient: true,
        ..AdmissionPolicy::default()
    };
    for document in [vec![1, 2, 3], no_key] {
        let d = lax.evaluate(
            &with_recipient(Operation::Decrypt, Some(document)),
            100,
            NOW,
        );
        assert_eq!(d.verdict, Ok(()));
    }
}

#[test]
fn default_document_age_is_just_above_the_enclave_key_rotation() {
    let rotation = keybroker_enclave::keys::DEFAULT_MAX_AGE;
    assert!(DEFAULT_MAX_DOCUMENT_AGE > rotation);
    assert!(DEFAULT_MAX_DOCUMENT_AGE <= rotation + Duration::from_secs(60));
    assert_eq!(
        AdmissionPolicy::default().max_document_age,
        DEFAULT_MAX_DOCUMENT_AGE
    );
}

#[test]
fn old_and_future_documents_are_refused() {
    let pki = pki();
    let made_at = |timestamp: UnixMillis| {
        pki.build(AttestationDocument {
            timestamp,
            ..pki.payload()
        })
    };
    let minute = 60_000;
    let policy = AdmissionPolicy::default();
    let admitting = admitting(&pki, vec![image(&[(0, 0x10)])]);
    let doc = made_at(NOW);
    let req = with_recipient(Operation::GenerateDataKey, Some(doc));
    for p in [&policy, &admitting] {
        // Five minutes old, and up to a minute ahead of the proxy: fine.
        for now in [NOW.0, NOW.0 + 5 * minute, NOW.0 - minute] {
            assert_eq!(p.evaluate(&req, 100, UnixMillis(now)).verdict, Ok(()));
        }
        let d = p.evaluate(&req, 100, UnixMillis(NOW.0 + 5 * minute + 1));
        assert_eq!(rule(&d), Some(Rule::AttestationTooOld));
        let wire = d.verdict.unwrap_err().to_wire();
        assert!(
            wire.message()
                .starts_with("AttestationTooOld: document is 300 s old"),
            "{wire}"
        );
        assert!(wire.message().contains("maximum age of 300 s"), "{wire}");
        assert!(!wire.retryable());
        let d = p.evaluate(&req, 100, UnixMillis(NOW.0 - minute - 1));
        assert_eq!(rule(&d), Some(Rule::AttestationFromFuture));
        assert!(
            d.verdict
                .unwrap_err()
                .message
                .contains("ahead of the verification time")
        );
    }
    // A configured limit.
    let strict = AdmissionPolicy {
        max_document_age: Duration::from_secs(30),
        ..AdmissionPolicy::default()
    };
    let d = strict.evaluate(&req, 100, UnixMillis(NOW.0 + 31_000));
    assert_eq!(rule(&d), Some(Rule::AttestationTooOld));
    assert_eq!(
        strict
            .evaluate(&req, 100, UnixMillis(NOW.0 + 30_000))
            .verdict,
        Ok(())
    );
    // An old document is refused even with the dangerous switch.
    let lax = AdmissionPolicy {
        dangerous_forward_without_recipient: true,
        ..AdmissionPolicy::default()
    };
    let d = lax.evaluate(&req, 100, UnixMillis(NOW.0 + 10 * minute));
    assert_eq!(rule(&d), Some(Rule::AttestationTooOld));
}

#[test]
fn verified_documents_are_cached_until_the_chain_expires() {
    let pki = pki();
    let policy = admitting(&pki, vec![image(&[(0, 0x10)])]);
    let req = with_recipient(Operation::Decrypt, Some(pki.document(0x10)));
    let first = policy.evaluate(&req, 100, NOW);
    assert_eq!(first.verdict, Ok(()));
    let again = policy.evaluate(&req, 100, UnixMillis(NOW.0 + 1000));
    assert_eq!(again, first);
    let stats = policy.verification_cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    // A clone shares the cache.
    let clone = policy.clone();
    assert_eq!(clone.evaluate(&req, 100, NOW).verdict, Ok(()));
    assert_eq!(policy.verification_cache.stats().hits, 2);
    // Another document is a miss (and a PcrMismatch as before).
    let other = with_recipient(Operation::Decrypt, Some(pki.document(0x20)));
    assert_eq!(
        rule(&policy.evaluate(&other, 100, NOW)),
        Some(Rule::PcrMismatch)
    );
    assert_eq!(policy.verification_cache.stats().misses, 2);

    // A document made a minute before its chain ends (2040-01-01):
    // cached while the chain is valid, verified again (and refused)
    // after, although it is only a minute and a millisecond old.
    let chain_end = 2_208_988_800_000; // 2040-01-01T00:00:00Z
    let late = pki.build(AttestationDocument {
        timestamp: UnixMillis(chain_end - 60_000),
        ..pki.payload()
    });
    let req = with_recipient(Operation::Decrypt, Some(late));
    assert_eq!(
        policy.evaluate(&req, 100, UnixMillis(chain_end)).verdict,
        Ok(())
    );
    assert_eq!(
        policy.evaluate(&req, 100, UnixMillis(chain_end)).verdict,
        Ok(())
    );
    let d = policy.evaluate(&req, 100, UnixMillis(chain_end + 1));
    assert_eq!(rule(&d), Some(Rule::AttestationInvalid));
    assert!(d.verdict.unwrap_err().message.contains("expired"));
}

#[test]
fn plaintext_responses_are_refused() {
    let with_plaintext = KmsResponse::Decrypt(DecryptResponse {
        plaintext: Some(SecretBytes::from_slice(&[7; 32])),
        ..Default::default()
    });
    let denial = check_response(&with_plaintext).unwrap_err();
    assert_eq!(denial.rule, Rule::PlaintextInResponse);
    assert!(!denial.to_string().contains("0707"));
    let pair = KmsResponse::GenerateDataKeyPair(GenerateDataKeyPairResponse {
        private_key_plaintext: Some(SecretBytes::from_slice(&[7; 32])),
        ..Default::default()
    });
    assert!(check_response(&pair).is_err());
    let ok = KmsResponse::Decrypt(DecryptResponse {
        ciphertext_for_recipient: Some(Blob(vec![1; 10])),
        ..Default::default()
    });
    assert_eq!(check_response(&ok), Ok(()));
}

#[test]
fn short_truncates_long_key_ids() {
    assert_eq!(short("alias/x"), "alias/x");
    assert_eq!(short(&"k".repeat(1000)).len(), 256);
}

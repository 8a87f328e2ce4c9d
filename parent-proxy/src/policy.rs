//! The proxy's request policy: a pure function from a request (and the
//! current time) to allow or deny.
//!
//! The parent instance is untrusted (DESIGN.md, trust model): the KMS key
//! policy with `kms:RecipientAttestation:*` conditions is what really guards
//! the keys. This policy is defence in depth and operator hygiene, so that a
//! misconfigured key policy or a confused enclave app does not make KMS send
//! a plaintext key to the parent:
//!
//! 1. a request larger than [`Policy::max_request_len`] is refused;
//! 2. an operation outside [`Policy::allowed_operations`] is refused;
//! 3. a plaintext-returning operation ([`Operation::returns_plaintext`]:
//!    GenerateDataKey, Decrypt, GenerateDataKeyPair, GenerateRandom) without
//!    `Recipient` is refused, unless
//!    [`Policy::dangerous_forward_without_recipient`] is set (then KMS
//!    decides, and a plaintext answer is still never relayed, see
//!    [`check_response`]);
//! 4. a `KeyId` outside [`Policy::allowed_keys`] is refused (exact,
//!    case-sensitive match of the string the enclave sent: key id, key ARN,
//!    `alias/Name` or alias ARN, KMS API `KeyId`); with an allowlist,
//!    requests without `KeyId` (a Decrypt that lets KMS read the key from the
//!    ciphertext) are refused too;
//! 5. with [`Policy::expected_pcrs`], the `Recipient.AttestationDocument` is
//!    verified with [`Verifier`] at the current time (chain to a pinned root,
//!    ES384 signature) and each expected PCR must equal the document's.
//!    Operations that cannot carry a `Recipient` are not affected; a
//!    plaintext-returning one without it (only possible with the dangerous
//!    switch) is refused.
//!
//! A refusal is a [`Denial`] naming the [`Rule`]; the enclave receives it as
//! a [`WireError`] with [`ErrorCode::PolicyDenied`] and a message that starts
//! with the rule's name.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{UnverifiedAttestation, Verifier};
use keybroker_common::kms::{KmsRequest, KmsResponse, Operation};
use keybroker_common::protocol::{ErrorCode, WireError};

/// The rule that refused a request. The name ([`Rule::as_str`]) is the first
/// word of the message the enclave receives, so an app can tell the causes
/// apart.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The encoded request exceeds [`Policy::max_request_len`].
    RequestTooLarge,
    /// The operation is not in [`Policy::allowed_operations`].
    OperationNotAllowed,
    /// A plaintext-returning operation lacks `Recipient`.
    RecipientRequired,
    /// The `KeyId` is not in [`Policy::allowed_keys`].
    KeyNotAllowed,
    /// [`Policy::allowed_keys`] is set and the request has no `KeyId`.
    KeyIdRequired,
    /// [`Policy::expected_pcrs`] is set and a plaintext-returning request has
    /// no attestation document to check.
    AttestationRequired,
    /// The attestation document does not parse or verify.
    AttestationInvalid,
    /// An expected PCR is absent from the document or differs.
    PcrMismatch,
    /// KMS answered with a plaintext field; the proxy never relays one.
    PlaintextInResponse,
}

impl Rule {
    /// A stable name for messages, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::RequestTooLarge => "RequestTooLarge",
            Rule::OperationNotAllowed => "OperationNotAllowed",
            Rule::RecipientRequired => "RecipientRequired",
            Rule::KeyNotAllowed => "KeyNotAllowed",
            Rule::KeyIdRequired => "KeyIdRequired",
            Rule::AttestationRequired => "AttestationRequired",
            Rule::AttestationInvalid => "AttestationInvalid",
            Rule::PcrMismatch => "PcrMismatch",
            Rule::PlaintextInResponse => "PlaintextInResponse",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request (or a KMS response) was refused. The message names fields,
/// operations, key ids and PCR values (public measurements), never key
/// material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The rule that refused it.
    pub rule: Rule,
    /// What exactly was wrong, for the enclave app and the operator.
    pub message: String,
}

impl Denial {
    fn new(rule: Rule, message: impl Into<String>) -> Self {
        Denial {
            rule,
            message: message.into(),
        }
    }

    /// The error sent to the enclave: [`ErrorCode::PolicyDenied`], not
    /// retryable, message `"<Rule>: <detail>"`.
    pub fn to_wire(&self) -> WireError {
        WireError::new(ErrorCode::PolicyDenied, self.to_string()).with_retryable(false)
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// The result of [`Policy::evaluate`]: the verdict, plus what the audit line
/// reports about the caller whatever the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// PCR0 of the `Recipient` attestation document, lower-case hex: from
    /// the verified document when the policy verified it, else from the
    /// parsed (unverified) document; `None` without a (parsable) document.
    pub caller_pcr0: Option<String>,
    /// Whether the document's chain and signature were verified.
    pub attestation_verified: bool,
    /// `Ok(())` to forward the request to KMS, or why not.
    pub verdict: Result<(), Denial>,
}

/// The request policy (see the [module docs](self) for the rules and their
/// order). `Policy::default()` is the safe default: plaintext operations
/// need a `Recipient`, no allowlists, no PCR check, no size limit beyond the
/// wire's frame limit, and only the AWS Nitro root trusted.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Forward plaintext-returning operations without `Recipient` to KMS
    /// instead of refusing them. Weakens the proxy's own check: KMS's key
    /// policy alone then decides (useful to demonstrate a KMS-side denial).
    /// A plaintext response is still never relayed.
    pub dangerous_forward_without_recipient: bool,
    /// If set, only these `KeyId` strings are forwarded.
    pub allowed_keys: Option<BTreeSet<String>>,
    /// If set, only these operations are forwarded.
    pub allowed_operations: Option<HashSet<Operation>>,
    /// PCR index to expected value (32, 48 or 64 bytes). Non-empty: every
    /// `Recipient` attestation document is verified and must match.
    pub expected_pcrs: BTreeMap<u8, Vec<u8>>,
    /// The roots attestation documents must chain to (AWS Nitro Root-G1
    /// plus, for development, the mock NSM's CA).
    pub verifier: Verifier,
    /// Largest request frame body accepted, in bytes; `None`: only the
    /// wire's frame limit.
    pub max_request_len: Option<usize>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dangerous_forward_without_recipient: false,
            allowed_keys: None,
            allowed_operations: None,
            expected_pcrs: BTreeMap::new(),
            verifier: Verifier::aws_nitro(),
            max_request_len: None,
        }
    }
}

impl Policy {
    /// Whether [`Policy::evaluate`] verifies attestation documents (ECDSA
    /// P-384 over the chain: worth running off the async executor).
    pub fn verifies_attestation(&self) -> bool {
        !self.expected_pcrs.is_empty()
    }

    /// Decides whether to forward `request`, whose encoded frame body is
    /// `request_len` bytes, at time `now` (the attestation chain's
    /// verification time). Pure: no I/O, no clock.
    pub fn evaluate(&self, request: &KmsRequest, request_len: usize, now: UnixMillis) -> Decision {
        let operation = request.operation();
        // Parsed up front so that the audit line names the caller even when
        // the request is refused for another reason.
        let parsed = request
            .recipient()
            .map(|r| UnverifiedAttestation::parse(r.attestation_document.as_ref()));
        let mut caller_pcr0 = match &parsed {
            Some(Ok(doc)) => doc.document().pcrs.get(&0).map(hex::encode),
            _ => None,
        };
        let mut verified = false;
        let verdict = self.check(request, operation, request_len, parsed, now, &mut |pcr0| {
            verified = true;
            caller_pcr0 = pcr0;
        });
        Decision {
            caller_pcr0,
            attestation_verified: verified,
            verdict,
        }
    }

    fn check(
        &self,
        request: &KmsRequest,
        operation: Operation,
        request_len: usize,
        parsed: Option<Result<UnverifiedAttestation, keybroker_common::AttestationError>>,
        now: UnixMillis,
        on_verified: &mut dyn FnMut(Option<String>),
    ) -> Result<(), Denial> {
        if let Some(max) = self.max_request_len
            && request_len > max
        {
            return Err(Denial::new(
                Rule::RequestTooLarge,
                format!("request of {request_len} bytes exceeds the proxy's limit of {max} bytes"),
            ));
        }
        if let Some(allowed) = &self.allowed_operations
            && !allowed.contains(&operation)
        {
            return Err(Denial::new(
                Rule::OperationNotAllowed,
                format!(
                    "{} is not in the proxy's allowed operations",
                    operation.as_str()
                ),
            ));
        }
        if operation.returns_plaintext()
            && parsed.is_none()
            && !self.dangerous_forward_without_recipient
        {
            return Err(Denial::new(
                Rule::RecipientRequired,
                format!(
                    "{} returns plaintext key material and must carry a Recipient \
                     (attestation document) so that only the enclave can read it",
                    operation.as_str()
                ),
            ));
        }
        if let Some(allowed) = &self.allowed_keys
            && operation != Operation::GenerateRandom
        {
            match request.key_id() {
                None => {
                    return Err(Denial::new(
                        Rule::KeyIdRequired,
                        format!(
                            "{} without KeyId: the proxy has a key allowlist",
                            operation.as_str()
                        ),
                    ));
                }
                Some(key) if !allowed.contains(key) => {
                    return Err(Denial::new(
                        Rule::KeyNotAllowed,
                        format!("KeyId {:?} is not in the proxy's allowed keys", short(key)),
                    ));
                }
                Some(_) => {}
            }
        }
        if self.expected_pcrs.is_empty() {
            return Ok(());
        }
        let parsed = match parsed {
            Some(p) => p,
            None if operation.returns_plaintext() => {
                return Err(Denial::new(
                    Rule::AttestationRequired,
                    format!(
                        "{} without an attestation document: the proxy checks PCR values",
                        operation.as_str()
                    ),
                ));
            }
            // GenerateDataKeyWithoutPlaintext, ...: no Recipient possible.
            None => return Ok(()),
        };
        let verified = parsed
            .and_then(|doc| self.verifier.verify_parsed(doc, now))
            .map_err(|e| Denial::new(Rule::AttestationInvalid, e.to_string()))?;
        on_verified(verified.pcr(0).map(hex::encode));
        for (index, expected) in &self.expected_pcrs {
            match verified.pcr(*index) {
                Some(actual) if actual == expected.as_slice() => {}
                Some(actual) => {
                    return Err(Denial::new(
                        Rule::PcrMismatch,
                        format!(
                            "PCR{index} is {}, expected {}",
                            hex::encode(actual),
                            hex::encode(expected)
                        ),
                    ));
                }
                None => {
                    return Err(Denial::new(
                        Rule::PcrMismatch,
                        format!("PCR{index} is absent from the attestation document"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Refuses a KMS response that carries `Plaintext` or
/// `PrivateKeyPlaintext`: the parent must never hold plaintext key material,
/// whatever the request looked like (always on; not configurable).
pub fn check_response(response: &KmsResponse) -> Result<(), Denial> {
    if response.has_plaintext() {
        return Err(Denial::new(
            Rule::PlaintextInResponse,
            format!(
                "KMS returned plaintext key material for {}; the proxy discarded it and \
                 relays only ciphertext (send a Recipient)",
                response.operation().as_str()
            ),
        ));
    }
    Ok(())
}

/// A key id as quoted in messages: at most 256 characters.
pub(crate) fn short(s: &str) -> &str {
    match s.char_indices().nth(256) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let doc = AttestationDocument {
                module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
                digest: Digest::Sha384,
                timestamp: NOW,
                pcrs: (0u8..16)
                    .map(|i| (i, vec![pcr_byte.wrapping_add(i); 48]))
                    .collect(),
                certificate: self.leaf.clone(),
                cabundle: vec![self.root.clone()],
                public_key: Some(vec![0x30; 294]),
                user_data: None,
                nonce: None,
            };
            build_signed_document(&doc, &self.leaf_key, &SystemRandom::new()).unwrap()
        }

        pub(crate) fn verifier(&self) -> Verifier {
            let mut v = Verifier::aws_nitro();
            v.add_trusted_root(&self.root).unwrap();
            v
        }
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
                KmsRequest::GenerateDataKeyWithoutPlaintext(
                    GenerateDataKeyWithoutPlaintextRequest {
                        key_id,
                        key_spec: Some(DataKeySpec::Aes256),
                        ..Default::default()
                    },
                )
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
        }
    }

    fn rule(d: &Decision) -> Option<Rule> {
        d.verdict.as_ref().err().map(|e| e.rule)
    }

    #[test]
    fn plaintext_operations_without_recipient_are_denied() {
        let policy = Policy::default();
        let plaintext_ops: Vec<_> = Operation::ALL
            .into_iter()
            .filter(|op| op.returns_plaintext())
            .collect();
        assert_eq!(plaintext_ops.len(), 4);
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
            // With a Recipient (not parsed: no PCR check configured) it passes.
            let d = policy.evaluate(&with_recipient(op, Some(vec![1, 2, 3])), 100, NOW);
            assert_eq!(d.verdict, Ok(()), "{op:?}");
        }
    }

    #[test]
    fn operations_without_plaintext_are_allowed() {
        let policy = Policy::default();
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
        let policy = Policy {
            dangerous_forward_without_recipient: true,
            ..Policy::default()
        };
        let d = policy.evaluate(&with_recipient(Operation::Decrypt, None), 100, NOW);
        assert_eq!(d.verdict, Ok(()));
    }

    #[test]
    fn operation_allowlist() {
        let policy = Policy {
            allowed_operations: Some([Operation::GenerateDataKey].into()),
            ..Policy::default()
        };
        let ok = policy.evaluate(
            &with_recipient(Operation::GenerateDataKey, Some(vec![1])),
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
        let policy = Policy {
            allowed_keys: Some(["alias/app".to_string()].into()),
            ..Policy::default()
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
            recipient: Some(RecipientInfo::new(vec![1])),
            ..Default::default()
        });
        assert_eq!(
            rule(&policy.evaluate(&decrypt, 10, NOW)),
            Some(Rule::KeyIdRequired)
        );
        // GenerateRandom uses no key.
        let random = with_recipient(Operation::GenerateRandom, Some(vec![1]));
        assert_eq!(policy.evaluate(&random, 10, NOW).verdict, Ok(()));
    }

    #[test]
    fn request_size_limit() {
        let policy = Policy {
            max_request_len: Some(1000),
            ..Policy::default()
        };
        let req = with_recipient(Operation::DescribeKey, None);
        assert_eq!(policy.evaluate(&req, 1000, NOW).verdict, Ok(()));
        let d = policy.evaluate(&req, 1001, NOW);
        assert_eq!(rule(&d), Some(Rule::RequestTooLarge));
    }

    #[test]
    fn pcr_match_and_mismatch() {
        let pki = pki();
        let doc = pki.document(0x10);
        let mut policy = Policy {
            expected_pcrs: [(0, vec![0x10; 48]), (2, vec![0x12; 48])].into(),
            verifier: pki.verifier(),
            ..Policy::default()
        };
        assert!(policy.verifies_attestation());
        let req = with_recipient(Operation::GenerateDataKey, Some(doc.clone()));
        let d = policy.evaluate(&req, 100, NOW);
        assert_eq!(d.verdict, Ok(()));
        assert!(d.attestation_verified);
        assert_eq!(d.caller_pcr0, Some("10".repeat(48)));

        // A different measurement is refused, naming the PCR.
        policy.expected_pcrs.insert(2, vec![0x99; 48]);
        let d = policy.evaluate(&req, 100, NOW);
        let denial = d.verdict.unwrap_err();
        assert_eq!(denial.rule, Rule::PcrMismatch);
        assert!(denial.message.starts_with("PCR2 is 1212"), "{denial}");
        assert_eq!(d.caller_pcr0, Some("10".repeat(48)));

        // A PCR the document does not carry.
        policy.expected_pcrs = [(20, vec![0; 48])].into();
        let d = policy.evaluate(&req, 100, NOW);
        assert_eq!(rule(&d), Some(Rule::PcrMismatch));
        assert!(d.verdict.unwrap_err().message.contains("absent"));
    }

    #[test]
    fn attestation_must_verify_when_pcrs_are_expected() {
        let pki = pki();
        let expected: BTreeMap<u8, Vec<u8>> = [(0, vec![0x10; 48])].into();
        // Signed by a chain that is not trusted: only the AWS root is.
        let untrusted = Policy {
            expected_pcrs: expected.clone(),
            ..Policy::default()
        };
        let req = with_recipient(Operation::Decrypt, Some(pki.document(0x10)));
        let d = untrusted.evaluate(&req, 100, NOW);
        assert_eq!(rule(&d), Some(Rule::AttestationInvalid));
        assert!(!d.attestation_verified);
        // PCR0 is still reported from the parsed document for the audit line.
        assert_eq!(d.caller_pcr0, Some("10".repeat(48)));

        let policy = Policy {
            expected_pcrs: expected,
            verifier: pki.verifier(),
            ..Policy::default()
        };
        // Outside the chain's validity.
        let late = UnixMillis(2_300_000_000_000);
        assert_eq!(
            rule(&policy.evaluate(&req, 100, late)),
            Some(Rule::AttestationInvalid)
        );
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
        let lax = Policy {
            dangerous_forward_without_recipient: true,
            ..policy
        };
        let d = lax.evaluate(&with_recipient(Operation::GenerateRandom, None), 100, NOW);
        assert_eq!(rule(&d), Some(Rule::AttestationRequired));
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
}

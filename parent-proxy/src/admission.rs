//! Admission: the proxy's request filter, a pure function from a request
//! (and the current time) to admit or deny. (The KMS key policy, which KMS
//! enforces, is [`crate::key_policy`]; the enclave images admitted are
//! [`crate::measurements`].)
//!
//! The parent instance is untrusted (DESIGN.md, trust model): the KMS key
//! policy with `kms:RecipientAttestation:*` conditions is what really guards
//! the keys. This policy is defence in depth and operator hygiene, so that a
//! misconfigured key policy or a confused enclave app does not make KMS send
//! a plaintext key to the parent:
//!
//! 1. a request larger than [`AdmissionPolicy::max_request_len`] is refused;
//! 2. an operation outside [`AdmissionPolicy::allowed_operations`] is refused;
//! 3. a plaintext-returning operation ([`Operation::returns_plaintext`]:
//!    GenerateDataKey, Decrypt, GenerateDataKeyPair, GenerateRandom) without
//!    `Recipient` is refused, unless
//!    [`AdmissionPolicy::dangerous_forward_without_recipient`] is set (then KMS
//!    decides, and a plaintext answer is still never relayed, see
//!    [`check_response`]);
//! 4. unless that switch is set, a `Recipient` whose attestation document
//!    does not parse, or carries no `public_key` (KMS would have no key to
//!    encrypt the answer to), is refused before anything reaches KMS; and
//!    any document that parses must be at most [`AdmissionPolicy::max_document_age`]
//!    old by its `timestamp` against the proxy's clock, and at most
//!    [`MAX_CLOCK_SKEW`](keybroker_common::attestation::MAX_CLOCK_SKEW) in
//!    the future;
//! 5. a `KeyId` outside [`AdmissionPolicy::allowed_keys`] is refused (exact,
//!    case-sensitive match of the string the enclave sent: key id, key ARN,
//!    `alias/Name` or alias ARN, KMS API `KeyId`); with an allowlist,
//!    requests without `KeyId` (a Decrypt that lets KMS read the key from the
//!    ciphertext) are refused too;
//! 6. with [`AdmissionPolicy::allowed_images`], the `Recipient.AttestationDocument`
//!    is verified with [`Verifier`] at the current time (chain to a pinned
//!    root, ES384 signature; through [`AdmissionPolicy::verification_cache`], so a
//!    document seen before costs a SHA-256 instead of five P-384 checks)
//!    and must carry every PCR of at least one
//!    [`AllowedImage`], with equal values. Each image is matched as a whole,
//!    like the KMS key policy's one Allow statement per image
//!    ([`crate::key_policy`]): with images A and B allowed, A's PCR0 with
//!    B's PCR2 matches neither. Operations that cannot carry a `Recipient`
//!    are not affected; a plaintext-returning one without it (only possible
//!    with the dangerous switch) is refused.
//!
//! A refusal is a [`Denial`] naming the [`Rule`]; the enclave receives it as
//! a `WireError` with `ErrorCode::PolicyDenied` and a message that starts
//! with the rule's name (see [`crate::refusal::Refusal::Denied`]).
//!
//! What is admitted comes back as an [`Admitted`] request, which only this
//! module can make: the backend forwards nothing else
//! ([`crate::backend::KmsBackend::forward`]).

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{
    AttestationError, UnverifiedAttestation, VerificationCache, Verifier, check_document_age,
};
use keybroker_common::kms::{KmsRequest, KmsResponse, Operation};

use crate::measurements::AllowedImage;
use crate::measurements::mismatch_message;
use crate::text::short;

/// The rule that refused a request. The name ([`Rule::as_str`]) is the first
/// word of the message the enclave receives, so an app can tell the causes
/// apart.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The encoded request exceeds [`AdmissionPolicy::max_request_len`].
    RequestTooLarge,
    /// The operation is not in [`AdmissionPolicy::allowed_operations`].
    OperationNotAllowed,
    /// A plaintext-returning operation lacks `Recipient`.
    RecipientRequired,
    /// The `KeyId` is not in [`AdmissionPolicy::allowed_keys`].
    KeyNotAllowed,
    /// [`AdmissionPolicy::allowed_keys`] is set and the request has no `KeyId`.
    KeyIdRequired,
    /// [`AdmissionPolicy::allowed_images`] is set and a plaintext-returning request
    /// has no attestation document to check.
    AttestationRequired,
    /// The attestation document does not parse or verify.
    AttestationInvalid,
    /// The `Recipient` attestation document carries no (or an empty)
    /// `public_key`.
    RecipientKeyMissing,
    /// The attestation document's `timestamp` is older than
    /// [`AdmissionPolicy::max_document_age`].
    AttestationTooOld,
    /// The attestation document's `timestamp` is more than
    /// [`MAX_CLOCK_SKEW`](keybroker_common::attestation::MAX_CLOCK_SKEW)
    /// ahead of the proxy's clock.
    AttestationFromFuture,
    /// The document matches none of [`AdmissionPolicy::allowed_images`] (a PCR of
    /// each image is absent from it or differs).
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
            Rule::RecipientKeyMissing => "RecipientKeyMissing",
            Rule::AttestationTooOld => "AttestationTooOld",
            Rule::AttestationFromFuture => "AttestationFromFuture",
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
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// The result of [`AdmissionPolicy::evaluate`] (verdict `()`) or
/// [`AdmissionPolicy::admit`] (verdict [`Admitted`]): the verdict, plus what
/// the audit line reports about the caller whatever the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<T = ()> {
    /// PCR0 of the `Recipient` attestation document, lower-case hex: from
    /// the verified document when the policy verified it, else from the
    /// parsed (unverified) document; `None` without a (parsable) document.
    pub caller_pcr0: Option<String>,
    /// Whether the document's chain and signature were verified.
    pub attestation_verified: bool,
    /// The [`AllowedImage::label`] of the first allowed image the verified
    /// document matched; `None` when no image is configured or none matched.
    pub admitted_image: Option<String>,
    /// `Ok` to forward the request to KMS, or why not.
    pub verdict: Result<T, Denial>,
}

/// A request the admission policy admitted: the proof the backend asks for
/// before it forwards anything ([`crate::backend::KmsBackend::forward`]).
///
/// Only [`AdmissionPolicy::admit`] makes one (the field is private and there
/// is no other constructor), and it is not `Clone`: each admission forwards
/// one request, the one that was checked.
#[derive(Debug)]
pub struct Admitted {
    request: KmsRequest,
}

impl Admitted {
    /// The admitted request.
    pub fn request(&self) -> &KmsRequest {
        &self.request
    }

    /// The request, for the backend to send (only the crate unwraps it, so
    /// that the request forwarded is the one admitted).
    pub(crate) fn into_request(self) -> KmsRequest {
        self.request
    }
}

/// The request policy (see the [module docs](self) for the rules and their
/// order). `AdmissionPolicy::default()` is the safe default: plaintext operations
/// need a `Recipient`, no allowlists, no PCR check, no size limit beyond the
/// wire's frame limit, and only the AWS Nitro root trusted.
#[derive(Clone, Debug)]
pub struct AdmissionPolicy {
    /// Forward plaintext-returning operations without `Recipient` to KMS
    /// instead of refusing them. Weakens the proxy's own check: KMS's key
    /// policy alone then decides (useful to demonstrate a KMS-side denial).
    /// A plaintext response is still never relayed.
    pub dangerous_forward_without_recipient: bool,
    /// If set, only these `KeyId` strings are forwarded.
    pub allowed_keys: Option<BTreeSet<String>>,
    /// If set, only these operations are forwarded.
    pub allowed_operations: Option<HashSet<Operation>>,
    /// The enclave images admitted. Non-empty: every `Recipient`
    /// attestation document is verified and must carry all PCRs of at least
    /// one of them (two or more during a rollout; see [`AllowedImage`]).
    pub allowed_images: Vec<AllowedImage>,
    /// The roots attestation documents must chain to (AWS Nitro Root-G1
    /// plus, for development, the mock NSM's CA).
    pub verifier: Verifier,
    /// Largest request frame body accepted, in bytes; `None`: only the
    /// wire's frame limit.
    pub max_request_len: Option<usize>,
    /// Oldest attestation document accepted, by its `timestamp` against the
    /// proxy's clock (default [`DEFAULT_MAX_DOCUMENT_AGE`]). Also bounds how
    /// long a document stays in [`AdmissionPolicy::verification_cache`].
    pub max_document_age: Duration,
    /// Documents verified before (by SHA-256), answered without the chain
    /// and signature checks while they would verify again. Clones of the
    /// policy share it; entries are only used with a verifier that trusts
    /// their root, so sharing never admits more.
    pub verification_cache: Arc<VerificationCache>,
}

/// Default [`AdmissionPolicy::max_document_age`]: five minutes.
///
/// The enclave hands out a recipient key pair, with the attestation document
/// that carries its public key, for at most
/// `keybroker_enclave::keys::DEFAULT_MAX_AGE` (four minutes, counted from just
/// before the NSM made the document; the image fixes it). Every genuine
/// request therefore carries a document at most four minutes old; the fifth
/// minute is room for the time a request spends queued and in flight and for
/// the difference between the NSM's and the parent's clocks. It equals the
/// mock KMS's default limit. A tighter limit would refuse requests of
/// healthy enclaves late in a key's life; a looser one lets whoever holds an
/// old document (the parent can keep every document it relayed) reuse it
/// for longer.
pub const DEFAULT_MAX_DOCUMENT_AGE: Duration = Duration::from_secs(5 * 60);

impl Default for AdmissionPolicy {
    fn default() -> Self {
        AdmissionPolicy {
            dangerous_forward_without_recipient: false,
            allowed_keys: None,
            allowed_operations: None,
            allowed_images: Vec::new(),
            verifier: Verifier::aws_nitro(),
            max_request_len: None,
            max_document_age: DEFAULT_MAX_DOCUMENT_AGE,
            verification_cache: Arc::new(VerificationCache::default()),
        }
    }
}

impl AdmissionPolicy {
    /// Whether [`AdmissionPolicy::evaluate`] verifies attestation documents (ECDSA
    /// P-384 over the chain: worth running off the async executor).
    pub fn verifies_attestation(&self) -> bool {
        !self.allowed_images.is_empty()
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
        let mut admitted_image = None;
        let verdict = self.check(
            request,
            operation,
            request_len,
            parsed,
            now,
            &mut |pcr0, image| {
                verified = true;
                caller_pcr0 = pcr0;
                admitted_image = image;
            },
        );
        Decision {
            caller_pcr0,
            attestation_verified: verified,
            admitted_image,
            verdict,
        }
    }

    /// [`AdmissionPolicy::evaluate`], keeping the request: admitted, it
    /// comes back as an [`Admitted`] for the backend; denied, it is dropped.
    pub fn admit(
        &self,
        request: KmsRequest,
        request_len: usize,
        now: UnixMillis,
    ) -> Decision<Admitted> {
        let Decision {
            caller_pcr0,
            attestation_verified,
            admitted_image,
            verdict,
        } = self.evaluate(&request, request_len, now);
        Decision {
            caller_pcr0,
            attestation_verified,
            admitted_image,
            verdict: verdict.map(|()| Admitted { request }),
        }
    }

    fn check(
        &self,
        request: &KmsRequest,
        operation: Operation,
        request_len: usize,
        parsed: Option<Result<UnverifiedAttestation, keybroker_common::AttestationError>>,
        now: UnixMillis,
        on_verified: &mut dyn FnMut(Option<String>, Option<String>),
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
        if let Some(parsed) = &parsed {
            self.check_document(operation, parsed, now)?;
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
        if self.allowed_images.is_empty() {
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
        let document = request
            .recipient()
            .map_or(&[][..], |r| r.attestation_document.as_ref());
        let verified = parsed
            .and_then(|_| {
                self.verification_cache.verify(
                    &self.verifier,
                    document,
                    now,
                    Some(self.max_document_age),
                )
            })
            .map_err(|e| Denial::new(Rule::AttestationInvalid, e.to_string()))?;
        let admitted = self
            .allowed_images
            .iter()
            .find(|image| image.matches(&verified));
        on_verified(
            verified.pcr(0).map(hex::encode),
            admitted.map(AllowedImage::label),
        );
        match admitted {
            Some(_) => Ok(()),
            None => Err(Denial::new(
                Rule::PcrMismatch,
                mismatch_message(&self.allowed_images, &verified),
            )),
        }
    }

    /// Rule 4 of the [module docs](self), for a request with a `Recipient`.
    fn check_document(
        &self,
        operation: Operation,
        parsed: &Result<UnverifiedAttestation, AttestationError>,
        now: UnixMillis,
    ) -> Result<(), Denial> {
        let strict = !self.dangerous_forward_without_recipient;
        let doc = match parsed {
            Ok(doc) => doc.document(),
            Err(e) if strict => {
                return Err(Denial::new(
                    Rule::AttestationInvalid,
                    format!(
                        "the Recipient attestation document of {} does not parse: {e}",
                        operation.as_str()
                    ),
                ));
            }
            // The dangerous switch: KMS decides about what does not parse.
            Err(_) => return Ok(()),
        };
        if strict && doc.public_key.as_deref().is_none_or(<[u8]>::is_empty) {
            return Err(Denial::new(
                Rule::RecipientKeyMissing,
                format!(
                    "the Recipient attestation document of {} carries no public_key, \
                     so KMS would have no enclave key to encrypt the answer to",
                    operation.as_str()
                ),
            ));
        }
        check_document_age(doc.timestamp, now, self.max_document_age).map_err(|e| {
            let rule = match e {
                AttestationError::DocumentFromFuture { .. } => Rule::AttestationFromFuture,
                _ => Rule::AttestationTooOld,
            };
            Denial::new(rule, e.to_string())
        })
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

#[cfg(test)]
mod tests;

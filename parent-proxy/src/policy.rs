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
//! 4. unless that switch is set, a `Recipient` whose attestation document
//!    does not parse, or carries no `public_key` (KMS would have no key to
//!    encrypt the answer to), is refused before anything reaches KMS; and
//!    any document that parses must be at most [`Policy::max_document_age`]
//!    old by its `timestamp` against the proxy's clock, and at most
//!    [`MAX_CLOCK_SKEW`](keybroker_common::attestation::MAX_CLOCK_SKEW) in
//!    the future;
//! 5. a `KeyId` outside [`Policy::allowed_keys`] is refused (exact,
//!    case-sensitive match of the string the enclave sent: key id, key ARN,
//!    `alias/Name` or alias ARN, KMS API `KeyId`); with an allowlist,
//!    requests without `KeyId` (a Decrypt that lets KMS read the key from the
//!    ciphertext) are refused too;
//! 6. with [`Policy::allowed_images`], the `Recipient.AttestationDocument`
//!    is verified with [`Verifier`] at the current time (chain to a pinned
//!    root, ES384 signature; through [`Policy::verification_cache`], so a
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
//! a [`WireError`] with [`ErrorCode::PolicyDenied`] and a message that starts
//! with the rule's name.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{
    AttestationError, UnverifiedAttestation, VerificationCache, Verifier, check_document_age,
};
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
    /// [`Policy::allowed_images`] is set and a plaintext-returning request
    /// has no attestation document to check.
    AttestationRequired,
    /// The attestation document does not parse or verify.
    AttestationInvalid,
    /// The `Recipient` attestation document carries no (or an empty)
    /// `public_key`.
    RecipientKeyMissing,
    /// The attestation document's `timestamp` is older than
    /// [`Policy::max_document_age`].
    AttestationTooOld,
    /// The attestation document's `timestamp` is more than
    /// [`MAX_CLOCK_SKEW`](keybroker_common::attestation::MAX_CLOCK_SKEW)
    /// ahead of the proxy's clock.
    AttestationFromFuture,
    /// The document matches none of [`Policy::allowed_images`] (a PCR of
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
    /// The [`AllowedImage::label`] of the first allowed image the verified
    /// document matched; `None` when no image is configured or none matched.
    pub admitted_image: Option<String>,
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
    /// long a document stays in [`Policy::verification_cache`].
    pub max_document_age: Duration,
    /// Documents verified before (by SHA-256), answered without the chain
    /// and signature checks while they would verify again. Clones of the
    /// policy share it; entries are only used with a verifier that trusts
    /// their root, so sharing never admits more.
    pub verification_cache: Arc<VerificationCache>,
}

/// Default [`Policy::max_document_age`]: five minutes.
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

impl Default for Policy {
    fn default() -> Self {
        Policy {
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

impl Policy {
    /// Whether [`Policy::evaluate`] verifies attestation documents (ECDSA
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
        let pcr = |index: u8| verified.pcr(index);
        let admitted = self.allowed_images.iter().find(|image| image.matches(pcr));
        on_verified(
            verified.pcr(0).map(hex::encode),
            admitted.map(AllowedImage::label),
        );
        match admitted {
            Some(_) => Ok(()),
            None => Err(Denial::new(
                Rule::PcrMismatch,
                mismatch_message(&self.allowed_images, pcr),
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

/// Lengths of PCR values: NSM PCRs are SHA-256, SHA-384 (Nitro Enclaves,
/// 48 bytes) or SHA-512 digests.
pub const PCR_LENGTHS: [usize; 3] = [32, 48, 64];

/// Highest PCR index an NSM reports (it has 32 PCRs).
pub const MAX_PCR_INDEX: u8 = 31;

/// Longest [`AllowedImage`] name, in characters.
pub const MAX_IMAGE_NAME_LEN: usize = 64;

/// How many allowed images a [`Rule::PcrMismatch`] message describes; the
/// rest are counted.
const MAX_IMAGES_IN_MESSAGE: usize = 8;

/// Hex digits of a PCR value quoted in messages that list several images.
const PCR_PREFIX_LEN: usize = 16;

/// Checks one expected PCR value: index `0..=31`, 32, 48 or 64 bytes, and
/// not all zero. All zeros is what every debug-mode enclave attests (its
/// memory is readable from the parent), so admitting it would admit anyone
/// who can start an enclave on the parent; like [`crate::key_policy`], there
/// is no switch to allow it.
pub fn check_pcr_value(index: u8, value: &[u8]) -> crate::Result<()> {
    if index > MAX_PCR_INDEX {
        return Err(crate::Error::Config(format!(
            "PCR index {index} is not 0..={MAX_PCR_INDEX}"
        )));
    }
    if !PCR_LENGTHS.contains(&value.len()) {
        return Err(crate::Error::Config(format!(
            "PCR{index} value is {} bytes; PCRs are 32, 48 or 64 bytes (SHA-384 PCRs: 48)",
            value.len()
        )));
    }
    if value.iter().all(|b| *b == 0) {
        return Err(crate::Error::Config(format!(
            "PCR{index} is all zeros, the value every debug-mode enclave attests: \
             admitting it would admit any enclave started on the parent with --debug-mode"
        )));
    }
    Ok(())
}

/// One enclave image the proxy admits: the PCR values an attestation
/// document must *all* carry (index to value). A document is admitted when
/// it matches every PCR of at least one image of
/// [`Policy::allowed_images`]; PCRs are never combined across images.
///
/// Nitro Enclaves define PCR0 (image file), PCR1 (kernel and bootstrap),
/// PCR2 (application), PCR3 (parent's IAM role), PCR4 (parent's instance
/// id) and PCR8 (EIF signing certificate). Values are checked by
/// [`check_pcr_value`] (no all-zero debug-mode value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedImage {
    name: Option<String>,
    pcrs: BTreeMap<u8, Vec<u8>>,
}

impl AllowedImage {
    /// An image with these PCRs (at least one; each valid per
    /// [`check_pcr_value`]).
    pub fn new(pcrs: BTreeMap<u8, Vec<u8>>) -> crate::Result<Self> {
        if pcrs.is_empty() {
            return Err(crate::Error::Config(
                "an allowed image needs at least one PCR value".into(),
            ));
        }
        for (index, value) in &pcrs {
            check_pcr_value(*index, value)?;
        }
        Ok(AllowedImage { name: None, pcrs })
    }

    /// The same image from the measurements of the key policy generator
    /// (e.g. read from nitro-cli JSON with
    /// [`ImageMeasurements::from_nitro_cli_json`](crate::key_policy::ImageMeasurements::from_nitro_cli_json)),
    /// so that the proxy admits exactly what the key policy admits.
    pub fn from_measurements(
        measurements: &crate::key_policy::ImageMeasurements,
    ) -> crate::Result<Self> {
        let mut pcrs = BTreeMap::new();
        for (index, hex_value) in measurements.pcrs() {
            let value = hex::decode(hex_value)
                .map_err(|e| crate::Error::Config(format!("PCR{index} is not hex: {e}")))?;
            pcrs.insert(index, value);
        }
        Self::new(pcrs)
    }

    /// Names the image (e.g. its version, `v1.2`) for messages: 1 to
    /// [`MAX_IMAGE_NAME_LEN`] characters, no control characters.
    pub fn with_name(mut self, name: &str) -> crate::Result<Self> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_IMAGE_NAME_LEN
            || name.chars().any(char::is_control)
        {
            return Err(crate::Error::Config(format!(
                "image name {:?}: expected 1 to {MAX_IMAGE_NAME_LEN} characters, no control characters",
                short(name)
            )));
        }
        self.name = Some(name.to_owned());
        Ok(self)
    }

    /// The name, if one was given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The required PCRs, index to value.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.pcrs
    }

    /// How messages and logs name the image: its name, else its lowest PCR
    /// (normally PCR0) as a hex prefix, e.g. `PCR0 0123456789abcdef…`.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.pcrs.iter().next() {
            Some((index, value)) => format!("PCR{index} {}", hex_prefix(value)),
            None => "(no PCR)".to_owned(),
        }
    }

    /// Whether the document carries every PCR of this image, with equal
    /// values.
    pub fn matches<'a>(&self, actual: impl Fn(u8) -> Option<&'a [u8]>) -> bool {
        self.pcrs
            .iter()
            .all(|(index, expected)| actual(*index) == Some(expected.as_slice()))
    }

    /// The first PCR (lowest index) of this image the document does not
    /// match, as a message fragment; `None` if it matches every one.
    fn first_mismatch<'a>(&self, actual: impl Fn(u8) -> Option<&'a [u8]>) -> Option<String> {
        self.pcrs
            .iter()
            .find_map(|(index, expected)| match actual(*index) {
                Some(a) if a == expected.as_slice() => None,
                Some(a) => Some(format!(
                    "PCR{index} is {}, expected {}",
                    hex_prefix(a),
                    hex_prefix(expected)
                )),
                None => Some(format!(
                    "PCR{index} is absent from the attestation document"
                )),
            })
    }
}

/// The [`Rule::PcrMismatch`] message: what the caller had (its PCR0) and,
/// per allowed image (at most [`MAX_IMAGES_IN_MESSAGE`]), its label and the
/// first PCR that differs. Names and PCR values are public measurements.
fn mismatch_message<'a>(
    images: &[AllowedImage],
    actual: impl Fn(u8) -> Option<&'a [u8]>,
) -> String {
    let caller = actual(0).map_or_else(|| "absent".to_owned(), hex::encode);
    let mut parts: Vec<String> = images
        .iter()
        .take(MAX_IMAGES_IN_MESSAGE)
        .map(|image| {
            let why = image
                .first_mismatch(&actual)
                .unwrap_or_else(|| "matches".to_owned());
            format!("{}: {why}", image.label())
        })
        .collect();
    if images.len() > MAX_IMAGES_IN_MESSAGE {
        parts.push(format!("and {} more", images.len() - MAX_IMAGES_IN_MESSAGE));
    }
    let count = images.len();
    let noun = if count == 1 { "image" } else { "images" };
    format!(
        "caller PCR0 {caller} matches none of the {count} allowed {noun}: {}",
        parts.join("; ")
    )
}

/// The first [`PCR_PREFIX_LEN`] hex digits of a value, `…` if cut.
fn hex_prefix(value: &[u8]) -> String {
    let mut h = hex::encode(value);
    if h.len() > PCR_PREFIX_LEN {
        h.truncate(PCR_PREFIX_LEN);
        h.push('…');
    }
    h
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
        let policy = Policy::default();
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
        let policy = Policy {
            max_request_len: Some(1000),
            ..Policy::default()
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
    fn admitting(pki: &TestPki, images: Vec<AllowedImage>) -> Policy {
        Policy {
            allowed_images: images,
            verifier: pki.verifier(),
            ..Policy::default()
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
        let untrusted = Policy {
            allowed_images: expected.clone(),
            ..Policy::default()
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
        let lax = Policy {
            dangerous_forward_without_recipient: true,
            ..policy
        };
        let d = lax.evaluate(&with_recipient(Operation::GenerateRandom, None), 100, NOW);
        assert_eq!(rule(&d), Some(Rule::AttestationRequired));
    }

    #[test]
    fn a_recipient_document_must_parse_and_carry_a_public_key() {
        let pki = pki();
        let policy = Policy::default();
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
        let lax = Policy {
            dangerous_forward_without_recipient: true,
            ..Policy::default()
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
        assert_eq!(Policy::default().max_document_age, DEFAULT_MAX_DOCUMENT_AGE);
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
        let policy = Policy::default();
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
        let strict = Policy {
            max_document_age: Duration::from_secs(30),
            ..Policy::default()
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
        let lax = Policy {
            dangerous_forward_without_recipient: true,
            ..Policy::default()
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
}

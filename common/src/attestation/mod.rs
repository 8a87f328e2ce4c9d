//! NSM attestation documents: parse, verify, build.
//!
//! An attestation document is what the Nitro Secure Module (NSM) returns for
//! an `Attestation` request: a COSE_Sign1 structure (RFC 9052 section 4.2)
//! signed with ES384 by a short-lived certificate that chains to the AWS Nitro
//! Enclaves Root-G1 CA. Its payload is a CBOR map described in the AWS
//! document "Verifying the root of trust" and in
//! `aws-nitro-enclaves-nsm-api/docs/attestation_process.md` section 3:
//!
//! ```text
//! AttestationDocument = {
//!     module_id: text,  digest: "SHA384",  timestamp: uint .size 8,
//!     pcrs: { + index => bytes .size (32/48/64) },   ; index = 0..31
//!     certificate: bytes .size (1..1024),           ; DER
//!     cabundle: [* bytes .size (1..1024)],          ; DER, root first
//!     ? public_key: bytes .size (0..1024),
//!     ? user_data:  bytes .size (0..1024),
//!     ? nonce:      bytes .size (0..1024),
//! }
//! ```
//!
//! - [`UnverifiedAttestation::parse`] checks structure and size limits only.
//! - [`Verifier::verify`] checks the certificate chain against pinned roots at
//!   a caller-supplied time and the COSE signature, and returns a
//!   [`VerifiedAttestation`], a value only the verifier can construct.
//! - [`check_document_age`] bounds a document's age at a caller-supplied
//!   time (from its `timestamp`).
//! - [`VerificationCache`] answers a repeated [`Verifier::verify`] with a
//!   hash instead of the chain and signature checks.
//! - [`build_signed_document`] emits a document with the exact layout of the
//!   real NSM, for the development mock NSM.
//!
//! Decisions:
//! - **Unknown payload keys are rejected** ([`AttestationError::UnknownField`]).
//!   The NSM always emits exactly the nine keys above; a document with more is
//!   not one this code understands, and failing closed is the safer default
//!   for a value that gates key release. Duplicate keys are rejected too.
//! - Optional fields may be absent or CBOR `null` (real documents use `null`);
//!   both parse as `None`.
//! - The protected header must decode to exactly `{1: -35}` (alg = ES384);
//!   the unprotected header must be empty (the NSM always sends `{}`).
//! - Both tagged (`#6.18`) and untagged COSE_Sign1 are accepted; maps may be
//!   definite or indefinite length.

mod age;
mod build;
mod cache;
mod parse;
mod verify;

#[cfg(test)]
mod tests;

pub use age::{MAX_CLOCK_SKEW, check_document_age};
pub use build::build_signed_document;
pub use cache::{CacheStats, VerificationCache};
pub use parse::{AttestationDocument, Digest, UnverifiedAttestation};
pub use verify::{AWS_NITRO_ROOT_G1_SHA256, VerifiedAttestation, Verifier};

use crate::UnixMillis;

/// Largest attestation document accepted, in bytes: the NSM driver's response
/// buffer size (`NSM_RESPONSE_MAX_SIZE` = 0x3000 in the NSM API), so no genuine
/// document is larger.
pub const MAX_DOCUMENT_LEN: usize = 0x3000;

/// Largest `public_key`, `user_data` or `nonce` accepted, in bytes
/// (`user_data = bytes .size (0..1024)` in the NSM attestation CDDL).
pub const MAX_USER_FIELD_LEN: usize = 1024;

/// Largest DER certificate accepted in `certificate` or `cabundle`, in bytes
/// (`cert = bytes .size (1..1024)` in the NSM attestation CDDL; genuine
/// certificates are 500..850 bytes).
pub const MAX_CERTIFICATE_LEN: usize = 1024;

/// Most certificates accepted in `cabundle`. Genuine documents carry 4 (root,
/// regional, zonal, instance); the limit leaves room without allowing
/// unbounded chains.
pub const MAX_CABUNDLE_LEN: usize = 8;

/// Most PCRs accepted: indices are `0..=31` (NSM API), so at most 32.
pub const MAX_PCR_COUNT: usize = 32;

/// Length of the raw `r || s` ES384 signature in the COSE_Sign1 (RFC 9053
/// section 2.1: two 48-byte integers for P-384).
pub const ES384_SIGNATURE_LEN: usize = 96;

/// Why an attestation document was rejected.
///
/// Each variant is one distinct cause, so callers and tests can tell a
/// malformed document from an expired chain from a bad signature. Details are
/// sizes, field names, certificate subjects and times: never key material.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// The document is larger than [`MAX_DOCUMENT_LEN`].
    #[error("document is {len} bytes, larger than the NSM limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CBOR input ended before the structure was complete.
    #[error("document is truncated")]
    Truncated,
    /// The CBOR or COSE structure is invalid; the detail says where.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The COSE algorithm, payload digest or a certificate algorithm is not
    /// the one NSM uses (ES384 / SHA384 / ecdsa-with-SHA384 on P-384).
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The COSE signature is not 96 bytes (raw `r || s` for ES384).
    #[error("COSE signature is {len} bytes, expected 96 (ES384 r||s)")]
    BadSignatureLength {
        /// Length found.
        len: usize,
    },
    /// A mandatory payload field is absent (or `null`).
    #[error("payload field `{0}` is missing")]
    MissingField(&'static str),
    /// The payload carries a key that is not one of the nine NSM keys.
    #[error("payload has unknown field `{0}`")]
    UnknownField(String),
    /// A payload key occurs more than once.
    #[error("payload field `{0}` occurs more than once")]
    DuplicateField(&'static str),
    /// A payload field has the wrong CBOR type.
    #[error("payload field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The CBOR type the NSM uses for it.
        expected: &'static str,
    },
    /// A payload field (or the `cabundle` / `pcrs` count) exceeds its limit.
    #[error("payload field `{field}` has size {len}, larger than the limit {max}")]
    FieldTooLarge {
        /// The field.
        field: &'static str,
        /// Its length in bytes (or entries, for `cabundle` and `pcrs`).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A PCR has an index outside `0..=31` or a length other than 32, 48 or 64.
    #[error("PCR {index} is invalid: {len} bytes (index must be 0..=31, length 32, 48 or 64)")]
    InvalidPcr {
        /// The index as found in the document.
        index: u64,
        /// The value's length.
        len: usize,
    },
    /// A certificate does not parse as X.509 DER or has an unusable key.
    #[error("{which}: bad certificate: {detail}")]
    BadCertificate {
        /// Which certificate (`certificate` or `cabundle[i]`).
        which: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A certificate of the chain is not valid yet at the verification time.
    #[error("certificate `{subject}` is not valid before {} (verification time {})", fmt_ms(*not_before), fmt_ms(*at))]
    CertificateNotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// Its `notBefore`.
        not_before: UnixMillis,
        /// The verification time.
        at: UnixMillis,
    },
    /// A certificate of the chain has expired at the verification time.
    #[error("certificate `{subject}` expired at {} (verification time {})", fmt_ms(*not_after), fmt_ms(*at))]
    CertificateExpired {
        /// Subject of the certificate.
        subject: String,
        /// Its `notAfter`.
        not_after: UnixMillis,
        /// The verification time.
        at: UnixMillis,
    },
    /// `cabundle[0]` is not one of the pinned roots.
    #[error("root certificate (SHA-256 {sha256}) is not a trusted root")]
    UntrustedRoot {
        /// Lower-case hex SHA-256 of the root's DER.
        sha256: String,
    },
    /// A certificate's issuer name is not its predecessor's subject name.
    #[error(
        "chain broken: `{subject}` is issued by `{issuer}`, but the preceding certificate is `{expected}`"
    )]
    ChainBroken {
        /// Subject of the certificate whose issuer does not match.
        subject: String,
        /// Its issuer name.
        issuer: String,
        /// Subject of the certificate that precedes it in the chain.
        expected: String,
    },
    /// An issuing certificate is not a CA (RFC 5280 section 4.2.1.9 basic
    /// constraints, or section 4.2.1.3 keyCertSign missing).
    #[error("certificate `{subject}` issues another certificate but is not a CA")]
    NotCa {
        /// Subject of the certificate.
        subject: String,
    },
    /// A CA's pathLenConstraint (RFC 5280 section 4.2.1.9) is smaller than the
    /// number of intermediate CAs below it.
    #[error("certificate `{subject}` allows {path_len} intermediate CA(s) below it, found {found}")]
    PathLenExceeded {
        /// Subject of the constraining CA.
        subject: String,
        /// Its pathLenConstraint.
        path_len: u8,
        /// Intermediate CAs that follow it in the chain.
        found: usize,
    },
    /// A certificate has a critical extension this verifier does not
    /// understand (RFC 5280 section 4.2 requires rejecting it).
    #[error("certificate `{subject}` has unsupported critical extension {oid}")]
    UnsupportedCriticalExtension {
        /// Subject of the certificate.
        subject: String,
        /// The extension's OID.
        oid: String,
    },
    /// A certificate's signature does not verify with its issuer's key.
    #[error("signature on certificate `{subject}` does not verify with its issuer's key")]
    BadCertificateSignature {
        /// Subject of the certificate.
        subject: String,
    },
    /// The COSE_Sign1 ES384 signature does not verify with the leaf key.
    #[error("COSE signature does not verify with the leaf certificate's key")]
    BadSignature,
    /// The document's `timestamp` is older than the maximum age at the
    /// verification time ([`check_document_age`]).
    #[error(
        "document is {} s old (timestamp {}), older than the maximum age of {} s",
        at.0.saturating_sub(timestamp.0) / 1000,
        fmt_ms(*timestamp),
        max_age_ms / 1000
    )]
    DocumentTooOld {
        /// The document's `timestamp`.
        timestamp: UnixMillis,
        /// The verification time.
        at: UnixMillis,
        /// The maximum age, in milliseconds.
        max_age_ms: u64,
    },
    /// The document's `timestamp` is more than the clock-skew tolerance
    /// ([`MAX_CLOCK_SKEW`]) ahead of the verification time.
    #[error(
        "document timestamp {} is {} s ahead of the verification time {} (tolerance {} s)",
        fmt_ms(*timestamp),
        timestamp.0.saturating_sub(at.0) / 1000,
        fmt_ms(*at),
        max_skew_ms / 1000
    )]
    DocumentFromFuture {
        /// The document's `timestamp`.
        timestamp: UnixMillis,
        /// The verification time.
        at: UnixMillis,
        /// The tolerance, in milliseconds.
        max_skew_ms: u64,
    },
}

/// Formats milliseconds since the epoch as RFC 3339 UTC (second precision),
/// falling back to the raw number when out of range.
fn fmt_ms(t: UnixMillis) -> String {
    match der::DateTime::from_unix_duration(core::time::Duration::from_millis(t.0)) {
        Ok(dt) => format!("{dt} ({} ms)", t.0),
        Err(_) => format!("{} ms", t.0),
    }
}

//! The `Recipient` parameter: verifying the attestation document and
//! encrypting the response to its public key, as KMS does for Nitro Enclaves
//! ("Cryptographic attestation support in AWS KMS", KMS Developer Guide).
//!
//! Checks, in order (each failure is a `ValidationException`, see below):
//! 1. `KeyEncryptionAlgorithm` is `RSAES_OAEP_SHA_256` (enforced by the
//!    request schema);
//! 2. the document verifies with [`keybroker_common::attestation::Verifier`]
//!    at the mock's current time, against the AWS Nitro Enclaves Root-G1 and
//!    the configured extra roots (`--attestation-root`), through a
//!    [`VerificationCache`] (the one the parent proxy uses): a document seen
//!    before costs a SHA-256 while its chain is valid and it is within the
//!    maximum age;
//! 3. its `timestamp` is not older than the configured maximum age (default
//!    5 minutes) and not more than
//!    [`MAX_CLOCK_SKEW`](keybroker_common::attestation::MAX_CLOCK_SKEW) in
//!    the future ([`check_document_age`]);
//! 4. its `public_key` is a DER SubjectPublicKeyInfo of an RSA key of
//!    2048..=4096 bits.
//!
//! The response is encrypted with [`keybroker_common::cms::encrypt_for_recipient`]:
//! a BER CMS EnvelopedData of the exact shape real KMS returns as
//! `CiphertextForRecipient`.
//!
//! Error choice: KMS does not document the error for an attestation document
//! it cannot verify. The mock answers `ValidationException` (a malformed
//! request parameter) with a message that says what failed; a valid document
//! whose measurements do not satisfy the key policy is an
//! `AccessDeniedException`, which is what real KMS is known to answer.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::rsa::PublicEncryptingKey;
use keybroker_common::UnixMillis;
use keybroker_common::attestation::{VerificationCache, Verifier, check_document_age};
use keybroker_common::kms::{KmsError, KmsErrorCode};

/// What the mock keeps of a verified attestation document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedRecipient {
    /// PCR index to value.
    pub pcrs: Vec<(u8, Vec<u8>)>,
    /// RSA SubjectPublicKeyInfo (DER) to encrypt the response to.
    pub public_key_spki: Vec<u8>,
    /// The document's timestamp.
    pub timestamp: UnixMillis,
    /// The NSM module id (for logs).
    pub module_id: String,
}

/// Verifies attestation documents and encrypts to their keys.
#[derive(Debug, Clone)]
pub struct RecipientVerifier {
    verifier: Verifier,
    max_age: Duration,
    /// Shared by clones.
    cache: Arc<VerificationCache>,
}

fn invalid(msg: impl std::fmt::Display) -> KmsError {
    KmsError::new(
        KmsErrorCode::Validation,
        format!("The attestation document in the Recipient parameter is not valid: {msg}"),
    )
}

impl RecipientVerifier {
    /// Trusts the AWS Nitro Enclaves Root-G1 plus `extra_roots` (DER).
    pub fn new<'a>(
        extra_roots: impl IntoIterator<Item = &'a [u8]>,
        max_age_ms: u64,
    ) -> Result<Self, crate::Error> {
        let mut verifier = Verifier::aws_nitro();
        for root in extra_roots {
            verifier
                .add_trusted_root(root)
                .map_err(|e| crate::Error::Config(format!("attestation root rejected: {e}")))?;
        }
        Ok(Self {
            verifier,
            max_age: Duration::from_millis(max_age_ms),
            cache: Arc::new(VerificationCache::default()),
        })
    }

    /// The cache of verified documents (for tests and benchmarks).
    pub fn cache(&self) -> &VerificationCache {
        &self.cache
    }

    /// Runs checks 2..4 of the module documentation at time `now`.
    pub fn verify(&self, document: &[u8], now: UnixMillis) -> Result<AttestedRecipient, KmsError> {
        let verified = self
            .cache
            .verify(&self.verifier, document, now, Some(self.max_age))
            .map_err(invalid)?;
        let ts = verified.timestamp();
        check_document_age(ts, now, self.max_age).map_err(invalid)?;
        let spki = verified
            .public_key()
            .ok_or_else(|| invalid("the document has no public_key"))?;
        let key = PublicEncryptingKey::from_der(spki)
            .map_err(|_| invalid("public_key is not an RSA SubjectPublicKeyInfo"))?;
        let bits = key.key_size_bits();
        if !(2048..=4096).contains(&bits) {
            return Err(invalid(format!(
                "public_key is RSA-{bits}; KMS accepts RSA keys of 2048 to 4096 bits"
            )));
        }
        Ok(AttestedRecipient {
            pcrs: verified
                .pcrs()
                .iter()
                .map(|(i, v)| (*i, v.clone()))
                .collect(),
            public_key_spki: spki.to_vec(),
            timestamp: ts,
            module_id: verified.module_id().to_owned(),
        })
    }
}

/// `CiphertextForRecipient`: `plaintext` as a CMS EnvelopedData to the
/// recipient's RSA key (RSAES-OAEP-SHA-256, AES-256-CBC).
pub fn encrypt_for(
    recipient: &AttestedRecipient,
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, KmsError> {
    keybroker_common::cms::encrypt_for_recipient(&recipient.public_key_spki, plaintext, rng)
        .map_err(|e| {
            KmsError::new(
                KmsErrorCode::KmsInternal,
                format!("CiphertextForRecipient: {e}"),
            )
        })
}

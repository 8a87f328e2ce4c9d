//! CMS `EnvelopedData` as AWS KMS returns it in `CiphertextForRecipient`.
//!
//! When a KMS request carries a `Recipient` (an NSM attestation document with
//! an RSA public key), KMS does not return the plaintext: it returns
//! `CiphertextForRecipient`, a CMS `ContentInfo` holding an `EnvelopedData`
//! (RFC 5652 section 6) encrypted to that key. This module handles exactly the
//! shape KMS emits and rejects everything else with a typed [`CmsError`]:
//!
//! ```text
//! ContentInfo (BER, indefinite lengths)           RFC 5652 section 3
//!   contentType  id-envelopedData (1.2.840.113549.1.7.3)
//!   content [0]  EnvelopedData, version 2         RFC 5652 section 6.1
//!     recipientInfos: exactly one KeyTransRecipientInfo, version 2,
//!       rid = subjectKeyIdentifier                RFC 5652 section 6.2.1
//!       keyEncryptionAlgorithm RSAES-OAEP, SHA-256, MGF1-SHA-256, empty label
//!                                                 RFC 8017 A.2.1, RFC 4055 section 4
//!     encryptedContentInfo                        RFC 5652 section 6.1
//!       contentType id-data
//!       contentEncryptionAlgorithm AES-256-CBC, IV = OCTET STRING (16)
//!                                                 RFC 3565 section 4.1
//!       encryptedContent [0] primitive, or [0] constructed with OCTET STRING chunks
//! ```
//!
//! - [`parse`] decodes and checks the structure (no key needed);
//! - [`decrypt`] unwraps the content-encryption key with the enclave's
//!   [`RecipientPrivateKey`] and decrypts the content (PKCS#7 padding,
//!   RFC 5652 section 6.3);
//! - [`encrypt_for_recipient`] produces the same shape, byte layout included,
//!   for the mock KMS.
//!
//! The decoder is the `cms` crate's `ContentInfo::from_ber` (der 0.8 with
//! BER support); this module adds the checks on versions, algorithms and
//! parameters. The encoder is a small hand-written BER emitter, because der
//! only writes DER and KMS's output uses indefinite lengths.
//!
//! # The subject key identifier is not checked
//!
//! How KMS derives the 32-byte `subjectKeyIdentifier` from the recipient key
//! is undocumented. [`decrypt`] therefore does not compare it with anything:
//! there is exactly one recipient and the private key is ours, so a
//! ciphertext for another key simply fails to decrypt. Our encoder derives
//! it as SHA-256 of the `subjectPublicKey` BIT STRING contents (see
//! [`subject_key_identifier`]); that is this project's choice, not KMS's.
//!
//! # Oracles
//!
//! Every failure after parsing (OAEP decoding, a content-encryption key that
//! is not 32 bytes, PKCS#7 padding) is the single [`CmsError::DecryptionFailed`].
//! Success itself stays observable to whoever submits the ciphertext, so a
//! party that can submit many modified ciphertexts under one recipient key
//! has a CBC padding oracle; recipient keys are meant to be ephemeral and
//! callers should check the plaintext length they expect.

mod encode;
mod key;
mod parse;

pub use encode::{encrypt_for_recipient, subject_key_identifier};
pub use key::RecipientPrivateKey;
pub use parse::{EnvelopedParts, parse};

use crate::Error;
use crate::secret::SecretBytes;
use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use const_oid::ObjectIdentifier;
use zeroize::Zeroizing;

/// Largest accepted `CiphertextForRecipient`, in bytes: the KMS API documents
/// the field as 1..=6144 bytes (`GenerateDataKey`, `Decrypt`, ... responses).
/// Checked before any parsing.
pub const MAX_CIPHERTEXT_FOR_RECIPIENT_LEN: usize = 6144;

/// Length of the AES-256-CBC initialization vector (RFC 3565 section 4.1).
pub const IV_LEN: usize = 16;

/// Length of the content-encryption key: AES-256 (RFC 3565 section 2.3).
pub const CEK_LEN: usize = 32;

/// Size of the OCTET STRING chunks in the `[0]` constructed encrypted content
/// of real KMS responses (a 4112-byte content arrives as 1000+1000+1000+1000+112).
/// The encoder uses the same size.
pub const CONTENT_CHUNK_LEN: usize = 1000;

/// Smallest and largest accepted RSA recipient key, in bits. KMS documents
/// RSA-2048 for `Recipient`; up to 4096 is accepted so key size is not a trap.
pub const RSA_BITS: core::ops::RangeInclusive<usize> = 2048..=4096;

/// Object identifiers used by this module.
pub mod oid {
    use const_oid::ObjectIdentifier;

    /// `id-data` (RFC 5652 section 4).
    pub const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
    /// `id-envelopedData` (RFC 5652 section 6.1).
    pub const ID_ENVELOPED_DATA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
    /// `rsaEncryption` (RFC 8017 appendix A.1), the SPKI algorithm of the recipient key.
    pub const RSA_ENCRYPTION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    /// `id-RSAES-OAEP` (RFC 8017 appendix A.2.1).
    pub const ID_RSAES_OAEP: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
    /// `id-mgf1` (RFC 8017 appendix B.2.1).
    pub const ID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
    /// `id-pSpecified` (RFC 8017 appendix A.2.1), the OAEP label source.
    pub const ID_P_SPECIFIED: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.9");
    /// `id-sha1`, the RSAES-OAEP default hash (RFC 8017 appendix A.2.1).
    pub const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
    /// `id-sha256` (RFC 4055 section 2.1).
    pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
    /// `id-aes256-CBC` (RFC 3565 section 4.1).
    pub const ID_AES256_CBC: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
}

/// Why a CMS `EnvelopedData` was rejected.
///
/// Details are lengths, field names and OIDs, never key material.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmsError {
    /// The input is larger than [`MAX_CIPHERTEXT_FOR_RECIPIENT_LEN`]; nothing was parsed.
    #[error("input is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid BER for the expected ASN.1 types (or empty, or trailing data).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A content type other than the expected one (`id-envelopedData` in
    /// `ContentInfo`, `id-data` in `EncryptedContentInfo`).
    #[error("unexpected content type {found} in {what}")]
    UnexpectedContentType {
        /// Which structure carried it.
        what: &'static str,
        /// The content type found.
        found: ObjectIdentifier,
    },
    /// A `CMSVersion` other than 2 (`EnvelopedData` or `KeyTransRecipientInfo`).
    #[error("unsupported {what} version {found}")]
    UnsupportedVersion {
        /// Which structure carried it.
        what: &'static str,
        /// The version found.
        found: u8,
    },
    /// An algorithm other than RSAES-OAEP / SHA-256 / MGF1-SHA-256 / AES-256-CBC.
    #[error("unsupported {what}: {oid}")]
    UnsupportedAlgorithm {
        /// Which algorithm slot.
        what: &'static str,
        /// The algorithm found.
        oid: ObjectIdentifier,
    },
    /// Algorithm parameters outside the supported profile (for example a
    /// non-empty OAEP label or SHA-256 parameters that are neither NULL nor absent).
    #[error("unsupported algorithm parameters: {0}")]
    UnsupportedParameters(&'static str),
    /// Not exactly one `RecipientInfo`.
    #[error("expected exactly one recipient, found {0}")]
    RecipientCount(usize),
    /// The one recipient is not a `KeyTransRecipientInfo` identified by
    /// `subjectKeyIdentifier`.
    #[error("unsupported recipient: {0}")]
    UnsupportedRecipient(&'static str),
    /// An optional `EnvelopedData` feature KMS never uses (`originatorInfo`,
    /// `unprotectedAttrs`, detached content).
    #[error("unsupported CMS feature: {0}")]
    Unsupported(&'static str),
    /// A field has a length this profile cannot accept.
    #[error("bad length of {what}: {len} bytes, expected {expected}")]
    BadLength {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// The recipient public key given to the encoder is not an RSA
    /// `SubjectPublicKeyInfo` of an accepted size ([`RSA_BITS`]).
    #[error("unsupported recipient public key: {0}")]
    UnsupportedRecipientKey(String),
    /// Key unwrapping or content decryption failed. One variant for OAEP
    /// decoding, a content-encryption key of the wrong length and PKCS#7
    /// padding, so the error does not tell which step failed.
    #[error("decryption failed")]
    DecryptionFailed,
}

/// Parses `ber` as a KMS `CiphertextForRecipient` and decrypts it with `key`.
///
/// Steps: [`parse`]; RSAES-OAEP-SHA-256 unwrap of the content-encryption key
/// (RFC 5652 section 6.2.1, RFC 8017 section 7.1.2) with AWS-LC's
/// constant-time, blinded RSA; a key of exactly [`CEK_LEN`] bytes; AES-256-CBC
/// decryption and PKCS#7 unpadding (RFC 5652 section 6.3). The
/// `subjectKeyIdentifier` is not compared with anything (see the module docs).
///
/// # Errors
/// [`Error::Cms`] with the parse errors of [`parse`]; [`CmsError::BadLength`]
/// when the encrypted key does not match the key's modulus size;
/// [`CmsError::DecryptionFailed`] for every failure of the decryption itself.
pub fn decrypt(ber: &[u8], key: &RecipientPrivateKey) -> Result<SecretBytes, Error> {
    let parts = parse(ber)?;
    decrypt_parts(&parts, key)
}

/// Decrypts already parsed parts (see [`decrypt`], which parses and calls this).
///
/// # Errors
/// As [`decrypt`], without the parse errors.
pub fn decrypt_parts(
    parts: &EnvelopedParts,
    key: &RecipientPrivateKey,
) -> Result<SecretBytes, Error> {
    let cek = key.unwrap_content_key(&parts.encrypted_key)?;
    let aes = UnboundCipherKey::new(&AES_256, cek.as_slice())
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| Error::Crypto("AES-256-CBC key setup failed"))?;
    let mut buf = Zeroizing::new(parts.ciphertext.clone());
    let plaintext_len = aes
        .decrypt(
            buf.as_mut_slice(),
            DecryptionContext::Iv128(FixedLength::from(parts.iv)),
        )
        .map_err(|_| CmsError::DecryptionFailed)?
        .len();
    buf.truncate(plaintext_len);
    // The moved-out buffer is zeroized by SecretBytes on drop (whole capacity,
    // padding bytes included); `buf` is left empty.
    Ok(SecretBytes::new(core::mem::take(&mut *buf)))
}

#[cfg(test)]
mod tests;

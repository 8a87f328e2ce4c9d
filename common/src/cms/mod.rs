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
//!   RFC 5652 section 6.3), with implicit rejection (below);
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
//! ciphertext for another key simply does not decrypt (and yields its
//! implicit-rejection value, below). Our encoder derives
//! it as SHA-256 of the `subjectPublicKey` BIT STRING contents (see
//! [`subject_key_identifier`]); that is this project's choice, not KMS's.
//!
//! # Implicit rejection: decryption is not an oracle
//!
//! Whoever supplies a `CiphertextForRecipient` must not learn whether it
//! decrypted. In broker mode that is the parent proxy: it can modify KMS's
//! answer or encrypt anything to the public key in the attestation document.
//! AES-CBC with PKCS#7 padding and no integrity is a padding oracle as soon
//! as a failure is visible (Vaudenay, 2002), and so is RSA decryption
//! (Bleichenbacher, 1998; Manger, 2001 for OAEP). Rotating the recipient key
//! after a number of uses does not bound the leak: the parent can have the
//! same data key re-wrapped to every new recipient key by calling KMS
//! `Decrypt` itself with the enclave's newest attestation document, which
//! it sees in every request.
//!
//! So [`decrypt`] never fails after [`parse`], the way TLS treats a bad RSA
//! premaster secret (RFC 5246 section 7.4.7.1) and the "implicit rejection"
//! designs for RSA PKCS#1 v1.5 decryption do:
//!
//! - each [`RecipientPrivateKey`] holds a random 32-byte secret, generated
//!   and zeroized with it;
//! - `PRK = HKDF-Extract(salt = secret, IKM = label || encryptedKey || IV ||
//!   content)` (RFC 5869 with SHA-256; each field length-prefixed; the
//!   subject key identifier and the BER layout are not included, since they do
//!   not change what a real decryption yields);
//! - if the OAEP unwrap fails or the key it yields is not 32 bytes, AES-CBC
//!   runs anyway, with the key `HKDF-Expand(PRK, "cek", 32)`;
//! - if the unwrap failed, the padding is invalid, or the plaintext does not
//!   have the length the caller expects, the result is
//!   `HKDF-Expand(PRK, "plaintext", n)`. `n` is the expected length or, when
//!   the caller expects none, `len(content) - 1 - (HKDF-Expand(PRK, "length", 1) mod 16)`:
//!   the length that a random padding would leave.
//!
//! The value is deterministic: the same ciphertext always gets the same
//! answer, as a real decryption would. Without the secret it cannot be told
//! from the plaintext of a modified ciphertext, which is just as useless to
//! the caller. The caller then fails as it would with a wrong key (an
//! envelope header that does not authenticate, a key pair that does not
//! parse), and it fails the same way in both cases. The failure is never an
//! error of the decryption, so it can never become a retryable error either.
//!
//! Still observable:
//! - parse errors. They depend only on public bytes (the structure, the
//!   lengths, the algorithm identifiers) and tell the sender nothing it
//!   did not already know;
//! - without an expected length, the plaintext's length inside the
//!   enclave. An app that reveals it reveals whether the padding was valid.
//!   Callers that know the length pass it (`expected_len`);
//! - timing at the instruction level: the branches are not constant-time,
//!   but the RSA private-key operation (about a millisecond) and the AES
//!   decryption run in every case and dominate (except for an encrypted key
//!   whose length is not the modulus's, which the sender knows anyway).

mod encode;
mod key;
mod parse;

pub use encode::{encrypt_for_recipient, subject_key_identifier};
pub use key::RecipientPrivateKey;
pub use parse::{EnvelopedParts, parse};

use crate::Error;
use crate::secret::SecretBytes;
use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::hkdf::Prk;
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
}

/// Parses `ber` as a KMS `CiphertextForRecipient` and decrypts it with `key`.
///
/// Steps: [`parse`]; RSAES-OAEP-SHA-256 unwrap of the content-encryption key
/// (RFC 5652 section 6.2.1, RFC 8017 section 7.1.2) with AWS-LC's
/// constant-time, blinded RSA; a key of exactly [`CEK_LEN`] bytes; AES-256-CBC
/// decryption and PKCS#7 unpadding (RFC 5652 section 6.3). The
/// `subjectKeyIdentifier` is not compared with anything (see the module docs).
///
/// `expected_len` is the plaintext length the caller knows it must get (a
/// data key of a `KeySpec`, `NumberOfBytes` random bytes), if any. When a
/// step fails, or the plaintext has another length, the result is the
/// ciphertext's pseudorandom implicit-rejection value (module docs), of
/// `expected_len` bytes when it is given.
///
/// # Errors
/// [`Error::Cms`] with the parse errors of [`parse`] only;
/// [`Error::InvalidArgument`] for an `expected_len` above
/// [`MAX_CIPHERTEXT_FOR_RECIPIENT_LEN`] (no ciphertext can hold that much).
pub fn decrypt(
    ber: &[u8],
    key: &RecipientPrivateKey,
    expected_len: Option<usize>,
) -> Result<SecretBytes, Error> {
    let parts = parse(ber)?;
    decrypt_parts(&parts, key, expected_len)
}

/// Decrypts already parsed parts (see [`decrypt`], which parses and calls this).
///
/// # Errors
/// As [`decrypt`], without the parse errors.
pub fn decrypt_parts(
    parts: &EnvelopedParts,
    key: &RecipientPrivateKey,
    expected_len: Option<usize>,
) -> Result<SecretBytes, Error> {
    if expected_len.is_some_and(|n| n > MAX_CIPHERTEXT_FOR_RECIPIENT_LEN) {
        return Err(Error::InvalidArgument(format!(
            "expected plaintext length above {MAX_CIPHERTEXT_FOR_RECIPIENT_LEN} bytes"
        )));
    }
    let prk = key.rejection_prk(parts);
    match try_decrypt(parts, key, &prk)? {
        Some(plaintext) if expected_len.is_none_or(|n| n == plaintext.len()) => Ok(plaintext),
        _ => rejection_value(&prk, parts.ciphertext.len(), expected_len),
    }
}

/// The real decryption, or `None` if any step fails. The AES decryption runs
/// even when the key unwrap failed (with the pseudorandom key), so both
/// failures take the same steps.
fn try_decrypt(
    parts: &EnvelopedParts,
    key: &RecipientPrivateKey,
    prk: &Prk,
) -> Result<Option<SecretBytes>, Error> {
    let unwrapped = key.unwrap_content_key(&parts.encrypted_key);
    let key_ok = unwrapped.is_some();
    let cek = match unwrapped {
        Some(cek) => cek,
        None => {
            let mut cek = Zeroizing::new([0u8; CEK_LEN]);
            expand(prk, b"cek", &mut cek[..])?;
            cek
        }
    };
    let aes = UnboundCipherKey::new(&AES_256, cek.as_slice())
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| Error::Crypto("AES-256-CBC key setup failed"))?;
    let mut buf = Zeroizing::new(parts.ciphertext.clone());
    let unpadded = aes
        .decrypt(
            buf.as_mut_slice(),
            DecryptionContext::Iv128(FixedLength::from(parts.iv)),
        )
        .map(|p| p.len());
    match unpadded {
        Ok(len) if key_ok => {
            buf.truncate(len);
            // The moved-out buffer is zeroized by SecretBytes on drop (whole
            // capacity, padding bytes included); `buf` is left empty.
            Ok(Some(SecretBytes::new(core::mem::take(&mut *buf))))
        }
        _ => Ok(None),
    }
}

/// The implicit-rejection value of a ciphertext with `ciphertext_len`
/// content bytes (module docs).
fn rejection_value(
    prk: &Prk,
    ciphertext_len: usize,
    expected_len: Option<usize>,
) -> Result<SecretBytes, Error> {
    let len = match expected_len {
        Some(n) => n,
        None => {
            let mut b = [0u8; 1];
            expand(prk, b"length", &mut b)?;
            // `parse` guarantees a non-zero multiple of 16 bytes.
            ciphertext_len.saturating_sub(1 + usize::from(b[0] % 16))
        }
    };
    let mut out = Zeroizing::new(vec![0u8; len]);
    expand(prk, b"plaintext", &mut out)?;
    Ok(SecretBytes::new(core::mem::take(&mut *out)))
}

/// Output length for `Prk::expand`.
struct OkmLen(usize);

impl aws_lc_rs::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// `HKDF-Expand(prk, info, out.len())` into `out`.
fn expand(prk: &Prk, info: &[u8], out: &mut [u8]) -> Result<(), Error> {
    prk.expand(&[info], OkmLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| Error::Crypto("HKDF-SHA256 expand"))
}

#[cfg(test)]
mod tests;

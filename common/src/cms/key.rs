//! The enclave's ephemeral RSA recipient key.

use super::{CEK_LEN, CmsError, RSA_BITS};
use crate::Error;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use core::fmt;
use zeroize::Zeroizing;

/// The RSA private key whose public half goes into the NSM attestation
/// document (`public_key`, as DER `SubjectPublicKeyInfo`) and to which KMS
/// encrypts `CiphertextForRecipient` with RSAES-OAEP-SHA-256.
///
/// Wraps AWS-LC's `PrivateDecryptingKey`: the private-key operation is
/// constant-time and blinded. `Debug` shows only the key size.
pub struct RecipientPrivateKey {
    oaep: OaepPrivateDecryptingKey,
    spki_der: Vec<u8>,
    bits: usize,
}

impl RecipientPrivateKey {
    /// Generates a fresh RSA-2048 key, the size AWS documents for the KMS
    /// `Recipient` parameter, with AWS-LC's own randomness.
    ///
    /// # Errors
    /// [`Error::Crypto`] if AWS-LC fails to generate or export the key.
    pub fn generate_2048() -> Result<Self, Error> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| Error::Crypto("RSA-2048 key generation failed"))?;
        Self::from_key(key)
    }

    /// Loads an RSA private key from a DER PKCS#8 v1 `PrivateKeyInfo`
    /// (RFC 5208), for keys made elsewhere (tests, OpenSSL interop).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the bytes are not an RSA PKCS#8 key or
    /// its size is outside [`RSA_BITS`].
    pub fn from_pkcs8_der(pkcs8: &[u8]) -> Result<Self, Error> {
        let key = PrivateDecryptingKey::from_pkcs8(pkcs8)
            .map_err(|_| Error::InvalidArgument("not an RSA PKCS#8 private key".into()))?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<Self, Error> {
        let bits = key.key_size_bits();
        if !RSA_BITS.contains(&bits) {
            return Err(Error::InvalidArgument(format!(
                "RSA-{bits} recipient key: only {}..={} bits are supported",
                RSA_BITS.start(),
                RSA_BITS.end()
            )));
        }
        let spki_der = key
            .public_key()
            .as_der()
            .map_err(|_| Error::Crypto("RSA public key export failed"))?
            .as_ref()
            .to_vec();
        let oaep = OaepPrivateDecryptingKey::new(key)
            .map_err(|_| Error::Crypto("RSA-OAEP key setup failed"))?;
        Ok(Self {
            oaep,
            spki_der,
            bits,
        })
    }

    /// The public key as DER `SubjectPublicKeyInfo` (RFC 5280 section
    /// 4.1.2.7, `rsaEncryption`): 294 bytes for RSA-2048. This is what goes
    /// into the attestation document's `public_key` field.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki_der.clone()
    }

    /// Modulus size in bits.
    pub fn key_size_bits(&self) -> usize {
        self.bits
    }

    /// The `subjectKeyIdentifier` our encoder puts in front of ciphertexts
    /// for this key (see [`super::subject_key_identifier`]). Informational:
    /// decryption does not check it.
    ///
    /// # Errors
    /// Only if our own SPKI failed to parse, which would be a bug.
    pub fn subject_key_identifier(&self) -> Result<[u8; 32], Error> {
        super::subject_key_identifier(&self.spki_der)
    }

    /// RSAES-OAEP-SHA-256 (MGF1-SHA-256, empty label) decryption of the
    /// content-encryption key (RFC 5652 section 6.2.1, RFC 8017 section 7.1.2).
    pub(super) fn unwrap_content_key(
        &self,
        encrypted_key: &[u8],
    ) -> Result<Zeroizing<[u8; CEK_LEN]>, Error> {
        if encrypted_key.len() != self.oaep.key_size_bytes() {
            return Err(CmsError::BadLength {
                what: "encryptedKey",
                len: encrypted_key.len(),
                expected: "the recipient key's modulus size",
            }
            .into());
        }
        let mut out = Zeroizing::new(vec![0u8; self.oaep.min_output_size()]);
        let unwrapped = self
            .oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, encrypted_key, &mut out, None)
            .map_err(|_| CmsError::DecryptionFailed)?;
        // A key of another length is indistinguishable from an OAEP failure.
        let mut cek = Zeroizing::new([0u8; CEK_LEN]);
        if unwrapped.len() != CEK_LEN {
            return Err(CmsError::DecryptionFailed.into());
        }
        cek.copy_from_slice(unwrapped);
        Ok(cek)
    }
}

impl fmt::Debug for RecipientPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientPrivateKey")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

//! The enclave's ephemeral RSA recipient key.

use super::{CEK_LEN, EnvelopedParts, RSA_BITS};
use crate::Error;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hkdf::{HKDF_SHA256, Prk, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use core::fmt;
use zeroize::Zeroizing;

/// Length of the implicit-rejection secret (see the module docs of
/// [`super`], "Implicit rejection"): a full HKDF-SHA256 key.
const REJECTION_SECRET_LEN: usize = 32;

/// Domain separation of the implicit-rejection transcript.
const REJECTION_LABEL: &[u8] = b"keybroker cms implicit rejection v1";

/// The RSA private key whose public half goes into the NSM attestation
/// document (`public_key`, as DER `SubjectPublicKeyInfo`) and to which KMS
/// encrypts `CiphertextForRecipient` with RSAES-OAEP-SHA-256.
///
/// Wraps AWS-LC's `PrivateDecryptingKey`: the private-key operation is
/// constant-time and blinded. `Debug` shows only the key size.
///
/// Each key also holds a random 32-byte secret, generated with it and
/// zeroized with it, from which [`super::decrypt`] derives the pseudorandom
/// answer to a ciphertext that does not decrypt (implicit rejection, see the
/// [module docs](super)).
pub struct RecipientPrivateKey {
    oaep: OaepPrivateDecryptingKey,
    spki_der: Vec<u8>,
    bits: usize,
    rejection_secret: Zeroizing<[u8; REJECTION_SECRET_LEN]>,
}

impl RecipientPrivateKey {
    /// Generates a fresh RSA-2048 key, the size AWS documents for the KMS
    /// `Recipient` parameter, and its implicit-rejection secret, with
    /// AWS-LC's own randomness.
    ///
    /// # Errors
    /// [`Error::Crypto`] if AWS-LC fails to generate or export the key.
    pub fn generate_2048() -> Result<Self, Error> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| Error::Crypto("RSA-2048 key generation failed"))?;
        Self::from_key(key)
    }

    /// Loads an RSA private key from a DER PKCS#8 v1 `PrivateKeyInfo`
    /// (RFC 5208), for keys made elsewhere (tests, OpenSSL interop). The
    /// implicit-rejection secret is fresh (random) for each load.
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
        let mut rejection_secret = Zeroizing::new([0u8; REJECTION_SECRET_LEN]);
        SystemRandom::new()
            .fill(&mut rejection_secret[..])
            .map_err(|_| Error::Crypto("random implicit-rejection secret"))?;
        Ok(Self {
            oaep,
            spki_der,
            bits,
            rejection_secret,
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
    ///
    /// `None` for every failure alike (an encrypted key of the wrong length,
    /// OAEP decoding, a key that is not [`CEK_LEN`] bytes): the caller then
    /// goes on with a pseudorandom key (implicit rejection).
    pub(super) fn unwrap_content_key(
        &self,
        encrypted_key: &[u8],
    ) -> Option<Zeroizing<[u8; CEK_LEN]>> {
        if encrypted_key.len() != self.oaep.key_size_bytes() {
            return None;
        }
        let mut out = Zeroizing::new(vec![0u8; self.oaep.min_output_size()]);
        let unwrapped = self
            .oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, encrypted_key, &mut out, None)
            .ok()?;
        if unwrapped.len() != CEK_LEN {
            return None;
        }
        let mut cek = Zeroizing::new([0u8; CEK_LEN]);
        cek.copy_from_slice(unwrapped);
        Some(cek)
    }

    /// The implicit-rejection PRF of one ciphertext: HKDF-SHA256 extract
    /// with this key's secret as the salt over a transcript of the parsed
    /// parts that decryption depends on (`encryptedKey`, IV, content), each
    /// length-prefixed. The subject key identifier and the BER encoding are
    /// left out on purpose: they do not change what a real decryption
    /// yields, so they must not change the rejection value either.
    pub(super) fn rejection_prk(&self, parts: &EnvelopedParts) -> Prk {
        let field_len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
        let mut transcript = Vec::with_capacity(
            REJECTION_LABEL.len() + 12 + parts.encrypted_key.len() + 16 + parts.ciphertext.len(),
        );
        transcript.extend_from_slice(REJECTION_LABEL);
        for field in [
            &parts.encrypted_key[..],
            &parts.iv[..],
            &parts.ciphertext[..],
        ] {
            transcript.extend_from_slice(&field_len(field));
            transcript.extend_from_slice(field);
        }
        Salt::new(HKDF_SHA256, &self.rejection_secret[..]).extract(&transcript)
    }
}

impl fmt::Debug for RecipientPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientPrivateKey")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

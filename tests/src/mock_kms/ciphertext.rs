//! The mock's `CiphertextBlob` format: authenticated, self-describing.
//!
//! Real KMS ciphertexts are opaque to callers; they carry the key id so that
//! `Decrypt` needs no `KeyId`, and they bind the encryption context as
//! additional authenticated data ("Encryption context" in the KMS Developer
//! Guide). The mock does the same with AES-256-GCM (NIST SP 800-38D) under
//! the KMS key's 256-bit material:
//!
//! ```text
//! offset  size  field
//! 0       1     version = 0x01
//! 1       1     n = length of the key id (1..=64)
//! 2       n     key id (ASCII, the key's UUID)
//! 2+n     12    GCM nonce (random)
//! 14+n    m     AES-256-GCM ciphertext of the plaintext (m = plaintext length)
//! 14+n+m  16    GCM tag
//! ```
//!
//! AAD = `"keybroker-mock-kms/ciphertext/v1"` || bytes 0..2+n of the blob ||
//! the canonical encryption context: the number of pairs (u32 big-endian),
//! then for each pair in byte-wise sorted key order `len(k)` (u32 BE) `k`
//! `len(v)` (u32 BE) `v`. So a different key id, context (any key, value,
//! added or missing pair) or any flipped byte fails authentication.
//!
//! The format is the mock's own; it is not compatible with real KMS blobs
//! (nobody can decrypt those outside KMS).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::SecureRandom;
use keybroker_common::kms::EncryptionContext;
use zeroize::Zeroizing;

/// Current blob version byte.
pub const VERSION: u8 = 1;
/// Longest key id a blob can carry.
pub const MAX_KEY_ID_LEN: usize = 64;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a blob adds to the plaintext for a key id of `key_id_len` bytes.
pub const fn overhead(key_id_len: usize) -> usize {
    2 + key_id_len + NONCE_LEN + TAG_LEN
}

const AAD_LABEL: &[u8] = b"keybroker-mock-kms/ciphertext/v1";

/// Why a blob could not be opened. Deliberately coarse: KMS answers
/// `InvalidCiphertextException` for all of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Too short, wrong version or a bad key id field.
    #[error("ciphertext blob is malformed")]
    Malformed,
    /// The GCM tag did not verify (wrong key, context, or tampering).
    #[error("ciphertext blob does not authenticate")]
    Unauthentic,
    /// The crypto backend failed (randomness).
    #[error("crypto backend failure")]
    Crypto,
}

/// The header of a blob: the key id it was made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHeader<'a> {
    /// Key id (UUID) of the KMS key that sealed the blob.
    pub key_id: &'a str,
    header_len: usize,
}

/// Reads the version and key id of a blob without decrypting it.
pub fn parse_header(blob: &[u8]) -> Result<BlobHeader<'_>, BlobError> {
    let (&version, rest) = blob.split_first().ok_or(BlobError::Malformed)?;
    if version != VERSION {
        return Err(BlobError::Malformed);
    }
    let (&n, rest) = rest.split_first().ok_or(BlobError::Malformed)?;
    let n = usize::from(n);
    if n == 0 || n > MAX_KEY_ID_LEN || rest.len() < n + NONCE_LEN + TAG_LEN {
        return Err(BlobError::Malformed);
    }
    let id = rest.get(..n).ok_or(BlobError::Malformed)?;
    let key_id = std::str::from_utf8(id).map_err(|_| BlobError::Malformed)?;
    if !key_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BlobError::Malformed);
    }
    Ok(BlobHeader {
        key_id,
        header_len: 2 + n,
    })
}

fn aad(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, b: &[u8]) {
        // Lengths are bounded by the 1 MiB request limit, far below u32::MAX;
        // saturate rather than truncate if that ever changes.
        out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut out = Vec::with_capacity(64 + header.len());
    out.extend_from_slice(AAD_LABEL);
    out.extend_from_slice(header);
    out.extend_from_slice(
        &u32::try_from(context.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    // BTreeMap iterates in byte-wise sorted key order: canonical.
    for (k, v) in context {
        put(&mut out, k.as_bytes());
        put(&mut out, v.as_bytes());
    }
    out
}

fn aead_key(material: &[u8; 32]) -> Result<LessSafeKey, BlobError> {
    UnboundKey::new(&AES_256_GCM, material)
        .map(LessSafeKey::new)
        .map_err(|_| BlobError::Crypto)
}

/// Seals `plaintext` under the key `material` with id `key_id`, binding
/// `context`.
pub fn seal(
    material: &[u8; 32],
    key_id: &str,
    context: &EncryptionContext,
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, BlobError> {
    let n = u8::try_from(key_id.len()).map_err(|_| BlobError::Malformed)?;
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
        return Err(BlobError::Malformed);
    }
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| BlobError::Crypto)?;
    let mut out = Vec::with_capacity(overhead(key_id.len()) + plaintext.len());
    out.push(VERSION);
    out.push(n);
    out.extend_from_slice(key_id.as_bytes());
    let header_len = out.len();
    out.extend_from_slice(&nonce);
    let aad = aad(out.get(..header_len).ok_or(BlobError::Malformed)?, context);
    let mut body = Zeroizing::new(plaintext.to_vec());
    let tag = aead_key(material)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            body.as_mut_slice(),
        )
        .map_err(|_| BlobError::Crypto)?;
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens a blob sealed by [`seal`] with the same key and context.
pub fn open(
    material: &[u8; 32],
    context: &EncryptionContext,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BlobError> {
    let header = parse_header(blob)?;
    let head = blob.get(..header.header_len).ok_or(BlobError::Malformed)?;
    let nonce_end = header.header_len + NONCE_LEN;
    let nonce: [u8; NONCE_LEN] = blob
        .get(header.header_len..nonce_end)
        .and_then(|n| n.try_into().ok())
        .ok_or(BlobError::Malformed)?;
    let mut body = Zeroizing::new(blob.get(nonce_end..).ok_or(BlobError::Malformed)?.to_vec());
    let aad = aad(head, context);
    let len = aead_key(material)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            body.as_mut_slice(),
        )
        .map_err(|_| BlobError::Unauthentic)?
        .len();
    body.truncate(len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;

    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_and_header() {
        let key = [7u8; 32];
        let c = ctx(&[("b", "2"), ("a", "1")]);
        let blob = seal(&key, ID, &c, b"secret", &SystemRandom::new()).unwrap();
        assert_eq!(blob.len(), overhead(ID.len()) + 6);
        assert_eq!(blob[0], VERSION);
        assert_eq!(parse_header(&blob).unwrap().key_id, ID);
        assert_eq!(open(&key, &c, &blob).unwrap().as_slice(), b"secret");
    }

    #[test]
    fn any_change_fails_authentication() {
        let key = [7u8; 32];
        let c = ctx(&[("purpose", "test")]);
        let blob = seal(&key, ID, &c, b"secret", &SystemRandom::new()).unwrap();
        assert_eq!(
            open(&key, &ctx(&[("purpose", "Test")]), &blob),
            Err(BlobError::Unauthentic)
        );
        assert_eq!(open(&key, &ctx(&[]), &blob), Err(BlobError::Unauthentic));
        assert_eq!(
            open(&key, &ctx(&[("purpose", "test"), ("x", "")]), &blob),
            Err(BlobError::Unauthentic)
        );
        assert_eq!(open(&[8u8; 32], &c, &blob), Err(BlobError::Unauthentic));
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert!(open(&key, &c, &b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn context_pair_boundaries_are_unambiguous() {
        let key = [1u8; 32];
        let blob = seal(&key, ID, &ctx(&[("ab", "c")]), b"x", &SystemRandom::new()).unwrap();
        assert!(open(&key, &ctx(&[("a", "bc")]), &blob).is_err());
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        for b in [
            &[][..],
            &[1],
            &[2, 1, b'a'],
            &[1, 0],
            &[1, 36, b'a'],
            &[1u8; 40],
        ] {
            assert_eq!(open(&[0; 32], &ctx(&[]), b), Err(BlobError::Malformed));
        }
    }
}

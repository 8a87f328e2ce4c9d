//! The encoder for the mock KMS: the same BER layout as real KMS responses.
//!
//! der 0.8 only writes DER, and KMS's `CiphertextForRecipient` uses
//! indefinite lengths, so this is a small emitter for one fixed structure.
//! It reproduces the layout of real KMS responses byte for byte apart from
//! the values: indefinite `ContentInfo`, `[0]`, `EnvelopedData`,
//! `EncryptedContentInfo` and `[0]` encrypted content; definite-length DER
//! for `recipientInfos` and the algorithm identifiers (OAEP hash parameters
//! as explicit NULL, like KMS); content in [`CONTENT_CHUNK_LEN`]-byte
//! OCTET STRING chunks.

use super::oid::{
    ID_AES256_CBC, ID_DATA, ID_ENVELOPED_DATA, ID_MGF1, ID_RSAES_OAEP, ID_SHA256, RSA_ENCRYPTION,
};
use super::{
    CEK_LEN, CONTENT_CHUNK_LEN, CmsError, IV_LEN, MAX_CIPHERTEXT_FOR_RECIPIENT_LEN, RSA_BITS,
};
use crate::Error;
use aws_lc_rs::cipher::{AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use der::Decode;
use spki::SubjectPublicKeyInfoRef;
use zeroize::Zeroizing;

// Universal and context-specific identifier octets (X.690 section 8.1.2).
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// `[0]` primitive (IMPLICIT `SubjectKeyIdentifier` in `RecipientIdentifier`).
const CONTEXT_0_PRIMITIVE: u8 = 0x80;
/// `[0]` constructed (`ContentInfo.content`, OAEP `hashAlgorithm`, constructed `encryptedContent`).
const CONTEXT_0: u8 = 0xa0;
/// `[1]` constructed (OAEP `maskGenAlgorithm`).
const CONTEXT_1: u8 = 0xa1;
/// Length octet of the indefinite form (X.690 section 8.1.3.6).
const INDEFINITE: u8 = 0x80;
/// End-of-contents octets (X.690 section 8.1.5).
const EOC: [u8; 2] = [0, 0];

/// Appends a definite length (X.690 section 8.1.3, minimal form).
fn push_len(out: &mut Vec<u8>, len: usize) {
    let bytes = (len as u64).to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let significant = bytes.get(first..).unwrap_or_default();
    match significant {
        [] => out.push(0),
        [b] if *b < 0x80 => out.push(*b),
        _ => {
            // At most 8 significant octets, so the count fits in 7 bits.
            #[allow(clippy::cast_possible_truncation)]
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
}

/// A definite-length TLV whose contents are the concatenation of `parts`.
pub(super) fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    push_len(&mut out, len);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// `AlgorithmIdentifier { algorithm, parameters NULL }` (RFC 5280 section 4.1.1.2).
pub(super) fn alg_with_null(oid: &const_oid::ObjectIdentifier) -> Vec<u8> {
    tlv(SEQUENCE, &[&tlv(OID, &[oid.as_bytes()]), &[NULL, 0]])
}

/// The RSAES-OAEP `AlgorithmIdentifier` exactly as KMS sends it (RFC 4055
/// section 4.1): SHA-256 and MGF1-SHA-256 with explicit NULL hash
/// parameters, default (empty) label.
pub(super) fn oaep_sha256_alg() -> Vec<u8> {
    let oaep_params = tlv(
        SEQUENCE,
        &[
            &tlv(CONTEXT_0, &[&alg_with_null(&ID_SHA256)]),
            &tlv(
                CONTEXT_1,
                &[&tlv(
                    SEQUENCE,
                    &[&tlv(OID, &[ID_MGF1.as_bytes()]), &alg_with_null(&ID_SHA256)],
                )],
            ),
        ],
    );
    tlv(
        SEQUENCE,
        &[&tlv(OID, &[ID_RSAES_OAEP.as_bytes()]), &oaep_params],
    )
}

/// `[0]` subjectKeyIdentifier, the `rid` choice KMS uses (RFC 5652 section 6.2.1).
pub(super) fn rid_ski(ski: &[u8]) -> Vec<u8> {
    tlv(CONTEXT_0_PRIMITIVE, &[ski])
}

/// `KeyTransRecipientInfo` (RFC 5652 section 6.2.1), DER as KMS sends it,
/// from its already encoded parts (`rid` and `key_enc_alg` are whole TLVs).
pub(super) fn key_trans_recipient_info(
    version: u8,
    rid: &[u8],
    key_enc_alg: &[u8],
    encrypted_key: &[u8],
) -> Vec<u8> {
    tlv(
        SEQUENCE,
        &[
            &[INTEGER, 1, version],
            rid,
            key_enc_alg,
            &tlv(OCTET_STRING, &[encrypted_key]),
        ],
    )
}

/// The whole `ContentInfo` in KMS's BER layout (see the module docs), with
/// the given (DER) `RecipientInfo`s.
pub(super) fn content_info(
    recipient_infos: &[&[u8]],
    iv: &[u8; IV_LEN],
    ciphertext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(ciphertext.len() + 600);
    // ContentInfo (RFC 5652 section 3).
    out.extend_from_slice(&[SEQUENCE, INDEFINITE]);
    out.extend_from_slice(&tlv(OID, &[ID_ENVELOPED_DATA.as_bytes()]));
    out.extend_from_slice(&[CONTEXT_0, INDEFINITE]);
    // EnvelopedData (RFC 5652 section 6.1), version 2.
    out.extend_from_slice(&[SEQUENCE, INDEFINITE]);
    out.extend_from_slice(&[INTEGER, 1, 2]);
    out.extend_from_slice(&tlv(SET, recipient_infos));
    // EncryptedContentInfo.
    out.extend_from_slice(&[SEQUENCE, INDEFINITE]);
    out.extend_from_slice(&tlv(OID, &[ID_DATA.as_bytes()]));
    out.extend_from_slice(&tlv(
        SEQUENCE,
        &[
            &tlv(OID, &[ID_AES256_CBC.as_bytes()]),
            &tlv(OCTET_STRING, &[iv]),
        ],
    ));
    // encryptedContent [0] IMPLICIT, constructed, chunked.
    out.extend_from_slice(&[CONTEXT_0, INDEFINITE]);
    for chunk in ciphertext.chunks(CONTENT_CHUNK_LEN) {
        out.push(OCTET_STRING);
        push_len(&mut out, chunk.len());
        out.extend_from_slice(chunk);
    }
    // Close [0] content, EncryptedContentInfo, EnvelopedData, [0], ContentInfo.
    for _ in 0..5 {
        out.extend_from_slice(&EOC);
    }
    out
}

/// An RSA recipient public key checked for the encoder.
struct Recipient {
    oaep: OaepPublicEncryptingKey,
    ski: [u8; 32],
}

fn recipient_from_spki(spki_der: &[u8]) -> Result<Recipient, CmsError> {
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der).map_err(|e| {
        CmsError::UnsupportedRecipientKey(format!("not a DER SubjectPublicKeyInfo: {e}"))
    })?;
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(CmsError::UnsupportedRecipientKey(format!(
            "algorithm {} is not rsaEncryption",
            spki.algorithm.oid
        )));
    }
    let key_bits = spki.subject_public_key.as_bytes().ok_or_else(|| {
        CmsError::UnsupportedRecipientKey("subjectPublicKey has unused bits".into())
    })?;
    let public = PublicEncryptingKey::from_der(spki_der)
        .map_err(|_| CmsError::UnsupportedRecipientKey("RSA public key rejected".into()))?;
    let bits = public.key_size_bits();
    if !RSA_BITS.contains(&bits) {
        return Err(CmsError::UnsupportedRecipientKey(format!(
            "RSA-{bits}: only {}..={} bits are supported",
            RSA_BITS.start(),
            RSA_BITS.end()
        )));
    }
    let mut ski = [0u8; 32];
    ski.copy_from_slice(digest(&SHA256, key_bits).as_ref());
    let oaep = OaepPublicEncryptingKey::new(public)
        .map_err(|_| CmsError::UnsupportedRecipientKey("RSA-OAEP key setup failed".into()))?;
    Ok(Recipient { oaep, ski })
}

/// The `subjectKeyIdentifier` our encoder writes for a recipient: SHA-256 of
/// the contents of the SPKI's `subjectPublicKey` BIT STRING (the DER
/// `RSAPublicKey`), 32 bytes like KMS's. This is RFC 5280 section 4.2.1.2
/// method 1 with SHA-256 instead of SHA-1, and it is this project's choice:
/// KMS does not document its derivation, and decryption does not check it.
///
/// # Errors
/// [`CmsError::UnsupportedRecipientKey`] unless `spki_der` is a DER RSA
/// `SubjectPublicKeyInfo` of 2048..=4096 bits.
pub fn subject_key_identifier(spki_der: &[u8]) -> Result<[u8; 32], Error> {
    Ok(recipient_from_spki(spki_der)?.ski)
}

/// Encrypts `plaintext` to the RSA key in `recipient_spki_der` as a KMS
/// `CiphertextForRecipient`: the same structure and BER layout as real KMS
/// responses (see the module docs), for the mock KMS.
///
/// A fresh 32-byte AES-256 content-encryption key and a 16-byte IV come from
/// `rng`; the key is wrapped with RSAES-OAEP-SHA-256 / MGF1-SHA-256 and an
/// empty label (AWS-LC draws the OAEP seed from its own generator); the
/// content is AES-256-CBC with PKCS#7 padding (RFC 5652 section 6.3). The
/// `subjectKeyIdentifier` is [`subject_key_identifier`].
///
/// # Errors
/// [`CmsError::UnsupportedRecipientKey`] unless the SPKI is RSA of
/// 2048..=4096 bits; [`Error::InvalidArgument`] if the result would exceed
/// [`MAX_CIPHERTEXT_FOR_RECIPIENT_LEN`] (KMS's limit; at most 5663 bytes
/// of plaintext fit with RSA-2048); [`Error::Crypto`] if randomness or a primitive fails.
pub fn encrypt_for_recipient(
    recipient_spki_der: &[u8],
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, Error> {
    let too_large = |len: usize| {
        Error::InvalidArgument(format!(
            "a {}-byte plaintext gives a CiphertextForRecipient of at least {len} bytes, \
             above the {MAX_CIPHERTEXT_FOR_RECIPIENT_LEN}-byte KMS limit",
            plaintext.len()
        ))
    };
    if plaintext.len() >= MAX_CIPHERTEXT_FOR_RECIPIENT_LEN {
        return Err(too_large(plaintext.len()));
    }
    let recipient = recipient_from_spki(recipient_spki_der)?;

    let mut cek = Zeroizing::new([0u8; CEK_LEN]);
    rng.fill(cek.as_mut_slice())
        .map_err(|_| Error::Crypto("random number generator failed"))?;
    let mut iv = [0u8; IV_LEN];
    rng.fill(&mut iv)
        .map_err(|_| Error::Crypto("random number generator failed"))?;

    let mut encrypted_key = vec![0u8; recipient.oaep.ciphertext_size()];
    let encrypted_key_len = recipient
        .oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            cek.as_slice(),
            &mut encrypted_key,
            None,
        )
        .map_err(|_| Error::Crypto("RSA-OAEP encryption failed"))?
        .len();
    encrypted_key.truncate(encrypted_key_len);

    let aes = UnboundCipherKey::new(&AES_256, cek.as_slice())
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(|_| Error::Crypto("AES-256-CBC key setup failed"))?;
    // Room for the padding up front, so the plaintext copy is never reallocated
    // (and left behind) while it is padded; it is encrypted in place.
    let mut content = Zeroizing::new(Vec::with_capacity(plaintext.len() + 16));
    content.extend_from_slice(plaintext);
    aes.less_safe_encrypt(
        &mut *content,
        EncryptionContext::Iv128(FixedLength::from(iv)),
    )
    .map_err(|_| Error::Crypto("AES-256-CBC encryption failed"))?;

    let recipient_info = key_trans_recipient_info(
        2,
        &rid_ski(&recipient.ski),
        &oaep_sha256_alg(),
        &encrypted_key,
    );
    let out = content_info(&[&recipient_info], &iv, &content);
    if out.len() > MAX_CIPHERTEXT_FOR_RECIPIENT_LEN {
        return Err(too_large(out.len()));
    }
    Ok(out)
}

//! Building and signing documents with the layout of the real NSM, for the
//! development mock NSM.

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
use ciborium::Value;
use der::Decode;
use x509_cert::Certificate;

use super::parse::{FIELDS, validate};
use super::{AttestationDocument, ES384_SIGNATURE_LEN, MAX_DOCUMENT_LEN};
use crate::Error;

/// The protected header the NSM emits: the bstr contents `{1: -35}`
/// (alg = ES384, RFC 9053 section 2.1).
const PROTECTED: [u8; 4] = [0xA1, 0x01, 0x38, 0x22];

/// Encodes `doc` as an NSM payload and signs it into an untagged COSE_Sign1
/// with the same layout as the real NSM: `84 44 A1 01 38 22 A0 ...`
/// (protected `{1: -35}`, empty unprotected map), payload a definite-length
/// map with the nine keys in NSM order (`module_id`, `digest`, `timestamp`,
/// `pcrs`, `certificate`, `cabundle`, `public_key`, `user_data`, `nonce`) and
/// absent optionals as `null`, signature ES384 raw `r || s` (RFC 9052
/// section 4.4 `Sig_structure`, empty external AAD).
///
/// `leaf_key` must be the P-384 key of `doc.certificate`, loaded with
/// `ECDSA_P384_SHA384_FIXED_SIGNING`. Fails with
/// [`Error::InvalidArgument`] if a field breaks the parser's limits, if the
/// key does not match the leaf certificate or is not a fixed-length P-384
/// key, or if the result would exceed [`MAX_DOCUMENT_LEN`]; with
/// [`Error::Crypto`] if signing fails.
pub fn build_signed_document(
    doc: &AttestationDocument,
    leaf_key: &EcdsaKeyPair,
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, Error> {
    validate(doc).map_err(|e| Error::InvalidArgument(format!("attestation document: {e}")))?;
    let leaf = Certificate::from_der(&doc.certificate).map_err(|e| {
        Error::InvalidArgument(format!("attestation leaf certificate does not parse: {e}"))
    })?;
    let leaf_point = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .as_bytes();
    if leaf_point != Some(leaf_key.public_key().as_ref()) {
        return Err(Error::InvalidArgument(
            "attestation signing key does not match the leaf certificate".into(),
        ));
    }
    let payload = encode_payload(doc)?;
    sign_payload(&payload, leaf_key, rng)
}

/// Encodes the payload map in NSM order with definite lengths.
pub(super) fn encode_payload(doc: &AttestationDocument) -> Result<Vec<u8>, Error> {
    let bytes = |b: &[u8]| Value::Bytes(b.to_vec());
    let optional = |b: &Option<Vec<u8>>| b.as_deref().map_or(Value::Null, bytes);
    let values = [
        Value::Text(doc.module_id.clone()),
        Value::Text(doc.digest.as_str().to_owned()),
        Value::Integer(doc.timestamp.0.into()),
        Value::Map(
            doc.pcrs
                .iter()
                .map(|(i, v)| (Value::Integer((*i).into()), bytes(v)))
                .collect(),
        ),
        bytes(&doc.certificate),
        Value::Array(doc.cabundle.iter().map(|c| bytes(c)).collect()),
        optional(&doc.public_key),
        optional(&doc.user_data),
        optional(&doc.nonce),
    ];
    let map = Value::Map(
        FIELDS
            .iter()
            .zip(values)
            .map(|(k, v)| (Value::Text((*k).to_owned()), v))
            .collect(),
    );
    let mut out = Vec::with_capacity(MAX_DOCUMENT_LEN);
    ciborium::ser::into_writer(&map, &mut out)
        .map_err(|e| Error::InvalidArgument(format!("attestation payload encoding: {e}")))?;
    Ok(out)
}

/// Signs an already encoded payload into an untagged NSM-layout COSE_Sign1.
/// Separate from [`build_signed_document`] so tests can sign hand-crafted
/// payloads (indefinite-length maps, extra keys).
pub(super) fn sign_payload(
    payload: &[u8],
    leaf_key: &EcdsaKeyPair,
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, Error> {
    let tbs = super::parse::sig_structure(&PROTECTED, payload);
    let signature = leaf_key
        .sign(rng, &tbs)
        .map_err(|_| Error::Crypto("ES384 signing of the attestation document failed"))?;
    let signature = signature.as_ref();
    if signature.len() != ES384_SIGNATURE_LEN {
        return Err(Error::InvalidArgument(format!(
            "attestation signing key produced a {}-byte signature; expected a P-384 key with \
             ECDSA_P384_SHA384_FIXED_SIGNING (96 bytes)",
            signature.len()
        )));
    }
    let sign1 = Value::Array(vec![
        Value::Bytes(PROTECTED.to_vec()),
        Value::Map(Vec::new()),
        Value::Bytes(payload.to_vec()),
        Value::Bytes(signature.to_vec()),
    ]);
    let mut out = Vec::with_capacity(payload.len() + 128);
    ciborium::ser::into_writer(&sign1, &mut out)
        .map_err(|e| Error::InvalidArgument(format!("attestation encoding: {e}")))?;
    if out.len() > MAX_DOCUMENT_LEN {
        return Err(Error::InvalidArgument(format!(
            "attestation document would be {} bytes, larger than the NSM limit of {MAX_DOCUMENT_LEN}",
            out.len()
        )));
    }
    Ok(out)
}

//! Parsing of the NSM COSE_Sign1 envelope and its CBOR payload map.

use std::collections::BTreeMap;

use ciborium::Value;
use coset::{CborSerializable, CoseError, CoseSign1, TaggedCborSerializable, iana};

use super::{
    AttestationError, ES384_SIGNATURE_LEN, MAX_CABUNDLE_LEN, MAX_CERTIFICATE_LEN, MAX_DOCUMENT_LEN,
    MAX_PCR_COUNT, MAX_USER_FIELD_LEN,
};
use crate::UnixMillis;

/// The digest function named in the payload's `digest` field. The NSM CDDL
/// allows only `"SHA384"`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    /// SHA-384: PCRs are 48 bytes.
    Sha384,
}

impl Digest {
    /// The text used on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Digest::Sha384 => "SHA384",
        }
    }
}

/// The payload of an NSM attestation document (the CBOR map signed by the
/// COSE_Sign1), as plain data. Holding one proves nothing: only a
/// [`super::VerifiedAttestation`] says the signature and chain were checked.
///
/// Field meanings follow the NSM attestation CDDL (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDocument {
    /// Identifier of the issuing NSM (`i-...-enc...`).
    pub module_id: String,
    /// Digest function of the PCRs.
    pub digest: Digest,
    /// When the NSM created the document (UTC, milliseconds).
    pub timestamp: UnixMillis,
    /// Locked PCRs: index `0..=31` to 32, 48 or 64 bytes.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The leaf ("infrastructure") certificate that signed the document, DER.
    pub certificate: Vec<u8>,
    /// Issuing CA certificates, DER, root first.
    pub cabundle: Vec<Vec<u8>>,
    /// Optional public key supplied by the enclave (for KMS: a DER
    /// SubjectPublicKeyInfo of an RSA key).
    pub public_key: Option<Vec<u8>>,
    /// Optional application data supplied by the enclave.
    pub user_data: Option<Vec<u8>>,
    /// Optional nonce supplied by the attestation consumer.
    pub nonce: Option<Vec<u8>>,
}

/// A structurally valid attestation document whose signature and chain have
/// NOT been checked. Produced by [`UnverifiedAttestation::parse`], consumed by
/// [`super::Verifier::verify_parsed`].
#[derive(Debug, Clone)]
pub struct UnverifiedAttestation {
    pub(super) document: AttestationDocument,
    /// The protected header exactly as encoded (signed bytes).
    pub(super) protected: Vec<u8>,
    /// The payload exactly as encoded (signed bytes).
    pub(super) payload: Vec<u8>,
    /// Raw `r || s`, 96 bytes.
    pub(super) signature: Vec<u8>,
}

impl UnverifiedAttestation {
    /// Parses a COSE_Sign1 attestation document (tagged or untagged) and its
    /// payload, enforcing the NSM CDDL and the size limits of this module.
    ///
    /// Never panics; every failure is a typed [`AttestationError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestationError> {
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(AttestationError::TooLarge {
                len: bytes.len(),
                max: MAX_DOCUMENT_LEN,
            });
        }
        // RFC 9052 section 4.2: COSE_Sign1_Tagged = #6.18(COSE_Sign1). 0xD2 is
        // the one-byte encoding of tag 18.
        let sign1 = match bytes.first() {
            None => return Err(AttestationError::Truncated),
            Some(0xD2) => CoseSign1::from_tagged_slice(bytes),
            Some(_) => CoseSign1::from_slice(bytes),
        }
        .map_err(cose_error)?;

        let CoseSign1 {
            protected,
            unprotected,
            payload,
            signature,
        } = sign1;

        // Protected header: exactly {1: -35} (alg = ES384, RFC 9053 section 2.1).
        let expected = coset::HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES384)
            .build();
        if protected.header.alg != expected.alg {
            return Err(AttestationError::UnsupportedAlgorithm(format!(
                "COSE protected header alg {:?}, expected ES384 (-35)",
                protected.header.alg
            )));
        }
        if protected.header != expected {
            return Err(AttestationError::Malformed(
                "protected header has parameters other than alg".into(),
            ));
        }
        let Some(protected) = protected.original_data else {
            // coset always keeps the original bytes of a parsed header.
            return Err(AttestationError::Malformed(
                "protected header bytes unavailable".into(),
            ));
        };
        if !unprotected.is_empty() {
            return Err(AttestationError::Malformed(
                "unprotected header is not empty".into(),
            ));
        }
        if signature.len() != ES384_SIGNATURE_LEN {
            return Err(AttestationError::BadSignatureLength {
                len: signature.len(),
            });
        }
        let Some(payload) = payload else {
            return Err(AttestationError::Malformed(
                "payload is nil (detached payloads are not used by NSM)".into(),
            ));
        };
        let document = parse_payload(&payload)?;
        Ok(UnverifiedAttestation {
            document,
            protected,
            payload,
            signature,
        })
    }

    /// The parsed, unverified payload.
    pub fn document(&self) -> &AttestationDocument {
        &self.document
    }

    /// The parsed, unverified payload, by value.
    pub fn into_document(self) -> AttestationDocument {
        self.document
    }

    /// The COSE `Sig_structure` (RFC 9052 section 4.4) that the signature
    /// covers: `["Signature1", protected, h'', payload]`, built from the
    /// original protected and payload bytes in one allocation. Equal to
    /// coset's `CoseSign1::tbs_data(b"")`.
    pub(super) fn sig_structure(&self) -> Vec<u8> {
        sig_structure(&self.protected, &self.payload)
    }
}

/// Builds `["Signature1", protected, h'', payload]` (RFC 9052 section 4.4).
pub(super) fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"Signature1";
    let mut out =
        Vec::with_capacity(1 + 1 + CONTEXT.len() + 9 + protected.len() + 1 + 9 + payload.len());
    out.push(0x84); // array(4)
    push_head(&mut out, 3, CONTEXT.len());
    out.extend_from_slice(CONTEXT);
    push_head(&mut out, 2, protected.len());
    out.extend_from_slice(protected);
    out.push(0x40); // external_aad = h''
    push_head(&mut out, 2, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Appends a CBOR head (RFC 8949 section 3) with the shortest length encoding.
fn push_head(out: &mut Vec<u8>, major: u8, len: usize) {
    let mt = major << 5;
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    if let Ok(l) = u8::try_from(len) {
        if l < 24 {
            out.push(mt | l);
        } else {
            out.push(mt | 24);
            out.push(l);
        }
    } else if let Ok(l) = u16::try_from(len) {
        out.push(mt | 25);
        out.extend_from_slice(&l.to_be_bytes());
    } else if let Ok(l) = u32::try_from(len) {
        out.push(mt | 26);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(mt | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn cose_error(e: CoseError) -> AttestationError {
    match e {
        CoseError::DecodeFailed(ciborium::de::Error::Io(_)) => AttestationError::Truncated,
        CoseError::ExtraneousData => {
            AttestationError::Malformed("trailing bytes after the COSE_Sign1".into())
        }
        other => AttestationError::Malformed(format!("COSE_Sign1: {other}")),
    }
}

fn cbor_error<T>(e: ciborium::de::Error<T>) -> AttestationError {
    match e {
        // The payload bstr itself was complete, so the file is not
        // truncated: the map inside it is.
        ciborium::de::Error::Io(_) => {
            AttestationError::Malformed("payload: CBOR map ends before it is complete".into())
        }
        ciborium::de::Error::Syntax(at) => {
            AttestationError::Malformed(format!("payload: CBOR syntax error at offset {at}"))
        }
        ciborium::de::Error::Semantic(at, msg) => AttestationError::Malformed(match at {
            Some(at) => format!("payload: {msg} at offset {at}"),
            None => format!("payload: {msg}"),
        }),
        ciborium::de::Error::RecursionLimitExceeded => {
            AttestationError::Malformed("payload: CBOR nesting too deep".into())
        }
    }
}

/// The nine payload keys in the order the NSM emits them.
pub(super) const FIELDS: [&str; 9] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

fn parse_payload(payload: &[u8]) -> Result<AttestationDocument, AttestationError> {
    let mut rest = payload;
    let value: Value = ciborium::de::from_reader(&mut rest).map_err(cbor_error)?;
    if !rest.is_empty() {
        return Err(AttestationError::Malformed(
            "trailing bytes after the payload map".into(),
        ));
    }
    let Value::Map(entries) = value else {
        return Err(AttestationError::Malformed(
            "payload is not a CBOR map".into(),
        ));
    };

    let mut module_id = None;
    let mut digest = None;
    let mut timestamp = None;
    let mut pcrs = None;
    let mut certificate = None;
    let mut cabundle = None;
    let mut public_key = None;
    let mut user_data = None;
    let mut nonce = None;
    let mut seen = [false; FIELDS.len()];

    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(AttestationError::Malformed(
                "payload map key is not a text string".into(),
            ));
        };
        let Some(pos) = FIELDS.iter().position(|f| *f == key) else {
            return Err(AttestationError::UnknownField(truncate_for_error(key)));
        };
        // `pos` comes from `position` over FIELDS, and `seen` has the same length.
        let (field, slot) = match (FIELDS.get(pos), seen.get_mut(pos)) {
            (Some(f), Some(s)) => (*f, s),
            _ => return Err(AttestationError::Malformed("internal field index".into())),
        };
        if *slot {
            return Err(AttestationError::DuplicateField(field));
        }
        *slot = true;
        match pos {
            0 => module_id = Some(parse_module_id(value)?),
            1 => digest = Some(parse_digest(value)?),
            2 => timestamp = Some(parse_timestamp(value)?),
            3 => pcrs = Some(parse_pcrs(value)?),
            4 => certificate = Some(parse_cert(value, "certificate")?),
            5 => cabundle = Some(parse_cabundle(value)?),
            6 => public_key = parse_optional(value, "public_key")?,
            7 => user_data = parse_optional(value, "user_data")?,
            _ => nonce = parse_optional(value, "nonce")?,
        }
    }

    Ok(AttestationDocument {
        module_id: module_id.ok_or(AttestationError::MissingField("module_id"))?,
        digest: digest.ok_or(AttestationError::MissingField("digest"))?,
        timestamp: timestamp.ok_or(AttestationError::MissingField("timestamp"))?,
        pcrs: pcrs.ok_or(AttestationError::MissingField("pcrs"))?,
        certificate: certificate.ok_or(AttestationError::MissingField("certificate"))?,
        cabundle: cabundle.ok_or(AttestationError::MissingField("cabundle"))?,
        public_key,
        user_data,
        nonce,
    })
}

/// Keeps attacker-chosen strings in errors short.
fn truncate_for_error(mut s: String) -> String {
    const MAX: usize = 64;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn parse_module_id(value: Value) -> Result<String, AttestationError> {
    match value {
        Value::Text(s) if s.is_empty() => Err(AttestationError::Malformed(
            "payload field `module_id` is empty".into(),
        )),
        Value::Text(s) => Ok(s),
        Value::Null => Err(AttestationError::MissingField("module_id")),
        _ => Err(AttestationError::WrongType {
            field: "module_id",
            expected: "a text string",
        }),
    }
}

fn parse_digest(value: Value) -> Result<Digest, AttestationError> {
    match value {
        Value::Text(s) if s == Digest::Sha384.as_str() => Ok(Digest::Sha384),
        Value::Text(s) => Err(AttestationError::UnsupportedAlgorithm(format!(
            "payload digest `{}`, expected SHA384",
            truncate_for_error(s)
        ))),
        Value::Null => Err(AttestationError::MissingField("digest")),
        _ => Err(AttestationError::WrongType {
            field: "digest",
            expected: "a text string",
        }),
    }
}

fn parse_timestamp(value: Value) -> Result<UnixMillis, AttestationError> {
    match value {
        Value::Integer(i) => match u64::try_from(i) {
            Ok(0) => Err(AttestationError::Malformed(
                "payload field `timestamp` is zero".into(),
            )),
            Ok(ms) => Ok(UnixMillis(ms)),
            Err(_) => Err(AttestationError::WrongType {
                field: "timestamp",
                expected: "an unsigned 64-bit integer",
            }),
        },
        Value::Null => Err(AttestationError::MissingField("timestamp")),
        _ => Err(AttestationError::WrongType {
            field: "timestamp",
            expected: "an unsigned 64-bit integer",
        }),
    }
}

fn parse_pcrs(value: Value) -> Result<BTreeMap<u8, Vec<u8>>, AttestationError> {
    let entries = match value {
        Value::Map(entries) => entries,
        Value::Null => return Err(AttestationError::MissingField("pcrs")),
        _ => {
            return Err(AttestationError::WrongType {
                field: "pcrs",
                expected: "a map of index to bytes",
            });
        }
    };
    if entries.is_empty() {
        return Err(AttestationError::Malformed(
            "payload field `pcrs` is empty".into(),
        ));
    }
    if entries.len() > MAX_PCR_COUNT {
        return Err(AttestationError::FieldTooLarge {
            field: "pcrs",
            len: entries.len(),
            max: MAX_PCR_COUNT,
        });
    }
    let mut pcrs = BTreeMap::new();
    for (index, value) in entries {
        let (Value::Integer(index), Value::Bytes(bytes)) = (index, value) else {
            return Err(AttestationError::WrongType {
                field: "pcrs",
                expected: "a map of index to bytes",
            });
        };
        // Negative indices are reported as u64::MAX: out of range either way.
        let index = u64::try_from(index).unwrap_or(u64::MAX);
        let small = u8::try_from(index)
            .ok()
            .filter(|i| usize::from(*i) < MAX_PCR_COUNT);
        let Some(small) = small.filter(|_| matches!(bytes.len(), 32 | 48 | 64)) else {
            return Err(AttestationError::InvalidPcr {
                index,
                len: bytes.len(),
            });
        };
        if pcrs.insert(small, bytes).is_some() {
            return Err(AttestationError::Malformed(format!(
                "payload field `pcrs` has index {small} twice"
            )));
        }
    }
    Ok(pcrs)
}

fn parse_cert(value: Value, field: &'static str) -> Result<Vec<u8>, AttestationError> {
    match value {
        Value::Bytes(b) if b.is_empty() => Err(AttestationError::Malformed(format!(
            "payload field `{field}` holds an empty certificate"
        ))),
        Value::Bytes(b) if b.len() > MAX_CERTIFICATE_LEN => Err(AttestationError::FieldTooLarge {
            field,
            len: b.len(),
            max: MAX_CERTIFICATE_LEN,
        }),
        Value::Bytes(b) => Ok(b),
        Value::Null if field == "certificate" => Err(AttestationError::MissingField(field)),
        _ => Err(AttestationError::WrongType {
            field,
            expected: "a byte string (DER certificate)",
        }),
    }
}

fn parse_cabundle(value: Value) -> Result<Vec<Vec<u8>>, AttestationError> {
    let items = match value {
        Value::Array(items) => items,
        Value::Null => return Err(AttestationError::MissingField("cabundle")),
        _ => {
            return Err(AttestationError::WrongType {
                field: "cabundle",
                expected: "an array of byte strings",
            });
        }
    };
    if items.is_empty() {
        return Err(AttestationError::Malformed(
            "payload field `cabundle` is empty (it must hold at least the root)".into(),
        ));
    }
    if items.len() > MAX_CABUNDLE_LEN {
        return Err(AttestationError::FieldTooLarge {
            field: "cabundle",
            len: items.len(),
            max: MAX_CABUNDLE_LEN,
        });
    }
    items
        .into_iter()
        .map(|v| parse_cert(v, "cabundle"))
        .collect()
}

fn parse_optional(value: Value, field: &'static str) -> Result<Option<Vec<u8>>, AttestationError> {
    match value {
        Value::Null => Ok(None),
        Value::Bytes(b) if b.len() > MAX_USER_FIELD_LEN => Err(AttestationError::FieldTooLarge {
            field,
            len: b.len(),
            max: MAX_USER_FIELD_LEN,
        }),
        Value::Bytes(b) => Ok(Some(b)),
        _ => Err(AttestationError::WrongType {
            field,
            expected: "a byte string or null",
        }),
    }
}

/// Checks a document against the same limits the parser enforces, so the
/// builder never emits what the parser would reject.
pub(super) fn validate(doc: &AttestationDocument) -> Result<(), AttestationError> {
    if doc.module_id.is_empty() {
        return Err(AttestationError::Malformed(
            "payload field `module_id` is empty".into(),
        ));
    }
    if doc.timestamp.0 == 0 {
        return Err(AttestationError::Malformed(
            "payload field `timestamp` is zero".into(),
        ));
    }
    if doc.pcrs.is_empty() {
        return Err(AttestationError::Malformed(
            "payload field `pcrs` is empty".into(),
        ));
    }
    for (index, value) in &doc.pcrs {
        if usize::from(*index) >= MAX_PCR_COUNT || !matches!(value.len(), 32 | 48 | 64) {
            return Err(AttestationError::InvalidPcr {
                index: u64::from(*index),
                len: value.len(),
            });
        }
    }
    if doc.cabundle.is_empty() {
        return Err(AttestationError::Malformed(
            "payload field `cabundle` is empty (it must hold at least the root)".into(),
        ));
    }
    if doc.cabundle.len() > MAX_CABUNDLE_LEN {
        return Err(AttestationError::FieldTooLarge {
            field: "cabundle",
            len: doc.cabundle.len(),
            max: MAX_CABUNDLE_LEN,
        });
    }
    let certs = std::iter::once(("certificate", &doc.certificate))
        .chain(doc.cabundle.iter().map(|c| ("cabundle", c)));
    for (field, cert) in certs {
        if cert.is_empty() {
            return Err(AttestationError::Malformed(format!(
                "payload field `{field}` holds an empty certificate"
            )));
        }
        if cert.len() > MAX_CERTIFICATE_LEN {
            return Err(AttestationError::FieldTooLarge {
                field,
                len: cert.len(),
                max: MAX_CERTIFICATE_LEN,
            });
        }
    }
    let optionals = [
        ("public_key", &doc.public_key),
        ("user_data", &doc.user_data),
        ("nonce", &doc.nonce),
    ];
    for (field, value) in optionals {
        if let Some(v) = value
            && v.len() > MAX_USER_FIELD_LEN
        {
            return Err(AttestationError::FieldTooLarge {
                field,
                len: v.len(),
                max: MAX_USER_FIELD_LEN,
            });
        }
    }
    Ok(())
}

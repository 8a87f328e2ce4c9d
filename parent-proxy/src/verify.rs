//! `attestation verify`: checks an NSM attestation document against the
//! AWS Nitro Enclaves Root-G1 plus extra roots, at a given time, and
//! summarises what it attests ([`Summary`]). The command line
//! ([`crate::cli`]) only parses the flags and prints.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use keybroker_common::UnixMillis;
use keybroker_common::attestation::{
    AttestationError, MAX_DOCUMENT_LEN, VerifiedAttestation, Verifier,
};
use serde::Serialize;

use crate::exit;
use crate::files::{add_roots, read_input};

/// Largest input file read, in bytes: a maximal document as base64 with
/// line breaks fits with room to spare.
pub const MAX_INPUT_LEN: usize = 4 * MAX_DOCUMENT_LEN;

/// Why `attestation verify` did not print a summary: the two outcomes
/// that have their own exit code (the causes are the crate's [`Error`] and
/// [`AttestationError`]).
///
/// [`Error`]: crate::Error
#[derive(Debug)]
pub enum VerifyError {
    /// A root or the document cannot be read or used (exit 2).
    Usage(crate::Error),
    /// The document does not verify (exit 1).
    Invalid(AttestationError),
}

impl VerifyError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Usage(_) => exit::USAGE,
            VerifyError::Invalid(_) => exit::INVALID,
        }
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Usage(e) => write!(f, "error: {e}"),
            VerifyError::Invalid(e) => write!(f, "invalid: {e}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// JSON summary of a verified document, printed by `attestation verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Always `true`: only verified documents are summarised.
    pub valid: bool,
    /// NSM module id.
    pub module_id: String,
    /// PCR digest function (`SHA384`).
    pub digest: &'static str,
    /// Document creation time, milliseconds since the epoch.
    pub timestamp_ms: u64,
    /// Document creation time, RFC 3339 UTC.
    pub timestamp: String,
    /// Time the chain was verified at, milliseconds since the epoch.
    pub verified_at_ms: u64,
    /// Time the chain was verified at, RFC 3339 UTC.
    pub verified_at: String,
    /// PCR index to lower-case hex value.
    pub pcrs: BTreeMap<u8, String>,
    /// What the `public_key` field holds, e.g. `RSA-2048 SubjectPublicKeyInfo
    /// (294 bytes)`; `null` when absent.
    pub public_key: Option<String>,
    /// Length of `user_data`; `null` when absent.
    pub user_data_len: Option<usize>,
    /// Length of `nonce`; `null` when absent.
    pub nonce_len: Option<usize>,
    /// Certificate subjects, leaf first, root last.
    pub chain: Vec<String>,
}

impl Summary {
    /// Summarises a verified document.
    pub fn new(v: &VerifiedAttestation) -> Self {
        Summary {
            valid: true,
            module_id: v.module_id().to_owned(),
            digest: v.document().digest.as_str(),
            timestamp_ms: v.timestamp().0,
            timestamp: rfc3339(v.timestamp()),
            verified_at_ms: v.verified_at().0,
            verified_at: rfc3339(v.verified_at()),
            pcrs: v.pcrs().iter().map(|(i, p)| (*i, hex::encode(p))).collect(),
            public_key: v.public_key().map(describe_public_key),
            user_data_len: v.user_data().map(<[u8]>::len),
            nonce_len: v.nonce().map(<[u8]>::len),
            chain: v.chain_subjects().to_vec(),
        }
    }
}

/// Reads the `roots` (PEM or DER files) and the document (`file`; `-`
/// reads `stdin`), verifies it at `at`, and summarises it.
pub fn verify(
    roots: &[PathBuf],
    file: &Path,
    stdin: &mut dyn Read,
    at: UnixMillis,
) -> Result<Summary, VerifyError> {
    let mut verifier = Verifier::aws_nitro();
    for path in roots {
        add_roots(&mut verifier, path).map_err(VerifyError::Usage)?;
    }
    let input = read_input(file, stdin, MAX_INPUT_LEN).map_err(VerifyError::Usage)?;
    let document = decode_document(&input).map_err(VerifyError::Invalid)?;
    let verified = verifier
        .verify(&document, at)
        .map_err(VerifyError::Invalid)?;
    Ok(Summary::new(&verified))
}

/// Returns the raw document from file contents that are either raw CBOR or
/// base64 text (standard or URL-safe alphabet, padding optional, whitespace
/// ignored).
///
/// Raw CBOR is recognised by its first byte: `0x84` (untagged COSE_Sign1
/// array) or `0xD2` (tag 18); neither is printable ASCII, so text is never
/// mistaken for it.
pub fn decode_document(input: &[u8]) -> Result<Vec<u8>, AttestationError> {
    if matches!(input.first(), Some(0x84 | 0xD2)) {
        return Ok(input.to_vec());
    }
    let text: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let is_b64 =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=');
    if text.is_empty() || !text.iter().all(is_b64) {
        return Err(AttestationError::Malformed(
            "input is neither a CBOR COSE_Sign1 nor base64 text".into(),
        ));
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if text.iter().any(|b| matches!(b, b'-' | b'_')) {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config)
        .decode(&text)
        .map_err(|e| AttestationError::Malformed(format!("base64: {e}")))
}

/// Parses `--at`: milliseconds since the epoch, or an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Result<UnixMillis, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(UnixMillis)
            .map_err(|e| format!("milliseconds: {e}"));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected milliseconds since the epoch or RFC 3339: {e}"))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms)
        .map(UnixMillis)
        .map_err(|_| "time before 1970 is not supported".to_owned())
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: UnixMillis) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} ms", t.0))
}

/// Describes an attestation `public_key` field: `RSA-<bits>
/// SubjectPublicKeyInfo (<n> bytes)` when it is a DER RSA
/// SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7, the KMS Recipient shape),
/// else `opaque (<n> bytes)`.
pub fn describe_public_key(key: &[u8]) -> String {
    match aws_lc_rs::rsa::PublicEncryptingKey::from_der(key) {
        Ok(rsa) => format!(
            "RSA-{} SubjectPublicKeyInfo ({} bytes)",
            rsa.key_size_bits(),
            key.len()
        ),
        Err(_) => format!("opaque ({} bytes)", key.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_time_accepts_ms_and_rfc3339() {
        assert_eq!(
            parse_time("1725719859545"),
            Ok(UnixMillis(1_725_719_859_545))
        );
        assert_eq!(
            parse_time("2024-09-07T14:37:39.545Z"),
            Ok(UnixMillis(1_725_719_859_545))
        );
        assert_eq!(
            parse_time("2024-09-07T16:37:39.545+02:00"),
            Ok(UnixMillis(1_725_719_859_545))
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UnixMillis(1_725_719_859_545);
        assert_eq!(rfc3339(t), "2024-09-07T14:37:39.545Z");
        assert_eq!(parse_time(&rfc3339(t)), Ok(t));
    }

    #[test]
    fn decode_document_detects_raw_and_base64() {
        let raw = [0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0, 0xFF];
        assert_eq!(decode_document(&raw).unwrap(), raw);
        let tagged = [0xD2, 0x84];
        assert_eq!(decode_document(&tagged).unwrap(), tagged);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let wrapped = format!("{}\n{}\n", &b64[..4], &b64[4..]);
        assert_eq!(decode_document(wrapped.as_bytes()).unwrap(), raw);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(decode_document(url.as_bytes()).unwrap(), raw);
        assert!(matches!(
            decode_document(b"not base64!"),
            Err(AttestationError::Malformed(_))
        ));
        assert!(decode_document(b"").is_err());
    }

    #[test]
    fn describe_public_key_recognises_rsa_spki() {
        use aws_lc_rs::encoding::AsDer;
        assert_eq!(describe_public_key(&[1, 2, 3, 4, 5]), "opaque (5 bytes)");
        let key = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap();
        let spki = key.public_key().as_der().unwrap();
        assert_eq!(
            describe_public_key(spki.as_ref()),
            "RSA-2048 SubjectPublicKeyInfo (294 bytes)"
        );
    }
}

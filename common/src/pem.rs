//! PEM text (RFC 7468): the DER bodies of `-----BEGIN <LABEL>-----` blocks,
//! and one block written out ([`encode`]).
//!
//! No I/O: callers read the bytes (with their own bound) and hand them
//! here, with a size limit that this module checks again so that no caller
//! parses unbounded input. Certificates ([`parse_certificates`]) and
//! public keys ([`parse_public_key`]) may also be given as raw DER, which is
//! recognised by its first byte (a SEQUENCE, `0x30`, which no PEM text
//! starts with).

use base64::Engine as _;

/// A sensible bound for one PEM file (a certificate bundle): 1 MiB.
pub const MAX_PEM_LEN: usize = 1 << 20;

/// The label of certificate blocks (RFC 7468 section 5).
pub const CERTIFICATE: &str = "CERTIFICATE";

/// The label of SubjectPublicKeyInfo blocks (RFC 7468 section 13).
pub const PUBLIC_KEY: &str = "PUBLIC KEY";

/// Why PEM input could not be parsed. Messages name the label, never the
/// contents.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The input is longer than the caller's limit.
    #[error("input is larger than {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The input is neither UTF-8 text nor DER.
    #[error("not PEM text or DER")]
    NotText,
    /// A `BEGIN` line without its `END` line.
    #[error("unterminated PEM {} block", describe(label))]
    Unterminated {
        /// The block's label.
        label: &'static str,
    },
    /// A block's body is not base64.
    #[error("PEM base64: {reason}")]
    Base64 {
        /// The decoder's reason.
        reason: String,
    },
    /// No block with the label.
    #[error("no PEM {} found", describe(label))]
    NoBlock {
        /// The label looked for.
        label: &'static str,
    },
    /// More than one block where exactly one is expected.
    #[error("more than one PEM {} block", describe(label))]
    TooMany {
        /// The block's label.
        label: &'static str,
    },
}

/// `CERTIFICATE` to `certificate`, for messages.
fn describe(label: &str) -> String {
    label.to_ascii_lowercase()
}

/// The DER bodies of every `label` block in `bytes`, in order; text outside
/// the blocks (comments, other labels) is ignored. At least one block is
/// required.
pub fn parse_blocks(
    bytes: &[u8],
    label: &'static str,
    max: usize,
) -> Result<Vec<Vec<u8>>, PemError> {
    if bytes.len() > max {
        return Err(PemError::TooLarge { max });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| PemError::NotText)?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = rest.get(start + begin.len()..).unwrap_or_default();
        let stop = after.find(&end).ok_or(PemError::Unterminated { label })?;
        let body: String = after
            .get(..stop)
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| PemError::Base64 {
                reason: e.to_string(),
            })?;
        blocks.push(der);
        rest = after.get(stop + end.len()..).unwrap_or_default();
    }
    if blocks.is_empty() {
        return Err(PemError::NoBlock { label });
    }
    Ok(blocks)
}

/// The DER certificates of PEM text (`CERTIFICATE` blocks), or the input
/// itself as one certificate when it looks like DER.
pub fn parse_certificates(bytes: &[u8], max: usize) -> Result<Vec<Vec<u8>>, PemError> {
    if bytes.len() > max {
        return Err(PemError::TooLarge { max });
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    parse_blocks(bytes, CERTIFICATE, max)
}

/// The one DER SubjectPublicKeyInfo of PEM text (`PUBLIC KEY` block), or
/// the input itself when it looks like DER.
pub fn parse_public_key(bytes: &[u8], max: usize) -> Result<Vec<u8>, PemError> {
    if bytes.len() > max {
        return Err(PemError::TooLarge { max });
    }
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let mut blocks = parse_blocks(bytes, PUBLIC_KEY, max)?;
    match (blocks.pop(), blocks.is_empty()) {
        (Some(der), true) => Ok(der),
        (Some(_), false) => Err(PemError::TooMany { label: PUBLIC_KEY }),
        // `parse_blocks` returns at least one block.
        (None, _) => Err(PemError::NoBlock { label: PUBLIC_KEY }),
    }
}

/// `der` as one PEM block labelled `label`: base64 in lines of 64
/// characters (RFC 7468's strict form), each line ending in `\n`.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // Base64 is ASCII: every index is a character boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "junk\n-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n\
                       -----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

    #[test]
    fn certificates_from_pem_blocks_and_der() {
        let certs = parse_certificates(TWO.as_bytes(), MAX_PEM_LEN).unwrap();
        assert_eq!(
            certs,
            vec![vec![0x30, 0x82, 0x01, 0, 0, 0], vec![0x30, 0x00]]
        );
        assert_eq!(
            parse_certificates(&[0x30, 0x00], MAX_PEM_LEN).unwrap(),
            vec![vec![0x30, 0x00]]
        );
    }

    #[test]
    fn malformed_input_is_refused() {
        assert_eq!(
            parse_certificates(b"nothing here", MAX_PEM_LEN),
            Err(PemError::NoBlock { label: CERTIFICATE })
        );
        assert_eq!(
            parse_certificates(b"-----BEGIN CERTIFICATE-----\nMAA=", MAX_PEM_LEN),
            Err(PemError::Unterminated { label: CERTIFICATE })
        );
        assert!(matches!(
            parse_certificates(
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----",
                MAX_PEM_LEN
            ),
            Err(PemError::Base64 { .. })
        ));
        assert_eq!(
            parse_certificates(&[0xff, 0xfe, 0x00], MAX_PEM_LEN),
            Err(PemError::NotText)
        );
        assert_eq!(
            parse_certificates(b"", MAX_PEM_LEN)
                .unwrap_err()
                .to_string(),
            "no PEM certificate found"
        );
        // Another label is not a certificate.
        assert!(
            parse_certificates(
                b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----",
                MAX_PEM_LEN
            )
            .is_err()
        );
    }

    #[test]
    fn the_size_limit_is_checked() {
        assert_eq!(
            parse_certificates(TWO.as_bytes(), 10),
            Err(PemError::TooLarge { max: 10 })
        );
        assert_eq!(
            parse_certificates(&[0x30; 11], 10),
            Err(PemError::TooLarge { max: 10 })
        );
        assert!(parse_public_key(&[0x30; 11], 10).is_err());
    }

    #[test]
    fn one_public_key() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            parse_public_key(pem.as_bytes(), MAX_PEM_LEN),
            Ok(vec![0x30, 0x00])
        );
        assert_eq!(
            parse_public_key(&[0x30, 0x00], MAX_PEM_LEN),
            Ok(vec![0x30, 0x00])
        );
        let two = format!("{pem}{pem}");
        assert_eq!(
            parse_public_key(two.as_bytes(), MAX_PEM_LEN),
            Err(PemError::TooMany { label: PUBLIC_KEY })
        );
        assert_eq!(
            parse_public_key(TWO.as_bytes(), MAX_PEM_LEN),
            Err(PemError::NoBlock { label: PUBLIC_KEY })
        );
    }

    #[test]
    fn encode_writes_64_character_lines_that_parse_back() {
        let der: Vec<u8> = (0..=255).collect();
        let pem = encode(CERTIFICATE, &der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("\n-----END CERTIFICATE-----\n"));
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.len(), 2 + 6);
        assert!(lines[1..6].iter().all(|l| l.len() == 64));
        assert_eq!(lines[6].len(), 344 - 5 * 64);
        assert_eq!(
            parse_certificates(pem.as_bytes(), MAX_PEM_LEN),
            Ok(vec![der])
        );
        assert_eq!(
            encode(PUBLIC_KEY, &[]),
            "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"
        );
    }
}

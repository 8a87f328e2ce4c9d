//! PCRs and enclave image measurements: one set of types and one set of
//! parsing rules for everything that names an enclave image.
//!
//! Three places name images, and before this module each had its own rules:
//! the KMS key policy generator (`keybroker-proxy policy`), the proxy's
//! admission policy (`[[policy.allowed_images]]`, `--allow-image`, `--pcr`)
//! and the mock KMS's evaluation of the `kms:RecipientAttestation:*`
//! condition keys. When their rules differ, the proxy can admit an enclave
//! that the key policy denies (or the reverse). Here is the one home:
//!
//! - [`PcrIndex`]: `0..=31`. The NSM has 32 PCRs (the attestation CDDL's
//!   `index = 0..31`; [`crate::attestation::MAX_PCR_COUNT`]). Text form, the
//!   same everywhere: decimal digits without sign or leading zeros,
//!   optionally after `PCR` or `pcr` (`0`, `8`, `PCR8`, `pcr31`; not `01`,
//!   `+1`, `Pcr1` or `32`).
//! - [`PcrValue`]: exactly 48 bytes, never all zero. Nitro Enclaves PCRs
//!   are SHA-384 values: the document's `digest` field is `"SHA384"`, the
//!   only digest the attestation parser accepts ([`crate::attestation::Digest`]),
//!   every genuine document holds 48-byte PCRs (DESIGN.md, the fixtures), and
//!   KMS names PCR0 `ImageSha384`. The CDDL's 32 and 64 byte sizes belong to
//!   other digests that an accepted document never uses, so an expected
//!   value of another length could only ever fail to match; it is refused
//!   when configured instead. All zeros is what every enclave started with
//!   `nitro-cli run-enclave --debug-mode` attests, and anyone who can start
//!   an enclave on the parent can start one in debug mode and read its
//!   memory: admitting zeros admits everyone, so there is no switch for it.
//!   Hex input is either case, surrounding whitespace ignored; output is
//!   always lower case (the form KMS puts in the condition keys).
//! - [`ImageMeasurements`]: one image, PCR0 (required: the image file's
//!   SHA-384, `kms:RecipientAttestation:ImageSha384`) plus any other PCRs.
//!   A document matches an image when it carries *every* PCR of that image
//!   with an equal value ([`ImageMeasurements::matches`]); images are never
//!   mixed. This is exactly one `StringEqualsIgnoreCase` statement of the
//!   generated key policy ([`ImageMeasurements::condition_values`]).
//! - KMS condition keys (AWS KMS Developer Guide, "Condition keys for AWS
//!   Nitro Enclaves"): [`IMAGE_SHA384_CONDITION_KEY`] and
//!   `kms:RecipientAttestation:PCR<n>` ([`PcrIndex::condition_key`] for what
//!   a policy names, [`attested_condition_values`] for what a request with
//!   a verified document carries).
//! - The text formats: [`parse_pcr`] (`[policy.expected_pcrs]` entries),
//!   [`parse_pcr_assignment`] (`--pcr INDEX=HEX`), [`ImageSpec::parse_table`]
//!   (`[[policy.allowed_images]]`), [`ImageSpec::parse_flag`]
//!   (`--allow-image pcr0=HEX,...,name=NAME`) and
//!   [`ImageMeasurements::from_nitro_cli_json`] (`nitro-cli build-enclave` /
//!   `describe-eif` output).
//!
//! Pure: no I/O, like the rest of the crate.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::attestation::VerifiedAttestation;

mod nitro_cli;

#[cfg(test)]
mod tests;

pub use nitro_cli::MAX_NITRO_CLI_JSON_LEN;

/// Number of PCRs of an NSM: indices are `0..PCR_COUNT` (NSM API,
/// `DescribeNSM.max_pcrs`; the attestation CDDL's `index = 0..31`).
pub const PCR_COUNT: u8 = 32;

/// Highest PCR index.
pub const MAX_PCR_INDEX: u8 = PCR_COUNT - 1;

/// Length of a PCR value in bytes: Nitro Enclaves PCRs are SHA-384 digests.
pub const PCR_LEN: usize = 48;

/// The KMS condition key for PCR0, the enclave image file's SHA-384 (AWS KMS
/// Developer Guide, "Condition keys for AWS Nitro Enclaves").
pub const IMAGE_SHA384_CONDITION_KEY: &str = "kms:RecipientAttestation:ImageSha384";

/// The KMS condition key for PCR `n` is this prefix followed by `n`
/// (`kms:RecipientAttestation:PCR<n>`).
pub const PCR_CONDITION_KEY_PREFIX: &str = "kms:RecipientAttestation:PCR";

/// Longest user text quoted in an error message, in characters.
const MAX_QUOTED_LEN: usize = 64;

/// Why a PCR index, PCR value or image description was refused.
///
/// Details are indices, lengths, key names and the (public) input text;
/// never key material.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasurementError {
    /// A PCR index is not `0..=31` in the one accepted spelling (see
    /// [`PcrIndex`]'s `FromStr`).
    #[error("PCR index {given:?} is not 0..=31 (write 0, 8 or PCR8, pcr8)")]
    InvalidIndex {
        /// The index as given (truncated).
        given: String,
    },
    /// A PCR value is not hexadecimal.
    #[error("{index} is not hex: {detail}")]
    NotHex {
        /// The PCR.
        index: PcrIndex,
        /// What the hex decoder said.
        detail: String,
    },
    /// A PCR value is not [`PCR_LEN`] bytes.
    #[error(
        "{index} is {len} bytes; Nitro Enclaves PCRs are SHA-384 values of 48 bytes (96 hex digits)"
    )]
    WrongLength {
        /// The PCR.
        index: PcrIndex,
        /// The length found, in bytes.
        len: usize,
    },
    /// A PCR value is all zeros: what every debug-mode enclave attests.
    #[error(
        "{index} is all zeros, the value every debug-mode enclave attests: admitting it would \
         admit anyone who can start an enclave on the parent with --debug-mode"
    )]
    AllZero {
        /// The PCR.
        index: PcrIndex,
    },
    /// One image names a PCR twice.
    #[error("{index} is given twice")]
    DuplicatePcr {
        /// The PCR.
        index: PcrIndex,
    },
    /// An image has no PCR0 (the key policy names every image by it).
    #[error(
        "pcr0 is required: PCR0 is the image file's SHA-384, what the KMS key policy names \
         (kms:RecipientAttestation:ImageSha384)"
    )]
    MissingImageSha384,
    /// An image table or flag has a key other than `name` and `pcrN`.
    #[error("unknown key {key:?}: expected name, pcr0, pcr1, pcr2, pcr8, ... (pcrN)")]
    UnknownKey {
        /// The key (truncated).
        key: String,
    },
    /// A flag part is not `KEY=VALUE`.
    #[error("{given:?}: expected {expected}")]
    NotAssignment {
        /// The part as given (truncated).
        given: String,
        /// The expected form, with an example.
        expected: &'static str,
    },
    /// A flag names one key twice.
    #[error("{key} is given twice")]
    DuplicateKey {
        /// The key (truncated).
        key: String,
    },
    /// The nitro-cli JSON is unusable (not JSON, a failed check, no PCR0,
    /// an unknown `PCR...` member); the detail says which.
    #[error("{0}")]
    NitroCliJson(String),
}

/// `s`, cut to [`MAX_QUOTED_LEN`] characters for an error message.
fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED_LEN).collect()
}

/// A PCR index, `0..=31`.
///
/// Text form (`FromStr`), the one rule for every input: an optional `PCR`
/// or `pcr` prefix, then the index in decimal without sign or leading
/// zeros. Displays as `PCR<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcrIndex(u8);

impl PcrIndex {
    /// PCR0: the enclave image file's SHA-384 (`ImageSha384` in KMS).
    pub const IMAGE: PcrIndex = PcrIndex(0);

    /// The index `index`, if it is `0..=31`.
    pub fn new(index: u8) -> Result<Self, MeasurementError> {
        if index <= MAX_PCR_INDEX {
            Ok(PcrIndex(index))
        } else {
            Err(MeasurementError::InvalidIndex {
                given: index.to_string(),
            })
        }
    }

    /// The number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Every index, ascending.
    pub fn all() -> impl Iterator<Item = PcrIndex> {
        (0..PCR_COUNT).map(PcrIndex)
    }

    /// The condition key a key policy uses for this PCR:
    /// [`IMAGE_SHA384_CONDITION_KEY`] for PCR0 (what the KMS Developer Guide
    /// documents for the image), `kms:RecipientAttestation:PCR<n>` otherwise.
    pub fn condition_key(self) -> String {
        if self == PcrIndex::IMAGE {
            IMAGE_SHA384_CONDITION_KEY.to_owned()
        } else {
            self.pcr_condition_key()
        }
    }

    /// `kms:RecipientAttestation:PCR<n>`, for every index including 0.
    pub fn pcr_condition_key(self) -> String {
        format!("{PCR_CONDITION_KEY_PREFIX}{}", self.0)
    }
}

impl fmt::Display for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCR{}", self.0)
    }
}

impl FromStr for PcrIndex {
    type Err = MeasurementError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || MeasurementError::InvalidIndex { given: quoted(s) };
        let digits = s
            .strip_prefix("PCR")
            .or_else(|| s.strip_prefix("pcr"))
            .unwrap_or(s);
        let canonical = matches!(digits.len(), 1 | 2)
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(invalid());
        }
        let n: u8 = digits.parse().map_err(|_| invalid())?;
        PcrIndex::new(n).map_err(|_| invalid())
    }
}

impl TryFrom<u8> for PcrIndex {
    type Error = MeasurementError;

    fn try_from(index: u8) -> Result<Self, Self::Error> {
        PcrIndex::new(index)
    }
}

/// One expected PCR value: [`PCR_LEN`] (48) bytes, not all zero (see the
/// [module docs](self) for why both). Kept with its lower-case hex, the form
/// KMS compares in the condition keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcrValue {
    bytes: [u8; PCR_LEN],
    hex: String,
}

impl PcrValue {
    /// Parses the value of PCR `index` (named in errors): hex digits of
    /// either case, surrounding whitespace ignored.
    pub fn parse(index: PcrIndex, text: &str) -> Result<Self, MeasurementError> {
        let bytes = hex::decode(text.trim()).map_err(|e| MeasurementError::NotHex {
            index,
            detail: e.to_string(),
        })?;
        Self::from_bytes(index, &bytes)
    }

    /// The value of PCR `index` from raw bytes. An all-zero value is
    /// reported as such whatever its length (it is a debug-mode value);
    /// otherwise the length must be [`PCR_LEN`].
    pub fn from_bytes(index: PcrIndex, bytes: &[u8]) -> Result<Self, MeasurementError> {
        if !bytes.is_empty() && bytes.iter().all(|b| *b == 0) {
            return Err(MeasurementError::AllZero { index });
        }
        let bytes: [u8; PCR_LEN] = bytes
            .try_into()
            .map_err(|_| MeasurementError::WrongLength {
                index,
                len: bytes.len(),
            })?;
        Ok(PcrValue {
            hex: pcr_hex(&bytes),
            bytes,
        })
    }

    /// The 48 bytes.
    pub fn as_bytes(&self) -> &[u8; PCR_LEN] {
        &self.bytes
    }

    /// Lower-case hex (96 digits).
    pub fn as_hex(&self) -> &str {
        &self.hex
    }

    /// Whether an attested value equals this one (byte equality; a value of
    /// another length never does).
    pub fn matches(&self, attested: &[u8]) -> bool {
        attested == self.bytes.as_slice()
    }
}

impl fmt::Display for PcrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex)
    }
}

impl fmt::Debug for PcrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PcrValue({})", self.hex)
    }
}

/// Lower-case hex of a PCR value as attested (any length), the form of the
/// `kms:RecipientAttestation:*` condition values and of log lines.
pub fn pcr_hex(value: &[u8]) -> String {
    hex::encode(value)
}

/// Parses one PCR given as index text and value text (an entry of
/// `[policy.expected_pcrs]`, or `pcrN = "HEX"` of an image table).
pub fn parse_pcr(index: &str, value: &str) -> Result<(PcrIndex, PcrValue), MeasurementError> {
    let index: PcrIndex = index.parse()?;
    Ok((index, PcrValue::parse(index, value)?))
}

/// Parses `INDEX=HEX` (the proxy's `--pcr` flag), e.g. `0=abcd...` or
/// `PCR2=abcd...`.
pub fn parse_pcr_assignment(s: &str) -> Result<(PcrIndex, PcrValue), MeasurementError> {
    let (index, value) = s
        .split_once('=')
        .ok_or_else(|| MeasurementError::NotAssignment {
            given: quoted(s),
            expected: "INDEX=HEX, e.g. 0=abcd...",
        })?;
    parse_pcr(index, value)
}

/// A PCR that a document does not match (see
/// [`ImageMeasurements::first_mismatch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcrMismatch<'a> {
    /// The document has no value for this PCR.
    Absent {
        /// The PCR.
        index: PcrIndex,
        /// What the image requires.
        expected: &'a PcrValue,
    },
    /// The document's value differs.
    Differs {
        /// The PCR.
        index: PcrIndex,
        /// What the image requires.
        expected: &'a PcrValue,
        /// What the document attests.
        actual: &'a [u8],
    },
}

/// The measurements of one enclave image (EIF): PCR0 and optionally other
/// PCRs. Nitro Enclaves define PCR0 (image file), PCR1 (kernel and
/// bootstrap), PCR2 (application), PCR3 (parent's IAM role), PCR4 (parent's
/// instance id) and PCR8 (EIF signing certificate).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageMeasurements {
    image_sha384: PcrValue,
    /// Every PCR but PCR0.
    others: BTreeMap<PcrIndex, PcrValue>,
}

impl ImageMeasurements {
    /// An image identified by its PCR0 alone.
    pub fn new(image_sha384: PcrValue) -> Self {
        ImageMeasurements {
            image_sha384,
            others: BTreeMap::new(),
        }
    }

    /// Also requires PCR `index` to equal `value`. A PCR already given
    /// (PCR0 included) is an error, never silently replaced.
    pub fn with_pcr(mut self, index: PcrIndex, value: PcrValue) -> Result<Self, MeasurementError> {
        if index == PcrIndex::IMAGE || self.others.contains_key(&index) {
            return Err(MeasurementError::DuplicatePcr { index });
        }
        self.others.insert(index, value);
        Ok(self)
    }

    /// An image from its PCRs: PCR0 is required, each index at most once.
    pub fn from_pcrs(
        pcrs: impl IntoIterator<Item = (PcrIndex, PcrValue)>,
    ) -> Result<Self, MeasurementError> {
        let mut image_sha384 = None;
        let mut others = BTreeMap::new();
        for (index, value) in pcrs {
            let duplicate = if index == PcrIndex::IMAGE {
                image_sha384.replace(value).is_some()
            } else {
                others.insert(index, value).is_some()
            };
            if duplicate {
                return Err(MeasurementError::DuplicatePcr { index });
            }
        }
        let image_sha384 = image_sha384.ok_or(MeasurementError::MissingImageSha384)?;
        Ok(ImageMeasurements {
            image_sha384,
            others,
        })
    }

    /// PCR0, the image file's SHA-384.
    pub fn image_sha384(&self) -> &PcrValue {
        &self.image_sha384
    }

    /// The required value of PCR `index`, if the image names it.
    pub fn get(&self, index: PcrIndex) -> Option<&PcrValue> {
        if index == PcrIndex::IMAGE {
            Some(&self.image_sha384)
        } else {
            self.others.get(&index)
        }
    }

    /// Every PCR of the image, ascending (PCR0 first).
    pub fn pcrs(&self) -> impl Iterator<Item = (PcrIndex, &PcrValue)> {
        std::iter::once((PcrIndex::IMAGE, &self.image_sha384))
            .chain(self.others.iter().map(|(i, v)| (*i, v)))
    }

    /// How many PCRs the image names (at least 1, PCR0).
    pub fn pcr_count(&self) -> usize {
        1 + self.others.len()
    }

    /// The first PCR (lowest index) of this image that the verified
    /// document does not carry with an equal value; `None` if it matches.
    pub fn first_mismatch<'a>(
        &'a self,
        document: &'a VerifiedAttestation,
    ) -> Option<PcrMismatch<'a>> {
        self.pcrs()
            .find_map(|(index, expected)| match document.pcr(index.get()) {
                Some(actual) if expected.matches(actual) => None,
                Some(actual) => Some(PcrMismatch::Differs {
                    index,
                    expected,
                    actual,
                }),
                None => Some(PcrMismatch::Absent { index, expected }),
            })
    }

    /// Whether the verified document carries every PCR of this image with
    /// an equal value: the admission rule, and what one Allow statement of
    /// the generated key policy requires. Other PCRs of the document do not
    /// matter.
    pub fn matches(&self, document: &VerifiedAttestation) -> bool {
        self.first_mismatch(document).is_none()
    }

    /// The `StringEqualsIgnoreCase` conditions of this image in a key
    /// policy: [`PcrIndex::condition_key`] to the lower-case hex value,
    /// ascending by PCR.
    pub fn condition_values(&self) -> impl Iterator<Item = (String, &str)> {
        self.pcrs().map(|(i, v)| (i.condition_key(), v.as_hex()))
    }

    /// Reads the measurements from the JSON that `nitro-cli build-enclave`,
    /// `nitro-cli describe-eif` and `nitro-cli sign-eif` print:
    ///
    /// ```json
    /// {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "...", "PCR1": "...", "PCR2": "..."}}
    /// ```
    ///
    /// (`PCR8` as well for a signed image; `describe-eif` adds `EifVersion`,
    /// `IsSigned`, `CheckCRC`, `SignatureCheck`, `ImageName`, ... beside
    /// `Measurements`). Also accepted: the `Measurements` object alone, and
    /// text with progress lines before the JSON (as when both output streams
    /// of `build-enclave` were captured). Every member named `PCR...` is a
    /// measurement and must be a valid [`PcrIndex`] and [`PcrValue`]; a
    /// `HashAlgorithm` other than SHA-384, `"CheckCRC": false` or
    /// `"SignatureCheck": false` is an error. At most
    /// [`MAX_NITRO_CLI_JSON_LEN`] bytes.
    pub fn from_nitro_cli_json(text: &str) -> Result<Self, MeasurementError> {
        nitro_cli::parse(text)
    }
}

/// One image as the proxy's configuration writes it: measurements and an
/// optional name (for messages; the proxy checks the name's form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// The PCRs.
    pub measurements: ImageMeasurements,
    /// The `name` entry, as given.
    pub name: Option<String>,
}

impl ImageSpec {
    /// Parses the entries of one `[[policy.allowed_images]]` table (or of
    /// one `--allow-image` flag): `pcr0` (required), optionally more `pcrN`
    /// (any [`PcrIndex`] spelling with a prefix: `pcr2`, `PCR2`) and `name`.
    /// Any other key is an error; so is one PCR twice (`pcr0` and `PCR0`).
    /// Errors come in the order of `entries` (a `BTreeMap`'s, for a table).
    pub fn parse_table<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, MeasurementError> {
        let mut pcrs = BTreeMap::new();
        let mut name = None;
        for (key, value) in entries {
            if key == "name" {
                if name.replace(value.to_owned()).is_some() {
                    return Err(MeasurementError::DuplicateKey { key: key.into() });
                }
                continue;
            }
            if !(key.starts_with("pcr") || key.starts_with("PCR")) {
                return Err(MeasurementError::UnknownKey { key: quoted(key) });
            }
            let (index, value) = parse_pcr(key, value)?;
            if pcrs.insert(index, value).is_some() {
                return Err(MeasurementError::DuplicatePcr { index });
            }
        }
        Ok(ImageSpec {
            measurements: ImageMeasurements::from_pcrs(pcrs)?,
            name,
        })
    }

    /// Parses `pcr0=HEX[,pcrN=HEX]...[,name=NAME]` (the proxy's
    /// `--allow-image`): comma-separated `KEY=VALUE` parts, each trimmed,
    /// no key twice, then as [`ImageSpec::parse_table`] in key order.
    pub fn parse_flag(s: &str) -> Result<Self, MeasurementError> {
        let mut table = BTreeMap::new();
        for part in s.split(',') {
            let (key, value) =
                part.split_once('=')
                    .ok_or_else(|| MeasurementError::NotAssignment {
                        given: quoted(part),
                        expected: "KEY=VALUE, e.g. pcr0=abcd...,name=v1.2",
                    })?;
            let key = key.trim();
            if table.insert(key, value.trim()).is_some() {
                return Err(MeasurementError::DuplicateKey { key: quoted(key) });
            }
        }
        Self::parse_table(table)
    }
}

/// The `kms:RecipientAttestation:*` condition values of a request whose
/// `Recipient` carries a verified document with these PCRs (index, value):
/// `kms:RecipientAttestation:PCR<n>` for every PCR and
/// [`IMAGE_SHA384_CONDITION_KEY`] for PCR0, each the lower-case hex of the
/// attested value (of whatever length the document has). Indices outside
/// `0..=31` (which a parsed document cannot hold) have no key.
pub fn attested_condition_values<'a>(
    pcrs: impl IntoIterator<Item = (u8, &'a [u8])>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (index, value) in pcrs {
        let Ok(index) = PcrIndex::new(index) else {
            continue;
        };
        let hex = pcr_hex(value);
        if index == PcrIndex::IMAGE {
            out.push((IMAGE_SHA384_CONDITION_KEY.to_owned(), hex.clone()));
        }
        out.push((index.pcr_condition_key(), hex));
    }
    out
}

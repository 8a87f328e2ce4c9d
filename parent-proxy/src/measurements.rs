//! Enclave image measurements as the proxy's admission policy checks them:
//! the images admitted ([`AllowedImage`], matched each as a whole) and the
//! parsers for the configuration file and the command line ([`parse_pcr`],
//! [`parse_image_table`], [`parse_pcr_flag`], [`parse_image_flag`]).
//!
//! The PCR rules themselves (index `0..=31`, one spelling; 48-byte SHA-384
//! values; no all-zero debug-mode value; PCR0 required; an image matches as
//! a whole) live in [`keybroker_common::measurements`], which the key policy
//! generator and the mock KMS use too: so the proxy admits exactly what the
//! generated key policy admits (`tests/tests/admission_matches_key_policy.rs`).
//! This module adds only what is the proxy's own: image names, labels and
//! the denial message.
//!
//! The bottom layer of the crate: it uses only the error type.

use std::collections::BTreeMap;

use keybroker_common::attestation::VerifiedAttestation;
use keybroker_common::measurements::{
    self, ImageMeasurements, ImageSpec, MeasurementError, PcrIndex, PcrMismatch, PcrValue,
};

use crate::error::{Error, Result};
use crate::text::short;

fn config(e: MeasurementError) -> Error {
    Error::config(e.to_string())
}

/// Parses one expected PCR (an entry of `[policy.expected_pcrs]`):
/// [`measurements::parse_pcr`], as index and bytes.
pub fn parse_pcr(index: &str, value: &str) -> Result<(u8, Vec<u8>)> {
    let (index, value) = measurements::parse_pcr(index, value).map_err(config)?;
    Ok((index.get(), value.as_bytes().to_vec()))
}

/// Parses `--pcr INDEX=HEX` ([`measurements::parse_pcr_assignment`]).
pub fn parse_pcr_flag(s: &str) -> Result<(u8, Vec<u8>), String> {
    let (index, value) = measurements::parse_pcr_assignment(s).map_err(|e| e.to_string())?;
    Ok((index.get(), value.as_bytes().to_vec()))
}

/// Parses one allowed image, as written in a `[[policy.allowed_images]]`
/// table: `pcr0` (required: the image file's SHA-384, as in the KMS key
/// policy), optionally more `pcrN` (e.g. `pcr1`, `pcr2`, `pcr8`) and
/// `name` ([`ImageSpec::parse_table`]). Every PCR given must match; any
/// other key is an error.
pub fn parse_image_table(table: &BTreeMap<String, String>) -> Result<AllowedImage> {
    let spec = ImageSpec::parse_table(table.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(config)?;
    AllowedImage::from_spec(spec)
}

/// Parses `--allow-image pcr0=HEX[,pcr1=HEX,pcr2=HEX,pcr8=HEX][,name=NAME]`
/// ([`ImageSpec::parse_flag`]).
pub fn parse_image_flag(s: &str) -> Result<AllowedImage, String> {
    let spec = ImageSpec::parse_flag(s).map_err(|e| e.to_string())?;
    AllowedImage::from_spec(spec).map_err(|e| e.into_config().to_string())
}

/// Checks one expected PCR value as [`keybroker_common::measurements`]
/// does: index `0..=31`, 48 bytes (SHA-384), and not all zero. All zeros is
/// what every debug-mode enclave attests (its memory is readable from the
/// parent), so admitting it would admit anyone who can start an enclave on
/// the parent; like the key policy generator, there is no switch to allow it.
pub fn check_pcr_value(index: u8, value: &[u8]) -> crate::Result<()> {
    pcr_value(index, value).map(|_| ())
}

fn pcr_value(index: u8, value: &[u8]) -> crate::Result<(PcrIndex, PcrValue)> {
    let index = PcrIndex::new(index).map_err(config)?;
    let value = PcrValue::from_bytes(index, value).map_err(config)?;
    Ok((index, value))
}

/// Longest [`AllowedImage`] name, in characters.
pub const MAX_IMAGE_NAME_LEN: usize = 64;

/// How many allowed images a [`Rule::PcrMismatch`](crate::admission::Rule::PcrMismatch) message describes; the
/// rest are counted.
const MAX_IMAGES_IN_MESSAGE: usize = 8;

/// Hex digits of a PCR value quoted in messages that list several images.
const PCR_PREFIX_LEN: usize = 16;

/// One enclave image the proxy admits: its [`ImageMeasurements`] (PCR0 and
/// optionally more PCRs, which an attestation document must *all* carry)
/// and an optional name for messages. A document is admitted when it
/// matches every PCR of at least one image of
/// [`AdmissionPolicy::allowed_images`](crate::admission::AdmissionPolicy::allowed_images);
/// PCRs are never combined across images, exactly as the generated key
/// policy has one Allow statement per image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedImage {
    name: Option<String>,
    measurements: ImageMeasurements,
    /// The same PCRs as index to bytes, for callers that compare them.
    pcrs: BTreeMap<u8, Vec<u8>>,
}

impl AllowedImage {
    /// An image with these PCRs: PCR0 required, each value valid per
    /// [`check_pcr_value`].
    pub fn new(pcrs: BTreeMap<u8, Vec<u8>>) -> crate::Result<Self> {
        let mut checked = Vec::with_capacity(pcrs.len());
        for (index, value) in &pcrs {
            checked.push(pcr_value(*index, value)?);
        }
        let measurements = ImageMeasurements::from_pcrs(checked).map_err(config)?;
        Ok(Self::from(measurements))
    }

    /// The same image as the key policy generator's measurements (e.g. read
    /// from nitro-cli JSON), so that the proxy admits exactly what the key
    /// policy admits.
    pub fn from_measurements(
        measurements: &crate::key_policy::ImageMeasurements,
    ) -> crate::Result<Self> {
        Ok(Self::from(measurements.measurements().clone()))
    }

    fn from_spec(spec: ImageSpec) -> crate::Result<Self> {
        let image = Self::from(spec.measurements);
        match spec.name {
            Some(name) => image.with_name(&name),
            None => Ok(image),
        }
    }

    /// Names the image (e.g. its version, `v1.2`) for messages: 1 to
    /// [`MAX_IMAGE_NAME_LEN`] characters, no control characters.
    pub fn with_name(mut self, name: &str) -> crate::Result<Self> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_IMAGE_NAME_LEN
            || name.chars().any(char::is_control)
        {
            return Err(Error::config(format!(
                "image name {:?}: expected 1 to {MAX_IMAGE_NAME_LEN} characters, no control characters",
                short(name)
            )));
        }
        self.name = Some(name.to_owned());
        Ok(self)
    }

    /// The name, if one was given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The measurements (the shared type the key policy generator uses).
    pub fn measurements(&self) -> &ImageMeasurements {
        &self.measurements
    }

    /// The required PCRs, index to value.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.pcrs
    }

    /// How messages and logs name the image: its name, else its PCR0 as a
    /// hex prefix, e.g. `PCR0 0123456789abcdef…`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!(
                "PCR0 {}",
                hex_prefix(self.measurements.image_sha384().as_bytes())
            ),
        }
    }

    /// Whether the verified document carries every PCR of this image, with
    /// equal values ([`ImageMeasurements::matches`]).
    pub fn matches(&self, document: &VerifiedAttestation) -> bool {
        self.measurements.matches(document)
    }

    /// The first PCR (lowest index) of this image the document does not
    /// match, as a message fragment; `None` if it matches every one.
    fn first_mismatch(&self, document: &VerifiedAttestation) -> Option<String> {
        self.measurements
            .first_mismatch(document)
            .map(|mismatch| match mismatch {
                PcrMismatch::Differs {
                    index,
                    expected,
                    actual,
                } => format!(
                    "PCR{} is {}, expected {}",
                    index.get(),
                    hex_prefix(actual),
                    hex_prefix(expected.as_bytes())
                ),
                PcrMismatch::Absent { index, .. } => {
                    format!("PCR{} is absent from the attestation document", index.get())
                }
            })
    }
}

impl From<ImageMeasurements> for AllowedImage {
    fn from(measurements: ImageMeasurements) -> Self {
        let pcrs = measurements
            .pcrs()
            .map(|(index, value)| (index.get(), value.as_bytes().to_vec()))
            .collect();
        AllowedImage {
            name: None,
            measurements,
            pcrs,
        }
    }
}

/// The [`Rule::PcrMismatch`](crate::admission::Rule::PcrMismatch) message: what the caller had (its PCR0) and,
/// per allowed image (at most [`MAX_IMAGES_IN_MESSAGE`]), its label and the
/// first PCR that differs. Names and PCR values are public measurements.
pub(crate) fn mismatch_message(images: &[AllowedImage], document: &VerifiedAttestation) -> String {
    let caller = document
        .pcr(0)
        .map_or_else(|| "absent".to_owned(), measurements::pcr_hex);
    let mut parts: Vec<String> = images
        .iter()
        .take(MAX_IMAGES_IN_MESSAGE)
        .map(|image| {
            let why = image
                .first_mismatch(document)
                .unwrap_or_else(|| "matches".to_owned());
            format!("{}: {why}", image.label())
        })
        .collect();
    if images.len() > MAX_IMAGES_IN_MESSAGE {
        parts.push(format!("and {} more", images.len() - MAX_IMAGES_IN_MESSAGE));
    }
    let count = images.len();
    let noun = if count == 1 { "image" } else { "images" };
    format!(
        "caller PCR0 {caller} matches none of the {count} allowed {noun}: {}",
        parts.join("; ")
    )
}

/// The first [`PCR_PREFIX_LEN`] hex digits of a value, `…` if cut.
fn hex_prefix(value: &[u8]) -> String {
    let mut h = hex::encode(value);
    if h.len() > PCR_PREFIX_LEN {
        h.truncate(PCR_PREFIX_LEN);
        h.push('…');
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const A0: &str = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
    const A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
    const B0: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

    #[test]
    fn pcr_values_parse() {
        let hex48 = "ab".repeat(48);
        assert_eq!(parse_pcr("0", &hex48).unwrap(), (0, vec![0xab; 48]));
        assert_eq!(parse_pcr("PCR8", &hex48).unwrap().0, 8);
        assert_eq!(parse_pcr("pcr31", &hex48).unwrap().0, 31);
        assert_eq!(parse_pcr_flag(&format!("2={hex48}")).unwrap().0, 2);
        assert!(parse_pcr_flag(&hex48).is_err());
        assert!(parse_pcr("x", &hex48).is_err());
        assert!(parse_pcr("32", &hex48).is_err());
        // A debug-mode enclave's value is refused, in the file and the flag.
        let zeros = "00".repeat(48);
        assert!(parse_pcr("0", &zeros).is_err());
        let err = parse_pcr_flag(&format!("0={zeros}")).unwrap_err();
        assert!(err.contains("debug-mode"), "{err}");
    }

    #[test]
    fn allow_image_flag_parses() {
        let image = parse_image_flag(&format!("pcr0={A0}, pcr2={A2},name=v1.2")).unwrap();
        assert_eq!(image.name(), Some("v1.2"));
        assert_eq!(
            image.pcrs(),
            &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
        );
        assert_eq!(
            parse_image_flag(&format!("PCR0={B0}")).unwrap().name(),
            None
        );
        assert!(
            parse_image_flag(&format!("pcr2={A2}"))
                .unwrap_err()
                .contains("pcr0")
        );
        assert!(parse_image_flag(A0).unwrap_err().contains("KEY=VALUE"));
        assert!(
            parse_image_flag(&format!("pcr0={A0},pcr0={B0}"))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse_image_flag(&format!("pcr0={}", "00".repeat(48)))
                .unwrap_err()
                .contains("debug-mode")
        );
    }
}

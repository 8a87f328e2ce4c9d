//! Enclave image measurements as the proxy's admission policy checks them:
//! PCR values ([`check_pcr_value`]), the images admitted ([`AllowedImage`],
//! matched each as a whole) and their parsers for the configuration file
//! and the command line ([`parse_pcr`], [`parse_image_table`],
//! [`parse_pcr_flag`], [`parse_image_flag`]).
//!
//! The bottom layer of the crate: it uses only the error type and the key
//! policy generator's [`ImageMeasurements`](crate::key_policy::ImageMeasurements).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::text::short;

/// Parses one expected PCR: index `0..=31` (optionally written `PCR0` /
/// `pcr0`) and a hex value of 32, 48 or 64 bytes (NSM PCR sizes), not all
/// zero (see [`check_pcr_value`]).
pub fn parse_pcr(index: &str, value: &str) -> Result<(u8, Vec<u8>)> {
    let i = parse_pcr_index(index)
        .ok_or_else(|| Error::config(format!("PCR index {index:?} is not 0..=31")))?;
    let bytes = hex::decode(value.trim())
        .map_err(|e| Error::config(format!("PCR{i} value is not hex: {e}")))?;
    check_pcr_value(i, &bytes)?;
    Ok((i, bytes))
}

/// `0`, `PCR0` or `pcr0` to 0 (up to 31).
fn parse_pcr_index(index: &str) -> Option<u8> {
    let digits = index
        .strip_prefix("PCR")
        .or_else(|| index.strip_prefix("pcr"))
        .unwrap_or(index);
    digits.parse().ok().filter(|i| *i <= MAX_PCR_INDEX)
}

/// Parses `--pcr INDEX=HEX`.
pub fn parse_pcr_flag(s: &str) -> Result<(u8, Vec<u8>), String> {
    let (index, value) = s
        .split_once('=')
        .ok_or_else(|| "expected INDEX=HEX, e.g. 0=abcd...".to_owned())?;
    parse_pcr(index, value).map_err(|e| e.into_config().to_string())
}

/// Parses one allowed image, as written in a `[[policy.allowed_images]]`
/// table or an `--allow-image` flag: `pcr0` (required: the image file's
/// SHA-384, as in the KMS key policy), optionally more `pcrN` (also
/// `PCRN`; e.g. `pcr1`, `pcr2`, `pcr8`) and `name`. Every PCR given must
/// match; any other key is an error.
pub fn parse_image_table(table: &BTreeMap<String, String>) -> Result<AllowedImage> {
    let mut pcrs = BTreeMap::new();
    let mut name = None;
    for (key, value) in table {
        if key == "name" {
            name = Some(value.as_str());
            continue;
        }
        if !(key.starts_with("pcr") || key.starts_with("PCR")) {
            return Err(Error::config(format!(
                "unknown key {:?}: expected name, pcr0, pcr1, pcr2, pcr8, ... (pcrN)",
                short(key)
            )));
        }
        let (index, value) = parse_pcr(key, value)?;
        if pcrs.insert(index, value).is_some() {
            return Err(Error::config(format!("PCR{index} is given twice")));
        }
    }
    if !pcrs.contains_key(&0) {
        return Err(Error::config(
            "pcr0 is required (the image's SHA-384, what the KMS key policy names)",
        ));
    }
    let image = AllowedImage::new(pcrs)?;
    match name {
        Some(name) => image.with_name(name),
        None => Ok(image),
    }
}

/// Parses `--allow-image pcr0=HEX[,pcr1=HEX,pcr2=HEX,pcr8=HEX][,name=NAME]`
/// (see [`parse_image_table`]).
pub fn parse_image_flag(s: &str) -> Result<AllowedImage, String> {
    let mut table = BTreeMap::new();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected KEY=VALUE, e.g. pcr0=abcd...,name=v1.2"))?;
        if table
            .insert(key.trim().to_owned(), value.trim().to_owned())
            .is_some()
        {
            return Err(format!("{} is given twice", key.trim()));
        }
    }
    parse_image_table(&table).map_err(|e| e.into_config().to_string())
}

/// Lengths of PCR values: NSM PCRs are SHA-256, SHA-384 (Nitro Enclaves,
/// 48 bytes) or SHA-512 digests.
pub const PCR_LENGTHS: [usize; 3] = [32, 48, 64];

/// Highest PCR index an NSM reports (it has 32 PCRs).
pub const MAX_PCR_INDEX: u8 = 31;

/// Longest [`AllowedImage`] name, in characters.
pub const MAX_IMAGE_NAME_LEN: usize = 64;

/// How many allowed images a [`Rule::PcrMismatch`](crate::admission::Rule::PcrMismatch) message describes; the
/// rest are counted.
const MAX_IMAGES_IN_MESSAGE: usize = 8;

/// Hex digits of a PCR value quoted in messages that list several images.
const PCR_PREFIX_LEN: usize = 16;

/// Checks one expected PCR value: index `0..=31`, 32, 48 or 64 bytes, and
/// not all zero. All zeros is what every debug-mode enclave attests (its
/// memory is readable from the parent), so admitting it would admit anyone
/// who can start an enclave on the parent; like [`crate::key_policy`], there
/// is no switch to allow it.
pub fn check_pcr_value(index: u8, value: &[u8]) -> crate::Result<()> {
    if index > MAX_PCR_INDEX {
        return Err(Error::config(format!(
            "PCR index {index} is not 0..={MAX_PCR_INDEX}"
        )));
    }
    if !PCR_LENGTHS.contains(&value.len()) {
        return Err(Error::config(format!(
            "PCR{index} value is {} bytes; PCRs are 32, 48 or 64 bytes (SHA-384 PCRs: 48)",
            value.len()
        )));
    }
    if value.iter().all(|b| *b == 0) {
        return Err(Error::config(format!(
            "PCR{index} is all zeros, the value every debug-mode enclave attests: \
             admitting it would admit any enclave started on the parent with --debug-mode"
        )));
    }
    Ok(())
}

/// One enclave image the proxy admits: the PCR values an attestation
/// document must *all* carry (index to value). A document is admitted when
/// it matches every PCR of at least one image of
/// [`AdmissionPolicy::allowed_images`](crate::admission::AdmissionPolicy::allowed_images); PCRs are never combined across images.
///
/// Nitro Enclaves define PCR0 (image file), PCR1 (kernel and bootstrap),
/// PCR2 (application), PCR3 (parent's IAM role), PCR4 (parent's instance
/// id) and PCR8 (EIF signing certificate). Values are checked by
/// [`check_pcr_value`] (no all-zero debug-mode value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedImage {
    name: Option<String>,
    pcrs: BTreeMap<u8, Vec<u8>>,
}

impl AllowedImage {
    /// An image with these PCRs (at least one; each valid per
    /// [`check_pcr_value`]).
    pub fn new(pcrs: BTreeMap<u8, Vec<u8>>) -> crate::Result<Self> {
        if pcrs.is_empty() {
            return Err(Error::config(
                "an allowed image needs at least one PCR value",
            ));
        }
        for (index, value) in &pcrs {
            check_pcr_value(*index, value)?;
        }
        Ok(AllowedImage { name: None, pcrs })
    }

    /// The same image from the measurements of the key policy generator
    /// (e.g. read from nitro-cli JSON with
    /// [`ImageMeasurements::from_nitro_cli_json`](crate::key_policy::ImageMeasurements::from_nitro_cli_json)),
    /// so that the proxy admits exactly what the key policy admits.
    pub fn from_measurements(
        measurements: &crate::key_policy::ImageMeasurements,
    ) -> crate::Result<Self> {
        let mut pcrs = BTreeMap::new();
        for (index, hex_value) in measurements.pcrs() {
            let value = hex::decode(hex_value)
                .map_err(|e| Error::config(format!("PCR{index} is not hex: {e}")))?;
            pcrs.insert(index, value);
        }
        Self::new(pcrs)
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

    /// The required PCRs, index to value.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.pcrs
    }

    /// How messages and logs name the image: its name, else its lowest PCR
    /// (normally PCR0) as a hex prefix, e.g. `PCR0 0123456789abcdef…`.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.pcrs.iter().next() {
            Some((index, value)) => format!("PCR{index} {}", hex_prefix(value)),
            None => "(no PCR)".to_owned(),
        }
    }

    /// Whether the document carries every PCR of this image, with equal
    /// values.
    pub fn matches<'a>(&self, actual: impl Fn(u8) -> Option<&'a [u8]>) -> bool {
        self.pcrs
            .iter()
            .all(|(index, expected)| actual(*index) == Some(expected.as_slice()))
    }

    /// The first PCR (lowest index) of this image the document does not
    /// match, as a message fragment; `None` if it matches every one.
    fn first_mismatch<'a>(&self, actual: impl Fn(u8) -> Option<&'a [u8]>) -> Option<String> {
        self.pcrs
            .iter()
            .find_map(|(index, expected)| match actual(*index) {
                Some(a) if a == expected.as_slice() => None,
                Some(a) => Some(format!(
                    "PCR{index} is {}, expected {}",
                    hex_prefix(a),
                    hex_prefix(expected)
                )),
                None => Some(format!(
                    "PCR{index} is absent from the attestation document"
                )),
            })
    }
}

/// The [`Rule::PcrMismatch`](crate::admission::Rule::PcrMismatch) message: what the caller had (its PCR0) and,
/// per allowed image (at most [`MAX_IMAGES_IN_MESSAGE`]), its label and the
/// first PCR that differs. Names and PCR values are public measurements.
pub(crate) fn mismatch_message<'a>(
    images: &[AllowedImage],
    actual: impl Fn(u8) -> Option<&'a [u8]>,
) -> String {
    let caller = actual(0).map_or_else(|| "absent".to_owned(), hex::encode);
    let mut parts: Vec<String> = images
        .iter()
        .take(MAX_IMAGES_IN_MESSAGE)
        .map(|image| {
            let why = image
                .first_mismatch(&actual)
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

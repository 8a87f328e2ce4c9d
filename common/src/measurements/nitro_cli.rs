//! The measurements JSON that `nitro-cli build-enclave`, `describe-eif` and
//! `sign-eif` print (see [`super::ImageMeasurements::from_nitro_cli_json`]).

use super::{ImageMeasurements, MeasurementError, PcrIndex, PcrValue, quoted};

/// Largest nitro-cli JSON text accepted by
/// [`ImageMeasurements::from_nitro_cli_json`], in bytes (`describe-eif`
/// output with build metadata is a few KiB).
pub const MAX_NITRO_CLI_JSON_LEN: usize = 1 << 20;

fn invalid(msg: impl Into<String>) -> MeasurementError {
    MeasurementError::NitroCliJson(msg.into())
}

pub(super) fn parse(text: &str) -> Result<ImageMeasurements, MeasurementError> {
    if text.len() > MAX_NITRO_CLI_JSON_LEN {
        return Err(invalid(format!(
            "nitro-cli JSON is larger than {MAX_NITRO_CLI_JSON_LEN} bytes"
        )));
    }
    let json = json_start(text).ok_or_else(|| invalid("no JSON object in the nitro-cli output"))?;
    let doc: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| invalid(format!("nitro-cli output is not valid JSON: {e}")))?;
    let top = doc
        .as_object()
        .ok_or_else(|| invalid("nitro-cli output is not a JSON object"))?;
    for (flag, what) in [
        ("CheckCRC", "the EIF's CRC check failed (corrupt image)"),
        ("SignatureCheck", "the EIF's signature check failed"),
    ] {
        if top.get(flag) == Some(&serde_json::Value::Bool(false)) {
            return Err(invalid(format!("nitro-cli reports {flag}: false: {what}")));
        }
    }
    let measurements = match top.get("Measurements") {
        Some(m) => m
            .as_object()
            .ok_or_else(|| invalid("`Measurements` is not a JSON object"))?,
        None => top,
    };
    if let Some(alg) = measurements.get("HashAlgorithm") {
        let alg = alg.as_str().unwrap_or_default();
        if !alg.starts_with("Sha384") {
            return Err(invalid(format!(
                "HashAlgorithm {:?}: expected Sha384 (Nitro Enclaves PCRs)",
                quoted(alg)
            )));
        }
    }
    let mut pcrs = Vec::new();
    for (name, value) in measurements {
        if !name.starts_with("PCR") {
            continue;
        }
        let index: PcrIndex = name
            .parse()
            .map_err(|_| invalid(format!("unknown measurement {:?}", quoted(name))))?;
        let hex_value = value
            .as_str()
            .ok_or_else(|| invalid(format!("{index} is not a string")))?;
        pcrs.push((index, PcrValue::parse(index, hex_value)?));
    }
    ImageMeasurements::from_pcrs(pcrs).map_err(|e| match e {
        MeasurementError::MissingImageSha384 => invalid("the nitro-cli output has no PCR0"),
        other => other,
    })
}

/// The JSON part of nitro-cli output: the text from the first line that
/// starts with `{`.
fn json_start(text: &str) -> Option<&str> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return Some(trimmed);
    }
    let at = text.find("\n{")?;
    text.get(at + 1..)
}

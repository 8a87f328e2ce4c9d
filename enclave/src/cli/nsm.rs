//! The NSM subcommands: `attestation` (a fresh document, with what it
//! attests) and `mock-nsm init|pcr0` (the development CA, the mock's PCR0).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::args::{AttestationArgs, MockNsmCommand};
use super::connect::open_nsm;
use super::output::{emit, read_file};
use crate::Error;

/// `attestation`: a fresh document from the NSM, with what it attests
/// (module id, digest, PCRs 0-4 and 8, read back without verification: the
/// document is this enclave's own).
///
/// # Errors
/// NSM failures; I/O errors reading the public key or writing the document.
pub fn attestation(args: &AttestationArgs) -> Result<Value, Error> {
    let (nsm, nsm_kind) = open_nsm(args.nsm.mock_nsm_ca.as_ref())?;
    let public_key = args
        .public_key_file
        .as_ref()
        .map(|p| read_file(p, None))
        .transpose()?;
    let document = nsm.attestation(
        public_key,
        args.user_data.clone().map(|h| h.0),
        args.nonce.clone().map(|h| h.0),
    )?;
    let mut out = Map::new();
    out.insert("nsm".into(), json!(nsm_kind));
    if let Ok(parsed) = keybroker_common::attestation::UnverifiedAttestation::parse(&document) {
        let doc = parsed.document();
        out.insert("ModuleId".into(), json!(doc.module_id));
        out.insert("Timestamp".into(), json!(doc.timestamp.0));
        let pcrs: BTreeMap<String, String> = doc
            .pcrs
            .iter()
            .filter(|(i, _)| matches!(i, 0..=4 | 8))
            .map(|(i, v)| (format!("PCR{i}"), hex::encode(v)))
            .collect();
        out.insert("Pcrs".into(), json!(pcrs));
    }
    out.insert("DocumentBytes".into(), json!(document.len()));
    emit(
        &mut out,
        "AttestationDocument",
        &document,
        args.output_file.as_ref(),
    )?;
    Ok(Value::Object(out))
}

#[cfg(feature = "mock-nsm")]
pub(super) fn mock_nsm_command(cmd: MockNsmCommand) -> Result<(), Error> {
    use crate::mock_nsm;
    match cmd {
        MockNsmCommand::Init { dir } => {
            let ca = mock_nsm::MockCa::load_or_create(&dir)?;
            let path = ca
                .root_pem_path()
                .unwrap_or_else(|| dir.join(mock_nsm::ROOT_CERT_PEM_FILE));
            println!("{}", path.display());
        }
        MockNsmCommand::Pcr0 { binary } => {
            let pcr0 = match binary {
                Some(path) => mock_nsm::default_pcr0_for(&path)?,
                None => mock_nsm::default_pcr0()?,
            };
            println!("{}", hex::encode(pcr0));
        }
    }
    Ok(())
}

#[cfg(not(feature = "mock-nsm"))]
pub(super) fn mock_nsm_command(_: MockNsmCommand) -> Result<(), Error> {
    Err(super::connect::no_mock())
}

//! The envelope subcommands: `seal` and `open` of a file (streamed, the
//! output replaced only on success), and `demo`, a data-key round trip
//! through the proxy with a JSON report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::args::{DemoArgs, EnvelopeArgs};
use super::connect::{connect, connect_with, open_nsm};
use super::output::{private_file, read_file};
use crate::{Error, RecipientKeys, RecipientKeysConfig};

/// `seal` (`sealing`) or `open`: streams `--in` through
/// [`Envelope::seal_stream`](crate::envelope::Envelope::seal_stream) or
/// `open_stream` into a private temporary file beside `--out`, renamed over
/// `--out` only on success (so a failed `open` leaves no unauthenticated
/// plaintext behind). Returns `{"KeyId", "InputBytes", "OutputBytes"}`.
///
/// # Errors
/// I/O errors on the files; the errors of the data-key call; a message that
/// does not authenticate (typed [`keybroker_common::EnvelopeError`]).
pub async fn envelope_file(args: &EnvelopeArgs, sealing: bool) -> Result<Value, Error> {
    use tokio::io::{BufReader, BufWriter};
    let input = tokio::fs::File::open(&args.input)
        .await
        .map_err(|e| Error::io(format!("open {}", args.input.display()), e))?;
    let partial = args.output.with_extension("partial");
    let std_out = private_file(&partial)?;
    let envelope = crate::envelope::Envelope::new(connect(&args.broker).await?, &args.key_id);
    let context: BTreeMap<String, String> = args.context.iter().cloned().collect();
    let mut writer = BufWriter::new(tokio::fs::File::from_std(std_out));
    let result = if sealing {
        envelope
            .seal_stream(BufReader::new(input), &mut writer, &context)
            .await
    } else {
        envelope
            .open_stream(BufReader::new(input), &mut writer, &context)
            .await
    };
    let finished = match result {
        Ok(_) => writer
            .into_inner()
            .sync_all()
            .await
            .map_err(|e| Error::io(format!("write {}", partial.display()), e)),
        Err(e) => Err(e),
    };
    if let Err(e) = finished {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.output)
        .map_err(|e| Error::io(format!("rename to {}", args.output.display()), e))?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat {}", p.display()), e))
    };
    Ok(json!({
        "KeyId": args.key_id,
        "InputBytes": size(&args.input)?,
        "OutputBytes": size(&args.output)?,
    }))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `demo`: envelope encryption of the input file ([`crate::envelope`],
/// no cache): `seal` gets a data key with `GenerateDataKey` + `Recipient`
/// through the proxy, `open` gets it back with `Decrypt` + `Recipient` (and
/// checks its key commitment), then the result is compared with the input.
/// Returns the JSON report (sizes, timings, KMS calls, outcome; never key
/// material).
///
/// # Errors
/// Any failure of the NSM, the proxy or KMS, or of reading the file; and
/// [`Error::InvalidArgument`] if the round trip does not reproduce the input
/// (the report is then lost: a mismatch is a failure, not a result).
pub async fn demo(args: &DemoArgs) -> Result<serde_json::Value, Error> {
    let mut timings = BTreeMap::new();
    let t = Instant::now();
    let (nsm, nsm_kind) = open_nsm(args.broker.nsm.mock_nsm_ca.as_ref())?;
    let pcr0 = nsm.describe_pcr(0).map(|(_, v)| hex::encode(v)).ok();
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default()).await?;
    timings.insert("nsm_and_recipient_keys", ms(t.elapsed()));

    let t = Instant::now();
    let client = connect_with(&args.broker, keys).await?;
    timings.insert("connect", ms(t.elapsed()));

    let context: BTreeMap<String, String> = args.context.iter().cloned().collect();
    let input = read_file(&args.input, None)?;
    // No cache: the seal asks KMS for a data key (GenerateDataKey with
    // Recipient), the open asks KMS to decrypt it (Decrypt with Recipient).
    let envelope = crate::envelope::Envelope::new(client.clone(), &args.key);

    let t = Instant::now();
    let sealed = envelope.seal(&input, &context).await?;
    timings.insert("generate_data_key_and_encrypt_file", ms(t.elapsed()));
    let header = crate::envelope::peek_header(&sealed)?;

    let t = Instant::now();
    let opened = envelope.open(&sealed, &context).await?;
    timings.insert("decrypt_data_key_and_file", ms(t.elapsed()));
    let roundtrip_ok = opened.as_slice() == input.as_slice();

    let keys = client.keys().current();
    let kms_calls = client.stats().requests_sent;
    // One GenerateDataKey and one Decrypt, both with Recipient.
    let ok = roundtrip_ok && kms_calls == 2;
    let report = json!({
        "ok": ok,
        "proxy": args.broker.proxy.to_string(),
        "nsm": nsm_kind,
        "pcr0": pcr0,
        "key_id": header.key_id(),
        "encryption_context": (!context.is_empty()).then_some(&context),
        "attestation_document_bytes": keys.attestation_document().len(),
        "recipient_public_key_bytes": keys.public_key_spki_der().len(),
        "data_key_ciphertext_blob_bytes": header.ciphertext_blob().len(),
        "input_bytes": input.len(),
        "encrypted_file_bytes": sealed.len(),
        "kms_calls": kms_calls,
        "file_roundtrip_ok": roundtrip_ok,
        "timings_ms": timings,
    });
    if ok {
        Ok(report)
    } else {
        Err(Error::InvalidArgument(
            "round trip failed: the file does not match, or KMS was not called exactly twice"
                .into(),
        ))
    }
}

//! What the subcommands write: JSON on stdout from zeroizing buffers
//! ([`print_json`], [`SecretOutput`]), raw bytes in private files
//! ([`to_file`], [`write_private`]); and the one way they read an input
//! file ([`read_file`], bounded where the input has a bound).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybroker_common::kms::Blob;
use keybroker_common::secret::SecretBytes;
use serde_json::{Map, Value};

use crate::Error;

/// Prints `v` as pretty JSON and a newline on stdout. The text is built in
/// a zeroizing buffer of exactly its size
/// ([`keybroker_common::secret::to_json_zeroizing`]) and written straight
/// to file descriptor 1, not through stdout's line buffer, so no copy of a
/// base64 plaintext is left in memory after the call.
///
/// # Errors
/// [`Error::Io`] when stdout cannot be written.
pub(super) fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), Error> {
    use std::os::fd::AsFd as _;
    let text = keybroker_common::secret::to_json_zeroizing(v, true)
        .map_err(|e| Error::Internal(format!("cannot encode the output: {e}")))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.flush().map_err(|e| Error::io("write stdout", e))?;
    let mut fd = out
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| Error::io("write stdout", e))?;
    fd.write_all(&text)
        .and_then(|()| fd.write_all(b"\n"))
        .map_err(|e| Error::io("write stdout", e))
}

/// The JSON output of a subcommand whose fields may be base64 of plaintext
/// (`Plaintext`, `PrivateKeyPlaintext`): every string in it is zeroized
/// when it drops. Serializes as the JSON object it holds; `Debug` shows the
/// field names only.
#[derive(Default)]
pub struct SecretOutput(Map<String, Value>);

impl SecretOutput {
    /// The JSON object of a KMS response: its serde form, with KMS's field
    /// names and base64 blobs (the response's own `SecretBytes` fields are
    /// encoded in zeroizing buffers; the strings here are wiped on drop).
    ///
    /// # Errors
    /// [`Error::Internal`] if the response does not encode as an object.
    pub fn of<T: serde::Serialize>(response: &T) -> Result<Self, Error> {
        match serde_json::to_value(response) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(other) => {
                drop(Self(Map::from_iter([(String::new(), other)])));
                Err(Error::Internal("the output is not a JSON object".into()))
            }
            Err(e) => Err(Error::Internal(format!("cannot encode the output: {e}"))),
        }
    }
}

impl core::fmt::Debug for SecretOutput {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl serde::Serialize for SecretOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Drop for SecretOutput {
    fn drop(&mut self) {
        fn wipe(v: &mut Value) {
            match v {
                Value::String(s) => zeroize::Zeroize::zeroize(s),
                Value::Array(a) => a.iter_mut().for_each(wipe),
                Value::Object(m) => m.values_mut().for_each(wipe),
                _ => {}
            }
        }
        self.0.values_mut().for_each(wipe);
    }
}

/// Writes `bytes` to `path`, readable by the owner only (it may be key
/// material), replacing the file.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = private_file(path)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// The bytes of the input file `path`: all of them (`max` `None`), or at
/// most `max` bytes, never reading more than one byte past the bound.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::InvalidArgument`]
/// when it is longer than `max`.
pub(super) fn read_file(path: &Path, max: Option<usize>) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    let read_error = |e| Error::io(format!("read {}", path.display()), e);
    let Some(max) = max else {
        return std::fs::read(path).map_err(read_error);
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
                .read_to_end(&mut bytes)
        })
        .map_err(read_error)?;
    if bytes.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Creates (or truncates) `path` readable by the owner only.
pub(super) fn private_file(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))
}

/// Puts `bytes` into `out[field]` as base64, or into `file` as raw bytes.
/// The base64 string is allocated once at its size and moved into `out`
/// (no copies); a [`SecretOutput`] wipes it.
pub(super) fn emit(
    out: &mut Map<String, Value>,
    field: &str,
    bytes: &[u8],
    file: Option<&PathBuf>,
) -> Result<(), Error> {
    match file {
        Some(path) => write_private(path, bytes),
        None => {
            out.insert(field.to_owned(), Value::String(B64.encode(bytes)));
            Ok(())
        }
    }
}

/// Bytes a subcommand can write to a file raw.
pub(super) trait RawBytes {
    /// The bytes.
    fn raw(&self) -> &[u8];
}

impl RawBytes for Blob {
    fn raw(&self) -> &[u8] {
        &self.0
    }
}

impl RawBytes for SecretBytes {
    fn raw(&self) -> &[u8] {
        self.expose()
    }
}

/// A response field bound for `file` (its `--*-file` option): with a file,
/// the field's raw bytes are written there (mode 0600) and the field is
/// taken out of the response, so the JSON leaves it out; without one, the
/// field stays for the JSON.
pub(super) fn to_file<T: RawBytes>(
    field: &mut Option<T>,
    file: Option<&PathBuf>,
) -> Result<(), Error> {
    match (file, field.take()) {
        (Some(path), Some(value)) => write_private(path, value.raw()),
        (None, value) => {
            *field = value;
            Ok(())
        }
        (Some(_), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::kms::GenerateDataKeyResponse;
    use serde_json::json;

    #[test]
    fn secret_output_is_the_json_object_and_hides_values_in_debug() {
        let out = SecretOutput::of(&GenerateDataKeyResponse {
            plaintext: Some(SecretBytes::new(b"\x01\x02\x03".to_vec())),
            key_id: Some("arn:k".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"Plaintext": "AQID", "KeyId": "arn:k"})
        );
        let shown = format!("{out:?}");
        assert!(
            shown.contains("Plaintext") && !shown.contains("AQID"),
            "{shown}"
        );
    }

    #[test]
    fn a_field_written_to_a_file_is_left_out_of_the_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plaintext");
        let mut r = GenerateDataKeyResponse {
            plaintext: Some(SecretBytes::new(vec![1, 2, 3])),
            ciphertext_blob: Some(Blob(vec![4])),
            ..Default::default()
        };
        to_file(&mut r.plaintext, Some(&path)).unwrap();
        to_file(&mut r.ciphertext_blob, None).unwrap();
        let out = SecretOutput::of(&r).unwrap();
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"CiphertextBlob": "BA=="})
        );
        assert_eq!(std::fs::read(&path).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn read_file_keeps_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        std::fs::write(&path, [7; 5]).unwrap();
        assert_eq!(read_file(&path, None).unwrap(), [7; 5]);
        assert_eq!(read_file(&path, Some(5)).unwrap(), [7; 5]);
        assert!(matches!(
            read_file(&path, Some(4)),
            Err(Error::InvalidArgument(m)) if m.ends_with("is larger than 4 bytes")
        ));
        assert!(matches!(
            read_file(&dir.path().join("missing"), Some(4)),
            Err(Error::Io { .. })
        ));
    }
}

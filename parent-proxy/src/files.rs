//! Bounded reads: every file (or standard input, `-`) the proxy and its
//! tools read goes through here, with a size limit, so that no input can
//! make the proxy buffer without bound.

use std::io::Read;
use std::path::Path;

use keybroker_common::attestation::Verifier;

use crate::error::{Error, Result};

/// Largest attestation root file (PEM or DER) read, in bytes.
pub const MAX_ROOT_FILE_LEN: usize = keybroker_common::pem::MAX_PEM_LEN;

/// How [`read_input`] names standard input in errors.
pub const STDIN_NAME: &str = "standard input";

/// Reads the file at `path`, at most `max` bytes: [`Error::File`] if it
/// cannot be opened or read, [`Error::TooLarge`] if it is longer.
pub fn read_file(path: &Path, max: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })?;
    read_bounded(file, path, max)
}

/// Reads `path`, or `stdin` when `path` is `-`, at most `max` bytes (see
/// [`read_file`]; standard input is named [`STDIN_NAME`] in errors).
pub fn read_input(path: &Path, stdin: &mut dyn Read, max: usize) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        read_bounded(stdin, Path::new(STDIN_NAME), max)
    } else {
        read_file(path, max)
    }
}

/// Trusts every certificate of the PEM (or DER) file at `path` as an
/// attestation root of `verifier` ([`Error::Certificates`] if one is not
/// usable, or none is there).
pub fn add_roots(verifier: &mut Verifier, path: &Path) -> Result<()> {
    let unusable = |reason: String| Error::Certificates {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_file(path, MAX_ROOT_FILE_LEN)?;
    let certs = keybroker_common::pem::parse_certificates(&bytes, MAX_ROOT_FILE_LEN)
        .map_err(|e| unusable(e.to_string()))?;
    for der in certs {
        verifier
            .add_trusted_root(&der)
            .map_err(|e| unusable(e.to_string()))?;
    }
    Ok(())
}

/// Reads `r` to its end, at most `max` bytes; errors name `name`.
fn read_bounded(r: impl Read, name: &Path, max: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit)
        .read_to_end(&mut buf)
        .map_err(|source| Error::File {
            path: name.to_owned(),
            source,
        })?;
    if buf.len() > max {
        return Err(Error::TooLarge {
            path: name.to_owned(),
            max,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut stdin = &b"12345"[..];
        assert_eq!(read_input(Path::new("-"), &mut stdin, 5).unwrap(), b"12345");
        let mut stdin = &b"123456"[..];
        let err = read_input(Path::new("-"), &mut stdin, 5).unwrap_err();
        assert!(matches!(err, Error::TooLarge { max: 5, .. }), "{err}");
        assert_eq!(err.to_string(), "standard input: larger than 5 bytes");
        let missing = read_file(Path::new("/nonexistent/file"), 5).unwrap_err();
        assert!(matches!(missing, Error::File { .. }), "{missing}");
    }
}

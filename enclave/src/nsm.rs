//! The Nitro Secure Module (NSM): one trait over the requests of
//! `aws-nitro-enclaves-nsm-api`, served by the real `/dev/nsm` driver
//! ([`NsmDevice`]) or, in development builds with the `mock-nsm` feature, by
//! `crate::mock_nsm::MockNsm`.
//!
//! The NSM API crate's driver functions (`nsm_init`, `nsm_process_request`,
//! `nsm_exit`) are safe functions (the crate wraps its ioctl internally), so
//! this module needs no `unsafe`.
//!
//! NSM calls are blocking ioctls: async code calls them through
//! `tokio::task::spawn_blocking` (as [`crate::keys`] does), never on a runtime
//! worker thread.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use aws_lc_rs::digest;
pub use aws_nitro_enclaves_nsm_api::api::{
    Digest as NsmDigest, ErrorCode as NsmErrorCode, Request, Response,
};
use aws_nitro_enclaves_nsm_api::driver;
use serde_bytes::ByteBuf;

use crate::Error;

/// Length of a SHA-384 PCR, in bytes.
pub const PCR_LEN: usize = 48;

/// Number of PCRs an NSM exposes (`max_pcrs` of `DescribeNSM` on real
/// hardware); indices are `0..32`.
pub const MAX_PCRS: u16 = 32;

/// Largest `public_key`, `user_data` or `nonce` the NSM puts into an
/// attestation document, in bytes (NSM attestation CDDL: `bytes .size (0..1024)`).
pub const MAX_ATTESTATION_FIELD_LEN: usize = 1024;

/// A Nitro Secure Module: answers NSM API requests.
///
/// Implementations block (the real one issues an ioctl); call them from a
/// blocking context. The provided methods wrap [`Nsm::process`] with typed
/// results.
pub trait Nsm: Send + Sync + 'static {
    /// Processes one request, as `driver::nsm_process_request` does.
    fn process(&self, request: Request) -> Response;

    /// `Attestation`: a signed attestation document (COSE_Sign1 bytes)
    /// carrying `public_key`, `user_data` and `nonce` (each at most
    /// [`MAX_ATTESTATION_FIELD_LEN`] bytes).
    fn attestation(
        &self,
        public_key: Option<Vec<u8>>,
        user_data: Option<Vec<u8>>,
        nonce: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Error> {
        match self.process(Request::Attestation {
            public_key: public_key.map(ByteBuf::from),
            user_data: user_data.map(ByteBuf::from),
            nonce: nonce.map(ByteBuf::from),
        }) {
            Response::Attestation { document } => Ok(document),
            other => Err(unexpected("Attestation", &other)),
        }
    }

    /// `GetRandom`: entropy from the NSM (up to 256 bytes per call on real
    /// hardware).
    fn get_random(&self) -> Result<Vec<u8>, Error> {
        match self.process(Request::GetRandom) {
            Response::GetRandom { random } => Ok(random),
            other => Err(unexpected("GetRandom", &other)),
        }
    }

    /// `DescribePCR`: whether PCR `index` is locked, and its value.
    fn describe_pcr(&self, index: u16) -> Result<(bool, Vec<u8>), Error> {
        match self.process(Request::DescribePCR { index }) {
            Response::DescribePCR { lock, data } => Ok((lock, data)),
            other => Err(unexpected("DescribePCR", &other)),
        }
    }

    /// `ExtendPCR`: `PCR[index] = SHA-384(PCR[index] || data)`; returns the
    /// new value.
    fn extend_pcr(&self, index: u16, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        match self.process(Request::ExtendPCR { index, data }) {
            Response::ExtendPCR { data } => Ok(data),
            other => Err(unexpected("ExtendPCR", &other)),
        }
    }

    /// `LockPCR`: makes PCR `index` read-only.
    fn lock_pcr(&self, index: u16) -> Result<(), Error> {
        match self.process(Request::LockPCR { index }) {
            Response::LockPCR => Ok(()),
            other => Err(unexpected("LockPCR", &other)),
        }
    }

    /// `LockPCRs`: makes PCRs `0..range` read-only.
    fn lock_pcrs(&self, range: u16) -> Result<(), Error> {
        match self.process(Request::LockPCRs { range }) {
            Response::LockPCRs => Ok(()),
            other => Err(unexpected("LockPCRs", &other)),
        }
    }

    /// `DescribeNSM`: version, module id and PCR configuration.
    fn describe_nsm(&self) -> Result<NsmDescription, Error> {
        match self.process(Request::DescribeNSM) {
            Response::DescribeNSM {
                version_major,
                version_minor,
                version_patch,
                module_id,
                max_pcrs,
                locked_pcrs,
                digest,
            } => Ok(NsmDescription {
                version: (version_major, version_minor, version_patch),
                module_id,
                max_pcrs,
                locked_pcrs,
                digest,
            }),
            other => Err(unexpected("DescribeNSM", &other)),
        }
    }
}

/// The answer to `DescribeNSM`.
#[derive(Clone, Debug, PartialEq)]
pub struct NsmDescription {
    /// `(major, minor, patch)`.
    pub version: (u16, u16, u16),
    /// The module id (the `module_id` of attestation documents).
    pub module_id: String,
    /// Number of PCRs.
    pub max_pcrs: u16,
    /// Indices of the read-only PCRs.
    pub locked_pcrs: BTreeSet<u16>,
    /// The PCR digest (SHA-384 on Nitro).
    pub digest: NsmDigest,
}

/// The error for a response that is an NSM error or of the wrong kind.
fn unexpected(request: &'static str, response: &Response) -> Error {
    let detail = match response {
        Response::Error(code) => format!("NSM error {code:?}"),
        _ => "unexpected response type".to_owned(),
    };
    Error::Nsm { request, detail }
}

/// The real NSM: `/dev/nsm` inside a Nitro Enclave.
///
/// Opens the device once; the descriptor is closed on drop. The kernel driver
/// serializes concurrent requests, so one `NsmDevice` can be shared.
#[derive(Debug)]
pub struct NsmDevice {
    fd: i32,
}

impl NsmDevice {
    /// Opens `/dev/nsm`.
    ///
    /// # Errors
    /// [`Error::Nsm`] when the device cannot be opened (not inside an
    /// enclave, or no permission).
    pub fn open() -> Result<Self, Error> {
        let fd = driver::nsm_init();
        if fd < 0 {
            return Err(Error::Nsm {
                request: "open",
                detail: "cannot open /dev/nsm (not running inside a Nitro Enclave?)".into(),
            });
        }
        Ok(Self { fd })
    }
}

impl Nsm for NsmDevice {
    fn process(&self, request: Request) -> Response {
        driver::nsm_process_request(self.fd, request)
    }
}

impl Drop for NsmDevice {
    fn drop(&mut self) {
        driver::nsm_exit(self.fd);
    }
}

/// XORs `buf` with as many bytes of the NSM's own randomness, from as many
/// `GetRandom` calls as it takes (the NSM returns up to 256 bytes per call).
///
/// This is how `GenerateRandom` through the enclave gets bytes the parent
/// cannot choose (`crate::client`, "Randomness the parent cannot choose"):
/// the result is uniform if either input is, and the parent, which may
/// have chosen `buf`, never sees the NSM's bytes.
///
/// # Errors
/// [`Error::Nsm`] if `GetRandom` fails or answers with no bytes.
pub fn xor_random(nsm: &dyn Nsm, buf: &mut [u8]) -> Result<(), Error> {
    let mut rest = buf;
    while !rest.is_empty() {
        let random = zeroize::Zeroizing::new(nsm.get_random()?);
        if random.is_empty() {
            return Err(Error::Nsm {
                request: "GetRandom",
                detail: "no bytes in the answer".into(),
            });
        }
        let n = random.len().min(rest.len());
        let (now, later) = rest.split_at_mut(n);
        for (b, r) in now.iter_mut().zip(random.iter()) {
            *b ^= r;
        }
        rest = later;
    }
    Ok(())
}

/// SHA-384 of `bytes`, the PCR hash of the NSM.
pub fn sha384(bytes: &[u8]) -> [u8; PCR_LEN] {
    let mut out = [0u8; PCR_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA384, bytes).as_ref());
    out
}

/// The NSM's extend operation: `SHA-384(old || data)`.
pub fn extend(old: &[u8], data: &[u8]) -> [u8; PCR_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA384);
    ctx.update(old);
    ctx.update(data);
    let mut out = [0u8; PCR_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-384 of the file at `path`, read in chunks. The mock NSM's default
/// PCR0 is this of the enclave binary, so launchers compute it with the same
/// function to write key policies (`kms:RecipientAttestation:ImageSha384`).
///
/// # Errors
/// [`Error::Io`] when the file cannot be read.
pub fn sha384_file(path: &Path) -> Result<[u8; PCR_LEN], Error> {
    let mut file =
        std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut ctx = digest::Context::new(&digest::SHA384);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    let mut out = [0u8; PCR_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_is_sha384_of_concatenation() {
        let zero = [0u8; PCR_LEN];
        let mut cat = zero.to_vec();
        cat.extend_from_slice(b"abc");
        assert_eq!(extend(&zero, b"abc"), sha384(&cat));
        assert_ne!(extend(&zero, b"abc"), extend(&zero, b"abd"));
    }

    #[test]
    fn file_hash_matches_in_memory_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(sha384_file(&path).unwrap(), sha384(&data));
        assert!(matches!(
            sha384_file(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }

    /// An NSM whose `GetRandom` answers `chunk` bytes of a counter, then
    /// nothing once `calls` answers were given.
    struct CountingNsm {
        chunk: usize,
        calls: std::sync::atomic::AtomicUsize,
        max_calls: usize,
    }

    impl Nsm for CountingNsm {
        fn process(&self, request: Request) -> Response {
            use std::sync::atomic::Ordering;
            match request {
                Request::GetRandom => {
                    let call = self.calls.fetch_add(1, Ordering::SeqCst);
                    let len = if call < self.max_calls { self.chunk } else { 0 };
                    let random = (0..len)
                        .map(|i| u8::try_from((call * self.chunk + i) % 256).unwrap())
                        .collect();
                    Response::GetRandom { random }
                }
                _ => Response::Error(NsmErrorCode::InvalidOperation),
            }
        }
    }

    #[test]
    fn xor_random_covers_the_buffer_from_several_answers() {
        let nsm = |max_calls| CountingNsm {
            chunk: 7,
            calls: std::sync::atomic::AtomicUsize::new(0),
            max_calls,
        };
        // A parent's all-zero bytes become the NSM's bytes, all 20 of them
        // (three answers of 7).
        let mut buf = [0u8; 20];
        xor_random(&nsm(3), &mut buf).unwrap();
        assert_eq!(buf.to_vec(), (0..20u8).collect::<Vec<_>>());
        // Known bytes are XORed, not replaced.
        let mut buf = [0xffu8; 5];
        xor_random(&nsm(1), &mut buf).unwrap();
        assert_eq!(buf, [0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
        // An NSM that stops answering is an error, not a short or endless loop.
        let mut buf = [0u8; 20];
        assert!(matches!(
            xor_random(&nsm(2), &mut buf),
            Err(Error::Nsm {
                request: "GetRandom",
                ..
            })
        ));
    }

    #[test]
    fn opening_the_device_outside_an_enclave_fails_cleanly() {
        if Path::new("/dev/nsm").exists() {
            return;
        }
        assert!(matches!(NsmDevice::open(), Err(Error::Nsm { .. })));
    }
}

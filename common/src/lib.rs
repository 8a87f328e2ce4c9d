//! # keybroker-common
//!
//! The sans-I/O core of Keybroker. Everything here works on plain bytes and
//! values handed in by the caller: no sockets, files, clocks or global
//! randomness. Time is a caller-supplied [`UnixMillis`], randomness a
//! [`aws_lc_rs::rand::SecureRandom`] passed by reference, so every decoder and
//! verifier is deterministic, unit-testable and fuzzable.
//!
//! - [`attestation`]: NSM attestation documents (COSE_Sign1, ES384), parsing,
//!   chain and signature verification, and building/signing for the mock NSM.
//! - [`cms`]: the CMS `EnvelopedData` that KMS returns as
//!   `CiphertextForRecipient` (RFC 5652), decode, decrypt and encode.
//! - [`protocol`]: the framed enclave <-> parent-proxy wire protocol.
//! - [`kms`]: typed KMS requests and responses (AWS JSON 1.1 shapes).
//! - [`envelope`]: the envelope-encryption message format (AES-256-GCM
//!   frames under a KMS data key), sealed and opened frame by frame.
//! - [`key_allowlist`]: the KMS keys an enclave in end-to-end mode may use.
//! - [`measurements`]: PCRs and enclave image measurements, the one set of
//!   rules for the key policy, the proxy's admission and the KMS condition keys.
//! - [`secret`]: zeroizing containers for plaintext key material and credentials.
#![forbid(unsafe_code)]

pub mod address;
pub mod attestation;
mod blob_serde;
pub mod cms;
pub mod envelope;
mod error;
pub mod imds;
pub mod key_allowlist;
pub mod kms;
pub mod measurements;
pub mod pem;
pub mod protocol;
pub mod secret;

pub use attestation::AttestationError;
pub use cms::CmsError;
pub use envelope::EnvelopeError;
pub use error::{Cause, Error};
pub use measurements::MeasurementError;
pub use protocol::ProtocolError;

/// Result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// A point in time as milliseconds since the Unix epoch (UTC), the unit of the
/// NSM document's `timestamp` field. Verifiers take one from the caller
/// instead of reading a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }
}

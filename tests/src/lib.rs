//! # keybroker-harness
//!
//! Test infrastructure for Keybroker:
//!
//! - [`local`]: the `keybroker-local` launcher (`demo`, `up`): the whole
//!   stack as separate processes on loopback.
//! - [`mock_kms`]: a local KMS (`keybroker-mock-kms`) that speaks the AWS
//!   JSON 1.1 protocol of the real service and honours `Recipient`
//!   (attestation documents, `CiphertextForRecipient`) and key policies with
//!   `kms:RecipientAttestation:*` conditions. For development and tests
//!   only: it does not check request signatures and keeps keys in memory or
//!   a plain JSON file.
#![forbid(unsafe_code)]

pub mod local;
pub mod mock_kms;

/// Errors of the harness itself (configuration, state and seed files, I/O).
/// KMS errors returned to clients are [`keybroker_common::kms::KmsError`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bad configuration (a flag or an attestation root).
    #[error("configuration: {0}")]
    Config(String),
    /// The state file cannot be read, parsed or written.
    #[error("state file: {0}")]
    State(String),
    /// The seed file cannot be read or applied.
    #[error("seed file: {0}")]
    Seed(String),
    /// Sockets and other I/O.
    #[error("I/O: {0}")]
    Io(String),
}

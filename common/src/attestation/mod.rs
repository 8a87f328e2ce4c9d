//! NSM attestation documents. (Being written: see issue 2.)

/// Why an attestation document was rejected.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// Placeholder.
    #[error("malformed: {0}")]
    Malformed(String),
}

//! Wire protocol. (Being written: see issue 2.)

/// Why a frame or message was rejected.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Placeholder.
    #[error("malformed: {0}")]
    Malformed(String),
}

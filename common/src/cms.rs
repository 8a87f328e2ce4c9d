//! CMS EnvelopedData. (Being written: see issue 2.)

/// Why a CMS EnvelopedData was rejected.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmsError {
    /// Placeholder.
    #[error("malformed: {0}")]
    Malformed(String),
}

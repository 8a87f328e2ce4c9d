//! [`KmsError`]: a KMS error as it crosses Keybroker.

use serde::{Deserialize, Serialize};

use super::KmsErrorCode;

/// A KMS error (`{"__type": ..., "message": ...}` in AWS JSON 1.1), as KMS
/// sent it or as the proxy produced it on KMS's behalf. Never carries key
/// material.
///
/// The code is a string, not a [`KmsErrorCode`], so that an error type this
/// build does not know (KMS adds them) is relayed unchanged; [`KmsError::kind`]
/// gives the typed code when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KmsError {
    /// The `__type`, without any namespace prefix, e.g. `NotFoundException`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// HTTP status KMS answers with for this error.
    pub status: u16,
    /// Whether the AWS SDKs would retry this error (5xx and throttling).
    pub retryable: bool,
}

impl KmsError {
    /// An error with the status and retry behaviour real KMS gives `code`:
    /// those of [`KmsErrorCode::http_status`] and
    /// [`KmsErrorCode::is_retryable`], or 400 and not retryable for a code
    /// that is not a [`KmsErrorCode`]. Takes a [`KmsErrorCode`] or its
    /// spelling.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let (status, retryable) = code
            .parse::<KmsErrorCode>()
            .map_or((400, false), |c| (c.http_status(), c.is_retryable()));
        Self {
            code,
            message: message.into(),
            status,
            retryable,
        }
    }

    /// The typed code, when `code` is one this build knows.
    pub fn kind(&self) -> Option<KmsErrorCode> {
        self.code.parse().ok()
    }

    /// Whether this is an error of type `code`.
    pub fn is(&self, code: KmsErrorCode) -> bool {
        self.code == code.as_str()
    }

    /// Strips a `namespace#` prefix from a `__type` such as
    /// `com.amazonaws.kms#NotFoundException`, as the AWS SDKs do.
    pub fn normalize_code(raw: &str) -> &str {
        let tail = raw.rsplit_once('#').map_or(raw, |(_, t)| t);
        tail.split_once(':').map_or(tail, |(h, _)| h)
    }
}

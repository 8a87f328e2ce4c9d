//! The crate's one error type.
//!
//! Split by cause, like `keybroker_common::Error`: what the proxy or KMS
//! answered ([`Error::Common`], which wraps the relayed KMS error, the proxy's
//! own errors and protocol violations; [`Error::InvalidResponse`]), what the
//! connection did ([`Error::ConnectionLost`], [`Error::Unavailable`],
//! [`Error::Timeout`], [`Error::Io`]), what the NSM did ([`Error::Nsm`]) and
//! what the local caller got wrong ([`Error::InvalidArgument`]), and what
//! failed inside this program through no fault of the caller
//! ([`Error::Internal`]).
//!
//! No variant carries key material: details are operation names, codes,
//! lengths and fixed text.

use core::time::Duration;

use keybroker_common::key_allowlist::KeyPinError;
use keybroker_common::kms::{KmsError, KmsErrorCode, Operation};
use keybroker_common::protocol::{ErrorCode, ProtocolError};

/// Everything that can go wrong in `keybroker-enclave`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From `keybroker-common`: a KMS error relayed by the proxy
    /// (`Common(Kms(_))`, code, message and retryability as KMS sent them), an
    /// error of the proxy's own such as a policy refusal
    /// (`Common(Protocol(Remote { .. }))`), a protocol violation by the proxy,
    /// a `CiphertextForRecipient` that does not parse (one that parses always
    /// decrypts, to a pseudorandom value if need be: implicit rejection), an
    /// invalid address.
    #[error(transparent)]
    Common(#[from] keybroker_common::Error),
    /// The NSM refused a request or answered with an unexpected response.
    #[error("NSM {request} failed: {detail}")]
    Nsm {
        /// The NSM request (`Attestation`, `GetRandom`, ...).
        request: &'static str,
        /// The NSM error code or what was unexpected.
        detail: String,
    },
    /// An I/O operation failed: connecting to or talking with the proxy, or
    /// reading and writing files (the mock NSM's CA, the demo's input).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The connection to the proxy (broker mode) or to KMS through its
    /// tunnel (e2e mode) was lost while the request was in flight and the
    /// request was not safe to retry (or its one retry also lost its
    /// connection). KMS may or may not have received it.
    #[error("connection lost with the {} request in flight", operation.as_str())]
    ConnectionLost {
        /// The operation of the request.
        operation: Operation,
    },
    /// The parent could not be reached before the deadline (of a request,
    /// which was then never sent, or of `Client::connect`): no connection to
    /// the proxy (broker mode), no tunnel or no credentials (e2e mode).
    #[error("parent unavailable: {reason}")]
    Unavailable {
        /// The last connection error.
        reason: String,
    },
    /// The request's deadline elapsed before the proxy answered.
    #[error("{} request timed out after {after:?}", operation.as_str())]
    Timeout {
        /// The operation of the request.
        operation: Operation,
        /// The deadline that elapsed.
        after: Duration,
    },
    /// The proxy's answer is well formed but unusable: a response without
    /// `CiphertextForRecipient` or `CiphertextBlob`.
    #[error("invalid {} response: {reason}", operation.as_str())]
    InvalidResponse {
        /// The operation of the request.
        operation: Operation,
        /// What is missing or wrong.
        reason: &'static str,
    },
    /// The caller passed something this API cannot accept (for example a
    /// request that already carries a `Recipient`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A failure that is not the caller's fault and not a remote one: the
    /// program itself or its environment (an output that cannot be encoded,
    /// a server task that panicked, privileges that could not be dropped for
    /// good). Not retryable; `KMSInternalException` at the endpoint.
    #[error("internal error: {0}")]
    Internal(String),
    /// The client or the key rotation was shut down.
    #[error("shut down")]
    Shutdown,
    /// End-to-end mode, key pinning: a request named a key the image's
    /// allowlist does not admit (refused before anything was sent), or a KMS
    /// response named one (refused; no plaintext released).
    #[error(transparent)]
    KeyNotAllowed(#[from] keybroker_common::key_allowlist::KeyPinError),
    /// End-to-end mode: the TLS session with the KMS endpoint failed to
    /// establish: a certificate that does not verify for the endpoint's
    /// host name, a protocol failure, or trust roots that do not load.
    #[error("TLS: {reason}")]
    Tls {
        /// What failed (rustls's description).
        reason: String,
    },
}

impl Error {
    /// Whether retrying the same call later can succeed: relayed KMS errors
    /// and proxy errors that say so, lost connections, timeouts and
    /// unavailability, I/O failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Common(keybroker_common::Error::Kms(k)) => k.retryable,
            Error::Common(keybroker_common::Error::Protocol(p)) => p.is_retryable(),
            Error::Common(_) => false,
            Error::ConnectionLost { .. }
            | Error::Unavailable { .. }
            | Error::Timeout { .. }
            | Error::Io { .. } => true,
            Error::Nsm { .. }
            | Error::InvalidResponse { .. }
            | Error::InvalidArgument(_)
            | Error::Internal(_)
            | Error::Shutdown
            | Error::KeyNotAllowed(_)
            | Error::Tls { .. } => false,
        }
    }

    /// The KMS error, when the proxy relayed one.
    pub fn kms_error(&self) -> Option<&KmsError> {
        match self {
            Error::Common(keybroker_common::Error::Kms(k)) => Some(k),
            _ => None,
        }
    }

    /// The wire error code of an error the proxy reported on its own behalf
    /// (for example [`ErrorCode::PolicyDenied`]), with its message.
    pub fn remote_error(&self) -> Option<(ErrorCode, &str)> {
        match self {
            Error::Common(keybroker_common::Error::Protocol(ProtocolError::Remote {
                code,
                message,
                ..
            })) => Some((*code, message.as_str())),
            _ => None,
        }
    }

    /// This error as KMS would report it, for the in-enclave KMS endpoint
    /// (`crate::endpoint`): the one place enclave errors become AWS JSON
    /// `__type` codes and HTTP statuses.
    ///
    /// - a KMS error relayed by the proxy keeps its code, message and status,
    ///   so SDK error handling and retries behave as against KMS;
    /// - the proxy's policy refusal is `AccessDeniedException` (400), as the
    ///   key policy's would be; `Busy` is `ThrottlingException` (400, retried
    ///   by SDKs);
    /// - the proxy or the connection being unavailable, lost or slow is
    ///   `DependencyTimeoutException` (503, retried by SDKs);
    /// - a caller mistake is `ValidationException` (400);
    /// - a request for a key outside the e2e allowlist is
    ///   `AccessDeniedException` (400), as a key policy's refusal would be;
    /// - a `CiphertextForRecipient` that does not parse is
    ///   `InvalidCiphertextException` (400): never a class that SDKs retry,
    ///   so no SDK queries a decryption on the sender's behalf (a ciphertext
    ///   that parses does not fail at all: implicit rejection);
    /// - anything else (NSM failure, an answer missing a field) is
    ///   `KMSInternalException` (500).
    ///
    /// Messages name the cause but never carry key material.
    pub fn to_kms_error(&self) -> KmsError {
        let message = format!("keybroker enclave: {self}");
        match self {
            Error::Common(keybroker_common::Error::Kms(k)) => k.clone(),
            Error::Common(keybroker_common::Error::Protocol(ProtocolError::Remote {
                code,
                ..
            })) => match code {
                ErrorCode::PolicyDenied => KmsError::new(KmsErrorCode::AccessDenied, message),
                ErrorCode::Busy => KmsError::new(KmsErrorCode::Throttling, message),
                ErrorCode::BadRequest => KmsError::new(KmsErrorCode::Validation, message),
                ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Shutdown => {
                    KmsError::new(KmsErrorCode::DependencyTimeout, message)
                }
                _ => KmsError::new(KmsErrorCode::KmsInternal, message),
            },
            Error::Common(keybroker_common::Error::InvalidArgument(_))
            | Error::InvalidArgument(_) => KmsError::new(KmsErrorCode::Validation, message),
            Error::Common(keybroker_common::Error::Cms(_)) => {
                KmsError::new(KmsErrorCode::InvalidCiphertext, message)
            }
            Error::ConnectionLost { .. } | Error::Unavailable { .. } | Error::Timeout { .. } => {
                KmsError::new(KmsErrorCode::DependencyTimeout, message)
            }
            Error::KeyNotAllowed(
                KeyPinError::RequestKeyNotAllowed(_) | KeyPinError::Unresolvable { .. },
            ) => KmsError::new(KmsErrorCode::AccessDenied, message),
            Error::KeyNotAllowed(KeyPinError::Invalid { .. }) => {
                KmsError::new(KmsErrorCode::Validation, message)
            }
            _ => KmsError::new(KmsErrorCode::KmsInternal, message),
        }
    }

    /// An [`Error::Io`] with context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Common(e.into())
    }
}

impl From<keybroker_common::CmsError> for Error {
    fn from(e: keybroker_common::CmsError) -> Self {
        Error::Common(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability_follows_the_cause() {
        let kms = |code| Error::Common(keybroker_common::Error::Kms(KmsError::new(code, "m")));
        assert!(kms("ThrottlingException").is_retryable());
        assert!(!kms("AccessDeniedException").is_retryable());
        assert_eq!(
            kms("NotFoundException")
                .kms_error()
                .map(|k| k.code.as_str()),
            Some("NotFoundException")
        );
        let remote = Error::from(ProtocolError::Remote {
            code: ErrorCode::PolicyDenied,
            message: "no recipient".into(),
            retryable: false,
        });
        assert!(!remote.is_retryable());
        assert_eq!(
            remote.remote_error(),
            Some((ErrorCode::PolicyDenied, "no recipient"))
        );
        assert!(
            Error::Timeout {
                operation: Operation::Decrypt,
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(
            !Error::InvalidResponse {
                operation: Operation::Decrypt,
                reason: "x"
            }
            .is_retryable()
        );
        assert!(
            Error::ConnectionLost {
                operation: Operation::GenerateDataKey
            }
            .to_string()
            .contains("GenerateDataKey")
        );
    }

    #[test]
    fn kms_errors_keep_their_code_and_status() {
        let relayed = Error::Common(keybroker_common::Error::Kms(KmsError::new(
            "KeyUnavailableException",
            "key material unavailable",
        )));
        let k = relayed.to_kms_error();
        assert_eq!(
            (k.code.as_str(), k.status),
            ("KeyUnavailableException", 500)
        );
        assert_eq!(k.message, "key material unavailable");

        let cases = [
            (
                Error::from(ProtocolError::Remote {
                    code: ErrorCode::PolicyDenied,
                    message: "Recipient required".into(),
                    retryable: false,
                }),
                "AccessDeniedException",
                400,
            ),
            (
                Error::from(ProtocolError::Remote {
                    code: ErrorCode::Busy,
                    message: "busy".into(),
                    retryable: true,
                }),
                "ThrottlingException",
                400,
            ),
            (
                Error::Unavailable {
                    reason: "refused".into(),
                },
                "DependencyTimeoutException",
                503,
            ),
            (
                Error::InvalidArgument("Recipient is attached by the enclave".into()),
                "ValidationException",
                400,
            ),
            (
                Error::Nsm {
                    request: "Attestation",
                    detail: "InvalidOperation".into(),
                },
                "KMSInternalException",
                500,
            ),
            (
                Error::from(keybroker_common::CmsError::Malformed("x".into())),
                "InvalidCiphertextException",
                400,
            ),
        ];
        for (e, code, status) in cases {
            let k = e.to_kms_error();
            assert_eq!((k.code.as_str(), k.status), (code, status), "{e}");
            if matches!(e, Error::Common(keybroker_common::Error::Cms(_))) {
                assert!(!k.retryable && !e.is_retryable(), "{e}");
            }
            assert!(
                k.message.starts_with("keybroker enclave: "),
                "{}",
                k.message
            );
        }
    }
}

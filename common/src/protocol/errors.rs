//! What the proxy sends back instead of a KMS response, and the one mapping
//! from [`crate::Error`] to wire error codes.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::ProtocolError;
use crate::Error;
use crate::kms::KmsError;

/// The class of a [`WireError`]. Encoded as a small integer; a code this
/// build does not know decodes as [`ErrorCode::Internal`] (the peer's
/// `retryable` flag is kept), so a newer peer can add codes within a
/// protocol version.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// KMS answered with an error; the [`KmsError`] (code, message, HTTP
    /// status, retryability) is carried unchanged.
    Kms,
    /// The proxy refused the request by policy: a plaintext-returning
    /// operation without `Recipient`, a key that is not allowlisted, an
    /// attestation document whose measurements do not match.
    PolicyDenied,
    /// The request was malformed, oversized or violated the protocol.
    BadRequest,
    /// No protocol version in common (answer to `Hello`).
    UnsupportedVersion,
    /// KMS could not be reached or the upstream call failed. Retryable.
    Unavailable,
    /// The request's timeout elapsed before KMS answered. Retryable.
    Timeout,
    /// The proxy failed for a reason of its own.
    Internal,
    /// The proxy is draining and accepts no new requests. Retryable on
    /// another connection.
    Shutdown,
    /// The proxy is at its limit of requests in flight. Retryable after a
    /// back-off.
    Busy,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 9] = [
        Self::Kms,
        Self::PolicyDenied,
        Self::BadRequest,
        Self::UnsupportedVersion,
        Self::Unavailable,
        Self::Timeout,
        Self::Internal,
        Self::Shutdown,
        Self::Busy,
    ];

    /// The wire value.
    pub const fn to_wire(self) -> u16 {
        match self {
            Self::Kms => 1,
            Self::PolicyDenied => 2,
            Self::BadRequest => 3,
            Self::UnsupportedVersion => 4,
            Self::Unavailable => 5,
            Self::Timeout => 6,
            Self::Internal => 7,
            Self::Shutdown => 8,
            Self::Busy => 9,
        }
    }

    /// The code for a wire value; unknown values become [`ErrorCode::Internal`].
    pub const fn from_wire(v: u16) -> Self {
        match v {
            1 => Self::Kms,
            2 => Self::PolicyDenied,
            3 => Self::BadRequest,
            4 => Self::UnsupportedVersion,
            5 => Self::Unavailable,
            6 => Self::Timeout,
            8 => Self::Shutdown,
            9 => Self::Busy,
            _ => Self::Internal,
        }
    }

    /// A stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Kms => "Kms",
            Self::PolicyDenied => "PolicyDenied",
            Self::BadRequest => "BadRequest",
            Self::UnsupportedVersion => "UnsupportedVersion",
            Self::Unavailable => "Unavailable",
            Self::Timeout => "Timeout",
            Self::Internal => "Internal",
            Self::Shutdown => "Shutdown",
            Self::Busy => "Busy",
        }
    }

    /// Whether an error of this class is retryable unless the sender says
    /// otherwise (for [`ErrorCode::Kms`] the [`KmsError`] decides).
    pub const fn retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::Timeout | Self::Shutdown | Self::Busy
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.to_wire())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(Self::from_wire)
    }
}

/// THE mapping from this crate's errors to wire codes. Everything the proxy
/// sends back for a failed request goes through here (or through
/// [`WireError::new`] with a code the proxy chose, such as
/// [`ErrorCode::PolicyDenied`] or [`ErrorCode::Timeout`]).
impl From<&Error> for ErrorCode {
    fn from(e: &Error) -> Self {
        match e {
            Error::Kms(_) => ErrorCode::Kms,
            Error::Protocol(ProtocolError::UnsupportedVersion { .. }) => {
                ErrorCode::UnsupportedVersion
            }
            // A relayed peer error keeps its class.
            Error::Protocol(ProtocolError::Remote { code, .. }) => *code,
            Error::Protocol(_) => ErrorCode::BadRequest,
            // The proxy checks the enclave's attestation document against its
            // policy; a document that does not verify is a policy refusal.
            Error::Attestation(_) => ErrorCode::PolicyDenied,
            // An envelope message is the caller's input; it never crosses
            // the wire, but if it did its rejection is the request's fault.
            Error::InvalidArgument(_) | Error::Envelope(_) | Error::Measurement(_) => {
                ErrorCode::BadRequest
            }
            // The proxy does not decrypt CMS; a CMS failure there means its own
            // processing (or an upstream response it checked) went wrong.
            Error::Cms(_) | Error::Crypto(_) => ErrorCode::Internal,
        }
    }
}

/// An error in place of a KMS response ([`super::Message::Response`]) or as a
/// connection-level [`super::Message::Error`].
///
/// Either a KMS error relayed unchanged ([`WireError::kms`]) or an error of
/// the proxy's own ([`WireError::new`]). The message is shown to operators;
/// it must never contain key material (build it from an [`Error`], whose
/// variants never do, or from fixed text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireErrorRepr", into = "WireErrorRepr")]
pub struct WireError(Inner);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Inner {
    Kms(KmsError),
    Proxy {
        code: ErrorCode,
        message: String,
        retryable: bool,
    },
}

impl WireError {
    /// Relays a KMS error (code, message, HTTP status, retryability).
    pub fn kms(error: KmsError) -> Self {
        Self(Inner::Kms(error))
    }

    /// An error of the proxy's own, retryable per
    /// [`ErrorCode::retryable_by_default`]. [`ErrorCode::Kms`] needs a
    /// [`KmsError`] ([`WireError::kms`]); given here it becomes
    /// [`ErrorCode::Internal`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let code = if code == ErrorCode::Kms {
            ErrorCode::Internal
        } else {
            code
        };
        Self(Inner::Proxy {
            code,
            message: message.into(),
            retryable: code.retryable_by_default(),
        })
    }

    /// Overrides whether a retry can succeed.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        match &mut self.0 {
            Inner::Kms(k) => k.retryable = retryable,
            Inner::Proxy { retryable: r, .. } => *r = retryable,
        }
        self
    }

    /// The class of the error.
    pub fn code(&self) -> ErrorCode {
        match &self.0 {
            Inner::Kms(_) => ErrorCode::Kms,
            Inner::Proxy { code, .. } => *code,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match &self.0 {
            Inner::Kms(k) => &k.message,
            Inner::Proxy { message, .. } => message,
        }
    }

    /// Whether a retry can succeed.
    pub fn retryable(&self) -> bool {
        match &self.0 {
            Inner::Kms(k) => k.retryable,
            Inner::Proxy { retryable, .. } => *retryable,
        }
    }

    /// The KMS error, when this relays one.
    pub fn kms_error(&self) -> Option<&KmsError> {
        match &self.0 {
            Inner::Kms(k) => Some(k),
            Inner::Proxy { .. } => None,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Kms(k) => write!(f, "KMS error {k}"),
            Inner::Proxy { code, message, .. } => write!(f, "{code}: {message}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Builds the wire error for a failure, with the code from
/// [`ErrorCode::from`] and the error's own message.
impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::Kms(k) => WireError::kms(k.clone()),
            Error::Protocol(ProtocolError::Remote {
                code,
                message,
                retryable,
            }) => WireError::new(*code, message.clone()).with_retryable(*retryable),
            other => WireError::new(ErrorCode::from(other), other.to_string()),
        }
    }
}

/// What the enclave client's callers see: a relayed KMS error becomes
/// [`Error::Kms`], anything else [`ProtocolError::Remote`].
impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        match w.0 {
            Inner::Kms(k) => Error::Kms(k),
            Inner::Proxy {
                code,
                message,
                retryable,
            } => Error::Protocol(ProtocolError::Remote {
                code,
                message,
                retryable,
            }),
        }
    }
}

/// Wire form: `{code, message, retryable, kms_code?, kms_status?}`; the two
/// KMS fields are present exactly when `code` is `Kms`.
#[derive(Clone, Serialize, Deserialize)]
struct WireErrorRepr {
    code: ErrorCode,
    message: String,
    retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_status: Option<u16>,
}

impl From<WireError> for WireErrorRepr {
    fn from(w: WireError) -> Self {
        match w.0 {
            Inner::Kms(k) => WireErrorRepr {
                code: ErrorCode::Kms,
                message: k.message,
                retryable: k.retryable,
                kms_code: Some(k.code),
                kms_status: Some(k.status),
            },
            Inner::Proxy {
                code,
                message,
                retryable,
            } => WireErrorRepr {
                code,
                message,
                retryable,
                kms_code: None,
                kms_status: None,
            },
        }
    }
}

impl TryFrom<WireErrorRepr> for WireError {
    type Error = &'static str;

    fn try_from(r: WireErrorRepr) -> Result<Self, Self::Error> {
        match (r.code, r.kms_code, r.kms_status) {
            (ErrorCode::Kms, Some(code), Some(status)) => Ok(WireError::kms(KmsError {
                code,
                message: r.message,
                status,
                retryable: r.retryable,
            })),
            (ErrorCode::Kms, _, _) => Err("KMS error without kms_code and kms_status"),
            (code, None, None) => Ok(WireError(Inner::Proxy {
                code,
                message: r.message,
                retryable: r.retryable,
            })),
            _ => Err("kms_code/kms_status on a non-KMS error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KmsErrorCode;
    use crate::{AttestationError, CmsError};

    #[test]
    fn wire_values_round_trip_and_unknown_is_internal() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.to_wire()), code);
        }
        assert_eq!(ErrorCode::from_wire(0), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_wire(999), ErrorCode::Internal);
    }

    #[test]
    fn crate_errors_map_to_codes() {
        let cases: Vec<(Error, ErrorCode, bool)> = vec![
            (
                Error::Kms(KmsError::new(KmsErrorCode::Throttling, "slow down")),
                ErrorCode::Kms,
                true,
            ),
            (
                Error::Kms(KmsError::new(KmsErrorCode::AccessDenied, "no")),
                ErrorCode::Kms,
                false,
            ),
            (
                Error::Protocol(ProtocolError::EmptyFrame),
                ErrorCode::BadRequest,
                false,
            ),
            (
                Error::Protocol(ProtocolError::UnsupportedVersion {
                    offered: super::super::VersionRange::new(5, 6),
                    supported: super::super::SUPPORTED_VERSIONS,
                }),
                ErrorCode::UnsupportedVersion,
                false,
            ),
            (
                Error::Protocol(ProtocolError::Remote {
                    code: ErrorCode::Timeout,
                    message: "late".into(),
                    retryable: false,
                }),
                ErrorCode::Timeout,
                false,
            ),
            (
                Error::Attestation(AttestationError::Malformed("x".into())),
                ErrorCode::PolicyDenied,
                false,
            ),
            (
                Error::Cms(CmsError::Malformed("x".into())),
                ErrorCode::Internal,
                false,
            ),
            (
                Error::InvalidArgument("x".into()),
                ErrorCode::BadRequest,
                false,
            ),
            (Error::Crypto("rng"), ErrorCode::Internal, false),
        ];
        for (e, code, retryable) in cases {
            assert_eq!(ErrorCode::from(&e), code, "{e}");
            let w = WireError::from(&e);
            assert_eq!(w.code(), code, "{e}");
            assert_eq!(w.retryable(), retryable, "{e}");
        }
    }

    #[test]
    fn kms_errors_survive_the_round_trip_to_crate_error() {
        let k = KmsError::new(KmsErrorCode::KmsInternal, "boom");
        let back = Error::from(WireError::from(&Error::Kms(k.clone())));
        assert_eq!(back, Error::Kms(k));
    }

    #[test]
    fn proxy_errors_become_remote_protocol_errors() {
        let w = WireError::new(ErrorCode::Shutdown, "draining");
        assert!(w.retryable());
        assert_eq!(w.kms_error(), None);
        assert_eq!(
            Error::from(w.clone()),
            Error::Protocol(ProtocolError::Remote {
                code: ErrorCode::Shutdown,
                message: "draining".into(),
                retryable: true
            })
        );
        assert_eq!(w.to_string(), "Shutdown: draining");
        // Relaying it again keeps code, message and flag.
        assert_eq!(WireError::from(&Error::from(w.clone())), w);
    }

    #[test]
    fn kms_code_without_kms_error_is_internal() {
        let w = WireError::new(ErrorCode::Kms, "?");
        assert_eq!(w.code(), ErrorCode::Internal);
        assert!(!w.retryable());
        assert!(
            WireError::new(ErrorCode::PolicyDenied, "no")
                .with_retryable(true)
                .retryable()
        );
    }

    #[test]
    fn inconsistent_wire_forms_are_rejected() {
        let kms_without_detail = WireErrorRepr {
            code: ErrorCode::Kms,
            message: "m".into(),
            retryable: false,
            kms_code: None,
            kms_status: Some(400),
        };
        assert!(WireError::try_from(kms_without_detail).is_err());
        let detail_on_proxy_error = WireErrorRepr {
            code: ErrorCode::Busy,
            message: "m".into(),
            retryable: true,
            kms_code: Some("NotFoundException".into()),
            kms_status: None,
        };
        assert!(WireError::try_from(detail_on_proxy_error).is_err());
    }
}

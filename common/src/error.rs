//! The crate's one error type.
//!
//! Split by cause, in the style of `rustls::Error`: what the peer sent
//! ([`Error::Attestation`], [`Error::Cms`], [`Error::Protocol`],
//! [`Error::Kms`]) or an input message holds ([`Error::Envelope`]), what the
//! local caller got wrong ([`Error::InvalidArgument`]), and what the
//! environment failed to do ([`Error::Crypto`]). Each module owns
//! the detail enum for its format. The mapping to wire error codes lives in one
//! place, [`crate::protocol::ErrorCode::from`].
//!
//! No variant ever carries key material: details are lengths, field names,
//! OIDs, certificate subjects and times.

use crate::attestation::AttestationError;
use crate::cms::CmsError;
use crate::envelope::EnvelopeError;
use crate::kms::KmsError;
use crate::measurements::MeasurementError;
use crate::protocol::ProtocolError;

/// Everything that can go wrong in `keybroker-common`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Peer data: an attestation document is malformed or does not verify.
    #[error("attestation document rejected: {0}")]
    Attestation(#[from] AttestationError),
    /// Peer data: a CMS `EnvelopedData` is malformed or unsupported. (One
    /// that parses but does not decrypt is no error: see `cms`, "Implicit
    /// rejection".)
    #[error("CMS EnvelopedData rejected: {0}")]
    Cms(#[from] CmsError),
    /// Peer data: a wire frame or message violates the protocol.
    /// ([`ProtocolError::Remote`] is the peer *reporting* an error, such as
    /// `Busy` or `PolicyDenied`, not a violation; it displays as such.)
    #[error("{}", describe_protocol(.0))]
    Protocol(#[from] ProtocolError),
    /// Input data: an envelope-encryption message is malformed, does not
    /// authenticate (tampered, wrong encryption context or data key) or is
    /// truncated.
    #[error("envelope message rejected: {0}")]
    Envelope(#[from] EnvelopeError),
    /// Upstream: KMS (or the proxy on its behalf) answered with an error.
    #[error("{0}")]
    Kms(#[from] KmsError),
    /// Local misuse: the caller passed an argument this API cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Local input: a PCR index or value, or an enclave image description,
    /// is invalid (see [`crate::measurements`]).
    #[error("image measurements: {0}")]
    Measurement(#[from] MeasurementError),
    /// Environment: the cryptographic backend failed (randomness, key
    /// generation). Not caused by input data.
    #[error("cryptographic backend failure: {0}")]
    Crypto(&'static str),
}

fn describe_protocol(e: &ProtocolError) -> String {
    match e {
        ProtocolError::Remote { .. } => e.to_string(),
        _ => format!("protocol violation: {e}"),
    }
}

/// The broad cause of an [`Error`], for deciding who to blame and whether a
/// retry can help.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The peer (or the input file) sent bad data. Retrying the same input fails again.
    Peer,
    /// The local caller misused the API.
    Local,
    /// The environment or an upstream service failed; a retry may succeed.
    Environment,
}

impl Error {
    /// Who is to blame for this error.
    pub fn cause(&self) -> Cause {
        match self {
            // The peer relayed a transient failure (upstream unavailable,
            // timeout, shutdown, busy): the environment, not its data.
            Error::Protocol(p) if p.is_retryable() => Cause::Environment,
            Error::Attestation(_) | Error::Cms(_) | Error::Protocol(_) | Error::Envelope(_) => {
                Cause::Peer
            }
            Error::InvalidArgument(_) | Error::Measurement(_) => Cause::Local,
            Error::Kms(_) | Error::Crypto(_) => Cause::Environment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn causes() {
        let remote = |retryable| {
            Error::Protocol(ProtocolError::Remote {
                code: ErrorCode::Unavailable,
                message: "kms unreachable".into(),
                retryable,
            })
        };
        assert_eq!(remote(true).cause(), Cause::Environment);
        assert_eq!(
            remote(true).to_string(),
            "peer reported Unavailable: kms unreachable"
        );
        assert!(
            Error::Protocol(ProtocolError::EmptyFrame)
                .to_string()
                .starts_with("protocol violation: ")
        );
        assert_eq!(remote(false).cause(), Cause::Peer);
        assert_eq!(Error::InvalidArgument("x".into()).cause(), Cause::Local);
        assert_eq!(
            Error::Measurement(MeasurementError::MissingImageSha384).cause(),
            Cause::Local
        );
        assert_eq!(Error::Crypto("rng").cause(), Cause::Environment);
        assert_eq!(
            Error::Envelope(EnvelopeError::HeaderAuthentication).cause(),
            Cause::Peer
        );
    }
}

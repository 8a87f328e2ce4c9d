//! The enclave <-> parent-proxy wire protocol.
//!
//! The enclave (client) and the parent proxy (server) exchange *frames* over
//! one byte stream (vsock in production, TCP or a Unix socket locally). This
//! module is sans-I/O: it turns [`Message`]s into bytes and bytes into
//! [`Message`]s, and the caller moves the bytes.
//!
//! # Frames
//!
//! ```text
//! frame = length:u32 (big-endian) || body (length bytes)
//! body  = CBOR (RFC 8949) array [kind: uint, payload]
//! ```
//!
//! `length` counts the body only. It must be in `1..=max` where `max` is
//! [`MAX_FRAME_LEN`] or the lower [`Limits::max_frame_len`] of the receiver;
//! a larger prefix is rejected as soon as its four bytes arrive, before any of
//! the body is buffered. The body must be exactly one CBOR data item (no
//! trailing bytes, no tags, nesting at most [`MAX_NESTING_DEPTH`], every
//! declared length within the frame) and is checked for that before it is
//! deserialized, so the frame limit bounds every allocation the decoder makes.
//!
//! # Messages
//!
//! | kind | message | payload (CBOR map) |
//! |------|---------|--------------------|
//! | 1 | [`Message::Hello`] | `{min, max, client}` |
//! | 2 | [`Message::HelloAck`] | `{version, server}` |
//! | 3 | [`Message::Request`] | `{id, timeout_ms?, request: KmsRequest}` |
//! | 4 | [`Message::Response`] | `{id, result: {"Ok": KmsResponse} / {"Err": WireError}}` |
//! | 5 | [`Message::Error`] | `{error: WireError}` |
//! | 6 | [`Message::Goodbye`] | `{}` |
//! | 7 | [`Message::GetCredentials`] (v2) | `{id}` |
//! | 8 | [`Message::Credentials`] (v2) | `{id, result: {"Ok": {access_key_id, secret_access_key, session_token?, expiration_ms?}} / {"Err": WireError}}` |
//! | 9 | [`Message::OpenTunnel`] (v2) | `{host, port}` |
//! | 10 | [`Message::TunnelOpened`] (v2) | `{}` |
//! | 11 | [`Message::Metrics`] (v3) | `{report: {enclave, keys, nsm, decrypt_failures, endpoint, cache, tls_handshakes}}` ([`EnclaveReport`]) |
//!
//! Kinds 7 to 10 exist from version 2 on, kind 11 from version 3
//! ([`MessageKind::since_version`]); on a connection that negotiated an
//! earlier version either side refuses them ([`ProtocolError::NotInVersion`]),
//! so older peers keep working for what they know. `OpenTunnel.host` is a DNS name or IP literal of at most
//! [`MAX_HOST_LEN`] bytes ([`check_tunnel_host`]); credentials are bounded
//! and visible ASCII ([`AwsCredentialsWire::validate`]); both are checked on
//! encode and decode.
//!
//! KMS requests and responses are the [`crate::kms`] types, serialized by
//! serde with their KMS field names (`KeyId`, `Recipient`, ...); blobs are
//! CBOR byte strings. Unknown payload fields are ignored so a version can
//! add optional fields; an unknown `kind` is [`ProtocolError::UnknownMessageType`].
//!
//! # Connection
//!
//! 1. The enclave sends `Hello` with the range of versions it speaks; the proxy
//!    answers `HelloAck` with the highest common version ([`negotiate`]) or
//!    `Error{UnsupportedVersion}` and closes. The layout of kinds 1 and 2 is
//!    frozen across versions so any two versions can negotiate.
//! 2. The enclave sends `Request`s with ids it chose, unique among its
//!    requests in flight; many can be in flight at once. The proxy answers
//!    each with exactly one `Response` carrying the same id, in any order.
//! 3. Either side may send `Goodbye` (no new requests; those in flight are
//!    still answered) or `Error` (fatal: the sender closes the connection).
//! 4. Version 2: the enclave may send `GetCredentials{id}`, answered by
//!    `Credentials{id, result}`. On a new connection, `OpenTunnel{host,
//!    port}` as the first message after `HelloAck` asks the proxy to relay
//!    raw bytes to `host:port` (if its allowlist has that target); the proxy
//!    answers `TunnelOpened` and from then on the connection is no longer
//!    framed, or `Error` and closes.
//! 5. Version 3: the enclave may send `Metrics{report}`, its counters
//!    ([`EnclaveReport`], bounded by [`EnclaveReport::validate`]); nothing
//!    answers it. The enclave sends it on a connection of its own followed
//!    by `Goodbye`, so a version 2 proxy (which refuses the handshake the
//!    reporter offers, versions 3 and later) never sees it.
//!
//! Plaintext key material never crosses this wire: encoding or decoding a
//! response that carries `Plaintext`/`PrivateKeyPlaintext` fails with
//! [`ProtocolError::PlaintextOnWire`] (DESIGN.md, trust model: the parent is
//! untrusted and must only ever see ciphertext).

mod cbor;
mod errors;
mod frame;
mod message;
mod v2;
mod v3;

use core::fmt;

use crate::kms::Operation;

pub use errors::{ErrorCode, WireError};
pub use frame::{
    Decoded, FrameDecoder, LENGTH_PREFIX_LEN, Limits, MAX_FRAME_LEN, decode_frame, encode,
    encode_into,
};
pub use message::{Message, MessageKind};
pub use v2::{
    AwsCredentialsWire, MAX_ACCESS_KEY_ID_LEN, MAX_HOST_LEN, MAX_LABEL_LEN,
    MAX_SECRET_ACCESS_KEY_LEN, MAX_SESSION_TOKEN_LEN, MIN_ACCESS_KEY_ID_LEN, check_tunnel_host,
    check_tunnel_port,
};
pub use v3::{
    CacheCounts, EnclaveReport, EndpointCount, EndpointOperation, EndpointOutcome, KeyCounts,
    MAX_ENCLAVE_ID_LEN, MAX_ENDPOINT_ENTRIES, NSM_LATENCY_BOUNDS_US, NSM_LATENCY_BUCKETS,
    NsmLatency, NsmRequest, check_enclave_id,
};

/// The protocol version this build speaks best.
/// Version 2 adds credentials and tunnels (kinds 7 to 10), version 3 the
/// enclave's metrics report (kind 11).
pub const PROTOCOL_VERSION: u16 = 3;

/// Every protocol version this build speaks.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange {
    min: 1,
    max: PROTOCOL_VERSION,
};

/// Maximum nesting of CBOR arrays and maps in a body. The deepest legitimate
/// message (a `DescribeKey` response: body, payload, result, response enum,
/// response, `KeyMetadata`, `EncryptionAlgorithms`) nests 7 deep; the limit
/// keeps the recursive deserializer far from stack exhaustion.
pub const MAX_NESTING_DEPTH: usize = 16;

/// An inclusive range of protocol versions, as offered in
/// [`Message::Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionRange {
    /// Lowest version offered.
    pub min: u16,
    /// Highest version offered.
    pub max: u16,
}

impl VersionRange {
    /// The range `min..=max`.
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min, max }
    }

    /// Whether `version` is in the range.
    pub const fn contains(self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// Server side of the handshake: the highest version in both `offered` and
/// [`SUPPORTED_VERSIONS`].
pub fn negotiate(offered: VersionRange) -> Result<u16, ProtocolError> {
    negotiate_between(offered, SUPPORTED_VERSIONS)
}

/// The highest version in both ranges.
fn negotiate_between(offered: VersionRange, supported: VersionRange) -> Result<u16, ProtocolError> {
    let lo = offered.min.max(supported.min);
    let hi = offered.max.min(supported.max);
    if lo <= hi {
        Ok(hi)
    } else {
        Err(ProtocolError::UnsupportedVersion { offered, supported })
    }
}

/// Client side of the handshake: checks that the version in the server's
/// [`Message::HelloAck`] is one the client offered.
pub fn check_hello_ack(offered: VersionRange, acked: u16) -> Result<u16, ProtocolError> {
    if offered.contains(acked) {
        Ok(acked)
    } else {
        Err(ProtocolError::UnsupportedVersion {
            offered: VersionRange::new(acked, acked),
            supported: offered,
        })
    }
}

/// Why a frame or message was rejected, or what the peer reported.
///
/// Details are lengths, offsets, kinds and codes, never message contents:
/// nothing here can carry key material.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's length prefix exceeds the receiver's limit. Detected from the
    /// four prefix bytes alone, before the body is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared (or, when encoding, actual) body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame's length prefix is zero; every message has a body.
    #[error("empty frame")]
    EmptyFrame,
    /// The body is not well-formed CBOR or does not match the message schema.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The body holds bytes after its single CBOR data item.
    #[error("{extra} trailing bytes after the message body")]
    TrailingBytes {
        /// How many bytes follow the data item.
        extra: usize,
    },
    /// The body nests arrays and maps deeper than [`MAX_NESTING_DEPTH`].
    #[error("CBOR nesting deeper than {max}")]
    NestingTooDeep {
        /// The limit.
        max: usize,
    },
    /// The body's `kind` is not a message type of this version.
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    /// The two sides have no protocol version in common.
    #[error("no common protocol version: offered {offered}, supported {supported}")]
    UnsupportedVersion {
        /// What the peer offered (or, on the client, the version acked).
        offered: VersionRange,
        /// What this side supports (or, on the client, what it offered).
        supported: VersionRange,
    },
    /// A well-formed message arrived when the connection state does not allow
    /// it (for example a `Request` before the handshake).
    #[error("unexpected {got} message, expected {expected}")]
    UnexpectedMessage {
        /// What the state machine was waiting for.
        expected: &'static str,
        /// What arrived.
        got: MessageKind,
    },
    /// A message of a later protocol version than the connection
    /// negotiated (e.g. `OpenTunnel` on a version 1 connection).
    #[error("{kind} is not a message of protocol version {version}")]
    NotInVersion {
        /// The message's type.
        kind: MessageKind,
        /// The negotiated version.
        version: u16,
    },
    /// A field violates its limit (a tunnel host that is not a DNS name or
    /// IP literal, an oversized credential). Never quotes the value.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `Response` names a request id that is not in flight.
    #[error("response for unknown request id {id}")]
    UnknownRequestId {
        /// The id.
        id: u64,
    },
    /// A `Request` reuses the id of a request still in flight.
    #[error("request id {id} is already in flight")]
    DuplicateRequestId {
        /// The id.
        id: u64,
    },
    /// A `Response` answers a different operation than its request.
    #[error("response for {got:?} answers a {expected:?} request")]
    ResponseMismatch {
        /// The request's operation.
        expected: Operation,
        /// The response's operation.
        got: Operation,
    },
    /// A response carries `Plaintext`/`PrivateKeyPlaintext`, which must never
    /// cross the parent (request it with a `Recipient`).
    #[error("{operation:?} response carries plaintext key material; refused")]
    PlaintextOnWire {
        /// The operation.
        operation: Operation,
    },
    /// A message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The peer reported an error that is not a KMS error (a KMS error
    /// becomes [`crate::Error::Kms`]); see [`WireError`].
    #[error("peer reported {code}: {message}")]
    Remote {
        /// The wire error code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
        /// Whether the peer says a retry can succeed.
        retryable: bool,
    },
}

impl ProtocolError {
    /// Whether retrying the operation (on this or a new connection) can
    /// succeed: only for [`ProtocolError::Remote`] errors the peer marked
    /// retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProtocolError::Remote {
                retryable: true,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common_version() {
        assert_eq!(negotiate(VersionRange::new(1, 1)), Ok(1));
        assert_eq!(negotiate(VersionRange::new(1, 7)), Ok(PROTOCOL_VERSION));
        assert_eq!(
            negotiate_between(VersionRange::new(1, 3), VersionRange::new(2, 5)),
            Ok(3)
        );
        assert_eq!(
            negotiate_between(VersionRange::new(4, 9), VersionRange::new(2, 5)),
            Ok(5)
        );
    }

    #[test]
    fn negotiation_without_overlap_fails() {
        let offered = VersionRange::new(4, 5);
        assert_eq!(
            negotiate(offered),
            Err(ProtocolError::UnsupportedVersion {
                offered,
                supported: SUPPORTED_VERSIONS
            })
        );
        // An empty (inverted) range never negotiates.
        assert!(negotiate(VersionRange::new(1, 0)).is_err());
        assert!(negotiate(VersionRange::new(0, 0)).is_err());
        let msg = negotiate(offered).unwrap_err().to_string();
        assert!(msg.contains("4..=5") && msg.contains("1..=3"), "{msg}");
    }

    #[test]
    fn client_checks_the_acked_version() {
        assert_eq!(check_hello_ack(VersionRange::new(1, 2), 2), Ok(2));
        assert!(matches!(
            check_hello_ack(VersionRange::new(1, 1), 2),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn only_retryable_remote_errors_are_retryable() {
        assert!(
            ProtocolError::Remote {
                code: ErrorCode::Unavailable,
                message: "x".into(),
                retryable: true
            }
            .is_retryable()
        );
        assert!(!ProtocolError::EmptyFrame.is_retryable());
    }
}

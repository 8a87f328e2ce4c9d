//! Messages and their CBOR bodies: `[kind, payload]`.

use core::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::cbor::scan_item;
use super::v2::{AwsCredentialsWire, check_tunnel_host, check_tunnel_port};
use super::v3::EnclaveReport;
use super::{MAX_NESTING_DEPTH, ProtocolError, VersionRange, WireError};
use crate::kms::{KmsRequest, KmsResponse};

/// One protocol message (see the [module docs](super) for the wire layout).
///
/// A new message type is a new protocol version, so the enum is exhaustive:
/// both ends handle every message of the versions they negotiate. The
/// decoder accepts every kind it knows; whether a kind is allowed on a
/// connection depends on the negotiated version
/// ([`MessageKind::check_version`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Client -> proxy, first message: the versions the client speaks and a
    /// software id for logs (e.g. `keybroker-enclave/0.1.0`).
    Hello {
        /// Versions offered.
        versions: VersionRange,
        /// Client software id.
        client: String,
    },
    /// Proxy -> client: the version chosen by [`super::negotiate`].
    HelloAck {
        /// The negotiated version.
        version: u16,
        /// Proxy software id.
        server: String,
    },
    /// Client -> proxy: one KMS call.
    Request {
        /// Chosen by the client, unique among its requests in flight; the
        /// response carries it back.
        id: u64,
        /// How long the client will wait, in milliseconds from when the proxy
        /// reads the request (relative, since the enclave and parent clocks
        /// are not shared). The proxy answers [`super::ErrorCode::Timeout`]
        /// when it elapses. `None`: the proxy's default.
        timeout_ms: Option<u32>,
        /// The KMS request.
        request: KmsRequest,
    },
    /// Proxy -> client: the answer to the request with `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The KMS response, or why there is none.
        result: Result<KmsResponse, WireError>,
    },
    /// Either way, fatal: the sender closes the connection after it
    /// (unsupported version, a frame that cannot be decoded, a message out of
    /// order). Requests in flight are lost.
    Error {
        /// What went wrong.
        error: WireError,
    },
    /// Either way, graceful: the sender accepts no new requests; requests in
    /// flight are still answered, then the connection closes.
    Goodbye,
    /// Client -> proxy (version 2): asks for the AWS credentials the proxy
    /// holds (end-to-end mode signs KMS requests inside the enclave).
    GetCredentials {
        /// Chosen by the client; the [`Message::Credentials`] answer carries
        /// it back.
        id: u64,
    },
    /// Proxy -> client (version 2): the answer to [`Message::GetCredentials`].
    Credentials {
        /// The request's id.
        id: u64,
        /// The credentials (checked by [`AwsCredentialsWire::validate`] on
        /// encode and decode), or why there are none.
        result: Result<AwsCredentialsWire, WireError>,
    },
    /// Client -> proxy (version 2), only as the first message after the
    /// handshake on a new connection: relay raw bytes between this
    /// connection and `host:port`. The proxy answers
    /// [`Message::TunnelOpened`] or [`Message::Error`] (then closes).
    OpenTunnel {
        /// A DNS name or IP literal, checked by
        /// [`super::check_tunnel_host`]; the proxy resolves it.
        host: String,
        /// The TCP port, not 0.
        port: u16,
    },
    /// Proxy -> client (version 2): the tunnel is connected. After this
    /// frame the connection carries the tunnelled bytes, unframed, in both
    /// directions until either side closes; the proxy never parses them.
    TunnelOpened,
    /// Client -> proxy (version 3), any time after the handshake, not
    /// answered: the enclave's counters since it started, which the proxy
    /// serves at `/metrics` labelled by [`EnclaveReport::enclave`].
    Metrics {
        /// The counters (checked by [`EnclaveReport::validate`] on encode
        /// and decode).
        report: EnclaveReport,
    },
}

/// The type of a [`Message`], with its wire value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// [`Message::Hello`] (1).
    Hello,
    /// [`Message::HelloAck`] (2).
    HelloAck,
    /// [`Message::Request`] (3).
    Request,
    /// [`Message::Response`] (4).
    Response,
    /// [`Message::Error`] (5).
    Error,
    /// [`Message::Goodbye`] (6).
    Goodbye,
    /// [`Message::GetCredentials`] (7, version 2).
    GetCredentials,
    /// [`Message::Credentials`] (8, version 2).
    Credentials,
    /// [`Message::OpenTunnel`] (9, version 2).
    OpenTunnel,
    /// [`Message::TunnelOpened`] (10, version 2).
    TunnelOpened,
    /// [`Message::Metrics`] (11, version 3).
    Metrics,
}

impl MessageKind {
    /// The wire value of the body's first element.
    pub const fn to_wire(self) -> u8 {
        match self {
            Self::Hello => 1,
            Self::HelloAck => 2,
            Self::Request => 3,
            Self::Response => 4,
            Self::Error => 5,
            Self::Goodbye => 6,
            Self::GetCredentials => 7,
            Self::Credentials => 8,
            Self::OpenTunnel => 9,
            Self::TunnelOpened => 10,
            Self::Metrics => 11,
        }
    }

    /// The first protocol version that has this message.
    pub const fn since_version(self) -> u16 {
        match self {
            Self::Hello
            | Self::HelloAck
            | Self::Request
            | Self::Response
            | Self::Error
            | Self::Goodbye => 1,
            Self::GetCredentials | Self::Credentials | Self::OpenTunnel | Self::TunnelOpened => 2,
            Self::Metrics => 3,
        }
    }

    /// Whether this message may be sent on a connection that negotiated
    /// `version`: [`ProtocolError::NotInVersion`] if the version predates it
    /// (a version 1 peer never sees a version 2 message).
    pub const fn check_version(self, version: u16) -> Result<(), ProtocolError> {
        if version >= self.since_version() {
            Ok(())
        } else {
            Err(ProtocolError::NotInVersion {
                kind: self,
                version,
            })
        }
    }

    /// The name, for logs and errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "Hello",
            Self::HelloAck => "HelloAck",
            Self::Request => "Request",
            Self::Response => "Response",
            Self::Error => "Error",
            Self::Goodbye => "Goodbye",
            Self::GetCredentials => "GetCredentials",
            Self::Credentials => "Credentials",
            Self::OpenTunnel => "OpenTunnel",
            Self::TunnelOpened => "TunnelOpened",
            Self::Metrics => "Metrics",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Message {
    /// The message's type.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Hello { .. } => MessageKind::Hello,
            Self::HelloAck { .. } => MessageKind::HelloAck,
            Self::Request { .. } => MessageKind::Request,
            Self::Response { .. } => MessageKind::Response,
            Self::Error { .. } => MessageKind::Error,
            Self::Goodbye => MessageKind::Goodbye,
            Self::GetCredentials { .. } => MessageKind::GetCredentials,
            Self::Credentials { .. } => MessageKind::Credentials,
            Self::OpenTunnel { .. } => MessageKind::OpenTunnel,
            Self::TunnelOpened => MessageKind::TunnelOpened,
            Self::Metrics { .. } => MessageKind::Metrics,
        }
    }

    /// The request id of a `Request` or `Response`.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Self::Request { id, .. } | Self::Response { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// A `Hello` offering every version this build supports.
    pub fn hello(client: impl Into<String>) -> Self {
        Self::Hello {
            versions: super::SUPPORTED_VERSIONS,
            client: client.into(),
        }
    }

    /// Refuses to put plaintext key material on the wire.
    fn check_no_plaintext(&self) -> Result<(), ProtocolError> {
        match self {
            Self::Response {
                result: Ok(resp), ..
            } if resp.has_plaintext() => Err(ProtocolError::PlaintextOnWire {
                operation: resp.operation(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks the fields with limits beyond the frame's: tunnel host and
    /// port, credentials, the enclave's report.
    fn check_fields(&self) -> Result<(), ProtocolError> {
        match self {
            Self::OpenTunnel { host, port } => {
                check_tunnel_host(host)?;
                check_tunnel_port(*port)
            }
            Self::Credentials {
                result: Ok(creds), ..
            } => creds.validate(),
            Self::Metrics { report } => report.validate(),
            _ => Ok(()),
        }
    }
}

// Payloads. Generic over owned (decode) and borrowed (encode) field types so
// encoding does not clone requests.

#[derive(Serialize, Deserialize)]
struct HelloP<S> {
    min: u16,
    max: u16,
    client: S,
}

#[derive(Serialize, Deserialize)]
struct HelloAckP<S> {
    version: u16,
    server: S,
}

#[derive(Serialize, Deserialize)]
struct RequestP<R> {
    id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u32>,
    request: R,
}

#[derive(Serialize, Deserialize)]
struct ResponseP<R> {
    id: u64,
    result: R,
}

#[derive(Serialize, Deserialize)]
struct ErrorP<E> {
    error: E,
}

#[derive(Serialize, Deserialize)]
struct GoodbyeP {}

#[derive(Serialize, Deserialize)]
struct GetCredentialsP {
    id: u64,
}

#[derive(Serialize, Deserialize)]
struct CredentialsP<R> {
    id: u64,
    result: R,
}

#[derive(Serialize, Deserialize)]
struct OpenTunnelP<S> {
    host: S,
    port: u16,
}

#[derive(Serialize, Deserialize)]
struct TunnelOpenedP {}

#[derive(Serialize, Deserialize)]
struct MetricsP<R> {
    report: R,
}

/// Appends the CBOR body of `msg` to `out`.
pub(crate) fn encode_body(msg: &Message, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    msg.check_no_plaintext()?;
    msg.check_fields()?;
    let kind = msg.kind().to_wire();
    let r = match msg {
        Message::Hello { versions, client } => ciborium::into_writer(
            &(
                kind,
                HelloP {
                    min: versions.min,
                    max: versions.max,
                    client: client.as_str(),
                },
            ),
            &mut *out,
        ),
        Message::HelloAck { version, server } => ciborium::into_writer(
            &(
                kind,
                HelloAckP {
                    version: *version,
                    server: server.as_str(),
                },
            ),
            &mut *out,
        ),
        Message::Request {
            id,
            timeout_ms,
            request,
        } => ciborium::into_writer(
            &(
                kind,
                RequestP {
                    id: *id,
                    timeout_ms: *timeout_ms,
                    request,
                },
            ),
            &mut *out,
        ),
        Message::Response { id, result } => {
            ciborium::into_writer(&(kind, ResponseP { id: *id, result }), &mut *out)
        }
        Message::Error { error } => ciborium::into_writer(&(kind, ErrorP { error }), &mut *out),
        Message::Goodbye => ciborium::into_writer(&(kind, GoodbyeP {}), &mut *out),
        Message::GetCredentials { id } => {
            ciborium::into_writer(&(kind, GetCredentialsP { id: *id }), &mut *out)
        }
        Message::Credentials { id, result } => {
            ciborium::into_writer(&(kind, CredentialsP { id: *id, result }), &mut *out)
        }
        Message::OpenTunnel { host, port } => ciborium::into_writer(
            &(
                kind,
                OpenTunnelP {
                    host: host.as_str(),
                    port: *port,
                },
            ),
            &mut *out,
        ),
        Message::TunnelOpened => ciborium::into_writer(&(kind, TunnelOpenedP {}), &mut *out),
        Message::Metrics { report } => {
            ciborium::into_writer(&(kind, MetricsP { report }), &mut *out)
        }
    };
    r.map_err(|e| ProtocolError::Encode(truncate_detail(&e.to_string())))
}

/// Decodes one body (the bytes after the length prefix).
pub(crate) fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    let end = scan_item(body, MAX_NESTING_DEPTH)?;
    let extra = body.len().saturating_sub(end);
    if extra != 0 {
        return Err(ProtocolError::TrailingBytes { extra });
    }
    // ciborium reads definite-length byte strings that serde asks for as
    // borrowed bytes (`deserialize_bytes`, used by `kms::Blob`) through its
    // scratch buffer and fails on longer ones, so the scratch must hold the
    // largest string the body can contain: the body itself. Its size is
    // bounded by the frame limit. Every other allocation is bounded by the
    // bytes present, which `scan_item` checked against each declared length.
    // The scratch buffer may hold a text string it read (a credential in a
    // version 2 `Credentials` message), so it is zeroized when dropped.
    let mut scratch = zeroize::Zeroizing::new(vec![0u8; body.len()]);
    let raw: RawBody =
        ciborium::from_reader_with_buffer(body, scratch.as_mut_slice()).map_err(de_error)?;
    let msg = match raw {
        RawBody::Known(m) => m,
        RawBody::Unknown(kind) => return Err(ProtocolError::UnknownMessageType(kind)),
    };
    msg.check_no_plaintext()?;
    msg.check_fields()?;
    Ok(msg)
}

/// Keeps error details short: a detail may quote the offending input.
fn truncate_detail(s: &str) -> String {
    const MAX: usize = 160;
    match s.char_indices().nth(MAX) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
    }
}

fn de_error(e: ciborium::de::Error<std::io::Error>) -> ProtocolError {
    use ciborium::de::Error as E;
    match e {
        E::Io(_) => ProtocolError::Malformed("CBOR item truncated".into()),
        E::Syntax(at) => ProtocolError::Malformed(format!("CBOR syntax error at offset {at}")),
        E::Semantic(Some(at), msg) => {
            ProtocolError::Malformed(format!("at offset {at}: {}", truncate_detail(&msg)))
        }
        E::Semantic(None, msg) => ProtocolError::Malformed(truncate_detail(&msg)),
        E::RecursionLimitExceeded => ProtocolError::NestingTooDeep {
            max: MAX_NESTING_DEPTH,
        },
    }
}

/// A decoded body: a message of this version, or the unknown kind.
// Transient (returned once by the deserializer); no point boxing.
#[allow(clippy::large_enum_variant)]
enum RawBody {
    Known(Message),
    Unknown(u64),
}

impl<'de> Deserialize<'de> for RawBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = RawBody;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message body [kind, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawBody, A::Error> {
        let kind: u64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        fn payload<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
            seq: &mut A,
            v: &BodyVisitor,
        ) -> Result<T, A::Error> {
            seq.next_element()?
                .ok_or_else(|| de::Error::invalid_length(1, v))
        }
        let msg = match kind {
            1 => {
                let p: HelloP<String> = payload(&mut seq, &self)?;
                Message::Hello {
                    versions: VersionRange::new(p.min, p.max),
                    client: p.client,
                }
            }
            2 => {
                let p: HelloAckP<String> = payload(&mut seq, &self)?;
                Message::HelloAck {
                    version: p.version,
                    server: p.server,
                }
            }
            3 => {
                let p: RequestP<KmsRequest> = payload(&mut seq, &self)?;
                Message::Request {
                    id: p.id,
                    timeout_ms: p.timeout_ms,
                    request: p.request,
                }
            }
            4 => {
                let p: ResponseP<Result<KmsResponse, WireError>> = payload(&mut seq, &self)?;
                Message::Response {
                    id: p.id,
                    result: p.result,
                }
            }
            5 => {
                let p: ErrorP<WireError> = payload(&mut seq, &self)?;
                Message::Error { error: p.error }
            }
            6 => {
                let GoodbyeP {} = payload(&mut seq, &self)?;
                Message::Goodbye
            }
            7 => {
                let p: GetCredentialsP = payload(&mut seq, &self)?;
                Message::GetCredentials { id: p.id }
            }
            8 => {
                let p: CredentialsP<Result<AwsCredentialsWire, WireError>> =
                    payload(&mut seq, &self)?;
                Message::Credentials {
                    id: p.id,
                    result: p.result,
                }
            }
            9 => {
                let p: OpenTunnelP<String> = payload(&mut seq, &self)?;
                Message::OpenTunnel {
                    host: p.host,
                    port: p.port,
                }
            }
            10 => {
                let TunnelOpenedP {} = payload(&mut seq, &self)?;
                Message::TunnelOpened
            }
            11 => {
                let p: MetricsP<EnclaveReport> = payload(&mut seq, &self)?;
                Message::Metrics { report: p.report }
            }
            other => {
                let _: IgnoredAny = payload(&mut seq, &self)?;
                return finish(seq, RawBody::Unknown(other), &self);
            }
        };
        finish(seq, RawBody::Known(msg), &self)
    }
}

/// Requires the body array to end after the payload.
fn finish<'de, A: SeqAccess<'de>>(
    mut seq: A,
    body: RawBody,
    v: &BodyVisitor,
) -> Result<RawBody, A::Error> {
    match seq.next_element::<IgnoredAny>()? {
        None => Ok(body),
        Some(_) => Err(de::Error::invalid_length(3, v)),
    }
}

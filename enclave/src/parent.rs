//! The enclave side of protocol versions 2 and 3: AWS credentials from the
//! parent proxy and byte tunnels through it (end-to-end mode, issue 10),
//! and the enclave's metrics report (issue 13).
//!
//! Each call opens a new connection to the proxy and performs the `Hello`
//! handshake offering only the versions that have its message (2 and later,
//! 3 and later for [`send_report`]; an older proxy answers
//! `Error{UnsupportedVersion}`). Frames are read exactly (length prefix,
//! then that many bytes), so after `TunnelOpened` not one tunnelled byte
//! has been consumed and the stream is handed over as it is.
//!
//! Everything from the parent is untrusted (DESIGN.md, "Trust model"): the
//! credentials only decide whose account signs (key pinning makes another
//! account's keys useless), and the tunnel only carries TLS that the
//! enclave verifies. Frames are bounded by [`MAX_REPLY_LEN`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybroker_common::address::Address;
use keybroker_common::protocol::{self, AwsCredentialsWire, Message, ProtocolError, VersionRange};
use keybroker_common::secret::SecretString;
use keybroker_framing::{FramedWriter, ReadError, read_exact_message};
use tokio::io::AsyncWriteExt;

use crate::Error;
use crate::transport::{self, BoxStream};

/// The first protocol version with credentials and tunnels.
pub const MIN_PARENT_VERSION: u16 = 2;

/// The first protocol version with the enclave's metrics report.
pub const MIN_METRICS_VERSION: u16 = 3;

/// Largest frame read from the proxy on these connections: a `Credentials`
/// answer with the largest session token fits with room to spare.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

/// Software id sent in `Hello`.
const CLIENT_ID: &str = concat!("keybroker-enclave/", env!("CARGO_PKG_VERSION"));

/// The request id of the one `GetCredentials` on a connection.
const CREDENTIALS_ID: u64 = 1;

/// AWS credentials as handed over by the parent (untrusted: they only decide
/// whose account signs; key pinning in e2e mode makes another account's keys
/// useless). `Debug` redacts the secret parts.
#[derive(Clone)]
pub struct AwsCredentials {
    /// The access key id (not secret; it names the credentials in logs).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// The session token of temporary credentials (instance role, STS).
    pub session_token: Option<SecretString>,
    /// When temporary credentials expire.
    pub expiration: Option<SystemTime>,
}

impl core::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[REDACTED]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl From<AwsCredentialsWire> for AwsCredentials {
    fn from(w: AwsCredentialsWire) -> Self {
        AwsCredentials {
            access_key_id: w.access_key_id,
            secret_access_key: w.secret_access_key,
            session_token: w.session_token,
            expiration: w
                .expiration_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        }
    }
}

/// Opens a new connection to the proxy, handshakes (version 3 or later),
/// sends `Metrics{report}` and `Goodbye`, and waits for the proxy to close
/// the connection, which it does once it has read both.
///
/// # Errors
/// [`Error::Unavailable`] if the proxy cannot be reached or does not close
/// within `timeout`; [`Error::Common`] with the proxy's error
/// (`UnsupportedVersion` from a proxy older than version 3, or its refusal
/// of the report); [`Error::InvalidArgument`] for a report that does not
/// pass [`keybroker_common::protocol::EnclaveReport::validate`].
pub async fn send_report(
    proxy: &Address,
    report: protocol::EnclaveReport,
    timeout: Duration,
) -> Result<(), Error> {
    report
        .validate()
        .map_err(|e| Error::InvalidArgument(format!("metrics report: {e}")))?;
    within(timeout, format!("the proxy at {proxy}"), async {
        let mut stream = handshake(proxy, MIN_METRICS_VERSION).await?;
        send(
            &mut stream,
            &[Message::Metrics { report }, Message::Goodbye],
        )
        .await?;
        match read_frame_or_end(&mut stream).await? {
            None => Ok(()),
            Some(Message::Error { error }) => Err(Error::Common(error.into())),
            Some(other) => Err(unexpected("the end of the connection", &other)),
        }
    })
    .await
}

/// Opens a new connection to the proxy, handshakes, asks for credentials.
///
/// # Errors
/// [`Error::Unavailable`] if the proxy cannot be reached or does not answer
/// within `timeout`; [`Error::Common`] with the proxy's error (e.g.
/// `PolicyDenied` when it hands out no credentials, retryable `Unavailable`
/// when its chain failed) or a protocol violation; [`Error::Io`] if the
/// connection fails mid-way.
pub async fn fetch_credentials(
    proxy: &Address,
    timeout: Duration,
) -> Result<AwsCredentials, Error> {
    within(timeout, format!("the proxy at {proxy}"), async {
        let mut stream = handshake(proxy, MIN_PARENT_VERSION).await?;
        send(
            &mut stream,
            &[Message::GetCredentials { id: CREDENTIALS_ID }],
        )
        .await?;
        match read_frame(&mut stream).await? {
            Message::Credentials {
                id: CREDENTIALS_ID,
                result,
            } => {
                let _ = stream.shutdown().await;
                result
                    .map(AwsCredentials::from)
                    .map_err(|e| Error::Common(e.into()))
            }
            Message::Error { error } => Err(Error::Common(error.into())),
            other => Err(unexpected("Credentials", &other)),
        }
    })
    .await
}

/// Opens a new connection to the proxy, handshakes, sends
/// `OpenTunnel{host, port}`, waits for `TunnelOpened`; returns the raw byte
/// stream (TLS goes over it).
///
/// # Errors
/// [`Error::InvalidArgument`] if `host` is not a DNS name or IP literal
/// (`keybroker_common::protocol::check_tunnel_host`) or `port` is 0;
/// [`Error::Unavailable`] if the proxy cannot be reached or the tunnel is
/// not open within `timeout`; [`Error::Common`] with the proxy's refusal
/// (`PolicyDenied`: target not allowed; `Busy`: tunnel limit; `Unavailable`:
/// DNS or connection failure; `Shutdown`); [`Error::Io`] if the connection
/// fails mid-way.
pub async fn open_tunnel(
    proxy: &Address,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<BoxStream, Error> {
    protocol::check_tunnel_host(host)
        .and_then(|()| protocol::check_tunnel_port(port))
        .map_err(|e| Error::InvalidArgument(format!("tunnel target: {e}")))?;
    within(timeout, format!("the proxy at {proxy}"), async {
        let mut stream = handshake(proxy, MIN_PARENT_VERSION).await?;
        let open = Message::OpenTunnel {
            host: host.to_owned(),
            port,
        };
        send(&mut stream, &[open]).await?;
        match read_frame(&mut stream).await? {
            Message::TunnelOpened => Ok(stream),
            Message::Error { error } => Err(Error::Common(error.into())),
            other => Err(unexpected("TunnelOpened", &other)),
        }
    })
    .await
}

/// Runs `work` under `timeout`; elapsed is [`Error::Unavailable`] naming
/// `what` did not answer (the proxy here; the stock vsock-proxy relays in
/// [`crate::e2e::vsock_proxy`]).
pub(crate) async fn within<T>(
    timeout: Duration,
    what: impl core::fmt::Display,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable {
                reason: format!("no answer from {what} within {} ms", timeout.as_millis()),
            })
        })
}

/// Connects and performs the handshake, offering versions `min`
/// ([`MIN_PARENT_VERSION`], [`MIN_METRICS_VERSION`]) to the latest.
async fn handshake(proxy: &Address, min: u16) -> Result<BoxStream, Error> {
    let mut stream = transport::connect(proxy)
        .await
        .map_err(|e| Error::Unavailable {
            reason: e.to_string(),
        })?;
    let offered = VersionRange::new(min, protocol::PROTOCOL_VERSION);
    let hello = Message::Hello {
        versions: offered,
        client: CLIENT_ID.to_owned(),
    };
    send(&mut stream, &[hello]).await?;
    match read_frame(&mut stream).await? {
        Message::HelloAck { version, .. } => {
            protocol::check_hello_ack(offered, version)?;
            Ok(stream)
        }
        Message::Error { error } => Err(Error::Common(error.into())),
        other => Err(unexpected("HelloAck", &other)),
    }
}

/// Writes the frames of `messages` and flushes once.
async fn send(stream: &mut BoxStream, messages: &[Message]) -> Result<(), Error> {
    let mut writer = FramedWriter::new(stream);
    for msg in messages {
        writer.queue(msg)?;
    }
    writer
        .flush()
        .await
        .map_err(|e| Error::io("write to the proxy", e))
}

/// Reads exactly one frame (never a byte more) and decodes it. The body may
/// hold credentials, so its buffer is zeroized.
async fn read_frame(stream: &mut BoxStream) -> Result<Message, Error> {
    read_frame_or_end(stream).await?.ok_or_else(|| {
        // What `read_exact` reported before the framing crate read the frames.
        Error::io(
            "read from the proxy",
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof"),
        )
    })
}

/// [`read_frame`], or `None` at the end of the stream (before the frame or
/// in the middle of it).
async fn read_frame_or_end(stream: &mut BoxStream) -> Result<Option<Message>, Error> {
    match read_exact_message(stream, protocol::Limits::new(MAX_REPLY_LEN)).await {
        Ok(Some(message)) => Ok(Some(message)),
        Err(ReadError::Protocol(e)) => Err(e.into()),
        Err(ReadError::Io(e)) => Err(Error::io("read from the proxy", e)),
        Ok(None) | Err(_) => Ok(None),
    }
}

fn unexpected(expected: &'static str, got: &Message) -> Error {
    ProtocolError::UnexpectedMessage {
        expected,
        got: got.kind(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::protocol::{ErrorCode, WireError};
    use keybroker_common::secret::SecretString;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A one-connection fake proxy: checks the Hello, answers with
    /// `replies` (raw bytes), then `then` bytes, and returns what it read
    /// after the Hello.
    async fn fake(
        replies: Vec<Message>,
        then: &'static [u8],
    ) -> (Address, tokio::task::JoinHandle<Vec<u8>>) {
        fake_for(false, replies, then).await
    }

    /// A proxy that answers the `Hello` (which must offer version 2 and
    /// later, or 3 and later for `metrics`) with `replies` and `then`, and
    /// returns what it read after the `Hello`.
    async fn fake_for(
        metrics: bool,
        replies: Vec<Message>,
        then: &'static [u8],
    ) -> (Address, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::Tcp(l.local_addr().unwrap().to_string());
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut dec = protocol::FrameDecoder::default();
            let mut buf = [0u8; 4096];
            let hello = loop {
                if let Some(m) = dec.next_message().unwrap() {
                    break m;
                }
                let n = s.read(&mut buf).await.unwrap();
                dec.push(&buf[..n]);
            };
            let Message::Hello { versions, .. } = hello else {
                panic!("{hello:?}")
            };
            assert_eq!(versions.min, if metrics { 3 } else { 2 });
            let mut out = Vec::new();
            for m in replies {
                protocol::encode_into(&m, &mut out).unwrap();
            }
            out.extend_from_slice(then);
            s.write_all(&out).await.unwrap();
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut rest)).await;
            rest
        });
        (addr, task)
    }

    fn ack() -> Message {
        Message::HelloAck {
            version: 2,
            server: "fake".into(),
        }
    }

    #[tokio::test]
    async fn credentials_are_converted_and_redacted() {
        let wire = AwsCredentialsWire {
            access_key_id: "ASIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: SecretString::from_str_copy(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            session_token: Some(SecretString::from_str_copy("IQoJb3JpZ2luX2Vj")),
            expiration_ms: Some(1_800_000_000_000),
        };
        let (addr, task) = fake(
            vec![
                ack(),
                Message::Credentials {
                    id: 1,
                    result: Ok(wire),
                },
            ],
            b"",
        )
        .await;
        let c = fetch_credentials(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        assert_eq!(
            c.secret_access_key.expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        assert_eq!(
            c.expiration,
            Some(UNIX_EPOCH + Duration::from_millis(1_800_000_000_000))
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("wJalr") && !shown.contains("IQoJ"),
            "{shown}"
        );
        let sent = task.await.unwrap();
        let mut dec = protocol::FrameDecoder::default();
        dec.push(&sent);
        assert_eq!(
            dec.next_message().unwrap(),
            Some(Message::GetCredentials { id: 1 })
        );
    }

    #[tokio::test]
    async fn tunnel_bytes_after_tunnel_opened_are_not_swallowed() {
        let (addr, task) = fake(vec![ack(), Message::TunnelOpened], b"server-first").await;
        let mut s = open_tunnel(&addr, "localhost", 443, Duration::from_secs(5))
            .await
            .unwrap();
        let mut got = [0u8; 12];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"server-first");
        s.write_all(b"raw").await.unwrap();
        s.shutdown().await.unwrap();
        let sent = task.await.unwrap();
        let mut dec = protocol::FrameDecoder::default();
        let open = protocol::encode(&Message::OpenTunnel {
            host: "localhost".into(),
            port: 443,
        })
        .unwrap();
        assert_eq!(&sent[..open.len()], &open[..]);
        assert_eq!(&sent[open.len()..], b"raw");
        dec.push(&sent[..open.len()]);
        assert!(dec.next_message().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_report_offers_version_3_and_ends_with_goodbye() {
        let report = protocol::EnclaveReport {
            decrypt_failures: 2,
            ..report_of("i-mock-enc1")
        };
        let ack = Message::HelloAck {
            version: 3,
            server: "fake".into(),
        };
        let (addr, task) = fake_for(true, vec![ack], b"").await;
        send_report(&addr, report.clone(), Duration::from_secs(5))
            .await
            .unwrap();
        let sent = task.await.unwrap();
        let mut dec = protocol::FrameDecoder::default();
        dec.push(&sent);
        assert_eq!(
            dec.next_message().unwrap(),
            Some(Message::Metrics { report })
        );
        assert_eq!(dec.next_message().unwrap(), Some(Message::Goodbye));

        // A version 2 proxy refuses the handshake: a typed error, and it
        // never sees the report.
        let refusal = WireError::new(ErrorCode::UnsupportedVersion, "supported 1..=2");
        let (addr, task) = fake_for(true, vec![Message::Error { error: refusal }], b"").await;
        let e = send_report(&addr, report_of("e"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            e.remote_error().map(|(c, _)| c),
            Some(ErrorCode::UnsupportedVersion),
            "{e}"
        );
        assert!(task.await.unwrap().is_empty(), "nothing after the Hello");
        // A report that would not pass the proxy's checks is not sent.
        let e = send_report(&addr, report_of("a b"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    fn report_of(enclave: &str) -> protocol::EnclaveReport {
        protocol::EnclaveReport {
            enclave: enclave.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn refusals_and_bad_input_are_typed() {
        let refusal = WireError::new(ErrorCode::PolicyDenied, "not allowed");
        let (addr, _task) = fake(vec![ack(), Message::Error { error: refusal }], b"").await;
        let e = open_tunnel(&addr, "evil.example", 443, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            e.remote_error().map(|(c, _)| c),
            Some(ErrorCode::PolicyDenied),
            "{e}"
        );

        // A version 1 proxy.
        let v1 = WireError::new(ErrorCode::UnsupportedVersion, "supported 1..=1");
        let (addr, _task) = fake(vec![Message::Error { error: v1 }], b"").await;
        let e = fetch_credentials(&addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            e.remote_error().map(|(c, _)| c),
            Some(ErrorCode::UnsupportedVersion),
            "{e}"
        );

        // A proxy that acks a version the enclave did not offer.
        let (addr, _task) = fake(
            vec![Message::HelloAck {
                version: 1,
                server: "old".into(),
            }],
            b"",
        )
        .await;
        assert!(matches!(
            fetch_credentials(&addr, Duration::from_secs(5)).await,
            Err(Error::Common(keybroker_common::Error::Protocol(
                ProtocolError::UnsupportedVersion { .. }
            )))
        ));

        // A proxy that never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::Tcp(l.local_addr().unwrap().to_string());
        let e = fetch_credentials(&addr, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        drop(l);

        // Nothing listening.
        let e = fetch_credentials(&addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");

        // A host name that could forge a log line never leaves the enclave.
        let e = open_tunnel(&addr, "kms\nforged", 443, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(matches!(
            open_tunnel(&addr, "kms", 0, Duration::from_secs(1)).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn an_oversized_reply_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::Tcp(l.local_addr().unwrap().to_string());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 256];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(&u32::MAX.to_be_bytes()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let e = fetch_credentials(&addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Common(keybroker_common::Error::Protocol(
                    ProtocolError::FrameTooLarge { .. }
                ))
            ),
            "{e}"
        );
    }
}

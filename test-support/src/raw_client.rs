//! A raw protocol client for tests of the proxy: it sends whatever it is
//! told (messages or bytes that are not frames at all) and returns what
//! comes back, one message at a time.

use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::kms::{KmsRequest, KmsResponse};
use keybroker_common::protocol::{Limits, Message, PROTOCOL_VERSION, WireError};
use keybroker_framing::{FramedReader, FramedWriter, ReadError};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

/// A byte stream to the proxy (TCP or Unix).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long [`Client::recv`] waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw connection to the proxy.
pub struct Client {
    reader: FramedReader<ReadHalf<Box<dyn Stream>>>,
    writer: FramedWriter<WriteHalf<Box<dyn Stream>>>,
}

impl Client {
    /// Connects to `addr` (no handshake).
    pub async fn connect(addr: &Address) -> Client {
        let io: Box<dyn Stream> = match addr {
            Address::Tcp(hp) => {
                Box::new(tokio::net::TcpStream::connect(hp.as_str()).await.unwrap())
            }
            Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.unwrap()),
            Address::Vsock { .. } => panic!("no vsock in tests"),
        };
        let (rd, wr) = tokio::io::split(io);
        Client {
            reader: FramedReader::new(rd, Limits::default()),
            writer: FramedWriter::new(wr),
        }
    }

    /// Connects and completes the handshake, asserting the proxy chose
    /// [`PROTOCOL_VERSION`].
    pub async fn handshake(addr: &Address) -> Client {
        let mut c = Client::connect(addr).await;
        c.send(&Message::hello("test-client/1")).await;
        match c.recv().await {
            Some(Message::HelloAck { version, .. }) => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected HelloAck, got {other:?}"),
        }
        c
    }

    /// Sends `msg`.
    pub async fn send(&mut self, msg: &Message) {
        self.writer.send(msg).await.unwrap();
    }

    /// Sends `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.send_encoded(bytes).await.unwrap();
    }

    /// Sends a `Request`.
    pub async fn request(&mut self, id: u64, timeout_ms: Option<u32>, request: KmsRequest) {
        self.send(&Message::Request {
            id,
            timeout_ms,
            request,
        })
        .await;
    }

    /// The next message; `None` when the connection ends or fails (in the
    /// middle of a frame too). Panics on a frame that does not decode, and
    /// after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Option<Message> {
        match self.reader.next_within(RECV_TIMEOUT).await {
            Ok(m) => m,
            Err(ReadError::Truncated { .. } | ReadError::Io(_)) => None,
            Err(ReadError::Timeout(_)) => panic!("no message within 10 s"),
            Err(e) => panic!("undecodable frame from the proxy: {e}"),
        }
    }

    /// The next message, which must be the `Response` to request `id`: its
    /// result. Panics on anything else.
    pub async fn response(&mut self, id: u64) -> Result<KmsResponse, WireError> {
        match self.recv().await {
            Some(Message::Response { id: got, result }) if got == id => result,
            other => panic!("expected the Response to request {id}, got {other:?}"),
        }
    }

    /// The next message, which must be a `Response` refusing request `id`:
    /// the error. Panics on anything else.
    pub async fn refusal(&mut self, id: u64) -> WireError {
        match self.response(id).await {
            Err(e) => e,
            Ok(r) => panic!("expected request {id} to be refused, got {r:?}"),
        }
    }
}

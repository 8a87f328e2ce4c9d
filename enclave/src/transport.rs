//! Connecting to the parent proxy: one byte stream per [`Address`].
//!
//! - `vsock://CID:PORT`: AF_VSOCK via `tokio-vsock`, the production
//!   transport (the parent instance is CID 3,
//!   [`keybroker_common::address::PARENT_CID`], from inside an enclave);
//! - `tcp://HOST:PORT`: loopback development and tests (`TCP_NODELAY` on, since
//!   frames are small request/response messages);
//! - `unix:///path`: a Unix domain socket.
//!
//! Every stream is boxed as [`BoxStream`] so the client is transport-agnostic.

use std::pin::Pin;
use std::task::{Context, Poll};

use keybroker_common::address::Address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Error;

/// A connected, bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A boxed [`Stream`] of any transport.
pub struct BoxStream(Box<dyn Stream>);

impl BoxStream {
    /// Boxes any stream (tests use in-memory duplex pipes).
    pub fn new(stream: impl Stream) -> Self {
        Self(Box::new(stream))
    }
}

impl core::fmt::Debug for BoxStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("BoxStream")
    }
}

impl AsyncRead for BoxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Opens a stream to `address`.
///
/// # Errors
/// [`Error::Io`] when the connection cannot be established.
pub async fn connect(address: &Address) -> Result<BoxStream, Error> {
    let ctx = || format!("connect to {address}");
    match address {
        Address::Vsock { cid, port } => connect_vsock(*cid, *port)
            .await
            .map_err(|e| Error::io(ctx(), e)),
        Address::Tcp(host_port) => {
            let s = tokio::net::TcpStream::connect(host_port.as_str())
                .await
                .map_err(|e| Error::io(ctx(), e))?;
            s.set_nodelay(true).map_err(|e| Error::io(ctx(), e))?;
            Ok(BoxStream::new(s))
        }
        Address::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| Error::io(ctx(), e))?;
            Ok(BoxStream::new(s))
        }
    }
}

/// The vsock adapter. Kept to this one call: `tokio_vsock::VsockStream`
/// implements tokio's `AsyncRead`/`AsyncWrite` itself, so it boxes like a TCP
/// stream. (Not exercised by the test suite: machines outside Nitro have no
/// vsock loopback unless the `vsock_loopback` kernel module is loaded.)
async fn connect_vsock(cid: u32, port: u32) -> std::io::Result<BoxStream> {
    let stream = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port)).await?;
    Ok(BoxStream::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_and_unix_connect_and_carry_bytes() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = Address::Tcp(tcp.local_addr().unwrap().to_string());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let unix = tokio::net::UnixListener::bind(&path).unwrap();
        let unix_addr = Address::Unix(path);

        let echo_tcp = tokio::spawn(async move {
            let (mut s, _) = tcp.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let echo_unix = tokio::spawn(async move {
            let (mut s, _) = unix.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        for addr in [tcp_addr, unix_addr] {
            let mut s = connect(&addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
        }
        echo_tcp.await.unwrap();
        echo_unix.await.unwrap();
    }

    #[tokio::test]
    async fn refused_connection_is_an_io_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::Tcp(l.local_addr().unwrap().to_string());
        drop(l);
        let err = connect(&addr).await.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("tcp://127.0.0.1"), "{err}");
    }
}

//! Listening sockets for the three transports of
//! [`keybroker_common::address::Address`]: vsock (production), TCP and Unix
//! domain sockets (local runs and tests; this machine has no vsock loopback).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use keybroker_common::address::Address;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::error::{Error, Result};

/// A connected byte stream of any transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    /// Binds `address` and returns the listener and the address actually
    /// bound (TCP port 0 resolved to the chosen port). A TCP address must
    /// be loopback (every address its host resolves to) unless
    /// `allow_non_loopback`: [`Error::Config`] otherwise.
    pub(crate) async fn bind(
        address: &Address,
        allow_non_loopback: bool,
    ) -> Result<(Self, Address)> {
        let bind_err = |source| Error::Bind {
            address: address.to_string(),
            source,
        };
        match address {
            Address::Tcp(host_port) => {
                // Resolved once: the addresses checked are the ones bound.
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port.as_str())
                    .await
                    .map_err(bind_err)?
                    .collect();
                if !allow_non_loopback
                    && let Some(open) = addrs.iter().find(|a| !a.ip().to_canonical().is_loopback())
                {
                    return Err(Error::config(format!(
                        "refusing to listen on non-loopback address {open} ({address}): whoever \
                         reaches it can use this instance's KMS access and AWS credentials; \
                         listen on vsock, a Unix socket or 127.0.0.1, or pass \
                         --allow-non-loopback (allow_non_loopback = true) if that network is \
                         really private"
                    )));
                }
                let l = TcpListener::bind(addrs.as_slice())
                    .await
                    .map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                Ok((Listener::Tcp(l), Address::Tcp(local.to_string())))
            }
            Address::Unix(path) => {
                remove_stale_socket(path).map_err(bind_err)?;
                let l = UnixListener::bind(path).map_err(bind_err)?;
                Ok((Listener::Unix(l, path.clone()), Address::Unix(path.clone())))
            }
            Address::Vsock { cid, port } => {
                // AF_VSOCK: `cid` is normally VMADDR_CID_ANY (u32::MAX), so
                // the parent accepts connections from any of its enclaves on
                // `port`. Needs the vsock kernel module (present on Nitro
                // parents, absent on ordinary machines, where bind fails
                // with an I/O error).
                let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))
                    .map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                Ok((
                    Listener::Vsock(l),
                    Address::Vsock {
                        cid: local.cid(),
                        port: local.port(),
                    },
                ))
            }
        }
    }

    /// Accepts one connection: the stream and a peer description for logs.
    pub(crate) async fn accept(&self) -> io::Result<(Box<dyn Io>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Small request/response frames: do not wait to coalesce.
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), format!("tcp:{peer}")))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), format!("unix:{}", path.display())))
            }
            Listener::Vsock(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Box::new(s), format!("vsock:{}:{}", peer.cid(), peer.port())))
            }
        }
    }

    /// Removes the Unix socket file, if any (after the listener is closed).
    pub(crate) fn cleanup(self) {
        if let Listener::Unix(l, path) = self {
            drop(l);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by a previous run would make `bind` fail with
/// `AddrInUse`; remove it, but never a file of another type.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

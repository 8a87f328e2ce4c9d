//! The endpoint as a server: which listeners, as which user, until when.
//!
//! [`KmsEndpoint::server`] starts a [`ServerBuilder`]; [`ServerBuilder::bind`]
//! does everything that may need root, in this order (what a Nitro Enclave
//! gives the program, DESIGN.md "How an enclave starts"):
//!
//! 1. `lo` is brought up when asked and a TCP listener is on a loopback
//!    address ([`crate::loopback`]; the enclave's init leaves it down);
//! 2. the TCP listener is bound ([`super::bind_tcp`]: loopback only unless
//!    allowed);
//! 3. the Unix socket's directory is created (owned by the user) when it
//!    does not exist, the socket is bound ([`super::bind_unix`]) and given
//!    to the user ([`privileges`]);
//! 4. privileges are dropped to the user.
//!
//! [`BoundServer::run_until`] then serves every listener until the shutdown
//! future completes (or one listener fails), finishes the requests in
//! flight, and removes the Unix socket.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use super::KmsEndpoint;
use super::privileges::{self, RunAs};
use crate::Error;

/// What to serve on and as whom; see the [module docs](self).
#[derive(Debug)]
#[must_use = "a builder does nothing until `bind`"]
pub struct ServerBuilder {
    endpoint: KmsEndpoint,
    tcp: Option<SocketAddr>,
    allow_non_loopback: bool,
    unix: Option<PathBuf>,
    user: Option<RunAs>,
    loopback_up: bool,
}

impl ServerBuilder {
    pub(super) fn new(endpoint: KmsEndpoint) -> Self {
        Self {
            endpoint,
            tcp: None,
            allow_non_loopback: false,
            unix: None,
            user: None,
            loopback_up: false,
        }
    }

    /// Serve on TCP at `addr` (a loopback address unless
    /// [`Self::allow_non_loopback`]).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }

    /// Whether a non-loopback TCP address is accepted: whoever reaches the
    /// endpoint gets plaintext keys, so only where the network is private.
    pub fn allow_non_loopback(mut self, allow: bool) -> Self {
        self.allow_non_loopback = allow;
        self
    }

    /// Serve on a Unix socket at `path` (a stale socket there is replaced).
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix = Some(path.into());
        self
    }

    /// After binding, give the Unix socket to `user` and drop to that user
    /// and group for good (no supplementary groups).
    pub fn run_as(mut self, user: Option<RunAs>) -> Self {
        self.user = user;
        self
    }

    /// Bring the loopback interface up before binding a loopback TCP
    /// address (inside a Nitro Enclave it starts down; needs root).
    pub fn loopback_up(mut self, yes: bool) -> Self {
        self.loopback_up = yes;
        self
    }

    /// Binds the listeners and drops privileges (module docs, steps 1-4).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for neither listener, a non-loopback
    /// address that is not allowed, or a path that is not a socket;
    /// [`Error::Io`] when bringing `lo` up, binding, changing the owner or
    /// dropping privileges fails.
    pub async fn bind(self) -> Result<BoundServer, Error> {
        if self.tcp.is_none() && self.unix.is_none() {
            return Err(Error::InvalidArgument(
                "the endpoint needs a TCP address or a Unix socket".into(),
            ));
        }
        let tcp = match self.tcp {
            Some(addr) => {
                if self.loopback_up
                    && addr.ip().is_loopback()
                    && crate::loopback::ensure_up().await?
                        == crate::loopback::LoopbackState::BroughtUp
                {
                    tracing::info!("brought the loopback interface up");
                }
                Some(super::bind_tcp(addr, self.allow_non_loopback).await?)
            }
            None => None,
        };
        let unix = match self.unix {
            Some(path) => {
                privileges::create_socket_dir(&path, self.user)?;
                let listener = super::bind_unix(&path)?;
                if let Some(to) = self.user {
                    privileges::chown_no_follow(&path, nix::sys::stat::SFlag::S_IFSOCK, to)?;
                }
                Some((path, listener))
            }
            None => None,
        };
        // Everything that may need root (lo, binding, chown) is done; no
        // request is served before this.
        if let Some(to) = self.user {
            privileges::drop_privileges(to)?;
        }
        Ok(BoundServer {
            endpoint: self.endpoint,
            tcp,
            unix,
        })
    }
}

/// A future that completes at the first SIGTERM or SIGINT (what stops an
/// enclave's service), for [`BoundServer::run_until`]. The handlers are
/// installed now, so a signal that arrives before the future is polled is
/// not lost.
///
/// # Errors
/// [`Error::Io`] if a handler cannot be installed (outside a tokio runtime
/// with signals enabled).
pub fn termination_signal() -> Result<impl Future<Output = ()> + Send, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Listeners bound (and privileges dropped), not yet serving.
#[derive(Debug)]
pub struct BoundServer {
    endpoint: KmsEndpoint,
    tcp: Option<TcpListener>,
    unix: Option<(PathBuf, UnixListener)>,
}

impl BoundServer {
    /// The TCP listener's address (with the port chosen for port 0).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot tell.
    pub fn local_addr(&self) -> Result<Option<SocketAddr>, Error> {
        self.tcp
            .as_ref()
            .map(|l| l.local_addr().map_err(|e| Error::io("local address", e)))
            .transpose()
    }

    /// The Unix socket's path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(p, _)| p.as_path())
    }

    /// Serves every listener until `shutdown` completes or one of them
    /// fails, then lets the requests in flight finish and removes the Unix
    /// socket.
    ///
    /// # Errors
    /// The first listener's failure ([`Error::Io`]); [`Error::Internal`] if a
    /// server task panicked.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut servers = tokio::task::JoinSet::new();
        if let Some(listener) = self.tcp {
            let (ep, stop) = (self.endpoint.clone(), stopped());
            servers.spawn(async move { ep.serve_tcp(listener, stop).await });
        }
        let socket = match self.unix {
            Some((path, listener)) => {
                let (ep, stop) = (self.endpoint.clone(), stopped());
                servers.spawn(async move { ep.serve_unix(listener, stop).await });
                Some(path)
            }
            None => None,
        };
        let first = tokio::select! {
            () = shutdown => None,
            done = servers.join_next() => done,
        };
        stop_tx.send_replace(true);
        let mut result = Ok(());
        for done in first
            .into_iter()
            .chain(servers.join_all().await.into_iter().map(Ok))
        {
            match done {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Err(e) if result.is_ok() => {
                    result = Err(Error::Internal(format!("endpoint task failed: {e}")));
                }
                _ => {}
            }
        }
        if let Some(path) = &socket {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

#[cfg(test)]
#[cfg(feature = "mock-nsm")]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::{Client, ClientConfig, RecipientKeys, RecipientKeysConfig};

    async fn endpoint() -> KmsEndpoint {
        let ca = crate::MockCa::generate().unwrap();
        let nsm = crate::MockNsm::new(&ca, crate::MockNsmConfig::default()).unwrap();
        let keys = RecipientKeys::new(Arc::new(nsm), RecipientKeysConfig::default())
            .await
            .unwrap();
        // No proxy behind it: only the HTTP layer answers here.
        let config = ClientConfig::new("tcp://127.0.0.1:1".parse().unwrap());
        KmsEndpoint::new(Client::new(config, keys).unwrap())
    }

    #[tokio::test]
    async fn serves_tcp_and_unix_until_shutdown_then_removes_the_socket() {
        let endpoint = endpoint().await;
        assert!(matches!(
            endpoint.server().bind().await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            endpoint
                .server()
                .tcp("0.0.0.0:0".parse().unwrap())
                .bind()
                .await,
            Err(Error::InvalidArgument(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        // The socket's directory does not exist yet (a fresh /run).
        let socket = dir.path().join("keybroker/kms.sock");
        let server = endpoint
            .server()
            .tcp("127.0.0.1:0".parse().unwrap())
            .unix(&socket)
            .bind()
            .await
            .unwrap();
        let addr = server.local_addr().unwrap().unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(server.unix_path(), Some(socket.as_path()));
        assert!(socket.exists());

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("UnknownOperationException"), "{answer}");
        assert!(tokio::net::UnixStream::connect(&socket).await.is_ok());

        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert!(!socket.exists(), "the socket is removed after shutdown");
    }
}

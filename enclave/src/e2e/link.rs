//! The enclave's link to the parent in end-to-end mode: byte tunnels to the
//! KMS endpoint and the AWS credentials, behind one trait.
//!
//! In an enclave the implementation talks to the parent proxy
//! (`OpenTunnel`/`GetCredentials` on the framed protocol: [`ProxyLink`]),
//! or to two stock `vsock-proxy` relays, to KMS and to IMDS
//! ([`super::VsockProxyLink`]). Tests and local runs can use [`DirectLink`]
//! (builds with `mock-nsm`), which connects over TCP itself and hands out
//! fixed credentials.

use std::pin::Pin;
use std::time::Duration;

use super::credentials::AwsCredentials;
use crate::Error;
use crate::transport::BoxStream;

/// A boxed, `Send` future (the trait stays object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What end-to-end mode needs from the parent. Everything it returns is
/// untrusted: the stream carries TLS that the enclave verifies, and the
/// credentials only decide whose account signs (key pinning).
pub trait ParentLink: core::fmt::Debug + Send + Sync + 'static {
    /// A new raw byte stream to `host:port` (the parent resolves the name and
    /// relays bytes; it never sees plaintext), within `timeout`.
    fn open_tunnel<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<BoxStream, Error>>;

    /// Current AWS credentials, within `timeout`.
    fn credentials(&self, timeout: Duration) -> BoxFuture<'_, Result<AwsCredentials, Error>>;
}

/// The [`ParentLink`] of an enclave: the parent proxy at an address
/// (`OpenTunnel` and `GetCredentials`, each on a new framed connection:
/// [`crate::parent`]).
#[derive(Clone, Debug)]
pub struct ProxyLink {
    proxy: keybroker_common::address::Address,
}

impl ProxyLink {
    /// The link to the proxy at `proxy`.
    pub fn new(proxy: keybroker_common::address::Address) -> Self {
        Self { proxy }
    }
}

impl ParentLink for ProxyLink {
    fn open_tunnel<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<BoxStream, Error>> {
        Box::pin(crate::parent::open_tunnel(&self.proxy, host, port, timeout))
    }

    fn credentials(&self, timeout: Duration) -> BoxFuture<'_, Result<AwsCredentials, Error>> {
        Box::pin(crate::parent::fetch_credentials(&self.proxy, timeout))
    }
}

#[cfg(feature = "mock-nsm")]
pub use direct::DirectLink;

#[cfg(feature = "mock-nsm")]
mod direct {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    type CredentialsFn = dyn Fn() -> Result<AwsCredentials, Error> + Send + Sync;

    /// A [`ParentLink`] for tests and local runs: TCP straight to the target
    /// (or to one fixed address, like a DNS override), credentials from a
    /// function. Counts tunnels and credential fetches.
    pub struct DirectLink {
        target: Option<SocketAddr>,
        credentials: Box<CredentialsFn>,
        tunnels: AtomicU64,
        fetches: AtomicU64,
    }

    impl core::fmt::Debug for DirectLink {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("DirectLink")
                .field("target", &self.target)
                .finish_non_exhaustive()
        }
    }

    impl DirectLink {
        /// Hands out `credentials` (a clone each time).
        pub fn new(credentials: AwsCredentials) -> Self {
            Self::with_credentials_fn(move || Ok(credentials.clone()))
        }

        /// Hands out what `f` returns, called on every fetch.
        pub fn with_credentials_fn(
            f: impl Fn() -> Result<AwsCredentials, Error> + Send + Sync + 'static,
        ) -> Self {
            Self {
                target: None,
                credentials: Box::new(f),
                tunnels: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
            }
        }

        /// Connects every tunnel to `addr`, whatever host it names.
        #[must_use]
        pub fn connect_to(mut self, addr: SocketAddr) -> Self {
            self.target = Some(addr);
            self
        }

        /// Tunnels opened so far.
        pub fn tunnels_opened(&self) -> u64 {
            self.tunnels.load(Ordering::Relaxed)
        }

        /// Credential fetches so far.
        pub fn credential_fetches(&self) -> u64 {
            self.fetches.load(Ordering::Relaxed)
        }
    }

    impl ParentLink for DirectLink {
        fn open_tunnel<'a>(
            &'a self,
            host: &'a str,
            port: u16,
            timeout: Duration,
        ) -> BoxFuture<'a, Result<BoxStream, Error>> {
            Box::pin(async move {
                self.tunnels.fetch_add(1, Ordering::Relaxed);
                let ctx = || format!("tunnel to {host}:{port}");
                let connect = async {
                    match self.target {
                        Some(a) => tokio::net::TcpStream::connect(a).await,
                        None => tokio::net::TcpStream::connect((host, port)).await,
                    }
                };
                let s = tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| {
                        Error::io(ctx(), std::io::Error::from(std::io::ErrorKind::TimedOut))
                    })?
                    .map_err(|e| Error::io(ctx(), e))?;
                s.set_nodelay(true).map_err(|e| Error::io(ctx(), e))?;
                Ok(BoxStream::new(s))
            })
        }

        fn credentials(&self, _timeout: Duration) -> BoxFuture<'_, Result<AwsCredentials, Error>> {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let r = (self.credentials)();
            Box::pin(async move { r })
        }
    }
}

//! The proxy server: accepts enclave connections and relays their requests
//! to a [`KmsBackend`] under the
//! [`AdmissionPolicy`](crate::admission::AdmissionPolicy).
//!
//! - this module: the listener loop, [`Proxy`] and [`ProxyHandle`];
//! - `connection`: one enclave connection (handshake, request loop, drain);
//! - `request`: one request (admission, backend, audit line);
//! - [`launch`]: `serve`'s start-up (AWS config, signals, `listening:`);
//! - `live`: the configuration in force and its reload ([`Reloader`]).
//!
//! Per connection (protocol: [`keybroker_common::protocol`]):
//!
//! 1. The enclave must send `Hello` within
//!    [`ServerLimits::handshake_timeout`]; the proxy answers `HelloAck` with
//!    [`negotiate`](keybroker_common::protocol::negotiate)'s version, or `Error{UnsupportedVersion}` and closes.
//! 2. Each `Request` runs in its own task (policy, then the backend under the
//!    request's deadline); one writer task per connection sends the
//!    `Response`s in completion order, matched by request id. More than
//!    [`ServerLimits::max_in_flight_per_connection`] requests in flight: the
//!    extra one is answered `Busy`. A request the policy allows while
//!    [`ServerLimits::max_kms_in_flight`] KMS calls are already running, on
//!    all connections together, is answered `Busy` too, without waiting.
//! 3. A frame that cannot be decoded (oversized, malformed, out of order, a
//!    duplicate id) is answered with `Error` and the connection closed;
//!    requests in flight on it are abandoned, as the protocol specifies.
//! 4. Nothing in flight and no message for [`ServerLimits::idle_timeout`]:
//!    `Goodbye`, close.
//! 5. Protocol version 2 only (a version 1 connection that sends them gets
//!    `Error{BadRequest}`): `GetCredentials` is answered `Credentials` from
//!    the [`CredentialSource`] given to [`Proxy::with_credentials`] (without
//!    one: `PolicyDenied`); `OpenTunnel`, as the first message after the
//!    handshake, turns the connection into a byte tunnel (see
//!    [`crate::tunnel`]). Broker connections and tunnels share the listener
//!    and the connection limit.
//!
//! Shutdown ([`Proxy::run_until`]'s future completes, or
//! [`ProxyHandle::shutdown`]): the listener closes, every connection gets
//! `Goodbye`, requests still arriving are answered `Shutdown`, in-flight
//! requests finish within [`ServerLimits::drain_timeout`] (the rest are
//! answered `Shutdown`), tunnels keep relaying until the same deadline, then
//! the connections close and `run_until` returns.
//!
//! Reload ([`Reloader::reload`]; `serve` on SIGHUP): the new configuration
//! applies from the next request, connection and tunnel on; requests in
//! flight finish under the one they started with.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::protocol::{Message, WireError};
use keybroker_framing::FramedWriter;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::backend::KmsBackend;
use crate::clock::{Clock, SystemClock};
use crate::credentials::CredentialSource;
use crate::error::{Error, Result};
use crate::listener::{Io, Listener};
use crate::metrics::Metrics;
use crate::refusal::Refusal;
pub use crate::settings::{ProxyConfig, ServerLimits};
pub use live::Reloader;

mod connection;
pub mod launch;
mod live;
mod request;

use live::Live;

use connection::Connection;

/// The software id sent in `HelloAck`.
pub const SERVER_ID: &str = concat!("keybroker-proxy/", env!("CARGO_PKG_VERSION"));

/// State shared by all connections.
struct Shared {
    /// The configuration in force and the limits sized by it.
    live: Arc<Live>,
    backend: Arc<dyn KmsBackend>,
    next_connection: AtomicU64,
    /// `None`: `GetCredentials` is answered `PolicyDenied`.
    credentials: Option<Arc<dyn CredentialSource>>,
    /// The time attestation documents are checked at.
    clock: Arc<dyn Clock>,
    /// Where connections, requests, tunnels and refusals are counted.
    metrics: Arc<Metrics>,
}

impl Shared {
    /// The configuration in force now (a snapshot: a reload does not change
    /// it under the caller).
    fn config(&self) -> Arc<ProxyConfig> {
        self.live.config()
    }
}

/// A bound, not yet running proxy. [`Proxy::bind`], then
/// [`Proxy::run_until`] (foreground) or [`Proxy::spawn`] (background task).
pub struct Proxy {
    listener: Listener,
    local_addr: Address,
    shared: Shared,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Binds `config.listen` (`tcp://127.0.0.1:0` picks a free port; a
    /// stale Unix socket file is replaced). Must run inside a tokio runtime.
    pub async fn bind(config: ProxyConfig, backend: impl KmsBackend) -> Result<Proxy> {
        Self::bind_shared(config, Arc::new(backend)).await
    }

    /// [`Proxy::bind`] with a shared backend.
    pub async fn bind_shared(config: ProxyConfig, backend: Arc<dyn KmsBackend>) -> Result<Proxy> {
        let (listener, local_addr) =
            Listener::bind(&config.listen, config.allow_non_loopback).await?;
        let metrics = Arc::new(Metrics::new());
        metrics.observe_verification_cache(config.admission.verification_cache.clone());
        Ok(Proxy {
            listener,
            local_addr,
            shared: Shared {
                live: Arc::new(Live::new(config)),
                backend,
                next_connection: AtomicU64::new(1),
                credentials: None,
                clock: Arc::new(SystemClock),
                metrics,
            },
        })
    }

    /// Answers `GetCredentials` (protocol version 2) with credentials from
    /// `source`. Without a source the proxy answers `PolicyDenied`.
    pub fn with_credentials(mut self, source: Arc<dyn CredentialSource>) -> Self {
        self.shared.credentials = Some(source);
        self
    }

    /// Reads the time from `clock` instead of the system clock (the
    /// default), e.g. to check attestation documents at a fixed time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.shared.clock = clock;
        self
    }

    /// Records into `metrics` instead of the proxy's own (the default, see
    /// [`Proxy::metrics`]), e.g. a registry the caller serves or reads; it
    /// then reports this proxy's verified-document cache.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics
            .observe_verification_cache(self.shared.config().admission.verification_cache.clone());
        self.shared.metrics = metrics;
        self
    }

    /// The metrics this proxy records into (serve them with
    /// [`crate::metrics::http::MetricsServer`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The address actually bound (for `tcp://...:0`, with the real port).
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// A handle that reloads this proxy's configuration while it runs.
    /// (Take it after [`Proxy::with_metrics`]: it reports the new
    /// configuration's cache to the metrics the proxy has then.)
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: self.shared.live.clone(),
            metrics: self.shared.metrics.clone(),
        }
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see the
    /// [module docs](self)) and returns once every connection is closed.
    pub async fn run_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let Proxy {
            listener,
            local_addr,
            shared,
        } = self;
        let shared = Arc::new(shared);
        let config = shared.config();
        tracing::info!(
            targets = %config.tunnels.allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            max_tunnels = config.tunnels.max_tunnels,
            credentials = shared.credentials.is_some(),
            "tunnel targets and credentials"
        );
        drop(config);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tracing::info!(address = %local_addr, "listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((io, peer)) => {
                        let conn = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                        shared.metrics.connection_accepted();
                        match shared.live.connections.semaphore().clone().try_acquire_owned() {
                            Ok(permit) => {
                                let shared = shared.clone();
                                let stop = stop_rx.clone();
                                connections.spawn(async move {
                                    tracing::debug!(conn, %peer, "connection accepted");
                                    let open = shared.metrics.connection_open();
                                    Connection::new(shared, conn, stop).run(io).await;
                                    drop(open);
                                    tracing::debug!(conn, "connection closed");
                                    drop(permit);
                                });
                            }
                            Err(_) => {
                                let max = shared.config().limits.max_connections;
                                tracing::warn!(conn, %peer, max, "connection refused: at the connection limit");
                                shared.metrics.refused(&Refusal::ConnectionLimit);
                                connections.spawn(refuse(io));
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE, ECONNABORTED, ...: keep serving, without
                        // spinning on a persistent error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let drain_timeout = shared.config().limits.drain_timeout;
        tracing::info!(
            connections = connections.len(),
            drain_timeout_ms = drain_timeout.as_millis(),
            "shutting down: no new connections, draining"
        );
        shared.metrics.set_draining();
        listener.cleanup();
        let _ = stop_tx.send(true);
        // Each connection drains within drain_timeout by itself; this bound
        // only guards against a connection stuck writing to a peer that does
        // not read.
        let all_closed = async { while connections.join_next().await.is_some() {} };
        let grace = drain_timeout + Duration::from_secs(2);
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            tracing::warn!(
                connections = connections.len(),
                "connections still open after the drain timeout; closing them"
            );
            connections.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs the proxy on a background task.
    pub fn spawn(self) -> ProxyHandle {
        let local_addr = self.local_addr.clone();
        let reloader = self.reloader();
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(self.run_until(async move {
            // Err: the handle was dropped, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }));
        ProxyHandle {
            local_addr,
            reloader,
            stop: tx,
            task,
        }
    }
}

/// A proxy running on a background task ([`Proxy::spawn`]). Dropping the
/// handle shuts the proxy down too.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: Address,
    reloader: Reloader,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl ProxyHandle {
    /// The address the proxy listens on.
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// A handle that reloads the running proxy's configuration.
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// Starts the graceful shutdown (returns at once; see
    /// [`ProxyHandle::join`]).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the proxy has stopped.
    pub async fn join(self) -> Result<()> {
        let ProxyHandle { stop, task, .. } = self;
        let result = task.await;
        drop(stop);
        result.map_err(|e| Error::Task(e.to_string()))?
    }

    /// [`ProxyHandle::shutdown`], then [`ProxyHandle::join`].
    pub async fn shutdown_and_wait(self) -> Result<()> {
        self.shutdown();
        self.join().await
    }
}

/// Registers SIGINT and SIGTERM handlers and returns a future that completes
/// on the first of them. Call inside the tokio runtime.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Answers a connection over the limit with `Error{Busy}` and closes it.
async fn refuse(io: Box<dyn Io>) {
    let error = WireError::from(Refusal::ConnectionLimit);
    let mut w = FramedWriter::new(io);
    if w.queue(&Message::Error { error }).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    }
}

//! The proxy server: accepts enclave connections and relays their requests
//! to a [`KmsBackend`] under the [`Policy`](crate::policy::Policy).
//!
//! Per connection (protocol: [`keybroker_common::protocol`]):
//!
//! 1. The enclave must send `Hello` within
//!    [`ServerLimits::handshake_timeout`]; the proxy answers `HelloAck` with
//!    [`negotiate`]'s version, or `Error{UnsupportedVersion}` and closes.
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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::kms::{KmsRequest, Operation};
use keybroker_common::protocol::{
    AwsCredentialsWire, Decoded, ErrorCode, LENGTH_PREFIX_LEN, Limits, Message, MessageKind,
    ProtocolError, WireError, decode_frame, encode_into, negotiate,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::audit::{AuditRecord, CredentialsRecord, Outcome, peer};
use crate::backend::KmsBackend;
pub use crate::config::{ProxyConfig, ServerLimits};
use crate::credentials::CredentialSource;
use crate::error::{Error, Result};
use crate::listener::{Io, Listener};
use crate::policy::check_response;

/// The software id sent in `HelloAck`.
pub const SERVER_ID: &str = concat!("keybroker-proxy/", env!("CARGO_PKG_VERSION"));

/// State shared by all connections.
struct Shared {
    config: ProxyConfig,
    backend: Arc<dyn KmsBackend>,
    next_connection: AtomicU64,
    /// `None`: `GetCredentials` is answered `PolicyDenied`.
    credentials: Option<Arc<dyn CredentialSource>>,
    /// One permit per open tunnel ([`crate::tunnel::TunnelSettings::max_tunnels`]).
    tunnel_slots: Arc<Semaphore>,
    /// One permit per KMS call in flight, across all connections
    /// ([`ServerLimits::max_kms_in_flight`]).
    kms_slots: Semaphore,
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
        let tunnel_slots = Arc::new(Semaphore::new(config.tunnels.max_tunnels));
        // `Semaphore::new` panics above MAX_PERMITS (2^61 on 64-bit).
        let kms_slots = Semaphore::new(config.limits.max_kms_in_flight.min(Semaphore::MAX_PERMITS));
        Ok(Proxy {
            listener,
            local_addr,
            shared: Shared {
                config,
                backend,
                next_connection: AtomicU64::new(1),
                credentials: None,
                tunnel_slots,
                kms_slots,
            },
        })
    }

    /// Answers `GetCredentials` (protocol version 2) with credentials from
    /// `source`. Without a source the proxy answers `PolicyDenied`.
    pub fn with_credentials(mut self, source: Arc<dyn CredentialSource>) -> Self {
        self.shared.credentials = Some(source);
        self
    }

    /// The address actually bound (for `tcp://...:0`, with the real port).
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
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
        tracing::info!(
            targets = %shared.config.tunnels.allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            max_tunnels = shared.config.tunnels.max_tunnels,
            credentials = shared.credentials.is_some(),
            "tunnel targets and credentials"
        );
        let limits = shared.config.limits.clone();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
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
                        match slots.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let shared = shared.clone();
                                let stop = stop_rx.clone();
                                connections.spawn(async move {
                                    tracing::debug!(conn, %peer, "connection accepted");
                                    Connection::new(shared, conn, stop).run(io).await;
                                    tracing::debug!(conn, "connection closed");
                                    drop(permit);
                                });
                            }
                            Err(_) => {
                                tracing::warn!(conn, %peer, max = limits.max_connections, "connection refused: at the connection limit");
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
        tracing::info!(
            connections = connections.len(),
            drain_timeout_ms = limits.drain_timeout.as_millis(),
            "shutting down: no new connections, draining"
        );
        listener.cleanup();
        let _ = stop_tx.send(true);
        // Each connection drains within drain_timeout by itself; this bound
        // only guards against a connection stuck writing to a peer that does
        // not read.
        let all_closed = async { while connections.join_next().await.is_some() {} };
        let grace = limits.drain_timeout + Duration::from_secs(2);
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
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(self.run_until(async move {
            // Err: the handle was dropped, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }));
        ProxyHandle {
            local_addr,
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
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl ProxyHandle {
    /// The address the proxy listens on.
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
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
async fn refuse(mut io: Box<dyn Io>) {
    let error = WireError::new(
        ErrorCode::Busy,
        "the proxy is at its connection limit; retry later",
    );
    let mut frame = Vec::new();
    if encode_into(&Message::Error { error }, &mut frame).is_ok() {
        let write = async {
            let _ = io.write_all(&frame).await;
            let _ = io.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// Why reading the next message stopped.
enum ReadError {
    /// The bytes violate the protocol: answer `Error`, close.
    Protocol(ProtocolError),
    /// The transport failed or closed mid-frame: close.
    Io,
}

/// Reads frames from a byte stream. Cancel-safe: the partial frame lives in
/// `buf`, so a `select!` may drop [`FrameReader::next`] at any point.
struct FrameReader {
    buf: Vec<u8>,
    limits: Limits,
}

impl FrameReader {
    fn new(limits: Limits) -> Self {
        FrameReader {
            buf: Vec::new(),
            limits,
        }
    }

    /// The next message and its body length; `None` at a clean end of
    /// stream. An oversized length prefix fails as soon as its four bytes
    /// arrive, before the body is buffered.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> Result<Option<(Message, usize)>, ReadError> {
        loop {
            let needed = if self.buf.is_empty() {
                LENGTH_PREFIX_LEN
            } else {
                match decode_frame(&self.buf, &self.limits) {
                    Ok(Decoded::Complete { message, consumed }) => {
                        self.buf.drain(..consumed);
                        return Ok(Some((message, consumed - LENGTH_PREFIX_LEN)));
                    }
                    Ok(Decoded::Incomplete { needed }) => needed,
                    Err(e) => return Err(ReadError::Protocol(e)),
                }
            };
            // Read at least what the frame still needs (bounded by the frame
            // limit, checked above), at most 64 KiB at a time.
            self.buf.reserve(needed.clamp(4096, 64 * 1024));
            match rd.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) | Err(_) => return Err(ReadError::Io),
                Ok(_) => {}
            }
        }
    }
}

/// Writes queued messages; ends when every sender is gone (returning the
/// write half, flushed, for the caller to close or to hand to a tunnel) or
/// when the peer stops accepting bytes (`None`).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Message>,
) -> Option<W> {
    use zeroize::Zeroize as _;
    let mut out = Vec::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        // A batch with a `Credentials` frame holds secrets: zeroized below.
        let mut secret = matches!(first, Message::Credentials { .. });
        push_frame(&first, &mut out);
        // Coalesce whatever else is ready into one write.
        while out.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(msg) => {
                    secret |= matches!(msg, Message::Credentials { .. });
                    push_frame(&msg, &mut out);
                }
                Err(_) => break,
            }
        }
        let written = wr.write_all(&out).await.is_ok() && wr.flush().await.is_ok();
        if secret {
            out.zeroize();
        }
        if !written {
            return None;
        }
    }
    Some(wr)
}

/// Encodes `msg`; a response that cannot be encoded (larger than the frame
/// limit, or carrying plaintext, which the policy already refuses) is
/// replaced by an `Internal` error for the same id, so the enclave is never
/// left waiting.
fn push_frame(msg: &Message, out: &mut Vec<u8>) {
    if let Err(e) = encode_into(msg, out) {
        tracing::error!(kind = %msg.kind(), error = peer(&e), "cannot encode message");
        if let Some(id) = msg.request_id() {
            let fallback = Message::Response {
                id,
                result: Err(WireError::new(
                    ErrorCode::Internal,
                    format!("the proxy could not encode the response: {e}"),
                )),
            };
            let _ = encode_into(&fallback, out);
        }
    }
}

/// What the connection knows about a request in flight, for the audit line
/// if it has to be abandoned.
struct InFlight {
    operation: Operation,
    key_id: Option<String>,
    started: Instant,
}

/// The requests of one connection that are in flight: their tasks, and which
/// task runs which request id.
#[derive(Default)]
struct Requests {
    tasks: JoinSet<u64>,
    task_ids: HashMap<tokio::task::Id, u64>,
    in_flight: HashMap<u64, InFlight>,
}

impl Requests {
    fn len(&self) -> usize {
        self.in_flight.len()
    }

    fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    fn contains(&self, id: u64) -> bool {
        self.in_flight.contains_key(&id)
    }

    fn spawn(&mut self, id: u64, info: InFlight, job: impl Future<Output = u64> + Send + 'static) {
        self.in_flight.insert(id, info);
        let handle = self.tasks.spawn(job);
        self.task_ids.insert(handle.id(), id);
    }

    /// Records a finished task. A task that panicked is returned so its
    /// request can still be answered.
    fn reap(
        &mut self,
        done: Result<(tokio::task::Id, u64), tokio::task::JoinError>,
    ) -> Option<(u64, InFlight)> {
        match done {
            Ok((task_id, request_id)) => {
                self.task_ids.remove(&task_id);
                self.in_flight.remove(&request_id);
                None
            }
            Err(e) => {
                let request_id = self.task_ids.remove(&e.id())?;
                let job = self.in_flight.remove(&request_id)?;
                Some((request_id, job))
            }
        }
    }

    /// Cancels every request still running and returns them. Requests whose
    /// task already answered (finished but not yet reaped) are not returned,
    /// so no request is ever answered twice.
    async fn cancel_all(&mut self) -> Vec<(u64, InFlight)> {
        self.tasks.abort_all();
        let mut cancelled = Vec::new();
        while let Some(done) = self.tasks.join_next_with_id().await {
            if let Some(pair) = self.reap(done) {
                cancelled.push(pair);
            }
        }
        cancelled
    }
}

/// One enclave connection.
struct Connection {
    shared: Arc<Shared>,
    id: u64,
    stop: watch::Receiver<bool>,
}

impl Connection {
    fn new(shared: Arc<Shared>, id: u64, stop: watch::Receiver<bool>) -> Self {
        Connection { shared, id, stop }
    }

    async fn run(mut self, io: Box<dyn Io>) {
        let limits = self.shared.config.limits.clone();
        let (mut rd, wr) = tokio::io::split(io);
        // Bounded: when the enclave stops reading, the writer blocks, the
        // queue fills and the reader stops reading too.
        let (tx, rx) = mpsc::channel(limits.max_in_flight_per_connection.saturating_add(8));
        let writer = tokio::spawn(write_loop(wr, rx));
        let mut reader = FrameReader::new(Limits::new(limits.max_frame_len));

        let mut tunnel = None;
        if let Some(version) = self.handshake(&mut reader, &mut rd, &tx).await {
            let mut requests = Requests::default();
            tunnel = self
                .serve(&mut reader, &mut rd, &tx, &mut requests, version)
                .await;
            // Whatever is still running lost its connection.
            for (id, job) in requests.cancel_all().await {
                self.audit_unanswered(id, &job, Outcome::Abandoned);
            }
        }
        drop(tx);
        // The writer ends once the queue is flushed (or the peer is gone).
        let Ok(Some(mut wr)) = writer.await else {
            return;
        };
        match tunnel {
            None => {
                let _ = wr.shutdown().await;
            }
            Some((host, port)) => {
                // The frame reader may already hold bytes the enclave sent
                // after `OpenTunnel`: they are the tunnel's first bytes.
                let early = std::mem::take(&mut reader.buf);
                let ctx = crate::tunnel::TunnelContext {
                    connection: self.id,
                    settings: self.shared.config.tunnels.clone(),
                    slots: self.shared.tunnel_slots.clone(),
                    stop: self.stop.clone(),
                    drain_timeout: limits.drain_timeout,
                };
                crate::tunnel::serve(ctx, rd.unsplit(wr), early, host, port).await;
            }
        }
    }

    /// Waits for `Hello` and answers it; the negotiated version, or `None`:
    /// close the connection.
    async fn handshake<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader,
        rd: &mut R,
        tx: &mpsc::Sender<Message>,
    ) -> Option<u16> {
        let timeout = self.shared.config.limits.handshake_timeout;
        let first = tokio::select! {
            r = tokio::time::timeout(timeout, reader.next(rd)) => r,
            () = stopped(&mut self.stop) => return None,
        };
        let conn = self.id;
        match first {
            Err(_) => {
                tracing::info!(conn, "no Hello within the handshake timeout");
                let error = WireError::new(
                    ErrorCode::BadRequest,
                    format!("no Hello within {} ms", timeout.as_millis()),
                );
                let _ = tx.send(Message::Error { error }).await;
                None
            }
            Ok(Ok(Some((Message::Hello { versions, client }, _)))) => match negotiate(versions) {
                Ok(version) => {
                    tracing::info!(
                        conn,
                        client = peer(crate::policy::short(&client)),
                        version,
                        "handshake"
                    );
                    let ack = Message::HelloAck {
                        version,
                        server: SERVER_ID.to_owned(),
                    };
                    tx.send(ack).await.ok().map(|()| version)
                }
                Err(e) => {
                    tracing::info!(conn, error = peer(&e), "handshake failed");
                    send_fatal(tx, e).await;
                    None
                }
            },
            Ok(Ok(Some((other, _)))) => {
                let e = ProtocolError::UnexpectedMessage {
                    expected: "Hello",
                    got: other.kind(),
                };
                tracing::info!(conn, error = peer(&e), "handshake failed");
                send_fatal(tx, e).await;
                None
            }
            Ok(Ok(None)) | Ok(Err(ReadError::Io)) => None,
            Ok(Err(ReadError::Protocol(e))) => {
                tracing::info!(conn, error = peer(&e), "bad frame during handshake");
                send_fatal(tx, e).await;
                None
            }
        }
    }

    /// The request loop, after a successful handshake that negotiated
    /// `version`. Returns when the connection is to be closed (`None`;
    /// requests still in `requests` are then cancelled by the caller) or is
    /// to become a tunnel to the `(host, port)` returned.
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader,
        rd: &mut R,
        tx: &mpsc::Sender<Message>,
        requests: &mut Requests,
        version: u16,
    ) -> Option<(String, u16)> {
        let limits = self.shared.config.limits.clone();
        let conn = self.id;
        // The enclave may still send requests.
        let mut reading = true;
        // Goodbye sent: no new requests are accepted.
        let mut draining = false;
        let mut drain_deadline: Option<Instant> = None;
        let mut idle_deadline = Instant::now() + limits.idle_timeout;
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut stop = self.stop.clone();
        // Nothing but the handshake so far: `OpenTunnel` is allowed.
        let mut first = true;

        loop {
            if (draining || !reading) && requests.is_empty() {
                return None;
            }
            tokio::select! {
                // Reap finished requests first, so capacity frees up.
                biased;
                Some(done) = requests.tasks.join_next_with_id(), if !requests.tasks.is_empty() => {
                    if let Some((id, job)) = requests.reap(done) {
                        // The request's task panicked: answer it anyway.
                        tracing::error!(conn, id, "request task failed");
                        let error = WireError::new(ErrorCode::Internal, "the proxy failed while handling this request");
                        self.answer_unrun(tx, id, &job, error).await;
                    }
                    idle_deadline = Instant::now() + limits.idle_timeout;
                }
                read = reader.next(rd), if reading => match read {
                    Ok(Some((message, len))) => {
                        idle_deadline = Instant::now() + limits.idle_timeout;
                        let was_first = std::mem::replace(&mut first, false);
                        if let Err(e) = message.kind().check_version(version) {
                            self.fatal(tx, requests, e).await;
                            return None;
                        }
                        match message {
                            Message::Request { id, timeout_ms, request } => {
                                if requests.contains(id) {
                                    self.fatal(tx, requests, ProtocolError::DuplicateRequestId { id }).await;
                                    return None;
                                }
                                let refusal = if draining {
                                    Some(WireError::new(ErrorCode::Shutdown, "the proxy is shutting down; retry on a new connection"))
                                } else if requests.len() >= limits.max_in_flight_per_connection {
                                    Some(WireError::new(ErrorCode::Busy, format!(
                                        "{} requests in flight on this connection; retry after a back-off",
                                        requests.len())))
                                } else {
                                    None
                                };
                                let info = InFlight {
                                    operation: request.operation(),
                                    key_id: request.key_id().map(str::to_owned),
                                    started: Instant::now(),
                                };
                                match refusal {
                                    Some(error) => self.answer_unrun(tx, id, &info, error).await,
                                    None => {
                                        let job = handle_request(self.shared.clone(), conn, id, timeout_ms, request, len, tx.clone());
                                        requests.spawn(id, info, job);
                                    }
                                }
                            }
                            Message::Goodbye => {
                                tracing::debug!(conn, in_flight = requests.len(), "Goodbye from the enclave");
                                reading = false;
                            }
                            Message::Error { error } => {
                                tracing::info!(conn, error = peer(&error), "Error from the enclave; closing");
                                return None;
                            }
                            Message::GetCredentials { id } => {
                                let result = if draining {
                                    Err(WireError::new(ErrorCode::Shutdown, "the proxy is shutting down; retry on a new connection"))
                                } else {
                                    self.credentials(id).await
                                };
                                let _ = tx.send(Message::Credentials { id, result }).await;
                            }
                            Message::OpenTunnel { host, port } if was_first => {
                                tracing::debug!(conn, host = peer(&host), port, "OpenTunnel");
                                return Some((host, port));
                            }
                            other @ (Message::Hello { .. }
                            | Message::HelloAck { .. }
                            | Message::Response { .. }
                            | Message::Credentials { .. }
                            | Message::OpenTunnel { .. }
                            | Message::TunnelOpened) => {
                                let expected = if other.kind() == MessageKind::OpenTunnel {
                                    "OpenTunnel only as the first message after the handshake"
                                } else {
                                    "Request, GetCredentials or Goodbye"
                                };
                                let e = ProtocolError::UnexpectedMessage {
                                    expected,
                                    got: other.kind(),
                                };
                                self.fatal(tx, requests, e).await;
                                return None;
                            }
                        }
                    }
                    // End of stream: answer what is in flight, then close.
                    Ok(None) => reading = false,
                    Err(ReadError::Io) => return None,
                    Err(ReadError::Protocol(e)) => {
                        self.fatal(tx, requests, e).await;
                        return None;
                    }
                },
                () = stopped(&mut stop), if !draining => {
                    tracing::debug!(conn, in_flight = requests.len(), "sending Goodbye");
                    draining = true;
                    drain_deadline = Some(Instant::now() + limits.drain_timeout);
                    let _ = tx.send(Message::Goodbye).await;
                }
                () = tokio::time::sleep_until(idle_deadline), if requests.is_empty() && !draining => {
                    tracing::debug!(conn, "idle; sending Goodbye");
                    let _ = tx.send(Message::Goodbye).await;
                    return None;
                }
                () = tokio::time::sleep_until(drain_deadline.unwrap_or(far_future)), if drain_deadline.is_some() => {
                    let cancelled = requests.cancel_all().await;
                    tracing::warn!(conn, cancelled = cancelled.len(), "drain timeout: answering the rest with Shutdown");
                    for (id, job) in cancelled {
                        let error = WireError::new(ErrorCode::Shutdown,
                            "the proxy shut down before KMS answered; retry on a new connection");
                        self.answer_unrun(tx, id, &job, error).await;
                    }
                    return None;
                }
            }
        }
    }

    /// The answer to `GetCredentials{id}`, with its audit line. Awaited in
    /// the connection's loop (bounded by the default request timeout): the
    /// chain caches credentials, so this is fast but for the first call.
    async fn credentials(&self, id: u64) -> Result<AwsCredentialsWire, WireError> {
        let timeout = self.shared.config.limits.default_request_timeout;
        let result = match &self.shared.credentials {
            None => Err(WireError::new(
                ErrorCode::PolicyDenied,
                "this proxy hands out no AWS credentials (started without a credential source \
                 or with --no-credentials)",
            )),
            Some(source) => match tokio::time::timeout(timeout, source.credentials()).await {
                Err(_) => Err(WireError::new(
                    ErrorCode::Timeout,
                    format!("no AWS credentials within {} ms", timeout.as_millis()),
                )),
                Ok(Err(e)) => Err(e),
                Ok(Ok(creds)) => match creds.validate() {
                    Ok(()) => Ok(creds),
                    Err(e) => {
                        tracing::error!(conn = self.id, error = %e, "the credential source gave unusable credentials");
                        Err(WireError::new(
                            ErrorCode::Internal,
                            format!("the proxy's AWS credentials are unusable: {e}"),
                        ))
                    }
                },
            },
        };
        CredentialsRecord {
            connection: self.id,
            request_id: id,
            error: result.as_ref().err().map(WireError::code),
            expiration_ms: result.as_ref().ok().and_then(|c| c.expiration_ms),
        }
        .emit();
        result
    }

    /// Answers a request the proxy did not (or could not) run to the end,
    /// with its audit line.
    async fn answer_unrun(
        &self,
        tx: &mpsc::Sender<Message>,
        id: u64,
        job: &InFlight,
        error: WireError,
    ) {
        self.audit_unanswered(id, job, Outcome::Error(error.code()));
        let _ = tx
            .send(Message::Response {
                id,
                result: Err(error),
            })
            .await;
    }

    fn audit_unanswered(&self, id: u64, job: &InFlight, outcome: Outcome) {
        AuditRecord {
            connection: self.id,
            request_id: id,
            operation: job.operation,
            key_id: job.key_id.as_deref(),
            caller_pcr0: None,
            attestation_verified: false,
            outcome,
            latency: job.started.elapsed(),
        }
        .emit();
    }

    /// A protocol violation: abandon the requests in flight, send `Error`
    /// as the last frame, close.
    async fn fatal(&self, tx: &mpsc::Sender<Message>, requests: &mut Requests, e: ProtocolError) {
        tracing::info!(
            conn = self.id,
            error = peer(&e),
            "protocol violation; closing"
        );
        for (id, job) in requests.cancel_all().await {
            self.audit_unanswered(id, &job, Outcome::Abandoned);
        }
        send_fatal(tx, e).await;
    }
}

/// Completes once the server is stopping (or gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

/// Queues `Error{e}` (code from the one mapping in `keybroker-common`).
async fn send_fatal(tx: &mpsc::Sender<Message>, e: ProtocolError) {
    let error = WireError::from(&keybroker_common::Error::Protocol(e));
    let _ = tx.send(Message::Error { error }).await;
}

/// Runs one request: policy, backend under the deadline, response check,
/// audit line, response. Returns the request id.
async fn handle_request(
    shared: Arc<Shared>,
    conn: u64,
    id: u64,
    timeout_ms: Option<u32>,
    request: KmsRequest,
    len: usize,
    tx: mpsc::Sender<Message>,
) -> u64 {
    let started = Instant::now();
    let limits = &shared.config.limits;
    let budget = timeout_ms
        .map_or(limits.default_request_timeout, |ms| {
            Duration::from_millis(u64::from(ms))
        })
        .min(limits.max_request_timeout);
    let deadline = started + budget;
    let operation = request.operation();
    let key_id = request.key_id().map(str::to_owned);

    let now = crate::cli::now();
    let (decision, request) =
        if shared.config.policy.verifies_attestation() && request.recipient().is_some() {
            // Chain and signature verification (ECDSA P-384): off the
            // async workers.
            let policy_owner = shared.clone();
            let evaluated = tokio::task::spawn_blocking(move || {
                let d = policy_owner.config.policy.evaluate(&request, len, now);
                (d, request)
            })
            .await;
            match evaluated {
                Ok(pair) => pair,
                Err(e) => {
                    let result = Err(WireError::new(
                        ErrorCode::Internal,
                        format!("policy evaluation failed: {e}"),
                    ));
                    finish(
                        &tx,
                        conn,
                        id,
                        operation,
                        key_id.as_deref(),
                        None,
                        false,
                        result,
                        None,
                        started,
                    )
                    .await;
                    return id;
                }
            }
        } else {
            (shared.config.policy.evaluate(&request, len, now), request)
        };

    let mut denied = None;
    let result = match decision.verdict {
        Err(denial) => {
            // The audit line names only the rule; this says why (e.g. which
            // images a PcrMismatch was checked against).
            tracing::info!(conn, id, reason = peer(&denial), "request denied by policy");
            denied = Some(denial.rule);
            Err(denial.to_wire())
        }
        // The permit is held until KMS answers or the deadline passes (the
        // call is then dropped), or until this task is aborted.
        Ok(()) => match shared.kms_slots.try_acquire() {
            Err(_) => Err(WireError::new(
                ErrorCode::Busy,
                format!(
                    "{} KMS calls in flight on this proxy (its limit); retry after a back-off",
                    limits.max_kms_in_flight
                ),
            )),
            Ok(_permit) => {
                match tokio::time::timeout_at(deadline, shared.backend.call(request)).await {
                    Err(_) => Err(WireError::new(
                        ErrorCode::Timeout,
                        format!("KMS did not answer within {} ms", budget.as_millis()),
                    )),
                    Ok(Ok(response)) => match check_response(&response) {
                        Ok(()) => Ok(response),
                        Err(denial) => {
                            // `response` (with its SecretBytes) is dropped,
                            // and so zeroized, here.
                            tracing::error!(
                                conn,
                                id,
                                operation = operation.as_str(),
                                "KMS returned plaintext key material; discarded"
                            );
                            denied = Some(denial.rule);
                            Err(denial.to_wire())
                        }
                    },
                    Ok(Err(e)) => Err(e),
                }
            }
        },
    };
    finish(
        &tx,
        conn,
        id,
        operation,
        key_id.as_deref(),
        decision.caller_pcr0.as_deref(),
        decision.attestation_verified,
        result,
        denied,
        started,
    )
    .await;
    id
}

/// Emits the audit line and queues the response.
#[allow(clippy::too_many_arguments)]
async fn finish(
    tx: &mpsc::Sender<Message>,
    conn: u64,
    id: u64,
    operation: Operation,
    key_id: Option<&str>,
    caller_pcr0: Option<&str>,
    attestation_verified: bool,
    result: Result<keybroker_common::kms::KmsResponse, WireError>,
    denied: Option<crate::policy::Rule>,
    started: Instant,
) {
    let outcome = denied.map_or_else(|| Outcome::of(&result), Outcome::Denied);
    AuditRecord {
        connection: conn,
        request_id: id,
        operation,
        key_id,
        caller_pcr0,
        attestation_verified,
        outcome,
        latency: started.elapsed(),
    }
    .emit();
    let _ = tx.send(Message::Response { id, result }).await;
}

//! The broker-mode connection to the parent proxy: one connection carries
//! every request; a supervisor task connects, performs the `Hello`
//! handshake and reconnects with back-off; per connection a writer task
//! sends frames and a reader task dispatches the answers (in any order, by
//! request id) to the waiting callers ([`Conn`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybroker_common::kms::{KmsResponse, Operation};
use keybroker_common::protocol::{self, Limits, Message, ProtocolError, SUPPORTED_VERSIONS};
use keybroker_framing::{FramedReader, FramedWriter, ReadError};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{ClientConfig, Counters};
use crate::Error;
use crate::transport::{self, BoxStream};

/// Frames queued for the writer before callers wait for room.
const OUTGOING_QUEUE: usize = 1024;
/// A connection that lived at least this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// The read half of a connection to the proxy.
type Reader = FramedReader<ReadHalf<BoxStream>>;
/// The write half of a connection to the proxy.
type Writer = FramedWriter<WriteHalf<BoxStream>>;

/// What the supervisor publishes: the current connection, or why there is
/// none.
#[derive(Clone)]
pub(super) enum ConnState {
    /// No usable connection; the last attempt's error.
    Connecting { last_error: Option<Arc<str>> },
    /// Established (handshake done).
    Connected(Arc<Conn>),
}

/// Aborts a task when dropped.
pub(super) struct TaskGuard(pub(super) tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A request waiting for its answer.
pub(super) struct Pending {
    operation: Operation,
    tx: oneshot::Sender<Result<KmsResponse, Error>>,
}

/// One established connection.
pub(super) struct Conn {
    pub(super) outgoing: mpsc::Sender<Vec<u8>>,
    /// `None` once the connection is closed: nothing can be registered.
    pending: Mutex<Option<HashMap<u64, Pending>>>,
    /// `true` once the connection takes no new requests (closed, or the
    /// proxy said `Goodbye`/`Shutdown`).
    unusable: watch::Sender<bool>,
}

impl Conn {
    pub(super) fn is_usable(&self) -> bool {
        !*self.unusable.borrow()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.lock().as_ref().map_or(0, HashMap::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, Pending>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter; `false` if the connection is already closed.
    pub(super) fn register(
        &self,
        id: u64,
        operation: Operation,
        tx: oneshot::Sender<Result<KmsResponse, Error>>,
    ) -> bool {
        match self.lock().as_mut() {
            Some(map) if self.is_usable() => {
                map.insert(id, Pending { operation, tx });
                true
            }
            _ => false,
        }
    }

    pub(super) fn take(&self, id: u64) -> Option<Pending> {
        self.lock().as_mut().and_then(|m| m.remove(&id))
    }

    pub(super) fn mark_draining(&self) {
        self.unusable.send_replace(true);
    }

    /// Closes the connection. With `error`, every waiter gets it; without,
    /// waiters see their channel dropped (connection lost).
    fn close(&self, error: Option<keybroker_common::Error>) {
        self.unusable.send_replace(true);
        let pending = self.lock().take().unwrap_or_default();
        if let Some(e) = error {
            for (_, p) in pending {
                let _ = p.tx.send(Err(Error::Common(e.clone())));
            }
        }
    }
}

/// Removes a request's waiter when the caller stops waiting (timeout,
/// cancellation), so late answers are dropped.
pub(super) struct PendingGuard {
    pub(super) conn: Arc<Conn>,
    pub(super) id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let _ = self.conn.take(self.id);
    }
}

/// Connects, reconnects, and publishes the current connection.
pub(super) async fn supervise(
    config: ClientConfig,
    state: watch::Sender<ConnState>,
    counters: Arc<Counters>,
) {
    let mut attempt: u32 = 0;
    let mut tasks: Vec<TaskGuard> = Vec::new();
    loop {
        tasks.retain(|t| !t.0.is_finished());
        let connected = match tokio::time::timeout(config.connect_timeout, establish(&config)).await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable {
                reason: format!(
                    "connecting to {} timed out after {:?}",
                    config.address, config.connect_timeout
                ),
            }),
        };
        match connected {
            Ok((reader, writer)) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
                let conn = Arc::new(Conn {
                    outgoing: tx,
                    pending: Mutex::new(Some(HashMap::new())),
                    unusable: watch::Sender::new(false),
                });
                let mut unusable = conn.unusable.subscribe();
                tasks.push(TaskGuard(tokio::spawn(drive(
                    conn.clone(),
                    reader,
                    writer,
                    rx,
                ))));
                tracing::info!(address = %config.address, "connected to the proxy");
                let since = Instant::now();
                state.send_replace(ConnState::Connected(conn));
                let _ = unusable.wait_for(|u| *u).await;
                state.send_replace(ConnState::Connecting {
                    last_error: Some(Arc::from("connection to the proxy closed")),
                });
                tracing::info!(address = %config.address, "proxy connection ended; reconnecting");
                if since.elapsed() >= STABLE_CONNECTION {
                    attempt = 0;
                } else {
                    tokio::time::sleep(config.backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
            Err(e) => {
                tracing::debug!(address = %config.address, error = %e, "connection attempt failed");
                state.send_replace(ConnState::Connecting {
                    last_error: Some(Arc::from(e.to_string())),
                });
                tokio::time::sleep(config.backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Connects and performs the handshake: `Hello`, then `HelloAck` with a
/// version this build offered. Returns the connection's reader, which may
/// already hold bytes that followed the `HelloAck`, and writer.
async fn establish(config: &ClientConfig) -> Result<(Reader, Writer), Error> {
    let stream = transport::connect(&config.address).await?;
    let (rd, wr) = tokio::io::split(stream);
    let mut writer = FramedWriter::new(wr);
    writer.queue(&Message::hello(config.client_id.clone()))?;
    writer
        .flush()
        .await
        .map_err(|e| Error::io("send Hello", e))?;
    let mut reader = FramedReader::new(rd, Limits::new(config.max_frame_len));
    let first = match reader.next().await {
        Ok(Some(message)) => message,
        Err(ReadError::Protocol(e)) => return Err(e.into()),
        Err(ReadError::Io(e)) => return Err(Error::io("read from the proxy", e)),
        // The end of the stream, between frames or in the middle of one.
        Ok(None) | Err(_) => {
            return Err(Error::io(
                "handshake",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "proxy closed the connection",
                ),
            ));
        }
    };
    match first {
        Message::HelloAck { version, server } => {
            protocol::check_hello_ack(SUPPORTED_VERSIONS, version)?;
            tracing::debug!(version, server = %server, "handshake complete");
            Ok((reader, writer))
        }
        Message::Error { error } => Err(Error::Common(error.into())),
        other => Err(ProtocolError::UnexpectedMessage {
            expected: "HelloAck",
            got: other.kind(),
        }
        .into()),
    }
}

/// Runs one connection: the writer and the reader, until either ends.
async fn drive(conn: Arc<Conn>, reader: Reader, writer: Writer, outgoing: mpsc::Receiver<Vec<u8>>) {
    let error = tokio::select! {
        e = read_loop(&conn, reader) => e,
        e = write_loop(writer, outgoing) => e,
    };
    if let Some(e) = &error {
        tracing::warn!(error = %e, "proxy connection failed");
    }
    conn.close(error);
}

/// Writes queued frames (encoded by the callers), batching what is ready.
/// Returns on a write error (the waiters then see a lost connection).
async fn write_loop(
    mut writer: Writer,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
) -> Option<keybroker_common::Error> {
    if let Err(e) = writer
        .run_queue(&mut outgoing, |batch, frame| batch.push_encoded(&frame))
        .await
    {
        tracing::debug!(error = %e, "write to the proxy failed");
        return None;
    }
    std::future::pending().await
}

/// Reads and dispatches messages. Returns `None` when the stream ends (or,
/// after `Goodbye`, when nothing is left in flight), or the error every
/// waiter must get (a protocol violation, a fatal `Error` from the proxy).
async fn read_loop(conn: &Conn, mut reader: Reader) -> Option<keybroker_common::Error> {
    let mut goodbye = false;
    loop {
        // What is buffered first; then, with nothing left in flight after
        // `Goodbye`, stop rather than read again.
        let message = match reader.try_next() {
            Ok(Some(frame)) => frame.message,
            Ok(None) => {
                if goodbye && conn.in_flight() == 0 {
                    return None;
                }
                match reader.next().await {
                    Ok(Some(message)) => message,
                    Err(ReadError::Protocol(e)) => return Some(e.into()),
                    // The end of the stream (between frames or in the middle
                    // of one), a transport failure.
                    Ok(None) | Err(_) => return None,
                }
            }
            Err(ReadError::Protocol(e)) => return Some(e.into()),
            // `try_next` does not read: no other error.
            Err(_) => return None,
        };
        match message {
            Message::Response { id, result } => {
                let Some(p) = conn.take(id) else {
                    // Late answer to a request that timed out or was
                    // cancelled.
                    tracing::debug!(id, "response for a request no longer waiting");
                    continue;
                };
                let result = match result {
                    Ok(resp) if resp.operation() != p.operation => {
                        Err(Error::from(ProtocolError::ResponseMismatch {
                            expected: p.operation,
                            got: resp.operation(),
                        }))
                    }
                    Ok(resp) if resp.has_plaintext() => {
                        Err(Error::from(ProtocolError::PlaintextOnWire {
                            operation: resp.operation(),
                        }))
                    }
                    Ok(resp) => Ok(resp),
                    Err(wire) => Err(Error::Common(wire.into())),
                };
                let _ = p.tx.send(result);
            }
            Message::Goodbye => {
                tracing::info!("proxy said Goodbye; draining this connection");
                goodbye = true;
                conn.mark_draining();
            }
            Message::Error { error } => return Some(error.into()),
            other => {
                return Some(
                    ProtocolError::UnexpectedMessage {
                        expected: "Response",
                        got: other.kind(),
                    }
                    .into(),
                );
            }
        }
    }
}

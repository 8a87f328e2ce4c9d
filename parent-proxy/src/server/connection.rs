//! One enclave connection: the handshake, the request loop (requests run
//! in their own tasks, see `request`), credentials, the drain on
//! shutdown, and the hand-over to a tunnel.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keybroker_common::kms::Operation;
use keybroker_common::protocol::{
    AwsCredentialsWire, Limits, Message, MessageKind, ProtocolError, WireError, negotiate,
};
use keybroker_framing::{Batch, Frame, FramedReader, FramedWriter, ReadError};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::request::handle_request;
use super::{SERVER_ID, Shared};
use crate::audit::{AuditRecord, CredentialsRecord, Outcome, peer};
use crate::listener::Io;
use crate::metrics::enclaves::Stored;
use crate::refusal::Refusal;
use crate::text::short;

/// Encodes `msg` into the writer's batch; a response that cannot be encoded
/// (larger than the frame limit, or carrying plaintext, which the policy
/// already refuses) is replaced by an `Internal` error for the same id, so
/// the enclave is never left waiting.
fn push_frame(out: &mut Batch, msg: Message) {
    if let Err(e) = out.push(&msg) {
        tracing::error!(kind = %msg.kind(), error = peer(&e), "cannot encode message");
        if let Some(id) = msg.request_id() {
            let fallback = Message::Response {
                id,
                result: Err(Refusal::Unencodable {
                    reason: e.to_string(),
                }
                .into()),
            };
            let _ = out.push(&fallback);
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
pub(super) struct Connection {
    shared: Arc<Shared>,
    id: u64,
    stop: watch::Receiver<bool>,
}

impl Connection {
    pub(super) fn new(shared: Arc<Shared>, id: u64, stop: watch::Receiver<bool>) -> Self {
        Connection { shared, id, stop }
    }

    pub(super) async fn run(mut self, io: Box<dyn Io>) {
        let limits = self.shared.config().limits.clone();
        let (rd, wr) = tokio::io::split(io);
        // Bounded: when the enclave stops reading, the writer blocks, the
        // queue fills and the reader stops reading too.
        let (tx, mut rx) = mpsc::channel(limits.max_in_flight_per_connection.saturating_add(8));
        // Writes queued messages (a batch holding `Credentials` is zeroized
        // once written); ends when every sender is gone (with the writer,
        // flushed, for the caller to close or to hand to a tunnel) or when
        // the peer stops accepting bytes (`None`).
        let writer = tokio::spawn(async move {
            let mut w = FramedWriter::new(wr);
            w.run_queue(&mut rx, push_frame).await.ok().map(|()| w)
        });
        let mut reader = FramedReader::new(rd, Limits::new(limits.max_frame_len));

        let mut tunnel = None;
        if let Some(version) = self.handshake(&mut reader, &tx).await {
            let mut requests = Requests::default();
            tunnel = self.serve(&mut reader, &tx, &mut requests, version).await;
            // Whatever is still running lost its connection.
            for (id, job) in requests.cancel_all().await {
                self.audit_unanswered(id, &job, Outcome::Abandoned);
            }
        }
        drop(tx);
        // The writer ends once the queue is flushed (or the peer is gone).
        let Ok(Some(mut writer)) = writer.await else {
            return;
        };
        match tunnel {
            None => {
                let _ = writer.shutdown().await;
            }
            Some((host, port)) => {
                // The frame reader may already hold bytes the enclave sent
                // after `OpenTunnel`: they are the tunnel's first bytes.
                let (rd, early) = reader.into_parts();
                let ctx = crate::tunnel::TunnelContext {
                    connection: self.id,
                    settings: self.shared.config().tunnels.clone(),
                    slots: self.shared.live.tunnels.semaphore().clone(),
                    metrics: self.shared.metrics.clone(),
                    stop: self.stop.clone(),
                    drain_timeout: limits.drain_timeout,
                };
                crate::tunnel::serve(ctx, rd.unsplit(writer.into_inner()), early, host, port).await;
            }
        }
    }

    /// Waits for `Hello` and answers it; the negotiated version, or `None`:
    /// close the connection.
    async fn handshake<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FramedReader<R>,
        tx: &mpsc::Sender<Message>,
    ) -> Option<u16> {
        let timeout = self.shared.config().limits.handshake_timeout;
        let first = tokio::select! {
            r = tokio::time::timeout(timeout, reader.next_frame()) => r,
            () = stopped(&mut self.stop) => return None,
        };
        let conn = self.id;
        match first {
            Err(_) => {
                tracing::info!(conn, "no Hello within the handshake timeout");
                let refusal = Refusal::HandshakeTimeout { timeout };
                self.shared.metrics.refused(&refusal);
                let error = refusal.into();
                let _ = tx.send(Message::Error { error }).await;
                None
            }
            Ok(Ok(Some(Frame {
                message: Message::Hello { versions, client },
                ..
            }))) => match negotiate(versions) {
                Ok(version) => {
                    tracing::info!(conn, client = peer(short(&client)), version, "handshake");
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
            Ok(Ok(Some(Frame { message: other, .. }))) => {
                let e = ProtocolError::UnexpectedMessage {
                    expected: "Hello",
                    got: other.kind(),
                };
                tracing::info!(conn, error = peer(&e), "handshake failed");
                send_fatal(tx, e).await;
                None
            }
            Ok(Err(ReadError::Protocol(e))) => {
                tracing::info!(conn, error = peer(&e), "bad frame during handshake");
                send_fatal(tx, e).await;
                None
            }
            // End of stream, truncated frame, transport failure: close.
            Ok(Ok(None) | Err(_)) => None,
        }
    }

    /// The request loop, after a successful handshake that negotiated
    /// `version`. Returns when the connection is to be closed (`None`;
    /// requests still in `requests` are then cancelled by the caller) or is
    /// to become a tunnel to the `(host, port)` returned.
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FramedReader<R>,
        tx: &mpsc::Sender<Message>,
        requests: &mut Requests,
        version: u16,
    ) -> Option<(String, u16)> {
        let limits = self.shared.config().limits.clone();
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
                        self.answer_unrun(tx, id, &job, Refusal::TaskFailed).await;
                    }
                    idle_deadline = Instant::now() + limits.idle_timeout;
                }
                read = reader.next_frame(), if reading => match read {
                    Ok(Some(Frame { message, body_len: len })) => {
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
                                    Some(Refusal::Draining)
                                } else if requests.len() >= limits.max_in_flight_per_connection {
                                    Some(Refusal::ConnectionBusy { in_flight: requests.len() })
                                } else {
                                    None
                                };
                                let info = InFlight {
                                    operation: request.operation(),
                                    key_id: request.key_id().map(str::to_owned),
                                    started: Instant::now(),
                                };
                                match refusal {
                                    Some(refusal) => self.answer_unrun(tx, id, &info, refusal).await,
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
                                    self.shared.metrics.refused(&Refusal::Draining);
                                    Err(Refusal::Draining.into())
                                } else {
                                    self.credentials(id).await
                                };
                                let _ = tx.send(Message::Credentials { id, result }).await;
                            }
                            Message::Metrics { report } => {
                                // The id passed `check_enclave_id`: safe to log as is.
                                tracing::debug!(conn, enclave = %report.enclave, "Metrics from the enclave");
                                let stored = self.shared.metrics.enclave_report(report);
                                if stored == Stored::OverLimit {
                                    tracing::debug!(conn, "enclave report dropped: too many enclaves reporting");
                                }
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
                                    "Request, GetCredentials, Metrics or Goodbye"
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
                    Err(ReadError::Protocol(e)) => {
                        self.fatal(tx, requests, e).await;
                        return None;
                    }
                    // Truncated frame, transport failure: close.
                    Err(_) => return None,
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
                        self.answer_unrun(tx, id, &job, Refusal::DrainTimeout).await;
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
        let timeout = self.shared.config().limits.default_request_timeout;
        let metrics = &self.shared.metrics;
        let refused = |refusal: Refusal| {
            metrics.refused(&refusal);
            Err(refusal.into())
        };
        let result = match &self.shared.credentials {
            None => refused(Refusal::NoCredentials),
            Some(source) => match tokio::time::timeout(timeout, source.credentials()).await {
                Err(_) => {
                    metrics.credentials_fetched(Err(()));
                    refused(Refusal::CredentialsTimeout { timeout })
                }
                Ok(Err(e)) => {
                    metrics.credentials_fetched(Err(()));
                    Err(e)
                }
                Ok(Ok(creds)) => match creds.validate() {
                    Ok(()) => {
                        metrics.credentials_fetched(Ok(creds.expiration_ms));
                        Ok(creds)
                    }
                    Err(e) => {
                        tracing::error!(conn = self.id, error = %e, "the credential source gave unusable credentials");
                        metrics.credentials_fetched(Err(()));
                        refused(Refusal::CredentialsUnusable {
                            reason: e.to_string(),
                        })
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
        refusal: Refusal,
    ) {
        self.shared.metrics.refused(&refusal);
        let error = WireError::from(refusal);
        self.audit_unanswered(id, job, Outcome::Error(error.code()));
        let _ = tx
            .send(Message::Response {
                id,
                result: Err(error),
            })
            .await;
    }

    fn audit_unanswered(&self, id: u64, job: &InFlight, outcome: Outcome) {
        let latency = job.started.elapsed();
        self.shared
            .metrics
            .request_finished(job.operation, &outcome, latency);
        AuditRecord {
            connection: self.id,
            request_id: id,
            operation: job.operation,
            key_id: job.key_id.as_deref(),
            caller_pcr0: None,
            attestation_verified: false,
            outcome,
            latency,
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
pub(super) async fn send_fatal(tx: &mpsc::Sender<Message>, e: ProtocolError) {
    let error = WireError::from(&keybroker_common::Error::Protocol(e));
    let _ = tx.send(Message::Error { error }).await;
}

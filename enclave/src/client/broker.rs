//! Broker mode's link: the supervised connection ([`super::connection`]),
//! request ids, and one call's send / wait / retry loop, with the retry
//! rules of [`crate::retry`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keybroker_common::kms::{KmsRequest, KmsResponse};
use keybroker_common::protocol::{self, ErrorCode, Message};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::connection::{Conn, ConnState, PendingGuard, TaskGuard, supervise};
use super::{ClientConfig, Counters};
use crate::Error;
use crate::retry::{self, Attempts, Decision, Failure};

/// Framed requests to the parent proxy over one supervised connection.
pub(super) struct BrokerLink {
    state: watch::Receiver<ConnState>,
    next_id: AtomicU64,
    _supervisor: TaskGuard,
}

impl BrokerLink {
    /// Starts the supervisor on `handle`: it connects now, and again
    /// whenever the connection is lost.
    pub(super) fn spawn(
        handle: &tokio::runtime::Handle,
        config: &ClientConfig,
        counters: Arc<Counters>,
    ) -> Self {
        let (state_tx, state) = watch::channel(ConnState::Connecting { last_error: None });
        let supervisor = handle.spawn(supervise(config.clone(), state_tx, counters));
        Self {
            state,
            next_id: AtomicU64::new(1),
            _supervisor: TaskGuard(supervisor),
        }
    }

    /// Whether a usable connection exists right now.
    pub(super) fn is_connected(&self) -> bool {
        matches!(&*self.state.borrow(), ConnState::Connected(c) if c.is_usable())
    }

    /// Requests waiting for an answer right now.
    pub(super) fn in_flight(&self) -> usize {
        match &*self.state.borrow() {
            ConnState::Connected(conn) => conn.in_flight(),
            ConnState::Connecting { .. } => 0,
        }
    }

    /// The usable connection, waiting for one.
    pub(super) async fn connection(&self) -> Result<Arc<Conn>, Error> {
        let mut rx = self.state.clone();
        loop {
            if let ConnState::Connected(c) = &*rx.borrow_and_update()
                && c.is_usable()
            {
                return Ok(c.clone());
            }
            if rx.changed().await.is_err() {
                return Err(Error::Shutdown);
            }
        }
    }

    /// [`Error::Unavailable`] with why there is no connection.
    pub(super) fn unavailable(&self) -> Error {
        let reason = match &*self.state.borrow() {
            ConnState::Connecting {
                last_error: Some(e),
            } => e.to_string(),
            ConnState::Connecting { last_error: None } => "not connected yet".to_owned(),
            ConnState::Connected(_) => "connection closing".to_owned(),
        };
        Error::Unavailable { reason }
    }

    /// One broker call: send, await the answer, retry when safe
    /// ([`crate::retry`]), all within `timeout`.
    pub(super) async fn call(
        &self,
        request: KmsRequest,
        timeout: Duration,
        config: &ClientConfig,
        counters: &Counters,
    ) -> Result<KmsResponse, Error> {
        let operation = request.operation();
        let deadline = Instant::now() + timeout;
        let mut request = request;
        let mut attempts = Attempts::default();
        loop {
            let conn = match tokio::time::timeout_at(deadline, self.connection()).await {
                Ok(c) => c?,
                Err(_) => return Err(self.unavailable()),
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout_ms = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
            let message = Message::Request {
                id,
                timeout_ms: Some(timeout_ms),
                request,
            };
            let encoded = protocol::encode(&message);
            let Message::Request { request: r, .. } = message else {
                // The message was built as a Request just above.
                return Err(Error::Internal("request lost".into()));
            };
            request = r;
            let frame = encoded?;

            let (tx, rx) = oneshot::channel();
            if !conn.register(id, operation, tx) {
                // Closed before anything was sent (Failure::NotSent): resend.
                continue;
            }
            let _pending = PendingGuard {
                conn: conn.clone(),
                id,
            };
            match tokio::time::timeout_at(deadline, conn.outgoing.send(frame)).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        operation,
                        after: timeout,
                    });
                }
                // The connection closed before the frame was queued
                // (Failure::NotSent): resend.
                Ok(Err(_)) => continue,
                Ok(Ok(())) => {}
            }
            counters.requests_sent.fetch_add(1, Ordering::Relaxed);
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        operation,
                        after: timeout,
                    });
                }
                Ok(outcome) => outcome,
            };
            let failure = match &outcome {
                Ok(Ok(_)) => return finish(outcome, operation),
                Ok(Err(e)) => {
                    // The proxy is draining: this connection takes nothing more.
                    if e.remote_error().map(|(code, _)| code) == Some(ErrorCode::Shutdown) {
                        conn.mark_draining();
                    }
                    Failure::Answered(e)
                }
                // The connection died with the request in flight.
                Err(_) => Failure::Lost,
            };
            match retry::decide(attempts, failure, operation) {
                Decision::Resend => {}
                Decision::BackOff(n) => {
                    let pause = config.backoff(n);
                    attempts.busy_answers = attempts.busy_answers.saturating_add(1);
                    if Instant::now() + pause >= deadline {
                        return finish(outcome, operation);
                    }
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
                Decision::RetryOnce => {
                    attempts.retried = true;
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(operation = operation.as_str(), "retrying request");
                }
                Decision::GiveUp => return finish(outcome, operation),
            }
        }
    }
}

/// The caller's result for an outcome that is not retried: the answer, or
/// [`Error::ConnectionLost`] for a request lost in flight.
fn finish(
    outcome: Result<Result<KmsResponse, Error>, oneshot::error::RecvError>,
    operation: keybroker_common::kms::Operation,
) -> Result<KmsResponse, Error> {
    match outcome {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectionLost { operation }),
    }
}

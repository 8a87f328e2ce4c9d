//! One request: admission (off the async workers when it verifies an
//! attestation document), the backend under the request's deadline and the
//! proxy's KMS call limit, the response check, the audit line, the answer.

use std::sync::Arc;
use std::time::Duration;

use keybroker_common::kms::{KmsRequest, KmsResponse, Operation};
use keybroker_common::protocol::{Message, WireError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ProxyConfig, Shared};
use crate::admission::{Admitted, Denial, Rule, check_response};
use crate::audit::{AuditRecord, Outcome, peer};
use crate::refusal::Refusal;

/// Runs one request: admission, backend under the deadline, response check,
/// audit line, response. Returns the request id.
pub(super) async fn handle_request(
    shared: Arc<Shared>,
    conn: u64,
    id: u64,
    timeout_ms: Option<u32>,
    request: KmsRequest,
    len: usize,
    tx: mpsc::Sender<Message>,
) -> u64 {
    let started = Instant::now();
    let _in_flight = shared.metrics.request_started();
    // This request's rules, whatever a reload does while it runs.
    let config = shared.config();
    let limits = &config.limits;
    let budget = timeout_ms
        .map_or(limits.default_request_timeout, |ms| {
            Duration::from_millis(u64::from(ms))
        })
        .min(limits.max_request_timeout);
    let deadline = started + budget;
    let operation = request.operation();
    let key_id = request.key_id().map(str::to_owned);

    let now = shared.clock.now();
    let decision = if config.admission.verifies_attestation() && request.recipient().is_some() {
        // Chain and signature verification (ECDSA P-384): off the async
        // workers.
        let policy_owner = config.clone();
        tokio::task::spawn_blocking(move || policy_owner.admission.admit(request, len, now))
            .await
            .map_err(|e| Refusal::AdmissionFailed {
                reason: e.to_string(),
            })
    } else {
        Ok(config.admission.admit(request, len, now))
    };

    let (caller_pcr0, attestation_verified, result, denied) = match decision {
        Err(refusal) => {
            shared.metrics.refused(&refusal);
            (None, false, Err(refusal.into()), None)
        }
        Ok(decision) => {
            let call = Call {
                conn,
                id,
                operation,
                deadline,
                budget,
            };
            let (result, denied) = call.forward(&shared, &config, decision.verdict).await;
            (
                decision.caller_pcr0,
                decision.attestation_verified,
                result,
                denied,
            )
        }
    };
    finish(
        &shared,
        &tx,
        conn,
        id,
        operation,
        key_id.as_deref(),
        caller_pcr0.as_deref(),
        attestation_verified,
        result,
        denied,
        started,
    )
    .await;
    id
}

/// One request's identity and time budget, for the call to KMS.
#[derive(Clone, Copy)]
struct Call {
    conn: u64,
    id: u64,
    operation: Operation,
    deadline: Instant,
    budget: Duration,
}

impl Call {
    /// Forwards an admitted request within the KMS call limit and the
    /// deadline, and checks the response; returns it (or the error to send)
    /// and the rule that refused it, if one did.
    async fn forward(
        &self,
        shared: &Shared,
        config: &ProxyConfig,
        verdict: Result<Admitted, Denial>,
    ) -> (Result<KmsResponse, WireError>, Option<Rule>) {
        let Call {
            conn,
            id,
            operation,
            deadline,
            budget,
        } = *self;
        let admitted = match verdict {
            Ok(admitted) => admitted,
            Err(denial) => {
                // The audit line names only the rule; this says why (e.g.
                // which images a PcrMismatch was checked against).
                tracing::info!(conn, id, reason = peer(&denial), "request denied by policy");
                let rule = denial.rule;
                shared.metrics.denied_by(rule);
                return (Err(Refusal::Denied(denial).into()), Some(rule));
            }
        };
        // The permit is held until KMS answers or the deadline passes (the
        // call is then dropped), or until this task is aborted.
        let Ok(_permit) = shared.live.kms.semaphore().try_acquire() else {
            let refusal = Refusal::KmsBusy {
                limit: config.limits.max_kms_in_flight,
            };
            shared.metrics.refused(&refusal);
            return (Err(refusal.into()), None);
        };
        match tokio::time::timeout_at(deadline, shared.backend.forward(admitted)).await {
            Err(_) => {
                let refusal = Refusal::KmsTimeout { budget };
                shared.metrics.kms_timeout();
                shared.metrics.refused(&refusal);
                (Err(refusal.into()), None)
            }
            Ok(Ok(response)) => match check_response(&response) {
                Ok(()) => (Ok(response), None),
                Err(denial) => {
                    // `response` (with its SecretBytes) is dropped, and so
                    // zeroized, here.
                    tracing::error!(
                        conn,
                        id,
                        operation = operation.as_str(),
                        "KMS returned plaintext key material; discarded"
                    );
                    let rule = denial.rule;
                    shared.metrics.denied_by(rule);
                    (Err(Refusal::Denied(denial).into()), Some(rule))
                }
            },
            Ok(Err(e)) => {
                shared.metrics.kms_error(&e);
                (Err(e), None)
            }
        }
    }
}

/// Emits the audit line, counts the request and queues the response.
#[allow(clippy::too_many_arguments)]
async fn finish(
    shared: &Shared,
    tx: &mpsc::Sender<Message>,
    conn: u64,
    id: u64,
    operation: Operation,
    key_id: Option<&str>,
    caller_pcr0: Option<&str>,
    attestation_verified: bool,
    result: Result<KmsResponse, WireError>,
    denied: Option<Rule>,
    started: Instant,
) {
    let outcome = denied.map_or_else(|| Outcome::of(&result), Outcome::Denied);
    let latency = started.elapsed();
    shared
        .metrics
        .request_finished(operation, &outcome, latency);
    AuditRecord {
        connection: conn,
        request_id: id,
        operation,
        key_id,
        caller_pcr0,
        attestation_verified,
        outcome,
        latency,
    }
    .emit();
    let _ = tx.send(Message::Response { id, result }).await;
}

//! One request: admission (off the async workers when it verifies an
//! attestation document), the backend under the request's deadline and the
//! proxy's KMS call limit, the response check, the audit line, the answer.

use std::sync::Arc;
use std::time::Duration;

use keybroker_common::kms::{KmsRequest, KmsResponse, Operation};
use keybroker_common::protocol::{Message, WireError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use crate::admission::{Rule, check_response};
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
    let limits = &shared.config.limits;
    let budget = timeout_ms
        .map_or(limits.default_request_timeout, |ms| {
            Duration::from_millis(u64::from(ms))
        })
        .min(limits.max_request_timeout);
    let deadline = started + budget;
    let operation = request.operation();
    let key_id = request.key_id().map(str::to_owned);

    let now = shared.clock.now();
    let admission = &shared.config.admission;
    let decision = if admission.verifies_attestation() && request.recipient().is_some() {
        // Chain and signature verification (ECDSA P-384): off the async
        // workers.
        let policy_owner = shared.clone();
        let evaluated = tokio::task::spawn_blocking(move || {
            policy_owner.config.admission.admit(request, len, now)
        })
        .await;
        match evaluated {
            Ok(decision) => decision,
            Err(e) => {
                let result = Err(Refusal::AdmissionFailed {
                    reason: e.to_string(),
                }
                .into());
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
        admission.admit(request, len, now)
    };

    let mut denied = None;
    let result = match decision.verdict {
        Err(denial) => {
            // The audit line names only the rule; this says why (e.g. which
            // images a PcrMismatch was checked against).
            tracing::info!(conn, id, reason = peer(&denial), "request denied by policy");
            denied = Some(denial.rule);
            Err(Refusal::Denied(denial).into())
        }
        // The permit is held until KMS answers or the deadline passes (the
        // call is then dropped), or until this task is aborted.
        Ok(admitted) => match shared.kms_slots.try_acquire() {
            Err(_) => Err(Refusal::KmsBusy {
                limit: limits.max_kms_in_flight,
            }
            .into()),
            Ok(_permit) => {
                match tokio::time::timeout_at(deadline, shared.backend.forward(admitted)).await {
                    Err(_) => Err(Refusal::KmsTimeout { budget }.into()),
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
                            Err(Refusal::Denied(denial).into())
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
    result: Result<KmsResponse, WireError>,
    denied: Option<Rule>,
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

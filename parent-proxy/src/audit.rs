//! Structured logs: the subscriber setup and the one audit line per request.
//!
//! The audit line (target [`AUDIT_TARGET`], level INFO) carries: connection
//! and request ids, operation, key id (as sent, at most 256 characters),
//! caller PCR0 (hex, `-` without an attestation document), outcome and
//! latency. Never key material, ciphertext or attestation documents: only
//! the fields listed here are logged.

use std::time::Duration;

use keybroker_common::kms::{KmsResponse, Operation};
use keybroker_common::protocol::{ErrorCode, WireError};

use crate::config::LogFormat;
use crate::error::{Error, Result};
use crate::policy::{Rule, short};

/// The `tracing` target of audit lines (filter with
/// `RUST_LOG=keybroker_proxy::audit=info`).
pub const AUDIT_TARGET: &str = "keybroker_proxy::audit";

/// How a request ended, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// KMS answered and the answer was relayed.
    Ok,
    /// KMS answered with this error code (e.g. `NotFoundException`).
    Kms(String),
    /// The proxy's policy refused the request (or KMS's answer).
    Denied(Rule),
    /// The proxy answered with an error of its own (`Timeout`,
    /// `Unavailable`, `Busy`, `Shutdown`, ...).
    Error(ErrorCode),
    /// The connection ended (protocol error, enclave gone) before the
    /// request was answered; no response was sent.
    Abandoned,
}

impl Outcome {
    /// The outcome of a relayed result.
    pub fn of(result: &Result<KmsResponse, WireError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => match e.kms_error() {
                Some(k) => Outcome::Kms(k.code.clone()),
                None => Outcome::Error(e.code()),
            },
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Kms(code) => write!(f, "kms:{}", short(code)),
            Outcome::Denied(rule) => write!(f, "denied:{rule}"),
            Outcome::Error(code) => write!(f, "error:{code}"),
            Outcome::Abandoned => f.write_str("abandoned"),
        }
    }
}

/// One audit line.
#[derive(Clone, Debug)]
pub struct AuditRecord<'a> {
    /// Connection number (per proxy process).
    pub connection: u64,
    /// The enclave's request id.
    pub request_id: u64,
    /// The operation.
    pub operation: Operation,
    /// `KeyId` as sent by the enclave.
    pub key_id: Option<&'a str>,
    /// PCR0 of the caller's attestation document, hex.
    pub caller_pcr0: Option<&'a str>,
    /// Whether that document was verified (else only parsed).
    pub attestation_verified: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// From reading the request to queuing the response.
    pub latency: Duration,
}

impl AuditRecord<'_> {
    /// Emits the line.
    pub fn emit(&self) {
        let latency_ms = self.latency.as_secs_f64() * 1000.0;
        tracing::info!(
            target: AUDIT_TARGET,
            conn = self.connection,
            id = self.request_id,
            operation = self.operation.as_str(),
            key_id = self.key_id.map_or("-", short),
            caller_pcr0 = self.caller_pcr0.unwrap_or("-"),
            attestation = if self.attestation_verified { "verified" } else if self.caller_pcr0.is_some() { "parsed" } else { "-" },
            outcome = %self.outcome,
            latency_ms = format_args!("{latency_ms:.3}"),
            "request"
        );
    }
}

/// Installs the global `tracing` subscriber writing to standard error, in
/// `format`, filtered by `RUST_LOG` (default `info`). Fails if a subscriber
/// is already installed.
pub fn init_logging(format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, never in files or log shippers.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| Error::Config(format!("logging: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::kms::KmsError;

    #[test]
    fn outcomes_are_named() {
        assert_eq!(
            Outcome::of(&Ok(KmsResponse::DescribeKey(Default::default()))).to_string(),
            "ok"
        );
        let kms = WireError::kms(KmsError::new("NotFoundException", "no such key"));
        assert_eq!(Outcome::of(&Err(kms)).to_string(), "kms:NotFoundException");
        let t = WireError::new(ErrorCode::Timeout, "late");
        assert_eq!(Outcome::of(&Err(t)).to_string(), "error:Timeout");
        assert_eq!(
            Outcome::Denied(Rule::RecipientRequired).to_string(),
            "denied:RecipientRequired"
        );
    }
}

//! Structured logs: the subscriber setup and the one audit line per request.
//!
//! The audit line (target [`AUDIT_TARGET`], level INFO) carries: connection
//! and request ids, operation, key id (as sent, at most 256 characters),
//! caller PCR0 (hex, `-` without an attestation document), outcome and
//! latency. Never key material, ciphertext or attestation documents: only
//! the fields listed here are logged.
//!
//! Protocol version 2 adds two lines of the same target: one per tunnel when
//! it ends ([`TunnelRecord`], message `tunnel`: host, port, bytes each way,
//! duration, outcome) and one per credentials request
//! ([`CredentialsRecord`], message `credentials`: outcome and expiry, never
//! the credentials).
//!
//! **Peer-controlled strings** (the client id of `Hello`, an enclave's
//! `Error` message, the key id, a tunnel's host, denial reasons that quote
//! certificate subjects or payload field names, protocol errors that quote
//! what was received) are logged only through [`peer`]: printable ASCII is
//! kept, everything else (newline, carriage return, ANSI escape, other
//! control characters, any non-ASCII character such as U+2028 or a bidi
//! override) is escaped, and the result is recorded as a string field,
//! which the text format quotes and the JSON format encodes as a JSON
//! string. So a peer cannot end the line it is logged in, start a forged
//! one (e.g. a fake `request ... outcome=ok` audit line), or add fields to
//! its own line. For audit, prefer `--log-format json`: every line is one
//! JSON object, so field boundaries never depend on quoting.

use std::fmt::{self, Write as _};
use std::time::Duration;

use keybroker_common::kms::{KmsResponse, Operation};
use keybroker_common::protocol::{ErrorCode, WireError};

use crate::admission::Rule;
use crate::error::{Error, Result};
use crate::text::short;

/// Log line format (`--log-format`, `log_format` in the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Every format, by name (`text`, `json`), for the command line.
    pub const NAMES: [&str; 2] = ["text", "json"];
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> core::result::Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

/// Renders a string a peer controls (see the [module docs](self)) for a log
/// field, as Rust's `{:?}` escapes but stricter: printable ASCII
/// (`' '..='~'`) is kept, except `\`, which becomes `\\`; a newline,
/// carriage return and tab become `\n`, `\r` and `\t`; every other character
/// becomes `\u{HEX}`. A peer cannot make an escape look like the character
/// it stands for, since its own backslashes are doubled. Record the result
/// as a field value (`client = peer(&c)`), not with `%`, so that the text
/// format quotes it.
pub fn peer(value: impl fmt::Display) -> String {
    struct Escaper(String);
    impl fmt::Write for Escaper {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                match c {
                    '\\' => self.0.push_str("\\\\"),
                    ' '..='~' => self.0.push(c),
                    '\n' => self.0.push_str("\\n"),
                    '\r' => self.0.push_str("\\r"),
                    '\t' => self.0.push_str("\\t"),
                    _ => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                }
            }
            Ok(())
        }
    }
    let mut out = Escaper(String::new());
    // Writing to a String cannot fail; a failing `Display` impl leaves what
    // it wrote so far.
    let _ = write!(out, "{value}");
    out.0
}

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
            // KMS's code, escaped like a peer's string (it is written with
            // `%`, unquoted): normally a plain name like `NotFoundException`.
            Outcome::Kms(code) => write!(f, "kms:{}", peer(short(code))),
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
    /// `KeyId` as sent by the enclave (logged through [`peer`]).
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
            key_id = self.key_id.map_or_else(|| "-".to_owned(), |k| peer(short(k))),
            caller_pcr0 = self.caller_pcr0.unwrap_or("-"),
            attestation = if self.attestation_verified { "verified" } else if self.caller_pcr0.is_some() { "parsed" } else { "-" },
            outcome = %self.outcome,
            latency_ms = format_args!("{latency_ms:.3}"),
            "request"
        );
    }
}

/// How a tunnel ended, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelOutcome {
    /// Both sides closed (the normal end).
    Closed,
    /// No byte moved for the idle timeout; the proxy closed it.
    Idle,
    /// The proxy shut down; the tunnel was closed at the drain deadline.
    Shutdown,
    /// The tunnel was refused with this code (not allowed, limit, DNS or
    /// connect failure, shutdown) and never carried a byte.
    Refused(ErrorCode),
    /// A read or write on either side failed (e.g. a reset).
    Failed,
}

impl std::fmt::Display for TunnelOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelOutcome::Closed => f.write_str("closed"),
            TunnelOutcome::Idle => f.write_str("idle"),
            TunnelOutcome::Shutdown => f.write_str("shutdown"),
            TunnelOutcome::Refused(code) => write!(f, "refused:{code}"),
            TunnelOutcome::Failed => f.write_str("io-error"),
        }
    }
}

/// The audit line of one tunnel, emitted when it ends.
#[derive(Clone, Debug)]
pub struct TunnelRecord<'a> {
    /// Connection number (per proxy process).
    pub connection: u64,
    /// The target host as the enclave sent it. Peer-controlled: logged
    /// through [`peer`], never raw.
    pub host: &'a str,
    /// The target port.
    pub port: u16,
    /// Bytes relayed from the enclave to the target.
    pub to_target: u64,
    /// Bytes relayed from the target to the enclave.
    pub from_target: u64,
    /// From `OpenTunnel` to the end of the tunnel.
    pub duration: Duration,
    /// How it ended.
    pub outcome: TunnelOutcome,
}

impl TunnelRecord<'_> {
    /// Emits the line.
    pub fn emit(&self) {
        let duration_ms = self.duration.as_secs_f64() * 1000.0;
        tracing::info!(
            target: AUDIT_TARGET,
            conn = self.connection,
            host = peer(self.host),
            port = self.port,
            bytes_to_target = self.to_target,
            bytes_from_target = self.from_target,
            outcome = %self.outcome,
            duration_ms = format_args!("{duration_ms:.3}"),
            "tunnel"
        );
    }
}

/// The audit line of one `GetCredentials`: never the credentials, only
/// whether they were handed over and until when they are valid.
#[derive(Clone, Debug)]
pub struct CredentialsRecord {
    /// Connection number (per proxy process).
    pub connection: u64,
    /// The enclave's request id.
    pub request_id: u64,
    /// `None`: handed over; else the error code answered.
    pub error: Option<ErrorCode>,
    /// Expiry of the credentials handed over, ms since the Unix epoch.
    pub expiration_ms: Option<u64>,
}

impl CredentialsRecord {
    /// Emits the line.
    pub fn emit(&self) {
        let outcome = match self.error {
            None => Outcome::Ok,
            Some(code) => Outcome::Error(code),
        };
        tracing::info!(
            target: AUDIT_TARGET,
            conn = self.connection,
            id = self.request_id,
            operation = "GetCredentials",
            outcome = %outcome,
            expiration_ms = self.expiration_ms,
            "credentials"
        );
    }
}

/// Installs the global `tracing` subscriber writing to standard error, in
/// `format`, filtered by `RUST_LOG` (default `info`). Fails if a subscriber
/// is already installed.
pub fn init_logging(format: LogFormat) -> Result<()> {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal, never in files or log shippers.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    subscriber(format, filter, ansi, std::io::stderr)
        .try_init()
        .map_err(|e| Error::config(format!("logging: {e}")))
}

/// The subscriber [`init_logging`] installs, writing to `writer` (tests
/// capture the exact production format this way).
pub fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::kms::{KmsError, KmsErrorCode};

    #[test]
    fn outcomes_are_named() {
        assert_eq!(
            Outcome::of(&Ok(KmsResponse::DescribeKey(Default::default()))).to_string(),
            "ok"
        );
        let kms = WireError::kms(KmsError::new(KmsErrorCode::NotFound, "no such key"));
        assert_eq!(Outcome::of(&Err(kms)).to_string(), "kms:NotFoundException");
        let t = WireError::new(ErrorCode::Timeout, "late");
        assert_eq!(Outcome::of(&Err(t)).to_string(), "error:Timeout");
        assert_eq!(
            Outcome::Denied(Rule::RecipientRequired).to_string(),
            "denied:RecipientRequired"
        );
        assert_eq!(TunnelOutcome::Closed.to_string(), "closed");
        assert_eq!(
            TunnelOutcome::Refused(ErrorCode::PolicyDenied).to_string(),
            "refused:PolicyDenied"
        );
    }
}

//! Why the proxy refuses something the enclave asked for (a connection, a
//! request, credentials, a tunnel), as a type: [`Refusal`], with the one
//! conversion to the wire's [`WireError`] (code, message, retryability).
//!
//! What goes wrong with one enclave request is not a crate
//! [`Error`](crate::Error) (those stop the proxy): it is a [`Refusal`] sent in
//! that request's answer. KMS's own errors arrive as [`WireError`]s already
//! (see [`crate::backend`]) and are relayed as they are.

use std::time::Duration;

use keybroker_common::protocol::{ErrorCode, WireError};

use crate::admission::Denial;

/// A refusal of the proxy's own, split by cause. Messages name limits,
/// timeouts and rules, never key material.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The admission policy denied the request (not retryable).
    Denied(Denial),
    /// The proxy is at its connection limit (the connection is closed).
    ConnectionLimit,
    /// This many requests are already in flight on the connection.
    ConnectionBusy {
        /// Requests in flight.
        in_flight: usize,
    },
    /// This many KMS calls (the proxy's limit) are in flight already.
    KmsBusy {
        /// The limit.
        limit: usize,
    },
    /// KMS did not answer within the request's budget.
    KmsTimeout {
        /// The budget.
        budget: Duration,
    },
    /// The proxy is shutting down: nothing new is started.
    Draining,
    /// The proxy shut down before KMS answered.
    DrainTimeout,
    /// No `Hello` within the handshake timeout.
    HandshakeTimeout {
        /// The timeout.
        timeout: Duration,
    },
    /// The proxy hands out no AWS credentials.
    NoCredentials,
    /// The credential source did not answer within the timeout.
    CredentialsTimeout {
        /// The timeout.
        timeout: Duration,
    },
    /// The credential source gave credentials that fail their checks.
    CredentialsUnusable {
        /// Why.
        reason: String,
    },
    /// The admission check itself failed (its task panicked).
    AdmissionFailed {
        /// Why.
        reason: String,
    },
    /// The request's task failed.
    TaskFailed,
    /// The response cannot be encoded.
    Unencodable {
        /// Why.
        reason: String,
    },
    /// The tunnel target is not in the allowed list.
    TunnelNotAllowed,
    /// This many tunnels (the limit) are open already.
    TunnelLimit {
        /// The limit.
        max: usize,
    },
    /// The tunnel target cannot be resolved or reached.
    TunnelUnreachable {
        /// Why (names no peer-supplied text).
        reason: String,
    },
}

impl Refusal {
    /// A stable name for the kind of refusal, for metrics
    /// (`keybroker_proxy_denials_total{reason}`): the admission [`Rule`]'s
    /// name for [`Refusal::Denied`], the variant's name otherwise. Never a
    /// peer-supplied string.
    ///
    /// [`Rule`]: crate::admission::Rule
    pub const fn kind(&self) -> &'static str {
        match self {
            Refusal::Denied(denial) => denial.rule.as_str(),
            Refusal::ConnectionLimit => "ConnectionLimit",
            Refusal::ConnectionBusy { .. } => "ConnectionBusy",
            Refusal::KmsBusy { .. } => "KmsBusy",
            Refusal::KmsTimeout { .. } => "KmsTimeout",
            Refusal::Draining => "Draining",
            Refusal::DrainTimeout => "DrainTimeout",
            Refusal::HandshakeTimeout { .. } => "HandshakeTimeout",
            Refusal::NoCredentials => "NoCredentials",
            Refusal::CredentialsTimeout { .. } => "CredentialsTimeout",
            Refusal::CredentialsUnusable { .. } => "CredentialsUnusable",
            Refusal::AdmissionFailed { .. } => "AdmissionFailed",
            Refusal::TaskFailed => "TaskFailed",
            Refusal::Unencodable { .. } => "Unencodable",
            Refusal::TunnelNotAllowed => "TunnelNotAllowed",
            Refusal::TunnelLimit { .. } => "TunnelLimit",
            Refusal::TunnelUnreachable { .. } => "TunnelUnreachable",
        }
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Refusal::Denied(denial)
    }
}

impl From<Refusal> for WireError {
    /// The one mapping from a refusal to what the enclave receives.
    fn from(refusal: Refusal) -> Self {
        let ms = |d: Duration| d.as_millis();
        let (code, message) = match refusal {
            Refusal::Denied(denial) => {
                // `"<Rule>: <detail>"`; retrying the same request cannot help.
                return WireError::new(ErrorCode::PolicyDenied, denial.to_string())
                    .with_retryable(false);
            }
            Refusal::ConnectionLimit => (
                ErrorCode::Busy,
                "the proxy is at its connection limit; retry later".to_owned(),
            ),
            Refusal::ConnectionBusy { in_flight } => (
                ErrorCode::Busy,
                format!(
                    "{in_flight} requests in flight on this connection; retry after a back-off"
                ),
            ),
            Refusal::KmsBusy { limit } => (
                ErrorCode::Busy,
                format!(
                    "{limit} KMS calls in flight on this proxy (its limit); retry after a back-off"
                ),
            ),
            Refusal::KmsTimeout { budget } => (
                ErrorCode::Timeout,
                format!("KMS did not answer within {} ms", ms(budget)),
            ),
            Refusal::Draining => (
                ErrorCode::Shutdown,
                "the proxy is shutting down; retry on a new connection".to_owned(),
            ),
            Refusal::DrainTimeout => (
                ErrorCode::Shutdown,
                "the proxy shut down before KMS answered; retry on a new connection".to_owned(),
            ),
            Refusal::HandshakeTimeout { timeout } => (
                ErrorCode::BadRequest,
                format!("no Hello within {} ms", ms(timeout)),
            ),
            Refusal::NoCredentials => (
                ErrorCode::PolicyDenied,
                "this proxy hands out no AWS credentials (started without a credential source \
                 or with --no-credentials)"
                    .to_owned(),
            ),
            Refusal::CredentialsTimeout { timeout } => (
                ErrorCode::Timeout,
                format!("no AWS credentials within {} ms", ms(timeout)),
            ),
            Refusal::CredentialsUnusable { reason } => (
                ErrorCode::Internal,
                format!("the proxy's AWS credentials are unusable: {reason}"),
            ),
            Refusal::AdmissionFailed { reason } => (
                ErrorCode::Internal,
                format!("policy evaluation failed: {reason}"),
            ),
            Refusal::TaskFailed => (
                ErrorCode::Internal,
                "the proxy failed while handling this request".to_owned(),
            ),
            Refusal::Unencodable { reason } => (
                ErrorCode::Internal,
                format!("the proxy could not encode the response: {reason}"),
            ),
            Refusal::TunnelNotAllowed => (
                ErrorCode::PolicyDenied,
                "this tunnel target is not allowed by the proxy (see --tunnel)".to_owned(),
            ),
            Refusal::TunnelLimit { max } => (
                ErrorCode::Busy,
                format!("{max} tunnels open; retry after a back-off"),
            ),
            Refusal::TunnelUnreachable { reason } => (ErrorCode::Unavailable, reason),
        };
        WireError::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_codes_and_retryability() {
        let busy = WireError::from(Refusal::KmsBusy { limit: 7 });
        assert_eq!(busy.code(), ErrorCode::Busy);
        assert!(busy.message().starts_with("7 KMS calls in flight"));
        let late = WireError::from(Refusal::KmsTimeout {
            budget: Duration::from_millis(250),
        });
        assert_eq!(late.code(), ErrorCode::Timeout);
        assert_eq!(late.message(), "KMS did not answer within 250 ms");
        assert_eq!(
            WireError::from(Refusal::Draining).code(),
            ErrorCode::Shutdown
        );
    }
}

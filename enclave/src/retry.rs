//! When a KMS request may be sent again, and how long to wait: the rules
//! both modes share ([`crate::client`] in broker mode, [`crate::e2e`] in
//! end-to-end mode), as pure functions without I/O or clocks.
//!
//! A request is sent again only when that cannot repeat an effect at KMS:
//! - it never reached the wire (its connection closed before the write):
//!   always, without using up the budget;
//! - the proxy answered `Busy` (at its in-flight limit, it forwarded
//!   nothing): after a back-off, as often as the deadline allows;
//! - the proxy answered `Shutdown` (draining, it did not forward it): once;
//! - its connection died while it was in flight: once, and only for an
//!   operation that is read-only at KMS ([`retry_safe`]).
//!
//! The one retry is shared by the last two cases.

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keybroker_common::kms::Operation;
use keybroker_common::protocol::ErrorCode;

use crate::Error;

/// Operations KMS answers without creating anything, so a duplicate is
/// harmless: `Decrypt`, `GenerateRandom`, `DescribeKey`,
/// `DeriveSharedSecret`. A lost `GenerateDataKey*` is not sent again: KMS
/// may already have minted (and logged) the key, and the caller, not the
/// library, decides whether a second key is acceptable.
pub fn retry_safe(op: Operation) -> bool {
    matches!(
        op,
        Operation::Decrypt
            | Operation::GenerateRandom
            | Operation::DescribeKey
            | Operation::DeriveSharedSecret
    )
}

/// What a request has used up so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Whether its one retry (after `Shutdown` or a lost connection) is spent.
    pub retried: bool,
    /// `Busy` answers so far (the next back-off's number).
    pub busy_answers: u32,
}

/// What became of one attempt at a request that did not succeed.
#[derive(Clone, Copy, Debug)]
pub enum Failure<'a> {
    /// The connection closed before the request was written.
    NotSent,
    /// The proxy (or KMS through it) answered with this error.
    Answered(&'a Error),
    /// The connection died with the request in flight.
    Lost,
}

/// What to do after a [`Failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it again right away; the budget is untouched (nothing was sent).
    Resend,
    /// Send it again right away, spending the one retry.
    RetryOnce,
    /// Send it again after back-off number `n` ([`Backoff::delay`]) if that
    /// still fits in the deadline; otherwise give up.
    BackOff(u32),
    /// Give up: the caller gets the error (a lost request,
    /// [`Error::ConnectionLost`]).
    GiveUp,
}

/// The decision after `failure` of a request for `operation` that has
/// used up `attempts` (see the [module docs](self)).
pub fn decide(attempts: Attempts, failure: Failure<'_>, operation: Operation) -> Decision {
    match failure {
        Failure::NotSent => Decision::Resend,
        Failure::Answered(e) => match e.remote_error().map(|(code, _)| code) {
            Some(ErrorCode::Busy) => Decision::BackOff(attempts.busy_answers),
            Some(ErrorCode::Shutdown) if !attempts.retried => Decision::RetryOnce,
            _ => Decision::GiveUp,
        },
        Failure::Lost if !attempts.retried && retry_safe(operation) => Decision::RetryOnce,
        Failure::Lost => Decision::GiveUp,
    }
}

/// Capped exponential back-off with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay; doubled after each attempt.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay before attempt `attempt` (0-based): `initial * 2^attempt`,
    /// capped at `max`, with jitter in `[d/2, d]` so enclaves that lost the
    /// same proxy do not reconnect in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(self.max);
        let mut r = [0u8; 2];
        let jitter = match SystemRandom::new().fill(&mut r) {
            Ok(()) => f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX),
            Err(_) => 1.0,
        };
        d.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// The timing of a client's attempts, as both modes need it (from
/// `ClientConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Delays between attempts.
    pub backoff: Backoff,
    /// Limit on one connection attempt.
    pub connect_timeout: Duration,
}

impl Policy {
    /// [`Backoff::delay`].
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::protocol::ProtocolError;

    fn remote(code: ErrorCode) -> Error {
        Error::from(ProtocolError::Remote {
            code,
            message: "m".into(),
            retryable: true,
        })
    }

    const FRESH: Attempts = Attempts {
        retried: false,
        busy_answers: 0,
    };
    const SPENT: Attempts = Attempts {
        retried: true,
        busy_answers: 3,
    };

    #[test]
    fn only_read_only_operations_are_retried_in_flight() {
        assert!(retry_safe(Operation::Decrypt));
        assert!(retry_safe(Operation::GenerateRandom));
        assert!(retry_safe(Operation::DescribeKey));
        assert!(retry_safe(Operation::DeriveSharedSecret));
        assert!(!retry_safe(Operation::GenerateDataKey));
        assert!(!retry_safe(Operation::GenerateDataKeyPair));
        assert!(!retry_safe(Operation::GenerateDataKeyWithoutPlaintext));
        assert!(!retry_safe(Operation::GenerateDataKeyPairWithoutPlaintext));
    }

    #[test]
    fn a_request_never_sent_is_sent_again_whatever_was_spent() {
        for op in [Operation::GenerateDataKey, Operation::Decrypt] {
            assert_eq!(decide(FRESH, Failure::NotSent, op), Decision::Resend);
            assert_eq!(decide(SPENT, Failure::NotSent, op), Decision::Resend);
        }
    }

    #[test]
    fn retryable_answers_are_retried() {
        let op = Operation::GenerateDataKey;
        let busy = remote(ErrorCode::Busy);
        assert_eq!(
            decide(FRESH, Failure::Answered(&busy), op),
            Decision::BackOff(0)
        );
        // Busy forwarded nothing: it backs off again, the budget aside.
        assert_eq!(
            decide(SPENT, Failure::Answered(&busy), op),
            Decision::BackOff(3)
        );
        let shutdown = remote(ErrorCode::Shutdown);
        assert_eq!(
            decide(FRESH, Failure::Answered(&shutdown), op),
            Decision::RetryOnce
        );
        assert_eq!(
            decide(FRESH, Failure::Lost, Operation::Decrypt),
            Decision::RetryOnce
        );
    }

    #[test]
    fn other_answers_are_not_retried() {
        let denied = remote(ErrorCode::PolicyDenied);
        let timeout = Error::Timeout {
            operation: Operation::Decrypt,
            after: Duration::from_secs(1),
        };
        for e in [&denied, &timeout] {
            assert_eq!(
                decide(FRESH, Failure::Answered(e), Operation::Decrypt),
                Decision::GiveUp,
                "{e}"
            );
        }
    }

    #[test]
    fn a_lost_retry_unsafe_operation_is_not_retried() {
        for op in [
            Operation::GenerateDataKey,
            Operation::GenerateDataKeyPair,
            Operation::GenerateDataKeyWithoutPlaintext,
            Operation::GenerateDataKeyPairWithoutPlaintext,
        ] {
            assert_eq!(decide(FRESH, Failure::Lost, op), Decision::GiveUp);
        }
    }

    #[test]
    fn the_one_retry_is_not_spent_twice() {
        let shutdown = remote(ErrorCode::Shutdown);
        assert_eq!(
            decide(SPENT, Failure::Answered(&shutdown), Operation::Decrypt),
            Decision::GiveUp
        );
        assert_eq!(
            decide(SPENT, Failure::Lost, Operation::Decrypt),
            Decision::GiveUp
        );
    }
}

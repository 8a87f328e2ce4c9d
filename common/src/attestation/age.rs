//! Freshness: how old an attestation document may be.
//!
//! A document's signed `timestamp` (milliseconds, set by the NSM) is the only
//! evidence of when it was made. A document and its public key stay
//! cryptographically valid for the leaf certificate's whole life (about three
//! hours), so whoever holds an old document can replay it; a relying party
//! bounds that with a maximum age measured against its own clock, as KMS and
//! the Nitro Enclaves attestation guide recommend.

use core::time::Duration;

use super::AttestationError;
use crate::UnixMillis;

/// How far a document's `timestamp` may be ahead of the verifier's clock:
/// clock skew between the NSM (the Nitro hypervisor's clock) and the
/// verifier's host. A document further in the future is refused: accepting it
/// would stretch its maximum age by the same amount.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Checks that a document made at `timestamp` is at most `max_age` old at
/// `now`, and at most [`MAX_CLOCK_SKEW`] in the future (both bounds
/// inclusive).
///
/// # Errors
/// [`AttestationError::DocumentTooOld`] or
/// [`AttestationError::DocumentFromFuture`].
pub fn check_document_age(
    timestamp: UnixMillis,
    now: UnixMillis,
    max_age: Duration,
) -> Result<(), AttestationError> {
    let max_age_ms = millis(max_age);
    if now.0.saturating_sub(timestamp.0) > max_age_ms {
        return Err(AttestationError::DocumentTooOld {
            timestamp,
            at: now,
            max_age_ms,
        });
    }
    let max_skew_ms = millis(MAX_CLOCK_SKEW);
    if timestamp.0 > now.0.saturating_add(max_skew_ms) {
        return Err(AttestationError::DocumentFromFuture {
            timestamp,
            at: now,
            max_skew_ms,
        });
    }
    Ok(())
}

/// `d` in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

//! The KMS endpoint's request counters, by operation and outcome (the
//! `endpoint` part of the enclave's metrics report).

use std::sync::atomic::{AtomicU64, Ordering};

use keybroker_common::kms::{Operation, aws_json};
use keybroker_common::protocol::{EndpointCount, EndpointOperation, EndpointOutcome};

const OPERATIONS: usize = EndpointOperation::ALL.len();
const OUTCOMES: usize = EndpointOutcome::ALL.len();

/// Requests answered by the KMS endpoint (`crate::endpoint::KmsEndpoint`),
/// one counter per operation and outcome.
#[derive(Debug, Default)]
pub struct EndpointStats {
    counts: [[AtomicU64; OUTCOMES]; OPERATIONS],
}

impl EndpointStats {
    /// Counts one request for the `X-Amz-Target` value `target`, answered
    /// with HTTP `status` (the endpoint calls it for each answer; a front
    /// end of an app's own may too).
    pub fn record(&self, target: Option<&str>, status: u16) {
        let operation = aws_json::operation_name(target)
            .ok()
            .and_then(Operation::from_name)
            .map_or(EndpointOperation::Unsupported, EndpointOperation::from);
        let outcome = match status {
            200..=299 => EndpointOutcome::Ok,
            400..=499 => EndpointOutcome::ClientError,
            _ => EndpointOutcome::ServerError,
        };
        // A variant's discriminant is its index in `ALL` (`kms_enum!`), so
        // both lookups succeed.
        let counter = self
            .counts
            .get(operation as usize)
            .and_then(|row| row.get(outcome as usize));
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters that are not zero.
    pub fn snapshot(&self) -> Vec<EndpointCount> {
        let mut out = Vec::new();
        for (operation, row) in EndpointOperation::ALL.into_iter().zip(&self.counts) {
            for (outcome, counter) in EndpointOutcome::ALL.into_iter().zip(row) {
                let count = counter.load(Ordering::Relaxed);
                if count > 0 {
                    out.push(EndpointCount {
                        operation,
                        outcome,
                        count,
                    });
                }
            }
        }
        out
    }

    /// Requests counted so far.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_operation_and_status_class() {
        let s = EndpointStats::default();
        s.record(Some("TrentService.GenerateDataKey"), 200);
        s.record(Some("TrentService.GenerateDataKey"), 200);
        s.record(Some("TrentService.Decrypt"), 400);
        s.record(Some("TrentService.Encrypt"), 400);
        s.record(None, 400);
        s.record(Some("TrentService.DescribeKey"), 503);
        let count = |operation, outcome| {
            s.snapshot()
                .iter()
                .find(|e| e.operation == operation && e.outcome == outcome)
                .map_or(0, |e| e.count)
        };
        use EndpointOperation as Op;
        use EndpointOutcome as Out;
        assert_eq!(count(Op::GenerateDataKey, Out::Ok), 2);
        assert_eq!(count(Op::Decrypt, Out::ClientError), 1);
        assert_eq!(count(Op::Unsupported, Out::ClientError), 2);
        assert_eq!(count(Op::DescribeKey, Out::ServerError), 1);
        assert_eq!(s.snapshot().len(), 4);
        assert_eq!(s.total(), 6);
    }
}

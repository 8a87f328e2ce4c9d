//! The payload of protocol version 3: the enclave's metrics report
//! ([`super::Message::Metrics`], issue 13).
//!
//! The enclave has no network of its own, so its counters reach Prometheus
//! through the parent proxy, which serves them labelled by enclave. A report
//! holds counters since the enclave process started (cumulative, so a lost
//! report loses nothing) and the fixed names of this module; it is checked
//! on encode and decode alike ([`EnclaveReport::validate`]).
//!
//! **Nothing secret, and nothing the parent could not see anyway.** A report
//! is counts and names from fixed tables plus the enclave's id (the
//! `module_id` of its attestation documents, which the parent already reads
//! in every `Recipient`). Decryption failures are CMS parse failures only:
//! a `CiphertextForRecipient` that parses but does not decrypt is not
//! counted, because a counter the parent reads that moved on bad padding
//! would be exactly the oracle implicit rejection removes (`crate::cms`).

use serde::{Deserialize, Serialize};

use super::ProtocolError;
use crate::kms::Operation;
use crate::kms::enums::kms_enum;

/// Longest enclave id, in bytes. A Nitro module id (`i-<17 hex>-enc<16
/// hex>`) has 39.
pub const MAX_ENCLAVE_ID_LEN: usize = 64;

/// Upper bounds, in microseconds, of the NSM latency histogram's buckets
/// (the last bucket, `+Inf`, is implied): 100 µs to 1 s. `GetRandom` takes
/// microseconds; `Attestation` signs a document and takes milliseconds.
pub const NSM_LATENCY_BOUNDS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// Buckets of one NSM latency histogram on the wire: one per bound plus
/// `+Inf`.
pub const NSM_LATENCY_BUCKETS: usize = NSM_LATENCY_BOUNDS_US.len() + 1;

/// Most endpoint entries in a report: one per operation and outcome.
pub const MAX_ENDPOINT_ENTRIES: usize = EndpointOperation::ALL.len() * EndpointOutcome::ALL.len();

/// One enclave's counters, as sent in [`super::Message::Metrics`].
///
/// Missing fields decode as zero and unknown fields are ignored, so a later
/// version can add counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnclaveReport {
    /// The enclave's id ([`check_enclave_id`]): the `module_id` of its
    /// attestation documents. The proxy's `enclave` label.
    pub enclave: String,
    /// Recipient key pairs ([`KeyCounts`]).
    pub keys: KeyCounts,
    /// NSM request latency, at most one histogram per [`NsmRequest`].
    pub nsm: Vec<NsmLatency>,
    /// `CiphertextForRecipient` answers that were missing or did not parse
    /// as CMS `EnvelopedData` for the enclave's key (never implicit
    /// rejections; module docs).
    pub decrypt_failures: u64,
    /// Requests to the in-enclave KMS endpoint, by operation and outcome
    /// (each pair at most once).
    pub endpoint: Vec<EndpointCount>,
    /// Data-key cache lookups ([`CacheCounts`]).
    pub cache: CacheCounts,
    /// End-to-end mode: TLS handshakes with the KMS endpoint.
    pub tls_handshakes: u64,
}

/// Recipient key counters (the enclave's `KeyStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyCounts {
    /// Key pairs generated (each attested by the NSM).
    pub generated: u64,
    /// Times the current pair was replaced by a fresh one.
    pub rotations: u64,
    /// Pairs handed out beyond their use or age limit because no fresh
    /// spare was ready.
    pub overused: u64,
}

/// Data-key cache lookups (the enclave's `CacheStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheCounts {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that called KMS.
    pub misses: u64,
}

/// A latency histogram of one kind of NSM request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsmLatency {
    /// The request.
    pub request: NsmRequest,
    /// Requests per bucket, not cumulative: `buckets[i]` took at most
    /// `NSM_LATENCY_BOUNDS_US[i]` µs and more than the bound before; the
    /// last is `+Inf`. Exactly [`NSM_LATENCY_BUCKETS`] entries.
    pub buckets: Vec<u64>,
    /// The sum of the latencies, in microseconds.
    pub sum_us: u64,
}

impl NsmLatency {
    /// The number of requests (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |a, b| a.saturating_add(*b))
    }
}

/// Requests to the KMS endpoint with one operation and outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCount {
    /// The operation.
    pub operation: EndpointOperation,
    /// How it ended.
    pub outcome: EndpointOutcome,
    /// How many.
    pub count: u64,
}

kms_enum! {
    /// The NSM requests the enclave times.
    pub enum NsmRequest {
        /// `Attestation` (a new recipient key's document).
        Attestation = "Attestation",
        /// `GetRandom` (mixed into `GenerateRandom`).
        GetRandom = "GetRandom",
        /// Any other request (`DescribeNSM`, PCR requests).
        Other = "Other",
    }
}

kms_enum! {
    /// How an endpoint request ended, by the HTTP status class it was
    /// answered with.
    pub enum EndpointOutcome {
        /// 2xx.
        Ok = "ok",
        /// 4xx: the caller's request, or KMS refused it.
        ClientError = "client_error",
        /// 5xx: KMS, the proxy or the enclave failed.
        ServerError = "server_error",
    }
}

kms_enum! {
    /// The operation of an endpoint request: a KMS operation the endpoint
    /// serves, or `Unsupported` (any other name, or none).
    pub enum EndpointOperation {
        /// `GenerateDataKey`.
        GenerateDataKey = "GenerateDataKey",
        /// `GenerateDataKeyWithoutPlaintext`.
        GenerateDataKeyWithoutPlaintext = "GenerateDataKeyWithoutPlaintext",
        /// `Decrypt`.
        Decrypt = "Decrypt",
        /// `GenerateDataKeyPair`.
        GenerateDataKeyPair = "GenerateDataKeyPair",
        /// `GenerateDataKeyPairWithoutPlaintext`.
        GenerateDataKeyPairWithoutPlaintext = "GenerateDataKeyPairWithoutPlaintext",
        /// `GenerateRandom`.
        GenerateRandom = "GenerateRandom",
        /// `DescribeKey`.
        DescribeKey = "DescribeKey",
        /// `DeriveSharedSecret`.
        DeriveSharedSecret = "DeriveSharedSecret",
        /// Anything else (the endpoint refused it).
        Unsupported = "Unsupported",
    }
}

impl From<Operation> for EndpointOperation {
    fn from(op: Operation) -> Self {
        // The names are the same: one table of KMS operation names.
        op.as_str().parse().unwrap_or(Self::Unsupported)
    }
}

impl EnclaveReport {
    /// Checks the limits beyond the frame's: the enclave id
    /// ([`check_enclave_id`]), at most one NSM histogram per request with
    /// exactly [`NSM_LATENCY_BUCKETS`] buckets, and each endpoint
    /// operation-outcome pair at most once.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidField`], never quoting the value.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_enclave_id(&self.enclave)?;
        if self.nsm.len() > NsmRequest::ALL.len() {
            return Err(invalid("nsm", "more histograms than NSM requests"));
        }
        for (i, h) in self.nsm.iter().enumerate() {
            if h.buckets.len() != NSM_LATENCY_BUCKETS {
                return Err(invalid("nsm", "wrong number of buckets"));
            }
            if self.nsm.iter().take(i).any(|o| o.request == h.request) {
                return Err(invalid("nsm", "a request appears twice"));
            }
        }
        if self.endpoint.len() > MAX_ENDPOINT_ENTRIES {
            return Err(invalid("endpoint", "too many entries"));
        }
        for (i, e) in self.endpoint.iter().enumerate() {
            let same = |o: &EndpointCount| o.operation == e.operation && o.outcome == e.outcome;
            if self.endpoint.iter().take(i).any(same) {
                return Err(invalid("endpoint", "an operation and outcome appear twice"));
            }
        }
        Ok(())
    }
}

/// Checks an enclave id: 1 to [`MAX_ENCLAVE_ID_LEN`] bytes of ASCII letters,
/// digits and `.` `_` `:` `-` (a Nitro module id fits), so it can be a
/// Prometheus label value and a log field without escaping.
///
/// # Errors
/// [`ProtocolError::InvalidField`] (`enclave`).
pub fn check_enclave_id(id: &str) -> Result<(), ProtocolError> {
    if id.is_empty() || id.len() > MAX_ENCLAVE_ID_LEN {
        return Err(invalid("enclave", "length is not 1..=64 bytes"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if !id.bytes().all(allowed) {
        return Err(invalid(
            "enclave",
            "not letters, digits, '.', '_', ':' or '-'",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::InvalidField { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EnclaveReport {
        EnclaveReport {
            enclave: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            keys: KeyCounts {
                generated: 3,
                rotations: 1,
                overused: 0,
            },
            nsm: vec![NsmLatency {
                request: NsmRequest::Attestation,
                buckets: vec![0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0],
                sum_us: 4_000,
            }],
            decrypt_failures: 1,
            endpoint: vec![EndpointCount {
                operation: EndpointOperation::GenerateDataKey,
                outcome: EndpointOutcome::Ok,
                count: 5,
            }],
            cache: CacheCounts { hits: 7, misses: 2 },
            tls_handshakes: 0,
        }
    }

    #[test]
    fn a_real_module_id_is_valid_and_label_breaking_ids_are_not() {
        report().validate().unwrap();
        for bad in ["", "a\"b", "a\nb", "a b", "a{b}", "é", &"x".repeat(65)] {
            let mut r = report();
            r.enclave = bad.to_owned();
            assert!(
                matches!(
                    r.validate(),
                    Err(ProtocolError::InvalidField {
                        field: "enclave",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn histograms_and_endpoint_entries_are_bounded() {
        let mut r = report();
        r.nsm[0].buckets.pop();
        assert!(r.validate().is_err());
        let mut r = report();
        r.nsm.push(r.nsm[0].clone());
        assert!(r.validate().is_err());
        let mut r = report();
        r.endpoint.push(r.endpoint[0]);
        assert!(r.validate().is_err());
        assert_eq!(report().nsm[0].count(), 3);
    }

    #[test]
    fn names_round_trip_and_match_the_kms_operations() {
        for op in EndpointOperation::ALL {
            assert_eq!(op.as_str().parse::<EndpointOperation>().unwrap(), op);
        }
        for op in Operation::ALL {
            let e = EndpointOperation::from(op);
            assert_eq!(e.as_str(), op.as_str());
        }
        assert_eq!(
            EndpointOperation::ALL.len(),
            Operation::ALL.len() + 1,
            "every KMS operation of the endpoint, plus Unsupported"
        );
        assert!("Encrypt".parse::<EndpointOperation>().is_err());
    }
}

//! The enclaves' own metrics: the latest report of each enclave
//! (`Message::Metrics`, protocol version 3), served with the proxy's series
//! labelled by `enclave`.
//!
//! Series (all prefixed `keybroker_enclave_`, each with the `enclave` label):
//!
//! | series | type | more labels |
//! |---|---|---|
//! | `recipient_keys_generated_total` | counter | |
//! | `recipient_key_rotations_total` | counter | |
//! | `recipient_key_overuse_total` | counter | |
//! | `nsm_request_duration_seconds` | histogram | `request` (`Attestation`, `GetRandom`, `Other`) |
//! | `decrypt_failures_total` | counter | |
//! | `endpoint_requests_total` | counter | `operation`, `outcome` (`ok`, `client_error`, `server_error`) |
//! | `data_key_cache_lookups_total` | counter | `result` (`hit`, `miss`) |
//! | `tls_handshakes_total` | counter | |
//!
//! And `keybroker_proxy_enclaves_reporting`, the number of enclaves served.
//!
//! A report is the enclave's totals since it started, so each series is the
//! value of the latest report. The `enclave` label is the one value that
//! comes from a peer: the decoder accepted it only as 1 to 64 letters,
//! digits, `.`, `_`, `:` and `-` (`check_enclave_id`), so it cannot break
//! the text format. The other label values are `&'static str` from the
//! protocol's fixed tables.
//!
//! **Bounded.** Anyone who can connect to the proxy can send a report (the
//! parent could forge these metrics anyway: it runs the proxy), so the
//! store holds at most [`MAX_REPORTING_ENCLAVES`] enclaves, forgets one
//! that has not reported for [`REPORT_TTL`], and refuses reports from new
//! enclaves while full (counted as `over_limit` in
//! `keybroker_proxy_enclave_reports_total`). A flood of made-up ids can
//! therefore hide real enclaves' metrics for as long as it lasts, but it
//! cannot grow the proxy's memory or the scrape.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use keybroker_common::protocol::{EnclaveReport, NSM_LATENCY_BOUNDS_US};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Most enclaves whose reports are kept. A parent instance runs at most a
/// handful of enclaves; the margin covers restarts within [`REPORT_TTL`]
/// (each run has a new module id).
pub const MAX_REPORTING_ENCLAVES: usize = 64;

/// How long an enclave's last report is served without a new one: twenty
/// default report intervals. An enclave that stopped drops out after it.
pub const REPORT_TTL: Duration = Duration::from_secs(300);

/// What became of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// It replaced the enclave's previous one (or was its first).
    Accepted,
    /// It came from a new enclave while [`MAX_REPORTING_ENCLAVES`] others
    /// are kept.
    OverLimit,
}

impl Stored {
    /// The `result` label of `keybroker_proxy_enclave_reports_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::OverLimit => "over_limit",
        }
    }
}

/// The latest report of each enclave.
#[derive(Debug, Default)]
pub(super) struct EnclaveReports {
    latest: Mutex<BTreeMap<String, (Instant, EnclaveReport)>>,
}

impl EnclaveReports {
    /// Keeps `report` as its enclave's latest, received at `now`.
    pub(super) fn store(&self, report: EnclaveReport, now: Instant) -> Stored {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        expire(&mut latest, now);
        if !latest.contains_key(&report.enclave) && latest.len() >= MAX_REPORTING_ENCLAVES {
            return Stored::OverLimit;
        }
        latest.insert(report.enclave.clone(), (now, report));
        Stored::Accepted
    }

    /// The reports kept as of `now`.
    pub(super) fn current(&self, now: Instant) -> Vec<EnclaveReport> {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        expire(&mut latest, now);
        latest.values().map(|(_, r)| r.clone()).collect()
    }
}

fn expire(latest: &mut BTreeMap<String, (Instant, EnclaveReport)>, now: Instant) {
    latest.retain(|_, (at, _)| now.saturating_duration_since(*at) < REPORT_TTL);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnclaveLabels {
    enclave: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NsmLabels {
    enclave: String,
    request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    enclave: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    enclave: String,
    result: &'static str,
}

/// One counter family: a value per report, labelled by enclave.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    reports: &[EnclaveReport],
    name: &str,
    help: &str,
    value: impl Fn(&EnclaveReport) -> u64,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for r in reports {
        let labels = EnclaveLabels {
            enclave: r.enclave.clone(),
        };
        ConstCounter::new(value(r)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for EnclaveReports {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let reports = self.current(Instant::now());
        let reporting = ConstGauge::new(i64::try_from(reports.len()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "keybroker_proxy_enclaves_reporting",
            "Enclaves whose latest metrics report is served now",
            None,
            reporting.metric_type(),
        )?;
        reporting.encode(metric)?;
        let e = &mut encoder;
        counters(
            e,
            &reports,
            "keybroker_enclave_recipient_keys_generated",
            "Recipient key pairs the enclave generated and had attested",
            |r| r.keys.generated,
        )?;
        counters(
            e,
            &reports,
            "keybroker_enclave_recipient_key_rotations",
            "Times the enclave replaced its current recipient key pair",
            |r| r.keys.rotations,
        )?;
        counters(
            e,
            &reports,
            "keybroker_enclave_recipient_key_overuse",
            "Recipient key pairs used beyond their use or age limit because no fresh spare \
             was ready",
            |r| r.keys.overused,
        )?;
        counters(
            e,
            &reports,
            "keybroker_enclave_decrypt_failures",
            "KMS answers whose CiphertextForRecipient was missing or did not parse (implicit \
             rejections are not counted)",
            |r| r.decrypt_failures,
        )?;
        counters(
            e,
            &reports,
            "keybroker_enclave_tls_handshakes",
            "TLS handshakes with the KMS endpoint (end-to-end mode)",
            |r| r.tls_handshakes,
        )?;

        let mut family = encoder.encode_descriptor(
            "keybroker_enclave_endpoint_requests",
            "Requests to the in-enclave KMS endpoint, by operation and outcome",
            None,
            MetricType::Counter,
        )?;
        for r in &reports {
            for c in &r.endpoint {
                let labels = EndpointLabels {
                    enclave: r.enclave.clone(),
                    operation: c.operation.as_str(),
                    outcome: c.outcome.as_str(),
                };
                ConstCounter::new(c.count).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "keybroker_enclave_data_key_cache_lookups",
            "Data-key cache lookups in the enclave: hit (no KMS call) or miss",
            None,
            MetricType::Counter,
        )?;
        for r in &reports {
            for (result, value) in [("hit", r.cache.hits), ("miss", r.cache.misses)] {
                let labels = CacheLabels {
                    enclave: r.enclave.clone(),
                    result,
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "keybroker_enclave_nsm_request_duration_seconds",
            "Time the enclave's NSM took to answer, by request",
            None,
            MetricType::Histogram,
        )?;
        let bounds = NSM_LATENCY_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::INFINITY]);
        for r in &reports {
            for h in &r.nsm {
                let labels = NsmLabels {
                    enclave: r.enclave.clone(),
                    request: h.request.as_str(),
                };
                let buckets: Vec<(f64, u64)> = bounds.clone().zip(h.buckets.clone()).collect();
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        h.sum_us as f64 / 1e6,
                        h.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(enclave: &str) -> EnclaveReport {
        EnclaveReport {
            enclave: enclave.into(),
            ..EnclaveReport::default()
        }
    }

    #[test]
    fn the_store_is_bounded_and_forgets_silent_enclaves() {
        let store = EnclaveReports::default();
        let t0 = Instant::now();
        for i in 0..MAX_REPORTING_ENCLAVES {
            assert_eq!(store.store(report(&format!("e{i}")), t0), Stored::Accepted);
        }
        // A new id is refused while full; a known one still updates.
        assert_eq!(store.store(report("flood"), t0), Stored::OverLimit);
        let mut updated = report("e0");
        updated.decrypt_failures = 7;
        assert_eq!(store.store(updated, t0), Stored::Accepted);
        let now = store.current(t0);
        assert_eq!(now.len(), MAX_REPORTING_ENCLAVES);
        assert_eq!(
            now.iter()
                .find(|r| r.enclave == "e0")
                .unwrap()
                .decrypt_failures,
            7
        );
        // After the TTL everything silent is gone and new ids fit again.
        let later = t0 + REPORT_TTL;
        assert!(store.current(later).is_empty());
        assert_eq!(store.store(report("new"), later), Stored::Accepted);
    }
}

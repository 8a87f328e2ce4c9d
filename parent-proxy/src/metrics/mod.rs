//! The proxy's metrics: one [`Metrics`] registry with its typed metric
//! families, rendered in the Prometheus text format (version 0.0.4) by the
//! `prometheus-client` crate, and the metrics listener that serves it
//! ([`http`], `serve --metrics-listen`) with the health endpoints
//! ([`ready`]).
//!
//! The server, its connections and requests, the tunnels and the
//! credentials hand-over record into one shared `Arc<Metrics>` (injected
//! like the clock: [`Proxy::with_metrics`](crate::server::Proxy::with_metrics);
//! a test builds its own and reads it back with [`Metrics::encode`]).
//!
//! Series (all prefixed `keybroker_proxy_`):
//!
//! | series | type | labels |
//! |---|---|---|
//! | `requests_total` | counter | `operation`, `outcome` (`ok`, `kms_error`, `denied`, `error`, `abandoned`) |
//! | `request_duration_seconds` | histogram | `operation` |
//! | `requests_in_flight` | gauge | |
//! | `connections_accepted_total` | counter | |
//! | `connections_open` | gauge | |
//! | `tunnels_opened_total` | counter | |
//! | `tunnels_open` | gauge | |
//! | `tunnel_bytes_total` | counter | `direction` (`to_target`, `from_target`) |
//! | `denials_total` | counter | `reason` (an admission `Rule` or a `Refusal` kind) |
//! | `kms_errors_total` | counter | `code` (a `KmsErrorCode` name, `timeout`, `unreachable` or `other`) |
//! | `attestation_cache_lookups_total` | counter | `result` (`hit`, `miss`) |
//! | `attestation_cache_entries` | gauge | |
//! | `credential_refreshes_total` | counter | `result` (`success`, `failure`) |
//! | `enclave_reports_total` | counter | `result` (`accepted`, `over_limit`) |
//! | `enclaves_reporting` | gauge | |
//!
//! With them, the enclaves' own series (`keybroker_enclave_*`, labelled by
//! `enclave`), from the reports the enclaves send ([`enclaves`]).
//!
//! Each request is counted once, where its audit line is written; each
//! refusal where it is decided (one refusal is not counted: `Unencodable`,
//! a response the writer task cannot encode). KMS errors are counted where
//! the backend's answer arrives, so every [`KmsBackend`] is covered; the
//! cache counts are the cache's own ([`VerificationCache::stats`]), read at
//! each scrape.
//!
//! [`KmsBackend`]: crate::backend::KmsBackend
//!
//! **No key material in any series.** Every label value is a `&'static
//! str` taken from a fixed table (operation names, rule and refusal names,
//! the KMS error codes this build knows, the fixed words above), so no
//! string a peer or KMS sends, and nothing of a plaintext, ciphertext,
//! credential or attestation document, can become a label: the label
//! types do not accept a runtime string.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keybroker_common::attestation::VerificationCache;
use keybroker_common::kms::Operation;
use keybroker_common::protocol::{EnclaveReport, ErrorCode, WireError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admission::Rule;
use crate::audit::Outcome;
use crate::refusal::Refusal;
use enclaves::{EnclaveReports, Stored};

pub mod enclaves;
pub mod http;
pub mod ready;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the request latency histogram: 1 ms to 10 s,
/// about three buckets per decade (a KMS call takes milliseconds; the
/// default request timeout is 10 s).
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `operation` and `outcome` of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// The `operation` of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// Which way tunnelled bytes went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The type of a KMS error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// A result word (`success`/`failure`, `hit`/`miss`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A latency histogram with [`LATENCY_BUCKETS`].
fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The metric families of the proxy and the registry that renders them.
/// Cheap to record into (atomic updates; a family's map is locked briefly
/// on each update).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    connections_accepted: Counter,
    connections_open: Gauge,
    tunnels_opened: Counter,
    tunnels_open: Gauge,
    tunnel_bytes: Family<DirectionLabels, Counter>,
    denials: Family<ReasonLabels, Counter>,
    kms_errors: Family<CodeLabels, Counter>,
    credential_refreshes: Family<ResultLabels, Counter>,
    /// The expiry (ms since the epoch, 0 for none) of the credentials last
    /// handed out; `None` before the first.
    last_credentials_expiry: Mutex<Option<u64>>,
    cache: Arc<CacheCollector>,
    enclave_reports: Family<ResultLabels, Counter>,
    enclaves: Arc<EnclaveReports>,
    /// The proxy is shutting down (not a series: `/readyz` answers 503).
    draining: AtomicBool,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new registry with every family registered (and zero).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "keybroker_proxy_requests",
            "Enclave requests answered (or abandoned), by operation and outcome",
            requests.clone(),
        );
        let request_duration =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "keybroker_proxy_request_duration_seconds",
            "Time from reading a request to queuing its answer, by operation",
            request_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "keybroker_proxy_requests_in_flight",
            "Enclave requests being handled now",
            in_flight.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "keybroker_proxy_connections_accepted",
            "Enclave connections accepted by the listener (those refused at the connection \
             limit included)",
            connections_accepted.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "keybroker_proxy_connections_open",
            "Enclave connections open now (broker connections and tunnels)",
            connections_open.clone(),
        );
        let tunnels_opened = Counter::default();
        registry.register(
            "keybroker_proxy_tunnels_opened",
            "Byte tunnels opened to a target (end-to-end mode)",
            tunnels_opened.clone(),
        );
        let tunnels_open = Gauge::default();
        registry.register(
            "keybroker_proxy_tunnels_open",
            "Byte tunnels open now (end-to-end mode)",
            tunnels_open.clone(),
        );
        let tunnel_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "keybroker_proxy_tunnel_bytes",
            "Bytes relayed through tunnels, by direction (to_target: from the enclave)",
            tunnel_bytes.clone(),
        );
        let denials = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "keybroker_proxy_denials",
            "Refusals by the proxy, by reason (an admission rule or a refusal kind)",
            denials.clone(),
        );
        let kms_errors = Family::<CodeLabels, Counter>::default();
        registry.register(
            "keybroker_proxy_kms_errors",
            "Failed KMS calls, by KMS error code (or timeout, unreachable, other)",
            kms_errors.clone(),
        );
        let credential_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "keybroker_proxy_credential_refreshes",
            "AWS credentials obtained from the credential source (success: different from \
             the last ones handed out) or not (failure)",
            credential_refreshes.clone(),
        );
        let cache = Arc::new(CacheCollector::default());
        registry.register_collector(Box::new(cache.clone()));
        let enclave_reports = Family::<ResultLabels, Counter>::default();
        registry.register(
            "keybroker_proxy_enclave_reports",
            "Metrics reports from enclaves: accepted, or over_limit (from a new enclave while \
             the most are kept)",
            enclave_reports.clone(),
        );
        let enclaves = Arc::new(EnclaveReports::default());
        registry.register_collector(Box::new(enclaves.clone()));
        Metrics {
            registry,
            requests,
            request_duration,
            in_flight,
            connections_accepted,
            connections_open,
            tunnels_opened,
            tunnels_open,
            tunnel_bytes,
            denials,
            kms_errors,
            credential_refreshes,
            last_credentials_expiry: Mutex::new(None),
            cache,
            enclave_reports,
            enclaves,
            draining: AtomicBool::new(false),
        }
    }

    /// Renders every series in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Reports the hits, misses and size of `cache` (the admission
    /// policy's verified-document cache) at each scrape; replaces a cache
    /// observed before.
    pub fn observe_verification_cache(&self, cache: Arc<VerificationCache>) {
        *self
            .cache
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cache);
    }

    /// A request started; it counts as in flight until the guard is dropped
    /// (also when its task is cancelled).
    pub fn request_started(&self) -> GaugeGuard {
        GaugeGuard::new(&self.in_flight)
    }

    /// A request ended with `outcome` after `latency` (recorded where its
    /// audit line is emitted, so each request counts exactly once).
    pub fn request_finished(&self, operation: Operation, outcome: &Outcome, latency: Duration) {
        let operation = operation.as_str();
        self.requests
            .get_or_create(&RequestLabels {
                operation,
                outcome: outcome_label(outcome),
            })
            .inc();
        self.request_duration
            .get_or_create(&OperationLabels { operation })
            .observe(latency.as_secs_f64());
    }

    /// The proxy refused something (a request, a connection, credentials,
    /// a tunnel) for this reason.
    pub fn refused(&self, refusal: &Refusal) {
        self.denied(refusal.kind());
    }

    /// The admission policy refused a request (or KMS's answer) by `rule`.
    pub fn denied_by(&self, rule: Rule) {
        self.denied(rule.as_str());
    }

    fn denied(&self, reason: &'static str) {
        self.denials.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A KMS call failed with `error` (KMS's own error, or the backend's
    /// `Unavailable` when KMS could not be reached).
    pub fn kms_error(&self, error: &WireError) {
        self.kms_errors
            .get_or_create(&CodeLabels {
                code: kms_error_label(error),
            })
            .inc();
    }

    /// A KMS call did not answer within the request's budget.
    pub fn kms_timeout(&self) {
        self.kms_errors
            .get_or_create(&CodeLabels { code: "timeout" })
            .inc();
    }

    /// An enclave sent its metrics: they replace its previous report and
    /// are served from the next scrape ([`enclaves`]).
    pub fn enclave_report(&self, report: EnclaveReport) -> Stored {
        let stored = self.enclaves.store(report, std::time::Instant::now());
        self.enclave_reports
            .get_or_create(&ResultLabels {
                result: stored.as_str(),
            })
            .inc();
        stored
    }

    /// The listener accepted a connection.
    pub fn connection_accepted(&self) {
        self.connections_accepted.inc();
    }

    /// A connection is being served; it counts as open until the guard is
    /// dropped.
    pub fn connection_open(&self) -> GaugeGuard {
        GaugeGuard::new(&self.connections_open)
    }

    /// The proxy stopped accepting connections and is draining: from now
    /// on `/readyz` answers 503, so a load balancer or Kubernetes stops
    /// sending work while requests in flight finish.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`Metrics::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Enclave connections open now (for `/readyz`).
    pub fn open_connections(&self) -> i64 {
        self.connections_open.get()
    }

    /// A tunnel reached its target; it counts as open until the guard is
    /// dropped.
    pub fn tunnel_opened(&self) -> GaugeGuard {
        self.tunnels_opened.inc();
        GaugeGuard::new(&self.tunnels_open)
    }

    /// The counters of tunnelled bytes: (enclave to target, target to
    /// enclave). The tunnel adds to them as bytes move.
    pub fn tunnel_byte_counters(&self) -> (Counter, Counter) {
        let counter = |direction| {
            self.tunnel_bytes
                .get_or_create(&DirectionLabels { direction })
                .clone()
        };
        (counter("to_target"), counter("from_target"))
    }

    /// The credential source answered a `GetCredentials`: `Ok(expiry)`
    /// (ms since the epoch, `None` for credentials that do not expire) or
    /// failed. A success counts as a refresh when its expiry differs from
    /// that of the credentials handed out last (the first one counts too),
    /// so the SDK's cached credentials, handed out again, are not counted.
    pub fn credentials_fetched(&self, result: Result<Option<u64>, ()>) {
        let result = match result {
            Err(()) => "failure",
            Ok(expiry) => {
                let expiry = expiry.unwrap_or(0);
                let mut last = self
                    .last_credentials_expiry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.replace(expiry) == Some(expiry) {
                    return;
                }
                "success"
            }
        };
        self.credential_refreshes
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// The `outcome` label of a request: a fixed word per [`Outcome`] variant
/// (KMS's code is counted in `kms_errors_total`, the rule in
/// `denials_total`).
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Kms(_) => "kms_error",
        Outcome::Denied(_) => "denied",
        Outcome::Error(_) => "error",
        Outcome::Abandoned => "abandoned",
    }
}

/// The `code` label of a failed KMS call: the [`KmsErrorCode`] name when
/// KMS answered with a code this build knows, `other` for any other code
/// (a string KMS sent is never a label), `unreachable` when KMS could not
/// be reached, `timeout` when it did not answer in time.
///
/// [`KmsErrorCode`]: keybroker_common::kms::KmsErrorCode
fn kms_error_label(error: &WireError) -> &'static str {
    match error.kms_error() {
        Some(k) => k.kind().map_or("other", |code| code.as_str()),
        None => match error.code() {
            ErrorCode::Unavailable => "unreachable",
            ErrorCode::Timeout => "timeout",
            _ => "other",
        },
    }
}

/// Adds one to a gauge while it lives.
#[must_use = "the gauge goes down again when the guard is dropped"]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl fmt::Debug for GaugeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GaugeGuard").finish_non_exhaustive()
    }
}

/// Reads the verified-document cache's own counts at each scrape.
#[derive(Debug, Default)]
struct CacheCollector {
    cache: Mutex<Option<Arc<VerificationCache>>>,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let stats = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default();
        let lookups = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "keybroker_proxy_attestation_cache_lookups",
            "Verified-document cache lookups: hit (the document was verified before) or miss \
             (its chain and signature were verified now).",
            None,
            lookups.metric_type(),
        )?;
        for (result, value) in [("hit", stats.hits), ("miss", stats.misses)] {
            ConstCounter::new(value).encode(family.encode_family(&ResultLabels { result })?)?;
        }
        let entries = ConstGauge::new(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "keybroker_proxy_attestation_cache_entries",
            "Verified documents held in the cache now.",
            None,
            entries.metric_type(),
        )?;
        entries.encode(metric)
    }
}

#[cfg(test)]
mod tests;

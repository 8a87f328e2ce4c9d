//! The enclave's metrics: counted here, sent to the parent proxy, served by
//! the proxy at `/metrics` labelled by enclave (issue 13).
//!
//! The enclave has no network, so a [`Reporter`] sends its counters over the
//! control channel: every [`Reporter::interval`] it opens a connection to
//! the proxy, handshakes at protocol version 3 or later, and sends one
//! `Metrics` message ([`EnclaveReport`]) and `Goodbye`
//! ([`crate::parent::send_report`]). The counters are totals since the
//! process started, so a report that is lost (the proxy restarting, or a
//! proxy older than version 3, which refuses the handshake) loses nothing:
//! the next one carries it.
//!
//! What a report holds, and where it comes from:
//!
//! | report | source |
//! |---|---|
//! | `keys`: generated, rotations, over-use | [`crate::KeyStats`] of the client's [`crate::RecipientKeys`] |
//! | `nsm`: latency per request | [`NsmTimings`], recorded by [`TimedNsm`] |
//! | `decrypt_failures` | [`crate::ClientStats::decrypt_failures`] |
//! | `endpoint`: requests by operation and outcome | [`EndpointStats`] of a `KmsEndpoint` |
//! | `cache`: hits, misses | [`crate::envelope::CacheStats`] of a [`DataKeyCache`] |
//! | `tls_handshakes` | [`crate::ClientStats::tls_handshakes`] (e2e mode) |
//!
//! **What the parent learns.** The parent runs the proxy, so it reads every
//! report. A report holds counts and fixed names only: no key id, no
//! encryption context, nothing of a key. The enclave id is the `module_id`
//! of its attestation documents, which the parent already reads in every
//! `Recipient`. Decryption failures are parse failures only, never implicit
//! rejections (the counter would otherwise be a padding oracle; see
//! `keybroker_common::protocol`'s `v3` docs). In end-to-end mode the counts
//! per operation are new to the parent (the TLS hides which operation each
//! request was, though not how many there were); a deployment that wants to
//! keep them turns reporting off (`serve --metrics-interval 0`).

mod endpoint;
mod nsm;

use std::sync::Arc;
use std::time::Duration;

use keybroker_common::attestation::UnverifiedAttestation;
use keybroker_common::protocol::{CacheCounts, EnclaveReport, KeyCounts, check_enclave_id};

pub use endpoint::EndpointStats;
pub use nsm::{NsmTimings, TimedNsm};

use crate::envelope::DataKeyCache;
use crate::{Client, Error};

/// How often [`Reporter::spawn`] sends a report unless told otherwise: a
/// typical Prometheus scrape interval.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(15);

/// The shortest interval [`Reporter::interval`] accepts.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// Sends the enclave's counters to the parent proxy (module docs).
#[derive(Clone, Debug)]
pub struct Reporter {
    client: Client,
    enclave: String,
    nsm: Option<Arc<NsmTimings>>,
    endpoint: Option<Arc<EndpointStats>>,
    cache: Option<DataKeyCache>,
    interval: Duration,
}

impl Reporter {
    /// A reporter of `client`'s counters (keys, decryption failures, TLS
    /// handshakes), sent to the client's proxy address
    /// ([`crate::ClientConfig::address`]) as the enclave named by the
    /// `module_id` of the client's current attestation document. Add the
    /// other sources with the builder methods.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the module id is not a valid enclave id
    /// ([`check_enclave_id`]; a Nitro or mock NSM's always is).
    pub fn new(client: Client) -> Result<Self, Error> {
        let pair = client.keys().current();
        let parsed = UnverifiedAttestation::parse(pair.attestation_document())
            .map_err(keybroker_common::Error::from)?;
        let enclave = parsed.document().module_id.clone();
        check_enclave_id(&enclave)
            .map_err(|e| Error::InvalidArgument(format!("the NSM's module id: {e}")))?;
        Ok(Self {
            client,
            enclave,
            nsm: None,
            endpoint: None,
            cache: None,
            interval: DEFAULT_REPORT_INTERVAL,
        })
    }

    /// Reports the NSM latency recorded in `timings` (by a [`TimedNsm`]).
    #[must_use]
    pub fn nsm(mut self, timings: Arc<NsmTimings>) -> Self {
        self.nsm = Some(timings);
        self
    }

    /// Reports the KMS endpoint's requests (`KmsEndpoint::stats`).
    #[must_use]
    pub fn endpoint(mut self, stats: Arc<EndpointStats>) -> Self {
        self.endpoint = Some(stats);
        self
    }

    /// Reports `cache`'s hits and misses.
    #[must_use]
    pub fn cache(mut self, cache: DataKeyCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// How often [`Reporter::spawn`] reports ([`DEFAULT_REPORT_INTERVAL`];
    /// at least [`MIN_REPORT_INTERVAL`], so a zero cannot make it spin).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(MIN_REPORT_INTERVAL);
        self
    }

    /// The enclave id the reports carry.
    pub fn enclave_id(&self) -> &str {
        &self.enclave
    }

    /// The counters as of now.
    pub fn report(&self) -> EnclaveReport {
        let keys = self.client.keys().stats();
        let client = self.client.stats();
        EnclaveReport {
            enclave: self.enclave.clone(),
            keys: KeyCounts {
                generated: keys.generated,
                rotations: keys.rotations,
                overused: keys.overused,
            },
            nsm: self.nsm.as_ref().map(|t| t.snapshot()).unwrap_or_default(),
            decrypt_failures: client.decrypt_failures,
            endpoint: self
                .endpoint
                .as_ref()
                .map(|e| e.snapshot())
                .unwrap_or_default(),
            cache: self.cache.as_ref().map_or_else(CacheCounts::default, |c| {
                let s = c.stats();
                CacheCounts {
                    hits: s.hits,
                    misses: s.misses,
                }
            }),
            tls_handshakes: client.tls_handshakes,
        }
    }

    /// Sends one report now, within the client's connect timeout.
    ///
    /// # Errors
    /// As [`crate::parent::send_report`].
    pub async fn send(&self) -> Result<(), Error> {
        let config = self.client.config();
        crate::parent::send_report(&config.address, self.report(), config.connect_timeout).await
    }

    /// Sends a report every [`Reporter::interval`] until the returned handle
    /// is dropped. A failure is logged as a warning when reports stop
    /// getting through, and once more when they resume.
    pub fn spawn(self) -> ReporterTask {
        ReporterTask(tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(self.interval).await;
                match self.send().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("enclave metrics reach the proxy again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "enclave metrics did not reach the proxy");
                    }
                    Err(e) => tracing::debug!(error = %e, "enclave metrics report failed"),
                }
            }
        }))
    }
}

/// The task of [`Reporter::spawn`]; stops when dropped.
#[derive(Debug)]
pub struct ReporterTask(tokio::task::JoinHandle<()>);

impl Drop for ReporterTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! NSM request latency: [`TimedNsm`] wraps an [`Nsm`] and records how long
//! each request took into [`NsmTimings`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use keybroker_common::protocol::{
    NSM_LATENCY_BOUNDS_US, NSM_LATENCY_BUCKETS, NsmLatency, NsmRequest,
};

use crate::nsm::Nsm;

/// One latency histogram with the buckets of [`NSM_LATENCY_BOUNDS_US`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; NSM_LATENCY_BUCKETS],
    sum_us: AtomicU64,
}

/// NSM latency histograms, one per [`NsmRequest`]. Shared by a
/// [`TimedNsm`] (which records) and the metrics reporter (which reads).
#[derive(Debug, Default)]
pub struct NsmTimings {
    histograms: [Histogram; NsmRequest::ALL.len()],
}

impl NsmTimings {
    /// Records one `request` that took `took`.
    pub fn record(&self, request: NsmRequest, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // The first bucket whose bound holds it; past the last bound, +Inf.
        let bucket = NSM_LATENCY_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(NSM_LATENCY_BOUNDS_US.len());
        // A variant's discriminant is its index in `ALL` (`kms_enum!`), and
        // `bucket` is at most the number of bounds: both lookups succeed.
        if let Some(h) = self.histograms.get(request as usize) {
            if let Some(b) = h.buckets.get(bucket) {
                b.fetch_add(1, Ordering::Relaxed);
            }
            h.sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    /// The histograms of the requests made at least once.
    pub fn snapshot(&self) -> Vec<NsmLatency> {
        NsmRequest::ALL
            .into_iter()
            .zip(&self.histograms)
            .map(|(request, h)| NsmLatency {
                request,
                buckets: h
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect(),
                sum_us: h.sum_us.load(Ordering::Relaxed),
            })
            .filter(|h| h.count() > 0)
            .collect()
    }
}

/// An [`Nsm`] that times every request of the one it wraps into
/// [`NsmTimings`]. Wrap the NSM once, where it is opened, and every user
/// (recipient keys, `GenerateRandom`'s mixing) is timed.
pub struct TimedNsm {
    inner: Arc<dyn Nsm>,
    timings: Arc<NsmTimings>,
}

impl TimedNsm {
    /// Times `inner`'s requests into `timings`.
    pub fn new(inner: Arc<dyn Nsm>, timings: Arc<NsmTimings>) -> Self {
        Self { inner, timings }
    }
}

impl Nsm for TimedNsm {
    fn process(&self, request: Request) -> Response {
        let kind = match &request {
            Request::Attestation { .. } => NsmRequest::Attestation,
            Request::GetRandom => NsmRequest::GetRandom,
            _ => NsmRequest::Other,
        };
        let started = Instant::now();
        let response = self.inner.process(request);
        self.timings.record(kind, started.elapsed());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let t = NsmTimings::default();
        t.record(NsmRequest::GetRandom, Duration::from_micros(100));
        t.record(NsmRequest::GetRandom, Duration::from_micros(101));
        t.record(NsmRequest::Attestation, Duration::from_secs(2));
        let s = t.snapshot();
        assert_eq!(s.len(), 2, "Other was never requested: {s:?}");
        let random = s
            .iter()
            .find(|h| h.request == NsmRequest::GetRandom)
            .unwrap();
        assert_eq!(random.buckets[..3], [1, 1, 0]);
        assert_eq!((random.count(), random.sum_us), (2, 201));
        let attest = s
            .iter()
            .find(|h| h.request == NsmRequest::Attestation)
            .unwrap();
        assert_eq!(attest.buckets.last(), Some(&1), "+Inf");
    }
}

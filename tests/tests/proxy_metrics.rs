//! The proxy's metrics and health end to end: the in-process stack (mock
//! KMS, proxy, enclave client attested by the mock NSM) with the proxy
//! recording into a registry served by the real metrics listener; requests
//! that succeed and one the proxy denies; `/metrics` scraped before and
//! after and parsed by the Prometheus Python client's text parser
//! (`tests/python/parse_metrics.py`); `/healthz` and `/readyz`.
//!
//! Skipped with a note when python3 or `prometheus_client` is missing; under
//! `CI=true` a python3 without it fails the test (CI installs it).
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keybroker_common::kms::{GenerateDataKeyRequest, KmsRequest};
use keybroker_enclave::MockCa;
use keybroker_harness::testkit::{InProcessStack, PCR0, gdk};
use keybroker_proxy::measurements::AllowedImage;
use keybroker_proxy::metrics::Metrics;
use keybroker_proxy::metrics::http::MetricsServer;
use keybroker_proxy::metrics::ready::{Readiness, ReadinessConfig, Upstream};
use serde_json::Value;

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// The samples of one scrape, as the Python parser read them.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of `name` with exactly `labels`; 0 when absent (a label
    /// set appears once it is first counted).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map_or(0.0, |s| s.value)
    }
}

/// Whether python3 can import `prometheus_client`; `false` (with a note)
/// when it cannot and this is not CI.
fn have_parser() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .ok()
        .map(|o| o.status.success());
    match ok {
        None => {
            eprintln!("note: python3 not found; skipping the metrics parser test");
            false
        }
        Some(false) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 is present but cannot import prometheus_client (CI must pip install it)"
            );
            eprintln!("note: prometheus_client is not installed; skipping");
            false
        }
        Some(true) => true,
    }
}

/// Parses `text` with the Prometheus Python client's parser.
async fn parse(text: String) -> Scrape {
    let path = format!("{}/python/parse_metrics.py", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new("python3")
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (child.wait_with_output().unwrap(), text)
    })
    .await
    .unwrap();
    let (out, text) = out;
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the scrape:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    Scrape(
        samples
            .into_iter()
            .map(|s| Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: s["labels"].as_object().unwrap().clone(),
                value: s["value"].as_f64().unwrap(),
            })
            .collect(),
    )
}

/// `GET path` on the metrics listener: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    support::raw_http(addr, &format!("GET {path} HTTP/1.1"), b"").await
}

/// Starts a metrics listener for `metrics` checking `readiness`.
async fn serve(metrics: Arc<Metrics>, readiness: ReadinessConfig) -> SocketAddr {
    let server = MetricsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        Arc::new(Readiness::new(readiness, metrics)),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_the_requests_made() {
    if !have_parser() {
        return;
    }
    let metrics = Arc::new(Metrics::new());
    // The proxy verifies the enclave's documents (the mock NSM's root, its
    // PCR0), so the verified-document cache is used.
    let ca_dir = tempfile::tempdir().unwrap();
    let root = MockCa::load_or_create(ca_dir.path())
        .unwrap()
        .root_der()
        .to_vec();
    let s = InProcessStack::builder()
        .ca_dir(ca_dir.path())
        .metrics(metrics.clone())
        .proxy_config(move |config| {
            config.admission.verifier.add_trusted_root(&root).unwrap();
            config.admission.allowed_images =
                vec![AllowedImage::new([(0, PCR0.to_vec())].into()).unwrap()];
        })
        .start()
        .await
        .unwrap();
    let kms = Upstream::from_url(&s.kms.endpoint()).unwrap();
    let addr = serve(
        metrics.clone(),
        ReadinessConfig {
            requires_enclave: true,
            cache_for: Duration::ZERO,
            ..ReadinessConfig::new(vec![kms])
        },
    )
    .await;

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let before = parse(text).await;

    const GOOD: usize = 3;
    for _ in 0..GOOD {
        let dk = s.client.generate_data_key(gdk(&s.key_arn)).await.unwrap();
        assert_eq!(dk.plaintext.len(), 32);
    }
    // Without Recipient: the proxy's default policy denies it before KMS.
    let denied = s
        .client
        .send_raw(KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            recipient: None,
            ..gdk(&s.key_arn)
        }))
        .await;
    assert!(denied.is_err(), "{denied:?}");

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let after = parse(text).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let gdk_op = ("operation", "GenerateDataKey");
    assert_eq!(
        moved(
            "keybroker_proxy_requests_total",
            &[gdk_op, ("outcome", "ok")]
        ),
        GOOD as f64
    );
    assert_eq!(
        moved(
            "keybroker_proxy_requests_total",
            &[gdk_op, ("outcome", "denied")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "keybroker_proxy_denials_total",
            &[("reason", "RecipientRequired")]
        ),
        1.0
    );
    assert_eq!(
        moved("keybroker_proxy_request_duration_seconds_count", &[gdk_op]),
        GOOD as f64 + 1.0
    );
    assert_eq!(
        moved(
            "keybroker_proxy_request_duration_seconds_bucket",
            &[gdk_op, ("le", "+Inf")]
        ),
        GOOD as f64 + 1.0
    );
    // Each good request's document was checked once: verified the first
    // time, from the cache after that (until the enclave rotates its key).
    let lookups = "keybroker_proxy_attestation_cache_lookups_total";
    let hits = moved(lookups, &[("result", "hit")]);
    let misses = moved(lookups, &[("result", "miss")]);
    assert_eq!(hits + misses, GOOD as f64);
    assert!(misses >= 1.0, "hits {hits}, misses {misses}");
    assert!(after.value("keybroker_proxy_attestation_cache_entries", &[]) >= 1.0);
    // Nothing else failed, and nothing is left in flight.
    assert_eq!(after.value("keybroker_proxy_kms_errors_total", &[]), 0.0);
    assert_eq!(after.value("keybroker_proxy_requests_in_flight", &[]), 0.0);
    assert_eq!(after.value("keybroker_proxy_connections_open", &[]), 1.0);
    assert!(after.value("keybroker_proxy_connections_accepted_total", &[]) >= 1.0);

    // Alive, and ready: the mock KMS accepts connections and an enclave is
    // connected.
    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready".to_owned()));
    assert_eq!(get(addr, "/nothing-here").await.0, 404);

    // Once the proxy drains, it is no longer ready (but still alive).
    let InProcessStack { proxy, client, .. } = s;
    drop(client);
    proxy.shutdown_and_wait().await.unwrap();
    assert_eq!(
        get(addr, "/readyz").await,
        (503, "not ready: shutting down".to_owned())
    );
    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_it_is_not_ready() {
    // A fresh registry has no enclave connection; an upstream that refuses
    // connections is unreachable.
    let metrics = Arc::new(Metrics::new());
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let no_enclave = serve(
        metrics.clone(),
        ReadinessConfig {
            requires_enclave: true,
            ..ReadinessConfig::new(vec![Upstream::new("127.0.0.1", closed)])
        },
    )
    .await;
    assert_eq!(
        get(no_enclave, "/readyz").await,
        (503, "not ready: no enclave connected".to_owned())
    );
    assert_eq!(get(no_enclave, "/healthz").await, (200, "ok".to_owned()));
    let unreachable = serve(
        metrics,
        ReadinessConfig::new(vec![Upstream::new("127.0.0.1", closed)]),
    )
    .await;
    let (status, body) = get(unreachable, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with(&format!(
            "not ready: upstream unreachable (127.0.0.1:{closed}"
        )),
        "{body}"
    );
}

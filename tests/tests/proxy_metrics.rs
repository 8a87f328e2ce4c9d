//! The proxy's metrics and health end to end: the in-process stack (mock
//! KMS, proxy, enclave client attested by the mock NSM) with the proxy
//! recording into a registry served by the real metrics listener; requests
//! that succeed and one the proxy denies; `/metrics` scraped before and
//! after and parsed by the Prometheus Python client's text parser
//! (`tests/python/parse_metrics.py`); `/healthz` and `/readyz`; and the
//! enclave's own metrics, which its reporter sends over the control channel
//! and the proxy serves labelled by enclave.
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

use keybroker_common::kms::{EncryptionContext, GenerateDataKeyRequest, KmsRequest};
use keybroker_enclave::envelope::{CachingConfig, DataKeyCache, Envelope};
use keybroker_enclave::telemetry::{NsmTimings, Reporter, TimedNsm};
use keybroker_enclave::{
    Client, ClientConfig, KmsEndpoint, MockCa, MockNsm, MockNsmConfig, Nsm, RecipientKeys,
    RecipientKeysConfig,
};
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

/// An enclave as `serve` assembles it: the mock NSM timed, a client, the
/// KMS endpoint, and a reporter; plus a data-key cache as an app adds one.
struct Enclave {
    client: Client,
    endpoint: KmsEndpoint,
    envelope: Envelope<Client>,
    reporter: Reporter,
}

async fn enclave(s: &InProcessStack, key: &str) -> Enclave {
    let timings = Arc::new(NsmTimings::default());
    let nsm = MockNsm::new(&s.ca, MockNsmConfig::default().with_pcr(0, PCR0)).unwrap();
    let nsm: Arc<dyn Nsm> = Arc::new(TimedNsm::new(Arc::new(nsm), timings.clone()));
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default())
        .await
        .unwrap();
    let client = Client::connect(ClientConfig::new(s.addr.clone()), keys)
        .await
        .unwrap();
    let endpoint = KmsEndpoint::new(client.clone());
    let cache = DataKeyCache::new(CachingConfig::new(Duration::from_secs(300))).unwrap();
    let envelope = Envelope::new(client.clone(), key).with_cache(cache.clone());
    let reporter = Reporter::new(client.clone())
        .unwrap()
        .nsm(timings)
        .endpoint(endpoint.stats())
        .cache(cache);
    Enclave {
        client,
        endpoint,
        envelope,
        reporter,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_metrics_reach_the_proxy_labelled_by_enclave() {
    if !have_parser() {
        return;
    }
    let metrics = Arc::new(Metrics::new());
    let s = InProcessStack::builder()
        .metrics(metrics.clone())
        .start()
        .await
        .unwrap();
    let addr = serve(
        metrics.clone(),
        ReadinessConfig::new(vec![Upstream::from_url(&s.kms.endpoint()).unwrap()]),
    )
    .await;
    let a = enclave(&s, &s.key_arn).await;
    let b = enclave(&s, &s.key_arn).await;
    let (id_a, id_b) = (a.reporter.enclave_id(), b.reporter.enclave_id());
    assert_ne!(id_a, id_b, "each NSM has its own module id");

    // Enclave a: three data keys through its endpoint, one refused
    // operation, two messages sealed under one cached data key.
    let body = serde_json::json!({"KeyId": s.key_arn, "KeySpec": "AES_256"}).to_string();
    let mut plaintexts = Vec::new();
    for _ in 0..3 {
        let answer = a
            .endpoint
            .call(Some("TrentService.GenerateDataKey"), body.as_bytes())
            .await;
        assert_eq!(answer.status, 200);
        let v: Value = serde_json::from_slice(answer.body()).unwrap();
        plaintexts.push(v["Plaintext"].as_str().unwrap().to_owned());
    }
    let refused = a
        .endpoint
        .call(
            Some("TrentService.Encrypt"),
            br#"{"KeyId":"k","Plaintext":"AA=="}"#,
        )
        .await;
    assert_eq!(refused.status, 400);
    let context = EncryptionContext::from([("tenant".to_owned(), "1".to_owned())]);
    for message in [&b"one"[..], b"two"] {
        a.envelope.seal(message, &context).await.unwrap();
    }
    // Enclave b: one data key from its client.
    b.client.generate_data_key(gdk(&s.key_arn)).await.unwrap();

    let (_, text) = get(addr, "/metrics").await;
    let before = parse(text).await;
    assert_eq!(
        before.value("keybroker_proxy_enclaves_reporting", &[]),
        0.0,
        "nothing reported yet"
    );
    a.reporter.send().await.unwrap();
    b.reporter.send().await.unwrap();

    let (_, text) = get(addr, "/metrics").await;
    // No key material in the scrape: not the data keys the endpoint gave
    // out (base64, as KMS sends them, or hex).
    for p in &plaintexts {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        assert!(!text.contains(p.as_str()) && !text.contains(&hex::encode(&raw)));
    }
    let m = parse(text).await;
    let of = |id: &str, name: &str, more: &[(&str, &str)]| {
        let mut labels = vec![("enclave", id)];
        labels.extend_from_slice(more);
        m.value(name, &labels)
    };
    assert_eq!(m.value("keybroker_proxy_enclaves_reporting", &[]), 2.0);
    assert_eq!(
        m.value(
            "keybroker_proxy_enclave_reports_total",
            &[("result", "accepted")]
        ),
        2.0
    );
    let requests = "keybroker_enclave_endpoint_requests_total";
    let gdk_ok = [("operation", "GenerateDataKey"), ("outcome", "ok")];
    assert_eq!(of(id_a, requests, &gdk_ok), 3.0);
    assert_eq!(
        of(
            id_a,
            requests,
            &[("operation", "Unsupported"), ("outcome", "client_error")]
        ),
        1.0
    );
    assert_eq!(of(id_b, requests, &gdk_ok), 0.0, "b used no endpoint");
    let lookups = "keybroker_enclave_data_key_cache_lookups_total";
    assert_eq!(of(id_a, lookups, &[("result", "miss")]), 1.0);
    assert_eq!(of(id_a, lookups, &[("result", "hit")]), 1.0);
    // Each enclave made a first key pair and a spare, each attested once
    // by its NSM, and timed.
    for id in [id_a, id_b] {
        let generated = of(id, "keybroker_enclave_recipient_keys_generated_total", &[]);
        assert!(generated >= 1.0, "{id}: {generated}");
        let nsm = "keybroker_enclave_nsm_request_duration_seconds_count";
        let attested = of(id, nsm, &[("request", "Attestation")]);
        assert!(attested >= 1.0, "{id}: {attested}");
        let inf = of(
            id,
            "keybroker_enclave_nsm_request_duration_seconds_bucket",
            &[("request", "Attestation"), ("le", "+Inf")],
        );
        assert_eq!(inf, attested);
        assert_eq!(of(id, "keybroker_enclave_decrypt_failures_total", &[]), 0.0);
        assert_eq!(
            of(id, "keybroker_enclave_tls_handshakes_total", &[]),
            0.0,
            "broker mode"
        );
        assert_eq!(
            of(id, "keybroker_enclave_recipient_key_overuse_total", &[]),
            0.0
        );
    }

    // A later report replaces the earlier one: the counters move.
    a.endpoint
        .call(Some("TrentService.GenerateDataKey"), body.as_bytes())
        .await;
    a.reporter.send().await.unwrap();
    let (_, text) = get(addr, "/metrics").await;
    let m = parse(text).await;
    assert_eq!(
        m.value(requests, &[("enclave", id_a), gdk_ok[0], gdk_ok[1]]),
        4.0
    );
    assert_eq!(m.value("keybroker_proxy_enclaves_reporting", &[]), 2.0);
}

/// A report to a proxy that is gone fails with `Unavailable`, within the
/// client's connect timeout (the reporter logs it and tries again later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_to_a_proxy_that_is_gone_is_unavailable() {
    let s = InProcessStack::builder().start().await.unwrap();
    let a = enclave(&s, &s.key_arn).await;
    let InProcessStack { proxy, .. } = s;
    proxy.shutdown_and_wait().await.unwrap();
    let e = a.reporter.send().await.unwrap_err();
    assert!(
        matches!(e, keybroker_enclave::Error::Unavailable { .. }),
        "{e}"
    );
}

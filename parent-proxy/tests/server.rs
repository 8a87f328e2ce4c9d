//! The proxy server over loopback TCP (and a Unix socket) with a fake KMS
//! backend: handshake, concurrency, limits, malformed input, policy
//! refusals on the wire, and graceful shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keybroker_common::UnixMillis;
use keybroker_common::attestation::AttestationDocument;
use keybroker_common::kms::*;
use keybroker_common::protocol::{ErrorCode, Message, VersionRange, WireError};
use keybroker_common::secret::SecretBytes;
use keybroker_proxy::backend::{BackendFuture, KmsBackend};
use keybroker_proxy::measurements::AllowedImage;
use keybroker_proxy::server::{Proxy, ProxyConfig, ProxyHandle};
use support::{Client, Nsm, describe, described, echoed, image, random, wait_calls};
use tokio::sync::Semaphore;

/// Behaviour chosen by the request's key id:
/// `sleep:MS` answers after MS ms, `block` waits for a permit of `gate`,
/// `missing` is a KMS NotFoundException, anything else answers at once.
/// GenerateDataKey answers with a plaintext field (which the proxy must
/// never relay).
struct Fake {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl KmsBackend for Fake {
    fn call(&self, request: KmsRequest) -> BackendFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if let KmsRequest::GenerateDataKey(_) = request {
                return Ok(KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
                    plaintext: Some(SecretBytes::from_slice(&[0x42; 32])),
                    ..Default::default()
                }));
            }
            let key = request.key_id().unwrap_or_default().to_owned();
            if let Some(ms) = key.strip_prefix("sleep:") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            } else if key == "block" {
                self.gate.acquire().await.unwrap().forget();
            } else if key == "missing" {
                return Err(WireError::kms(KmsError::new(
                    "NotFoundException",
                    "no such key",
                )));
            }
            Ok(described(&key))
        })
    }
}

fn config() -> ProxyConfig {
    ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap())
}

async fn start(config: ProxyConfig) -> (ProxyHandle, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let proxy = Proxy::bind(config, fake.clone()).await.unwrap();
    (proxy.spawn(), fake)
}

fn response(msg: Option<Message>) -> (u64, Result<KmsResponse, WireError>) {
    match msg {
        Some(Message::Response { id, result }) => (id, result),
        other => panic!("expected a Response, got {other:?}"),
    }
}

fn fatal_error(msg: Option<Message>) -> WireError {
    match msg {
        Some(Message::Error { error }) => error,
        other => panic!("expected an Error, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_and_one_request() {
    let (proxy, fake) = start(config()).await;
    let addr = proxy.local_addr().clone();
    assert!(matches!(&addr, keybroker_common::address::Address::Tcp(hp) if !hp.ends_with(":0")));

    let mut c = Client::connect(&addr).await;
    c.send(&Message::hello("test")).await;
    match c.recv().await {
        Some(Message::HelloAck { version, server }) => {
            assert_eq!(version, keybroker_common::protocol::PROTOCOL_VERSION);
            assert!(server.starts_with("keybroker-proxy/"), "{server}");
        }
        other => panic!("{other:?}"),
    }
    c.request(7, None, describe("alias/app")).await;
    let (id, result) = response(c.recv().await);
    assert_eq!(id, 7);
    assert_eq!(echoed(&result.unwrap()), "alias/app");

    c.request(8, None, describe("missing")).await;
    let (id, result) = response(c.recv().await);
    assert_eq!(id, 8);
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Kms);
    assert_eq!(err.kms_error().unwrap().code, "NotFoundException");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    // The client says Goodbye: the proxy closes.
    c.send(&Message::Goodbye).await;
    assert_eq!(c.recv().await, None);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_complete_out_of_order() {
    let (proxy, _fake) = start(config()).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    // Request i sleeps (N - i) * 20 ms: later requests finish first.
    const N: u64 = 40;
    let started = Instant::now();
    for i in 0..N {
        c.request(i, None, describe(&format!("sleep:{}", (N - i) * 20)))
            .await;
    }
    let mut order = Vec::new();
    for _ in 0..N {
        let (id, result) = response(c.recv().await);
        assert_eq!(echoed(&result.unwrap()), format!("sleep:{}", (N - id) * 20));
        order.push(id);
    }
    // All ran concurrently: far less than the 16.4 s a serial proxy needs.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..N).collect::<Vec<_>>(), "each id answered once");
    assert_eq!(
        order[0],
        N - 1,
        "the shortest request answers first: {order:?}"
    );
    // Completion order, not arrival order: the later half finishes first.
    assert!(
        order[..order.len() / 2].iter().all(|id| *id >= N / 2),
        "{order:?}"
    );
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn many_connections_at_once() {
    let (proxy, fake) = start(config()).await;
    let addr = proxy.local_addr().clone();
    let mut clients = Vec::new();
    for conn in 0..20u64 {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut c = Client::handshake(&addr).await;
            for i in 0..10 {
                c.request(i, None, describe(&format!("k{conn}-{i}"))).await;
            }
            let mut seen = Vec::new();
            for _ in 0..10 {
                let (id, result) = response(c.recv().await);
                assert_eq!(echoed(&result.unwrap()), format!("k{conn}-{id}"));
                seen.push(id);
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 200);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn unsupported_version_is_refused() {
    let (proxy, _) = start(config()).await;
    let mut c = Client::connect(proxy.local_addr()).await;
    c.send(&Message::Hello {
        versions: VersionRange::new(4, 5),
        client: "future".into(),
    })
    .await;
    let err = fatal_error(c.recv().await);
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    assert!(err.message().contains("4..=5"), "{err}");
    assert_eq!(c.recv().await, None, "closed after the Error");
    proxy.shutdown_and_wait().await.unwrap();
}

/// The enclave's metrics report (version 3): refused on a version 2
/// connection; accepted, unanswered, and served labelled by enclave on a
/// version 3 one; and a flood of made-up enclave ids is bounded.
#[tokio::test]
async fn enclave_reports_need_version_3_and_are_served_bounded() {
    use keybroker_common::protocol::{EnclaveReport, KeyCounts};
    use keybroker_proxy::metrics::Metrics;
    use keybroker_proxy::metrics::enclaves::MAX_REPORTING_ENCLAVES;

    let metrics = Arc::new(Metrics::new());
    let proxy = Proxy::bind(config(), Arc::new(Fake::default()))
        .await
        .unwrap()
        .with_metrics(metrics.clone())
        .spawn();
    let report = |enclave: &str| EnclaveReport {
        enclave: enclave.into(),
        keys: KeyCounts {
            generated: 2,
            ..KeyCounts::default()
        },
        decrypt_failures: 4,
        ..EnclaveReport::default()
    };

    let mut old = Client::connect(proxy.local_addr()).await;
    old.send(&Message::Hello {
        versions: VersionRange::new(1, 2),
        client: "v2-enclave".into(),
    })
    .await;
    assert!(matches!(
        old.recv().await,
        Some(Message::HelloAck { version: 2, .. })
    ));
    old.send(&Message::Metrics {
        report: report("i-old-enc1"),
    })
    .await;
    let err = fatal_error(old.recv().await);
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.message().contains("Metrics"), "{err}");

    let mut c = Client::handshake(proxy.local_addr()).await;
    c.send(&Message::Metrics {
        report: report("i-0abc-enc1"),
    })
    .await;
    // Not answered: the next thing on the connection is a request's answer.
    c.request(1, None, describe("alias/app")).await;
    assert_eq!(response(c.recv().await).0, 1);
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("keybroker_enclave_decrypt_failures_total{enclave=\"i-0abc-enc1\"} 4"),
        "{text}"
    );
    assert!(
        text.contains(
            "keybroker_enclave_recipient_keys_generated_total{enclave=\"i-0abc-enc1\"} 2"
        ),
        "{text}"
    );
    assert!(!text.contains("i-old-enc1"), "{text}");

    // One peer making up ids: the proxy keeps at most the bound.
    for i in 0..MAX_REPORTING_ENCLAVES + 10 {
        c.send(&Message::Metrics {
            report: report(&format!("fake-{i}")),
        })
        .await;
    }
    c.send(&Message::Goodbye).await;
    assert_eq!(c.recv().await, None, "closed after Goodbye");
    let text = metrics.encode().unwrap();
    let served = text
        .lines()
        .filter(|l| l.starts_with("keybroker_enclave_decrypt_failures_total{"))
        .count();
    assert_eq!(served, MAX_REPORTING_ENCLAVES);
    assert!(
        text.contains("keybroker_proxy_enclave_reports_total{result=\"over_limit\"} 11"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "keybroker_proxy_enclaves_reporting {MAX_REPORTING_ENCLAVES}"
        )),
        "{text}"
    );
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn request_before_hello_is_refused() {
    let (proxy, fake) = start(config()).await;
    let mut c = Client::connect(proxy.local_addr()).await;
    c.request(1, None, describe("alias/app")).await;
    let err = fatal_error(c.recv().await);
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.message().contains("Hello"), "{err}");
    assert_eq!(c.recv().await, None);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn oversized_frame_gets_an_error_and_close() {
    let mut cfg = config();
    cfg.limits.max_frame_len = 4096;
    let (proxy, fake) = start(cfg).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    // Only the prefix: the proxy must answer without waiting for the body.
    c.send_raw(&(1u32 << 20).to_be_bytes()).await;
    let err = fatal_error(c.recv().await);
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.message().contains("exceeds the limit of 4096"), "{err}");
    assert_eq!(c.recv().await, None);

    // A real request over the configured limit, too.
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, describe(&"k".repeat(5000))).await;
    assert_eq!(fatal_error(c.recv().await).code(), ErrorCode::BadRequest);
    assert_eq!(c.recv().await, None);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_close() {
    let (proxy, _) = start(config()).await;
    for body in [
        &[0xFF, 0xFF, 0xFF][..],       // not CBOR
        &[0x82, 0x18, 0x63, 0xA0][..], // unknown message kind 99
        &[0x82, 0x03, 0x01][..],       // Request with a non-map payload
    ] {
        let mut c = Client::handshake(proxy.local_addr()).await;
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        c.send_raw(&frame).await;
        let err = fatal_error(c.recv().await);
        assert_eq!(err.code(), ErrorCode::BadRequest, "{body:02x?}");
        assert_eq!(c.recv().await, None);
    }
    // An empty frame.
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.send_raw(&[0, 0, 0, 0]).await;
    assert_eq!(fatal_error(c.recv().await).code(), ErrorCode::BadRequest);
    // A second Hello.
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.send(&Message::hello("again")).await;
    assert_eq!(fatal_error(c.recv().await).code(), ErrorCode::BadRequest);
    // A connection that closes mid-frame does not hurt the proxy.
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.send_raw(&[0, 0, 1, 0, 0x82]).await;
    drop(c);
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, describe("still-up")).await;
    assert!(response(c.recv().await).1.is_ok());
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn duplicate_request_id_in_flight_is_a_protocol_error() {
    let (proxy, fake) = start(config()).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(5, None, describe("block")).await;
    c.request(5, None, describe("block")).await;
    let err = fatal_error(c.recv().await);
    assert!(err.message().contains("already in flight"), "{err}");
    assert_eq!(c.recv().await, None);
    fake.gate.add_permits(10);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn busy_over_the_in_flight_limit() {
    let mut cfg = config();
    cfg.limits.max_in_flight_per_connection = 2;
    let (proxy, fake) = start(cfg).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, describe("block")).await;
    c.request(2, None, describe("block")).await;
    c.request(3, None, describe("block")).await;
    let (id, result) = response(c.recv().await);
    assert_eq!(id, 3);
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Busy);
    assert!(err.retryable());
    // Capacity returns once the first two finish.
    fake.gate.add_permits(2);
    let mut ids = vec![response(c.recv().await).0, response(c.recv().await).0];
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    c.request(4, None, describe("now")).await;
    let (id, result) = response(c.recv().await);
    assert_eq!((id, result.is_ok()), (4, true));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    proxy.shutdown_and_wait().await.unwrap();
}

/// The bound on KMS calls holds across connections: with two calls in
/// flight (on two connections, each far below its own limit), a third
/// connection's request and a second request on the first connection are
/// answered `Busy` (retryable) at once, without reaching KMS; once a call
/// finishes there is room again.
#[tokio::test]
async fn kms_calls_in_flight_are_bounded_across_connections() {
    let mut cfg = config();
    cfg.limits.max_kms_in_flight = 2;
    let (proxy, fake) = start(cfg).await;
    let addr = proxy.local_addr().clone();
    let mut a = Client::handshake(&addr).await;
    let mut b = Client::handshake(&addr).await;
    let mut c = Client::handshake(&addr).await;
    a.request(1, None, describe("block")).await;
    b.request(1, None, describe("block")).await;
    wait_calls(&fake.calls, 2).await;

    c.request(1, None, describe("now")).await;
    let (id, result) = response(c.recv().await);
    let err = result.unwrap_err();
    assert_eq!((id, err.code()), (1, ErrorCode::Busy));
    assert!(err.retryable(), "{err}");
    assert!(err.message().contains("2 KMS calls in flight"), "{err}");
    a.request(2, None, describe("now")).await;
    let (id, result) = response(a.recv().await);
    assert_eq!((id, result.unwrap_err().code()), (2, ErrorCode::Busy));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    // One call finishes: the next request is forwarded.
    fake.gate.add_permits(1);
    let done = tokio::select! {
        r = a.recv() => response(r),
        r = b.recv() => response(r),
    };
    assert_eq!(done.0, 1);
    assert!(done.1.is_ok());
    c.request(2, None, describe("now")).await;
    let (id, result) = response(c.recv().await);
    assert_eq!((id, result.is_ok()), (2, true));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    fake.gate.add_permits(1);
    proxy.shutdown_and_wait().await.unwrap();
}

/// Many connections at once, each within its own limit, never have more
/// than the proxy-wide number of calls at KMS; the rest are refused `Busy`.
#[tokio::test]
async fn concurrent_connections_share_the_kms_bound() {
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: usize = 4;
    const BOUND: usize = 5;
    let total = CONNECTIONS * PER_CONNECTION;
    let mut cfg = config();
    cfg.limits.max_kms_in_flight = BOUND;
    let (proxy, fake) = start(cfg).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CONNECTIONS {
        let mut c = Client::handshake(proxy.local_addr()).await;
        for id in 0..PER_CONNECTION {
            c.request(u64::try_from(id).unwrap(), None, describe("block"))
                .await;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Message::Response { result, .. }) = c.recv().await {
                let _ = tx.send(result);
            }
        });
    }
    // BOUND calls are held at KMS; every other request comes back Busy.
    for _ in 0..total - BOUND {
        let result = rx.recv().await.unwrap();
        assert_eq!(result.unwrap_err().code(), ErrorCode::Busy);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), BOUND);
    fake.gate.add_permits(BOUND);
    for _ in 0..BOUND {
        assert!(rx.recv().await.unwrap().is_ok());
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), BOUND);
    proxy.shutdown_and_wait().await.unwrap();
}

/// A TCP listener must be loopback unless allowed: whoever connects gets the
/// proxy's KMS access and AWS credentials. Unix sockets are not affected
/// (`serves_on_a_unix_socket`).
#[tokio::test]
async fn non_loopback_tcp_needs_the_explicit_flag() {
    for open in ["tcp://0.0.0.0:0", "tcp://[::]:0"] {
        let err = Proxy::bind(
            ProxyConfig::new(open.parse().unwrap()),
            Arc::new(Fake::default()),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, keybroker_proxy::Error::Config(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains("non-loopback"), "{message}");
        assert!(message.contains("--allow-non-loopback"), "{message}");
    }
    // Loopback, by address or by a name that resolves to it: allowed.
    for lo in ["tcp://127.0.0.1:0", "tcp://localhost:0"] {
        let (proxy, _) = start(ProxyConfig::new(lo.parse().unwrap())).await;
        let mut c = Client::handshake(proxy.local_addr()).await;
        c.request(1, None, describe("alias/app")).await;
        assert!(response(c.recv().await).1.is_ok());
        proxy.shutdown_and_wait().await.unwrap();
    }
    // Allowed explicitly: binds (on every interface).
    let mut cfg = ProxyConfig::new("tcp://0.0.0.0:0".parse().unwrap());
    cfg.allow_non_loopback = true;
    let (proxy, _) = start(cfg).await;
    assert!(proxy.local_addr().to_string().starts_with("tcp://0.0.0.0:"));
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn connection_limit_refuses_with_busy() {
    let mut cfg = config();
    cfg.limits.max_connections = 1;
    let (proxy, _) = start(cfg).await;
    let mut first = Client::handshake(proxy.local_addr()).await;
    let mut second = Client::connect(proxy.local_addr()).await;
    let err = fatal_error(second.recv().await);
    assert_eq!(err.code(), ErrorCode::Busy);
    assert_eq!(second.recv().await, None);
    // The first one is unaffected; after it leaves, a new one is served.
    first.request(1, None, describe("x")).await;
    assert!(response(first.recv().await).1.is_ok());
    first.send(&Message::Goodbye).await;
    assert_eq!(first.recv().await, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect(proxy.local_addr()).await;
        c.send(&Message::hello("t")).await;
        match c.recv().await {
            Some(Message::HelloAck { .. }) => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("{other:?}"),
        }
    }
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn request_timeout_is_honoured() {
    let (proxy, _) = start(config()).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    let started = Instant::now();
    c.request(1, Some(100), describe("sleep:5000")).await;
    let (_, result) = response(c.recv().await);
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert!(err.retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn policy_refusals_reach_the_enclave() {
    let (proxy, fake) = start(config()).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    // No Recipient: refused before KMS is called.
    c.request(
        1,
        None,
        KmsRequest::Decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(vec![1; 16])),
            ..Default::default()
        }),
    )
    .await;
    let (_, result) = response(c.recv().await);
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PolicyDenied);
    assert!(!err.retryable());
    assert!(err.message().starts_with("RecipientRequired:"), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);

    // With a Recipient, but KMS answers with plaintext: not relayed.
    c.request(
        2,
        None,
        KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            recipient: Some(RecipientInfo::new(Nsm::new().document(0xAA, 0xA2))),
            ..Default::default()
        }),
    )
    .await;
    let (id, result) = response(c.recv().await);
    assert_eq!(id, 2);
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PolicyDenied);
    assert!(err.message().starts_with("PlaintextInResponse:"), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let (proxy, _) = start(config()).await;
    let addr = proxy.local_addr().clone();
    let mut c = Client::handshake(&addr).await;
    c.request(1, None, describe("sleep:300")).await;
    c.request(2, None, describe("sleep:400")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.shutdown();

    assert_eq!(c.recv().await, Some(Message::Goodbye));
    // A request sent after the Goodbye is answered Shutdown.
    c.request(3, None, describe("late")).await;
    let mut answered = Vec::new();
    for _ in 0..3 {
        let (id, result) = response(c.recv().await);
        match id {
            1 | 2 => assert!(result.is_ok(), "{result:?}"),
            3 => assert_eq!(result.unwrap_err().code(), ErrorCode::Shutdown),
            _ => panic!("id {id}"),
        }
        answered.push(id);
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 2, 3]);
    assert_eq!(c.recv().await, None, "closed once drained");
    proxy.join().await.unwrap();
    // No longer listening.
    let keybroker_common::address::Address::Tcp(hp) = &addr else {
        panic!()
    };
    assert!(tokio::net::TcpStream::connect(hp.as_str()).await.is_err());
}

#[tokio::test]
async fn drain_timeout_answers_the_rest_with_shutdown() {
    let mut cfg = config();
    cfg.limits.drain_timeout = Duration::from_millis(200);
    let (proxy, _) = start(cfg).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, describe("sleep:30000")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    proxy.shutdown();
    assert_eq!(c.recv().await, Some(Message::Goodbye));
    let (id, result) = response(c.recv().await);
    assert_eq!(id, 1);
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Shutdown);
    assert!(err.retryable());
    assert_eq!(c.recv().await, None);
    proxy.join().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_and_handshake_timeouts() {
    let mut cfg = config();
    cfg.limits.idle_timeout = Duration::from_millis(150);
    cfg.limits.handshake_timeout = Duration::from_millis(150);
    let (proxy, _) = start(cfg).await;

    let mut silent = Client::connect(proxy.local_addr()).await;
    let err = fatal_error(silent.recv().await);
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.message().contains("no Hello"), "{err}");
    assert_eq!(silent.recv().await, None);

    let mut idle = Client::handshake(proxy.local_addr()).await;
    idle.request(1, None, describe("sleep:300")).await;
    // In flight longer than the idle timeout: still answered.
    assert!(response(idle.recv().await).1.is_ok());
    assert_eq!(idle.recv().await, Some(Message::Goodbye));
    assert_eq!(idle.recv().await, None);
    proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("kb-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.sock");
    let addr: keybroker_common::address::Address =
        format!("unix://{}", path.display()).parse().unwrap();
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let (proxy, _) = start(ProxyConfig::new(addr.clone())).await;
    assert_eq!(proxy.local_addr(), &addr);
    let mut c = Client::handshake(&addr).await;
    c.request(1, None, describe("over-unix")).await;
    assert_eq!(echoed(&response(c.recv().await).1.unwrap()), "over-unix");
    proxy.shutdown_and_wait().await.unwrap();
    assert!(!path.exists(), "socket file removed on shutdown");

    // A regular file at the path is never removed.
    std::fs::write(&path, b"not a socket").unwrap();
    let err = Proxy::bind(ProxyConfig::new(addr), Arc::new(Fake::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, keybroker_proxy::Error::Bind { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn allowed_images_are_checked_before_forwarding() {
    let nsm = Nsm::new();
    let mut cfg = config();
    cfg.admission.allowed_images = vec![image("v1", 0xAA, 0xA2)];
    cfg.admission.verifier.add_trusted_root(&nsm.root).unwrap();
    let (proxy, fake) = start(cfg).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    // Matching PCRs, trusted chain: forwarded.
    c.request(1, None, random(nsm.document(0xAA, 0xA2))).await;
    let (_, result) = response(c.recv().await);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

    // Another enclave image: refused, saying what the caller had and which
    // image was expected.
    c.request(2, None, random(nsm.document(0xBB, 0xB2))).await;
    let err = response(c.recv().await).1.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PolicyDenied);
    assert_eq!(
        err.message(),
        format!(
            "PcrMismatch: caller PCR0 {} matches none of the 1 allowed image: \
             v1: PCR0 is bbbbbbbbbbbbbbbb…, expected aaaaaaaaaaaaaaaa…",
            "bb".repeat(48)
        )
    );

    // The right PCRs from an untrusted chain: refused.
    c.request(3, None, random(Nsm::new().document(0xAA, 0xA2)))
        .await;
    let err = response(c.recv().await).1.unwrap_err();
    assert!(err.message().starts_with("AttestationInvalid:"), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    proxy.shutdown_and_wait().await.unwrap();
}

/// Without any image configured, a Recipient document that does not parse,
/// carries no public key, or is too old or from the future is refused on
/// the wire with its own rule, and KMS sees none of them.
#[tokio::test]
async fn recipient_documents_are_checked_before_anything_reaches_kms() {
    let nsm = Nsm::new();
    let (proxy, fake) = start(config()).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    let now = keybroker_proxy::clock::now().0;
    let made_at = |ms: u64| {
        nsm.build(&AttestationDocument {
            timestamp: UnixMillis(ms),
            ..nsm.payload(0xAA, 0xA2)
        })
    };
    let cases = [
        (
            vec![0x84, 0x44, 0xA1, 0x01, 0x38, 0x22],
            "AttestationInvalid:",
        ),
        (
            nsm.build(&AttestationDocument {
                public_key: None,
                ..nsm.payload(0xAA, 0xA2)
            }),
            "RecipientKeyMissing:",
        ),
        (made_at(now - 10 * 60_000), "AttestationTooOld:"),
        (made_at(now + 10 * 60_000), "AttestationFromFuture:"),
    ];
    for (id, (doc, rule)) in (1..).zip(cases) {
        c.request(id, None, random(doc)).await;
        let (got, result) = response(c.recv().await);
        assert_eq!(got, id);
        let err = result.unwrap_err();
        assert_eq!(err.code(), ErrorCode::PolicyDenied);
        assert!(!err.retryable());
        assert!(err.message().starts_with(rule), "{err}");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    // A fresh document with a key is forwarded.
    c.request(9, None, random(nsm.document(0xAA, 0xA2))).await;
    assert!(response(c.recv().await).1.is_ok());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    proxy.shutdown_and_wait().await.unwrap();
}

/// A rollout: image B's enclave is served once B is allowed beside A, and
/// refused while only A is; PCRs of A and B are never combined.
#[tokio::test]
async fn a_second_allowed_image_is_admitted_during_a_rollout() {
    let nsm = Nsm::new();
    let doc_b = || nsm.document(0xBB, 0xB2);
    let proxy_for = |images: Vec<AllowedImage>| {
        let mut cfg = config();
        cfg.admission.allowed_images = images;
        cfg.admission.verifier.add_trusted_root(&nsm.root).unwrap();
        start(cfg)
    };

    // Only A: B is refused, nothing reaches KMS.
    let (proxy, fake) = proxy_for(vec![image("v1", 0xAA, 0xA2)]).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, random(doc_b())).await;
    let err = response(c.recv().await).1.unwrap_err();
    assert!(err.message().starts_with("PcrMismatch: "), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    proxy.shutdown_and_wait().await.unwrap();

    // A and B: both are forwarded.
    let (proxy, fake) = proxy_for(vec![image("v1", 0xAA, 0xA2), image("v2", 0xBB, 0xB2)]).await;
    let mut c = Client::handshake(proxy.local_addr()).await;
    c.request(1, None, random(doc_b())).await;
    let (_, result) = response(c.recv().await);
    assert!(result.is_ok(), "{result:?}");
    c.request(2, None, random(nsm.document(0xAA, 0xA2))).await;
    let (_, result) = response(c.recv().await);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    // A's PCR0 with B's PCR2: each value is allowed somewhere, the pair
    // nowhere. Both images are named in the refusal.
    c.request(3, None, random(nsm.document(0xAA, 0xB2))).await;
    let err = response(c.recv().await).1.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PolicyDenied);
    let message = err.message();
    assert!(
        message.contains("none of the 2 allowed images"),
        "{message}"
    );
    assert!(
        message.contains("v1: PCR2 is b2b2b2b2b2b2b2b2…, expected a2a2a2a2a2a2a2a2…"),
        "{message}"
    );
    assert!(
        message.contains("v2: PCR0 is aaaaaaaaaaaaaaaa…, expected bbbbbbbbbbbbbbbb…"),
        "{message}"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    proxy.shutdown_and_wait().await.unwrap();
}

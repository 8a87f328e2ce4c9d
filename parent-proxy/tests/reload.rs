//! Live reload under load ([`Reloader::reload`], what `serve` does on
//! SIGHUP): the allowed images change while admitted requests are waiting
//! for KMS. The new rule applies to the very next request, on a connection
//! that was already open, and every request in flight still gets its answer.
//!
//! The attack this guards against is the operator's mistake as much as the
//! parent's: an image that was just revoked must not be admitted once the
//! reload has been acknowledged, and a reload must not drop a data key that
//! an enclave is waiting for.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keybroker_common::kms::*;
use keybroker_common::protocol::{ErrorCode, Message};
use keybroker_proxy::backend::{BackendFuture, KmsBackend};
use keybroker_proxy::measurements::AllowedImage;
use keybroker_proxy::server::{Proxy, ProxyConfig};
use support::{Client, Nsm, image, random, wait_calls};
use tokio::sync::Semaphore;

/// Answers `GenerateRandom` with a `CiphertextForRecipient` once `gate`
/// gives it a permit.
struct Gated {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl KmsBackend for Gated {
    fn call(&self, _request: KmsRequest) -> BackendFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            Ok(KmsResponse::GenerateRandom(GenerateRandomResponse {
                ciphertext_for_recipient: Some(Blob(vec![0x30; 64])),
                ..Default::default()
            }))
        })
    }
}

fn config_admitting(nsm: &Nsm, images: Vec<AllowedImage>) -> ProxyConfig {
    let mut cfg = ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap());
    cfg.admission.allowed_images = images;
    cfg.admission.verifier.add_trusted_root(&nsm.root).unwrap();
    cfg
}

/// The ids of the next `n` responses on `c` (they arrive in completion
/// order), each of which must be a success.
async fn answered_ok(c: &mut Client, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        match c.recv().await {
            Some(Message::Response { id, result }) => {
                assert!(result.is_ok(), "{id}: {result:?}");
                ids.push(id);
            }
            other => panic!("expected a Response, got {other:?}"),
        }
    }
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_the_next_request_and_loses_nothing_in_flight() {
    let nsm = Nsm::new();
    let backend = Arc::new(Gated::default());
    let proxy = Proxy::bind(
        config_admitting(&nsm, vec![image("v1", 0xAA, 0xA2)]),
        backend.clone(),
    )
    .await
    .unwrap()
    .spawn();
    let addr = proxy.local_addr().clone();

    // Load: six v1 requests on two connections, admitted and waiting for KMS.
    let mut a = Client::handshake(&addr).await;
    let mut b = Client::handshake(&addr).await;
    for id in 1..=3 {
        a.request(id, Some(30_000), random(nsm.document(0xAA, 0xA2)))
            .await;
        b.request(id, Some(30_000), random(nsm.document(0xAA, 0xA2)))
            .await;
    }
    wait_calls(&backend.calls, 6).await;

    // v1 is revoked, v2 admitted.
    proxy
        .reloader()
        .reload(config_admitting(&nsm, vec![image("v2", 0xBB, 0xB2)]));

    // The next v1 request, on a connection opened before the reload, is
    // refused without reaching KMS...
    a.request(10, None, random(nsm.document(0xAA, 0xA2))).await;
    let err = a.refusal(10).await;
    assert_eq!(err.code(), ErrorCode::PolicyDenied);
    assert!(err.message().starts_with("PcrMismatch:"), "{err}");
    assert!(err.message().contains("v2"), "checked against v2: {err}");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 6);
    // ...and a v2 one is forwarded.
    b.request(10, None, random(nsm.document(0xBB, 0xB2))).await;
    wait_calls(&backend.calls, 7).await;

    // Nothing in flight was lost: KMS answers, every request gets its answer.
    backend.gate.add_permits(7);
    assert_eq!(answered_ok(&mut a, 3).await, [1, 2, 3]);
    assert_eq!(answered_ok(&mut b, 4).await, [1, 2, 3, 10]);
    proxy.shutdown_and_wait().await.unwrap();
}

/// Lowering `max_kms_in_flight` by reload takes effect while calls are in
/// flight: the calls already at KMS finish, new ones are refused `Busy`
/// until the proxy is under the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_lowers_a_limit_while_it_is_in_use() {
    let nsm = Nsm::new();
    let backend = Arc::new(Gated::default());
    let mut cfg = config_admitting(&nsm, vec![image("v1", 0xAA, 0xA2)]);
    cfg.limits.max_kms_in_flight = 3;
    let proxy = Proxy::bind(cfg, backend.clone()).await.unwrap().spawn();
    let mut c = Client::handshake(proxy.local_addr()).await;
    for id in 1..=2 {
        c.request(id, Some(30_000), random(nsm.document(0xAA, 0xA2)))
            .await;
    }
    wait_calls(&backend.calls, 2).await;

    let mut lower = config_admitting(&nsm, vec![image("v1", 0xAA, 0xA2)]);
    lower.limits.max_kms_in_flight = 1;
    proxy.reloader().reload(lower);
    c.request(3, None, random(nsm.document(0xAA, 0xA2))).await;
    let err = c.refusal(3).await;
    assert_eq!(err.code(), ErrorCode::Busy);
    assert!(err.message().contains("1 KMS calls in flight"), "{err}");

    // Both calls in flight finish; then there is room for one again.
    backend.gate.add_permits(2);
    assert_eq!(answered_ok(&mut c, 2).await, [1, 2]);
    let mut admitted = false;
    for attempt in 0..50u64 {
        let id = 100 + attempt;
        c.request(id, Some(30_000), random(nsm.document(0xAA, 0xA2)))
            .await;
        backend.gate.add_permits(1);
        match c.response(id).await {
            Ok(_) => {
                admitted = true;
                break;
            }
            // The shrinking task may not have taken its permit back yet.
            Err(e) if e.code() == ErrorCode::Busy => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(admitted, "one call fits under the new limit");
    proxy.shutdown_and_wait().await.unwrap();
}

//! Recipient key rotation: by use count, by age, without waiting, and
//! retirement of old keys.
// The gated NSM below is test code outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keybroker_enclave::nsm::{Nsm, Request, Response};
use keybroker_enclave::{RecipientKeys, RecipientKeysConfig};
use support::*;

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_verify_and_carry_the_public_key() {
    let (keys, verifier) = keys().await;
    let pair = keys.current();
    let verified = verifier.verify(pair.attestation_document(), now()).unwrap();
    assert_eq!(
        verified.document().public_key.as_deref(),
        Some(pair.public_key_spki_der())
    );
    assert_eq!(pair.public_key_spki_der().len(), 294);
    assert_eq!(pair.private_key().key_size_bits(), 2048);
    assert_eq!(pair.generation(), 1);
    assert_eq!(
        pair.recipient().attestation_document.0,
        pair.attestation_document()
    );
    let stats = keys.stats();
    assert_eq!((stats.current_generation, stats.rotations), (1, 0));
    // The spare follows the first pair in the background.
    wait_until("spare", || keys.stats().spare_ready).await;
    assert_eq!(keys.stats().generated, 2);
}

/// A mock NSM that holds every attestation after the first until
/// [`GatedNsm::release`]: the spare's, so a test sees what happens while it
/// is still being made.
struct GatedNsm {
    inner: keybroker_enclave::MockNsm,
    attestations: AtomicU64,
    open: Mutex<bool>,
    opened: Condvar,
}

impl GatedNsm {
    fn new() -> Arc<Self> {
        let ca = keybroker_enclave::MockCa::generate().unwrap();
        Arc::new(Self {
            inner: keybroker_enclave::MockNsm::new(
                &ca,
                keybroker_enclave::MockNsmConfig::default(),
            )
            .unwrap(),
            attestations: AtomicU64::new(0),
            open: Mutex::new(false),
            opened: Condvar::new(),
        })
    }

    fn attestations(&self) -> u64 {
        self.attestations.load(Ordering::SeqCst)
    }

    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Nsm for GatedNsm {
    fn process(&self, request: Request) -> Response {
        if matches!(request, Request::Attestation { .. })
            && self.attestations.fetch_add(1, Ordering::SeqCst) >= 1
        {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        self.inner.process(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pair_does_not_wait_for_the_spare() {
    let nsm = GatedNsm::new();
    // `new` returns while the spare's attestation is held: it made one pair.
    // (The timeout only keeps a regression from hanging the test run.)
    let keys = tokio::time::timeout(
        Duration::from_secs(120),
        RecipientKeys::new(
            nsm.clone(),
            RecipientKeysConfig {
                max_uses: 1,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("RecipientKeys::new waited for the spare")
    .unwrap();
    assert_eq!(keys.current().generation(), 1);
    // The spare is started only once the first pair exists, and is pending.
    wait_until("the spare's attestation", || nsm.attestations() == 2).await;
    let stats = keys.stats();
    assert!(!stats.spare_ready, "{stats:?}");
    assert_eq!(stats.generated, 2, "{stats:?}");
    // Requests do not wait for it either: past its use limit, the first
    // pair is handed out again and counted as over-used.
    assert_eq!(keys.acquire().generation(), 1);
    assert_eq!(keys.acquire().generation(), 1);
    assert_eq!(keys.stats().overused, 1);
    // Once the spare exists it takes over, and a new spare follows.
    nsm.release();
    wait_until("rotation to the spare", || keys.current().generation() == 2).await;
    wait_until("the next spare", || keys.stats().spare_ready).await;
    let stats = keys.stats();
    assert_eq!((stats.generated, stats.rotations), (3, 1), "{stats:?}");
    assert_eq!(keys.acquire().generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_attests_with_the_nsm_it_opens_and_reports_its_failure() {
    let ca = keybroker_enclave::MockCa::generate().unwrap();
    let verifier =
        keybroker_common::attestation::Verifier::from_trusted_roots([ca.root_der()]).unwrap();
    let keys = RecipientKeys::open(
        move || {
            let nsm =
                keybroker_enclave::MockNsm::new(&ca, keybroker_enclave::MockNsmConfig::default())?;
            Ok(Arc::new(nsm) as Arc<dyn Nsm>)
        },
        RecipientKeysConfig::default(),
    )
    .await
    .unwrap();
    let pair = keys.current();
    let verified = verifier.verify(pair.attestation_document(), now()).unwrap();
    assert_eq!(
        verified.document().public_key.as_deref(),
        Some(pair.public_key_spki_der())
    );
    wait_until("spare", || keys.stats().spare_ready).await;
    // An NSM that does not open is the error, as `NsmDevice::open` reports it.
    let err = RecipientKeys::open(
        || {
            Err(keybroker_enclave::Error::Nsm {
                request: "open",
                detail: "cannot open /dev/nsm".into(),
            })
        },
        RecipientKeysConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, keybroker_enclave::Error::Nsm { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_after_max_uses() {
    let (keys, _) = keys_with(RecipientKeysConfig {
        max_uses: 3,
        ..Default::default()
    })
    .await;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        wait_until("spare", || keys.stats().spare_ready).await;
        *counts.entry(keys.acquire().generation()).or_insert(0u32) += 1;
    }
    // Each pair served exactly three requests (the last one possibly fewer).
    let full = counts.values().filter(|c| **c == 3).count();
    assert!(counts.values().all(|c| *c <= 3), "{counts:?}");
    assert!(full >= 9, "{counts:?}");
    let stats = keys.stats();
    assert!(stats.rotations >= 9, "{stats:?}");
    assert_eq!(stats.overused, 0, "a spare was always ready: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_by_age_in_the_background() {
    let max_age = Duration::from_millis(1500);
    let (keys, verifier) = keys_with(RecipientKeysConfig {
        max_age,
        ..Default::default()
    })
    .await;
    let first = keys.current();
    tokio::time::sleep(max_age + Duration::from_millis(500)).await;
    // Rotated without any request asking for it.
    let now_current = keys.current();
    assert_ne!(now_current.generation(), first.generation());
    assert!(now_current.age() < max_age, "{:?}", now_current.age());
    assert!(keys.stats().rotations >= 1);
    // Over a few lifetimes, no pair handed out is older than max_age, except
    // when no fresh spare was ready (acquire never waits for a key
    // generation, which a loaded machine can delay): then the handout is
    // counted as over-use.
    let start = Instant::now();
    while start.elapsed() < max_age * 3 {
        let overused = keys.stats().overused;
        let p = keys.acquire();
        assert!(
            p.age() < max_age || keys.stats().overused > overused,
            "age {:?} handed out uncounted",
            p.age()
        );
        verifier.verify(p.attestation_document(), now()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(keys.stats().rotations >= 3, "{:?}", keys.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_never_waits_for_key_generation() {
    // One use per key: every acquire needs a rotation, far faster than
    // RSA keys can be generated.
    let (keys, _) = keys_with(RecipientKeysConfig {
        max_uses: 1,
        ..Default::default()
    })
    .await;
    let start = Instant::now();
    for _ in 0..2000 {
        let _ = keys.acquire();
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "2000 acquires took {took:?}"
    );
    let stats = keys.stats();
    assert!(
        stats.overused > 0,
        "keys were over-used rather than waited for"
    );
    // The background task catches up.
    let g = keys.current().generation();
    wait_until("catch-up rotation", || keys.acquire().generation() != g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_keys_are_freed_once_no_request_holds_them() {
    let (keys, _) = keys_with(RecipientKeysConfig {
        max_uses: 1,
        ..Default::default()
    })
    .await;
    let held = keys.acquire();
    let weak = Arc::downgrade(&held);
    let gen_held = held.generation();
    wait_until("rotation", || keys.current().generation() != gen_held).await;
    // A request in flight keeps its key until it finishes...
    assert!(weak.upgrade().is_some());
    drop(held);
    // ...and then it is gone (AWS-LC clears the RSA key when freed).
    assert!(weak.upgrade().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused() {
    let ca = keybroker_enclave::MockCa::generate().unwrap();
    let nsm = Arc::new(
        keybroker_enclave::MockNsm::new(&ca, keybroker_enclave::MockNsmConfig::default()).unwrap(),
    );
    for config in [
        RecipientKeysConfig {
            max_uses: 0,
            ..Default::default()
        },
        RecipientKeysConfig {
            max_age: Duration::ZERO,
            ..Default::default()
        },
        RecipientKeysConfig {
            user_data: Some(vec![0; 1025]),
            ..Default::default()
        },
    ] {
        assert!(RecipientKeys::new(nsm.clone(), config).await.is_err());
    }
    // user_data reaches the document.
    let keys = RecipientKeys::new(
        nsm,
        RecipientKeysConfig {
            user_data: Some(b"app=demo".to_vec()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let doc = keybroker_common::attestation::UnverifiedAttestation::parse(
        keys.current().attestation_document(),
    )
    .unwrap();
    assert_eq!(doc.document().user_data.as_deref(), Some(&b"app=demo"[..]));
}

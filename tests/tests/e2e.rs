//! End-to-end tests over loopback, all in one process: the mock KMS (with the
//! mock NSM's CA trusted as an attestation root), a key created through
//! `aws-sdk-kms` whose policy requires a PCR0, the parent proxy relaying to
//! the mock KMS through `SdkKmsBackend`, and the enclave client with
//! recipient keys attested by the mock NSM.
//!
//! Shown: every operation end to end, the denials (no `Recipient` at the
//! proxy, PCR0 not in the key policy, disabled key, wrong encryption
//! context), hundreds of requests in flight on one connection, and a proxy
//! restart under load (no request outlives its deadline, the client
//! reconnects).
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keybroker_common::kms::{
    DataKeyPairSpec, DataKeySpec, DecryptRequest, DescribeKeyRequest, GenerateDataKeyPairRequest,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyRequest,
    GenerateDataKeyWithoutPlaintextRequest, GenerateRandomRequest, KmsRequest,
};
use keybroker_common::protocol::ErrorCode;
use keybroker_harness::testkit::{ALIAS, InProcessStack, PCR0, gdk, start_proxy};
use keybroker_proxy::server::ProxyConfig;

/// A stack whose key policy requires `pcr0_in_policy` and whose enclave
/// reports `enclave_pcr0`.
async fn stack(pcr0_in_policy: [u8; 48], enclave_pcr0: [u8; 48]) -> InProcessStack {
    InProcessStack::builder()
        .pcr0_in_policy(pcr0_in_policy)
        .enclave_pcr0(enclave_pcr0)
        .start()
        .await
        .unwrap()
}

fn context(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_end_to_end() {
    let s = stack(PCR0, PCR0).await;
    let c = &s.client;

    // GenerateDataKey, then Decrypt of its CiphertextBlob.
    let dk = c.generate_data_key(gdk(&s.key_arn)).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.key_id.as_deref(), Some(s.key_arn.as_str()));
    let dec = c
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(dk.ciphertext_blob.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dec.plaintext.expose(), dk.plaintext.expose());
    assert_eq!(dec.key_id.as_deref(), Some(s.key_arn.as_str()));

    // GenerateDataKey by alias, 64 bytes, with an encryption context.
    let ec = context(&[("purpose", "e2e"), ("tenant", "t1")]);
    let dk64 = c
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(ALIAS.to_owned()),
            number_of_bytes: Some(64),
            encryption_context: Some(ec.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dk64.plaintext.len(), 64);
    let dec64 = c
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(dk64.ciphertext_blob.clone()),
            encryption_context: Some(ec),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dec64.plaintext.expose(), dk64.plaintext.expose());

    // GenerateDataKeyPair, RSA and EC.
    for spec in [DataKeyPairSpec::Rsa2048, DataKeyPairSpec::EccNistP256] {
        let pair = c
            .generate_data_key_pair(GenerateDataKeyPairRequest {
                key_id: Some(s.key_arn.clone()),
                key_pair_spec: Some(spec),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!pair.private_key_plaintext.is_empty(), "{spec:?}");
        assert!(
            pair.public_key.as_ref().is_some_and(|p| !p.0.is_empty()),
            "{spec:?}"
        );
        assert!(!pair.private_key_ciphertext_blob.0.is_empty());
        assert_eq!(pair.key_pair_spec, Some(spec));
    }

    // GenerateRandom.
    let random = c
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(random.len(), 32);
    assert_ne!(random.expose(), &[0u8; 32][..]);

    // GenerateDataKeyWithoutPlaintext, then Decrypt through the client.
    let wp = c
        .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: Some(s.key_arn.clone()),
            key_spec: Some(DataKeySpec::Aes128),
            ..Default::default()
        })
        .await
        .unwrap();
    let blob = wp.ciphertext_blob.expect("CiphertextBlob");
    let dec_wp = c
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(blob),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dec_wp.plaintext.len(), 16);

    // GenerateDataKeyPairWithoutPlaintext.
    let pwp = c
        .generate_data_key_pair_without_plaintext(GenerateDataKeyPairWithoutPlaintextRequest {
            key_id: Some(s.key_arn.clone()),
            key_pair_spec: Some(DataKeyPairSpec::EccNistP256),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(pwp.public_key.is_some_and(|p| !p.0.is_empty()));
    assert!(
        pwp.private_key_ciphertext_blob
            .is_some_and(|b| !b.0.is_empty())
    );

    // DescribeKey by alias returns the ARN.
    let described = c
        .describe_key(DescribeKeyRequest {
            key_id: Some(ALIAS.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    let meta = described.key_metadata.expect("KeyMetadata");
    assert_eq!(meta.arn.as_deref(), Some(s.key_arn.as_str()));
    assert!(meta.enabled);

    s.proxy.shutdown_and_wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_refuses_plaintext_request_without_recipient() {
    let s = stack(PCR0, PCR0).await;
    let err = s
        .client
        .send_raw(KmsRequest::GenerateDataKey(gdk(&s.key_arn)))
        .await
        .unwrap_err();
    let (code, _) = err.remote_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(code, ErrorCode::PolicyDenied);
    assert!(err.kms_error().is_none());
    // The same connection still works.
    s.client.generate_data_key(gdk(&s.key_arn)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pcr0_not_in_key_policy_is_denied_by_kms() {
    let s = stack([0x11; 48], PCR0).await;
    let err = s
        .client
        .generate_data_key(gdk(&s.key_arn))
        .await
        .unwrap_err();
    let kms = err.kms_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(kms.code, "AccessDeniedException");
    // Decrypt of a blob made without plaintext is denied the same way.
    let wp = s
        .client
        .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: Some(s.key_arn.clone()),
            key_spec: Some(DataKeySpec::Aes256),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = s
        .client
        .decrypt(DecryptRequest {
            ciphertext_blob: wp.ciphertext_blob,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.kms_error().map(|k| k.code.as_str()),
        Some("AccessDeniedException"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_key_is_reported() {
    let s = stack(PCR0, PCR0).await;
    s.client.generate_data_key(gdk(&s.key_arn)).await.unwrap();
    s.sdk.disable_key().key_id(&s.key_arn).send().await.unwrap();
    let err = s
        .client
        .generate_data_key(gdk(&s.key_arn))
        .await
        .unwrap_err();
    assert_eq!(
        err.kms_error().map(|k| k.code.as_str()),
        Some("DisabledException"),
        "{err:?}"
    );
    s.sdk.enable_key().key_id(&s.key_arn).send().await.unwrap();
    s.client.generate_data_key(gdk(&s.key_arn)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_encryption_context_on_decrypt() {
    let s = stack(PCR0, PCR0).await;
    let mut req = gdk(&s.key_arn);
    req.encryption_context = Some(context(&[("tenant", "a")]));
    let dk = s.client.generate_data_key(req).await.unwrap();
    for wrong in [
        None,
        Some(context(&[("tenant", "b")])),
        Some(context(&[("tenant", "a"), ("extra", "x")])),
    ] {
        let err = s
            .client
            .decrypt(DecryptRequest {
                ciphertext_blob: Some(dk.ciphertext_blob.clone()),
                encryption_context: wrong.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.kms_error().map(|k| k.code.as_str()),
            Some("InvalidCiphertextException"),
            "{wrong:?}: {err:?}"
        );
    }
    let ok = s
        .client
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(dk.ciphertext_blob.clone()),
            encryption_context: Some(context(&[("tenant", "a")])),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.plaintext.expose(), dk.plaintext.expose());
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_requests_in_flight() {
    const N: usize = 300;
    // The proxy's default limit is 256 requests in flight per connection
    // (see `busy_beyond_the_proxy_limit_is_retryable`): raised so that all
    // 300 are in flight at once.
    let s = InProcessStack::builder()
        .proxy_config(|c| c.limits.max_in_flight_per_connection = 512)
        .start()
        .await
        .unwrap();
    let client = s.client.with_timeout(Duration::from_secs(60));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..N {
        let client = client.clone();
        let key = s.key_arn.clone();
        tasks.spawn(async move { client.generate_data_key(gdk(&key)).await });
    }
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(dk) => {
                assert_eq!(dk.plaintext.len(), 32);
                assert!(seen.insert(dk.plaintext.expose().to_vec()), "duplicate key");
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {N} failed, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(seen.len(), N);
    assert_eq!(s.client.stats().connections, 1);
}

/// With the proxy's default limit (256 in flight per connection), 300
/// concurrent calls on one client: the proxy answers the excess `Busy`
/// (forwarding nothing), and the client backs off and resends within the
/// deadline, so every caller gets its key and none sees `Busy`.
#[tokio::test(flavor = "multi_thread")]
async fn busy_beyond_the_proxy_limit_is_absorbed_by_the_client() {
    const N: usize = 300;
    let s = stack(PCR0, PCR0).await;
    let client = s.client.with_timeout(Duration::from_secs(60));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..N {
        let client = client.clone();
        let key = s.key_arn.clone();
        tasks.spawn(async move {
            client
                .generate_data_key(gdk(&key))
                .await
                .map(|dk| dk.plaintext.expose().to_vec())
        });
    }
    let mut seen = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let key = joined
            .unwrap()
            .unwrap_or_else(|e| panic!("caller saw {e:?}"));
        assert!(seen.insert(key), "duplicate key");
    }
    assert_eq!(seen.len(), N);
    assert_eq!(s.client.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_restart_during_load() {
    const TASKS: usize = 5;
    const PER_TASK: usize = 10;
    const DEADLINE: Duration = Duration::from_secs(3);
    const SLACK: Duration = Duration::from_secs(1);

    let s = stack(PCR0, PCR0).await;
    let InProcessStack {
        kms: _kms,
        sdk,
        key_arn,
        proxy,
        addr,
        client,
        ..
    } = s;
    let client = client.with_timeout(DEADLINE);

    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let client = client.clone();
        let key = key_arn.clone();
        let done = done.clone();
        load.spawn(async move {
            let mut results = Vec::new();
            for i in 0..PER_TASK {
                let start = Instant::now();
                let r = client.generate_data_key(gdk(&key)).await;
                results.push((
                    t,
                    i,
                    start.elapsed(),
                    r.map(|_| ()).map_err(|e| e.to_string()),
                ));
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            results
        });
    }

    // Let the load start, then restart the proxy on the same address.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = done.load(Ordering::SeqCst);
    proxy.shutdown_and_wait().await.unwrap();
    let after = done.load(Ordering::SeqCst);
    assert!(
        before > 0 && after < TASKS * PER_TASK,
        "the restart must fall mid-load: {before} done before, {after} after shutdown"
    );
    let proxy = start_proxy(ProxyConfig::new(addr.clone()), &sdk)
        .await
        .unwrap();
    assert_eq!(proxy.local_addr(), &addr);

    let mut outcomes = Vec::new();
    while let Some(joined) = load.join_next().await {
        outcomes.extend(joined.unwrap());
    }
    assert_eq!(outcomes.len(), TASKS * PER_TASK);
    for (t, i, elapsed, r) in &outcomes {
        assert!(
            *elapsed <= DEADLINE + SLACK,
            "task {t} request {i} took {elapsed:?} ({r:?})"
        );
    }
    let failed = outcomes.iter().filter(|o| o.3.is_err()).count();
    eprintln!(
        "restart under load: {} requests, {failed} failed, stats {:?}",
        outcomes.len(),
        client.stats()
    );

    // After the restart the client succeeds again.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match client.generate_data_key(gdk(&key_arn)).await {
            Ok(dk) => {
                assert_eq!(dk.plaintext.len(), 32);
                break;
            }
            Err(e) => assert!(Instant::now() < until, "no success after restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client.stats().connections >= 2, "{:?}", client.stats());
    proxy.shutdown_and_wait().await.unwrap();
}

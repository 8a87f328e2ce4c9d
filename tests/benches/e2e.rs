//! End-to-end benchmark of the Keybroker main path, in one process on
//! loopback: mock NSM, enclave client, parent proxy and mock KMS.
//!
//! Run with `cargo bench -p keybroker-harness --bench e2e`. It prints
//! `name: value` lines and a final `ratios` block:
//!
//! 1. enclave-side cost per data key (`cms::decrypt` of a
//!    `CiphertextForRecipient` holding a 32-byte key) against one bare
//!    RSA-2048 OAEP-SHA256 decrypt with aws-lc-rs;
//! 2. end-to-end `GenerateDataKey` calls per second through client -> proxy
//!    -> mock KMS, at 1 and at 64 concurrent callers;
//! 3. the latency the proxy adds: `GenerateDataKey` with `Recipient` sent
//!    directly with `aws-sdk-kms` to the mock KMS against the same call
//!    through the enclave client (which also decrypts the CMS envelope), and
//!    the same comparison for `GenerateDataKeyWithoutPlaintext` (no crypto in
//!    the enclave) to isolate the proxy hop;
//! 4. the in-enclave KMS endpoint: `GenerateDataKey` from a stock
//!    `aws-sdk-kms` client pointed at `keybroker_enclave::endpoint` against
//!    the same call through the enclave client directly (the cost of the
//!    HTTP/JSON hop inside the enclave).
// A bench binary is not `cfg(test)`, so clippy.toml's test allowances do not
// apply; failing loudly is the right behaviour for a benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use keybroker_test_support::bench::median;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey,
};
use aws_sdk_kms::primitives::Blob as SdkBlob;
use aws_sdk_kms::types::{DataKeySpec as SdkDataKeySpec, KeyEncryptionMechanism};
use keybroker_common::cms::{RecipientPrivateKey, decrypt, encrypt_for_recipient};
use keybroker_common::kms::{DataKeySpec, GenerateDataKeyWithoutPlaintextRequest};
use keybroker_enclave::Client;
use keybroker_harness::testkit::{ALIAS, InProcessStack, gdk, spawn_kms_endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Iterations of each crypto micro-benchmark.
const CRYPTO_ITERS: usize = 2000;
/// Sequential calls per latency series.
const LATENCY_ITERS: usize = 400;
/// Duration of each throughput run.
const THROUGHPUT_RUN: Duration = Duration::from_secs(3);

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times `f` `iters` times after `iters / 10` warm-up runs; returns the median.
fn time_each(iters: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 10 {
        f();
    }
    let samples = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median(samples)
}

/// Times the async `f` `iters` times sequentially after a short warm-up.
async fn time_each_async<F, Fut>(iters: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..iters / 10 {
        f().await;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    median(samples)
}

fn enclave_crypto() -> Result<(Duration, Duration), BoxError> {
    let rng = SystemRandom::new();

    // What the enclave does per data key: open the CMS EnvelopedData.
    let recipient = RecipientPrivateKey::generate_2048()?;
    let envelope = encrypt_for_recipient(&recipient.public_key_spki_der(), &[7u8; 32], &rng)?;
    assert_eq!(
        decrypt(&envelope, &recipient, Some(32))?.expose(),
        &[7u8; 32]
    );
    let cms = time_each(CRYPTO_ITERS, || {
        let key = decrypt(std::hint::black_box(&envelope), &recipient, Some(32)).unwrap();
        std::hint::black_box(key);
    });

    // One bare RSA-2048 OAEP-SHA256 decrypt.
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)?;
    let public = OaepPublicEncryptingKey::new(private.public_key())?;
    let private = OaepPrivateDecryptingKey::new(private)?;
    let mut ciphertext = vec![0u8; public.ciphertext_size()];
    let ciphertext = public
        .encrypt(&OAEP_SHA256_MGF1SHA256, &[7u8; 32], &mut ciphertext, None)?
        .to_vec();
    let mut out = vec![0u8; private.min_output_size()];
    let rsa = time_each(CRYPTO_ITERS, || {
        let pt = private
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                std::hint::black_box(&ciphertext),
                &mut out,
                None,
            )
            .unwrap();
        assert_eq!(pt.len(), 32);
    });
    Ok((cms, rsa))
}

async fn throughput(client: &Arc<Client>, callers: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + THROUGHPUT_RUN;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let client = Arc::clone(client);
        let done = Arc::clone(&done);
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let key = client.generate_data_key(gdk(ALIAS)).await.unwrap();
                assert_eq!(key.plaintext.expose().len(), 32);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let total = Instant::now();

    // --- stack: mock NSM CA, mock KMS, key, proxy, enclave client ---
    let stack = InProcessStack::builder().start().await?;
    let kms = stack.sdk.clone();
    let client = Arc::new(stack.client.clone());
    let sanity = client.generate_data_key(gdk(ALIAS)).await?;
    assert_eq!(sanity.plaintext.expose().len(), 32);

    println!("keybroker e2e benchmark (in-process, loopback, mock NSM + mock KMS)");

    // --- 1. enclave-side cost per data key ---
    let (cms, rsa) = tokio::task::spawn_blocking(enclave_crypto).await??;
    println!(
        "enclave cms::decrypt per data key (median): {:.1} us",
        us(cms)
    );
    println!(
        "bare RSA-2048 OAEP-SHA256 decrypt (median): {:.1} us",
        us(rsa)
    );

    // --- 2. end-to-end data keys per second ---
    let tput_1 = throughput(&client, 1).await;
    let tput_64 = throughput(&client, 64).await;
    println!("e2e GenerateDataKey, 1 caller: {tput_1:.0} keys/s");
    println!("e2e GenerateDataKey, 64 callers: {tput_64:.0} keys/s");

    // --- 3. latency the proxy adds ---
    // Direct: the SDK to the mock KMS with the client's own attestation
    // document as Recipient; nothing is decrypted.
    let sdk_recipient = |client: &Client| {
        let recipient = client.keys().current().recipient();
        aws_sdk_kms::types::RecipientInfo::builder()
            .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
            .attestation_document(SdkBlob::new(recipient.attestation_document.0))
            .build()
    };
    let direct_gdk = time_each_async(LATENCY_ITERS, || {
        let req = kms
            .generate_data_key()
            .key_id(ALIAS)
            .key_spec(SdkDataKeySpec::Aes256)
            .recipient(sdk_recipient(&client));
        async move {
            let out = req.send().await.unwrap();
            assert!(out.ciphertext_for_recipient().is_some());
            assert!(out.plaintext().is_none());
        }
    })
    .await;
    let proxy_gdk = time_each_async(LATENCY_ITERS, || async {
        let key = client.generate_data_key(gdk(ALIAS)).await.unwrap();
        assert_eq!(key.plaintext.expose().len(), 32);
    })
    .await;
    let direct_wp = time_each_async(LATENCY_ITERS, || {
        let req = kms
            .generate_data_key_without_plaintext()
            .key_id(ALIAS)
            .key_spec(SdkDataKeySpec::Aes256);
        async move {
            let out = req.send().await.unwrap();
            assert!(out.ciphertext_blob().is_some());
        }
    })
    .await;
    let proxy_wp = time_each_async(LATENCY_ITERS, || async {
        let out = client
            .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
                key_id: Some(ALIAS.into()),
                key_spec: Some(DataKeySpec::Aes256),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(out.ciphertext_blob.is_some());
    })
    .await;
    println!(
        "GenerateDataKey+Recipient direct aws-sdk-kms (median): {:.1} us",
        us(direct_gdk)
    );
    println!(
        "GenerateDataKey+Recipient via enclave client+proxy (median): {:.1} us",
        us(proxy_gdk)
    );
    println!(
        "GenerateDataKey proxy path added (median diff): {:.1} us",
        us(proxy_gdk) - us(direct_gdk)
    );
    println!(
        "GenerateDataKeyWithoutPlaintext direct aws-sdk-kms (median): {:.1} us",
        us(direct_wp)
    );
    println!(
        "GenerateDataKeyWithoutPlaintext via enclave client+proxy (median): {:.1} us",
        us(proxy_wp)
    );
    println!(
        "GenerateDataKeyWithoutPlaintext proxy hop added (median diff): {:.1} us",
        us(proxy_wp) - us(direct_wp)
    );

    println!("ratios");
    println!("cms_decrypt / rsa_oaep_decrypt: {:.2}", us(cms) / us(rsa));
    println!("keys_per_s 64 callers / 1 caller: {:.2}", tput_64 / tput_1);
    println!(
        "GenerateDataKey via proxy / direct: {:.2}",
        us(proxy_gdk) / us(direct_gdk)
    );
    println!(
        "GenerateDataKeyWithoutPlaintext via proxy / direct: {:.2}",
        us(proxy_wp) / us(direct_wp)
    );

    // --- 4. the in-enclave KMS endpoint: a stock SDK inside the enclave ---
    let endpoint =
        spawn_kms_endpoint(keybroker_enclave::KmsEndpoint::new((*client).clone())).await?;
    let endpoint_url = format!("http://{endpoint}");
    let in_enclave_sdk = keybroker_harness::local::kms_client(&endpoint_url);
    let endpoint_gdk = time_each_async(LATENCY_ITERS, || {
        let req = in_enclave_sdk
            .generate_data_key()
            .key_id(ALIAS)
            .key_spec(SdkDataKeySpec::Aes256);
        async move {
            let out = req.send().await.unwrap();
            assert_eq!(out.plaintext().map(|p| p.as_ref().len()), Some(32));
        }
    })
    .await;
    println!(
        "GenerateDataKey via aws-sdk-kms -> enclave endpoint (median): {:.1} us",
        us(endpoint_gdk)
    );
    println!(
        "GenerateDataKey via enclave endpoint / via enclave client: {:.2}",
        us(endpoint_gdk) / us(proxy_gdk)
    );
    println!("total bench time: {:.1} s", total.elapsed().as_secs_f64());

    drop(client);
    stack.proxy.shutdown_and_wait().await?;
    stack.kms.shutdown().await;
    Ok(())
}

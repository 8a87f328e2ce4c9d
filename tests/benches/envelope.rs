//! Envelope-encryption benchmark: seal throughput with and without the
//! data-key cache, through the whole stack in one process on loopback
//! (`Envelope` over the enclave client with mock NSM -> proxy -> mock KMS).
//!
//! Run with `cargo bench -p keybroker-harness --bench envelope`. It prints
//! `name: value` lines and a final `ratios` block:
//!
//! 1. seals per second and MiB/s of 4 KiB and 1 MiB messages, one caller,
//!    without a cache (one `GenerateDataKey` with `Recipient` per message:
//!    KMS round trip and the enclave's RSA decrypt) and with one (a data key
//!    seals many messages);
//! 2. the same messages sealed by `seal_message` with a fixed key (AES-GCM
//!    and framing only, no KMS), the ceiling a cache approaches;
//! 3. how many KMS requests each run sent.
// A bench binary is not `cfg(test)`, so clippy.toml's test allowances do not
// apply; failing loudly is the right behaviour for a benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::time::{Duration, Instant};

use keybroker_common::envelope::{HeaderParams, seal_message};
use keybroker_common::kms::EncryptionContext;
use keybroker_enclave::Client;
use keybroker_enclave::envelope::{CachingConfig, DataKeyCache, Envelope};
use keybroker_harness::testkit::InProcessStack;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Duration of each throughput run.
const RUN: Duration = Duration::from_secs(2);

/// One run's result.
struct Run {
    messages_per_s: f64,
    mib_per_s: f64,
    kms_requests: u64,
}

impl Run {
    /// `n` messages of `len` bytes sealed since `start`.
    fn new(n: u64, len: usize, start: Instant, kms_requests: u64) -> Self {
        let secs = start.elapsed().as_secs_f64();
        Run {
            messages_per_s: n as f64 / secs,
            mib_per_s: n as f64 * len as f64 / secs / (1 << 20) as f64,
            kms_requests,
        }
    }
}

fn report(name: &str, r: &Run) {
    println!("{name} messages/s: {:.0}", r.messages_per_s);
    println!("{name} MiB/s: {:.1}", r.mib_per_s);
    println!("{name} KMS requests: {}", r.kms_requests);
}

/// Seals `plaintext` repeatedly for [`RUN`] with `envelope`.
async fn seal_run(client: &Client, envelope: &Envelope<Client>, plaintext: &[u8]) -> Run {
    let context = EncryptionContext::from([("bench".to_owned(), "envelope".to_owned())]);
    // Warm-up (and a cached key, if there is a cache).
    for _ in 0..3 {
        envelope.seal(plaintext, &context).await.unwrap();
    }
    let before = client.stats().requests_sent;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        let m = envelope.seal(plaintext, &context).await.unwrap();
        std::hint::black_box(m);
        n += 1;
    }
    Run::new(
        n,
        plaintext.len(),
        start,
        client.stats().requests_sent - before,
    )
}

/// `seal_message` alone with a fixed key, for [`RUN`].
fn crypto_run(plaintext: &[u8]) -> Run {
    let context = EncryptionContext::from([("bench".to_owned(), "envelope".to_owned())]);
    let params = HeaderParams {
        key_id: "arn:aws:kms:us-east-1:111122223333:key/bench",
        ciphertext_blob: &[7u8; 184],
        message_id: [1; 32],
        frame_len: keybroker_common::envelope::DEFAULT_FRAME_LEN,
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        let m = seal_message(&[9u8; 32], &params, &context, plaintext).unwrap();
        std::hint::black_box(m);
        n += 1;
    }
    Run::new(n, plaintext.len(), start, 0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let total = Instant::now();
    let stack = InProcessStack::builder().start().await?;
    let client = stack.client.clone();
    println!("keybroker envelope benchmark (in-process, loopback, mock NSM + mock KMS)");

    let uncached = Envelope::new(client.clone(), stack.key_arn.clone());
    let cached = Envelope::new(client.clone(), stack.key_arn.clone()).with_cache(
        DataKeyCache::new(CachingConfig::new(Duration::from_secs(300)))?,
    );

    let mut ratios = Vec::new();
    for (label, len) in [("4KiB", 4usize << 10), ("1MiB", 1 << 20)] {
        let plaintext = vec![0x5au8; len];
        let u = seal_run(&client, &uncached, &plaintext).await;
        let c = seal_run(&client, &cached, &plaintext).await;
        let x = tokio::task::spawn_blocking(move || crypto_run(&plaintext)).await?;
        report(&format!("seal {label} uncached"), &u);
        report(&format!("seal {label} cached"), &c);
        report(&format!("seal_message {label} fixed key (no KMS)"), &x);
        ratios.push((label, u, c, x));
    }

    println!("ratios");
    for (label, u, c, x) in &ratios {
        println!(
            "seal {label} cached / uncached throughput: {:.1}",
            c.messages_per_s / u.messages_per_s
        );
        println!(
            "seal {label} cached / fixed-key crypto throughput: {:.2}",
            c.messages_per_s / x.messages_per_s
        );
        println!(
            "seal {label} uncached KMS requests per message: {:.2}",
            u.kms_requests as f64 / (u.messages_per_s * RUN.as_secs_f64())
        );
    }
    println!("total bench time: {:.1} s", total.elapsed().as_secs_f64());

    drop((uncached, cached, client));
    stack.proxy.shutdown_and_wait().await?;
    stack.kms.shutdown().await;
    Ok(())
}

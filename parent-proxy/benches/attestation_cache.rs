//! Attestation verification, cold and from the verified-document cache, on
//! the genuine AWS documents of `../shared/fixtures/attestation`.
//!
//! `cargo bench -p keybroker-proxy --bench attestation_cache`
//!
//! 1. `Verifier::verify` (parse, X.509 chain of four certificates, five
//!    P-384 checks) against `VerificationCache::verify` hits, per document;
//! 2. the proxy's `AdmissionPolicy::evaluate` of a `GenerateDataKey` whose document is
//!    verified and matched against an allowed image, with the cache disabled
//!    (capacity 0) and enabled: the admission cost of one request.
//!
//! Each document is checked at its own timestamp. Prints medians and the
//! ratios cold over cached (how many times cheaper a cached check is).
// A bench binary is not `cfg(test)`, so clippy.toml's test allowances do not
// apply; failing loudly is the right behaviour for a benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keybroker_test_support::bench::median_of;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{VerificationCache, Verifier};
use keybroker_common::kms::{DataKeySpec, GenerateDataKeyRequest, KmsRequest, RecipientInfo};
use keybroker_proxy::admission::AdmissionPolicy;
use keybroker_proxy::measurements::AllowedImage;
use keybroker_test_support::fixtures;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Fixture {
    name: String,
    bytes: Vec<u8>,
    at: UnixMillis,
    pcr0: String,
}

/// The documents the manifest lists as valid, or `None` without fixtures.
fn fixtures() -> Option<Vec<Fixture>> {
    // A benchmark, not a test: without fixtures it measures nothing, even
    // under CI=true.
    let dir = fixtures::path("attestation");
    if !dir.join("manifest.json").is_file() {
        return None;
    }
    let list = fixtures::manifest(&dir)
        .iter()
        .filter(|e| e["expect"] == "valid")
        .map(|e| {
            let name = e["file"].as_str().unwrap().to_owned();
            Fixture {
                bytes: fixtures::read(&dir, &name),
                name,
                at: UnixMillis(e["timestamp_ms"].as_u64().unwrap()),
                pcr0: e["pcr0"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    Some(list)
}

fn main() {
    let Some(fixtures) = fixtures() else {
        println!("note: ../shared/fixtures/attestation is absent; nothing to measure");
        return;
    };
    let verifier = Verifier::aws_nitro();

    println!("1. Verifier::verify (cold) vs VerificationCache::verify (hit), per document");
    let mut cold_all = Vec::new();
    let mut hit_all = Vec::new();
    for f in &fixtures {
        let cache = VerificationCache::default();
        let first = cache.verify(&verifier, &f.bytes, f.at, None).unwrap();
        assert_eq!(first, verifier.verify(&f.bytes, f.at).unwrap());
        let cold = median_of(31, 1, || {
            black_box(verifier.verify(black_box(&f.bytes), f.at).unwrap());
        });
        let hit = median_of(101, 100, || {
            black_box(
                cache
                    .verify(&verifier, black_box(&f.bytes), f.at, None)
                    .unwrap(),
            );
        });
        assert_eq!(cache.stats().misses, 1, "every later call is a hit");
        println!(
            "   {:<56} {:>5} B  cold {:>8.1} us  cached {:>6.2} us  {:>6.0}x",
            f.name,
            f.bytes.len(),
            us(cold),
            us(hit),
            cold.as_secs_f64() / hit.as_secs_f64()
        );
        cold_all.push(cold);
        hit_all.push(hit);
    }
    cold_all.sort();
    hit_all.sort();
    let (cold, hit) = (cold_all[cold_all.len() / 2], hit_all[hit_all.len() / 2]);
    println!(
        "   median over {} documents: cold {:.1} us, cached {:.2} us",
        fixtures.len(),
        us(cold),
        us(hit)
    );

    // A production-like document: a non-debug PCR0 (the proxy admits no
    // all-zero image) and a public key.
    let f = fixtures
        .iter()
        .find(|f| f.name.starts_with("nitro-attest"))
        .or_else(|| fixtures.iter().find(|f| !f.pcr0.bytes().all(|b| b == b'0')))
        .unwrap();
    let image = AllowedImage::new([(0, hex::decode(&f.pcr0).unwrap())].into()).unwrap();
    let request = KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
        key_id: Some("alias/app".into()),
        key_spec: Some(DataKeySpec::Aes256),
        recipient: Some(RecipientInfo::new(f.bytes.clone())),
        ..Default::default()
    });
    let policy = |capacity: usize| AdmissionPolicy {
        allowed_images: vec![image.clone()],
        verification_cache: Arc::new(VerificationCache::new(capacity)),
        ..AdmissionPolicy::default()
    };
    let (uncached, cached) = (policy(0), policy(VerificationCache::DEFAULT_CAPACITY));
    for p in [&uncached, &cached] {
        let d = p.evaluate(&request, f.bytes.len(), f.at);
        assert_eq!(d.verdict, Ok(()), "{}", f.name);
        assert!(d.attestation_verified);
    }
    let p_cold = median_of(31, 1, || {
        black_box(uncached.evaluate(black_box(&request), 100, f.at));
    });
    let p_hit = median_of(101, 20, || {
        black_box(cached.evaluate(black_box(&request), 100, f.at));
    });
    println!(
        "2. AdmissionPolicy::evaluate of a GenerateDataKey with {}",
        f.name
    );
    println!("   cache off {:>8.1} us", us(p_cold));
    println!("   cache on  {:>8.1} us", us(p_hit));

    println!("ratios (cold over cached)");
    println!(
        "   verify (median cold over median cached): {:.0}x",
        cold.as_secs_f64() / hit.as_secs_f64()
    );
    println!(
        "   proxy admission (AdmissionPolicy::evaluate): {:.0}x",
        p_cold.as_secs_f64() / p_hit.as_secs_f64()
    );
}

//! Envelope encryption end to end, in one process on loopback: `Envelope`
//! over the enclave `Client` (mock NSM) -> parent proxy -> mock KMS.
//!
//! Shown: seal/open round trips with KMS calls counted at the client
//! (`GenerateDataKey` per seal and `Decrypt` per open without a cache, once
//! per cached key with one), streaming, and the refusals a user relies on:
//! another encryption context (KMS binds it to the blob), another KMS key
//! (strict `KeyId` on `Decrypt`), an enclave whose PCR0 the key policy does
//! not allow, and modified messages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use keybroker_common::EnvelopeError;
use keybroker_common::kms::EncryptionContext;
use keybroker_enclave::envelope::{CachingConfig, DataKeyCache, Envelope, peek_header};
use keybroker_enclave::{Client, Error};
use keybroker_harness::local::enclave_key_policy;
use keybroker_harness::mock_kms::DEFAULT_ACCOUNT_ID;
use keybroker_harness::testkit::{ALIAS, InProcessStack, PCR0};

fn ctx(tenant: &str) -> EncryptionContext {
    EncryptionContext::from([
        ("app".to_owned(), "envelope-test".to_owned()),
        ("tenant".to_owned(), tenant.to_owned()),
    ])
}

/// KMS requests the client has sent so far.
fn sent(client: &Client) -> u64 {
    client.stats().requests_sent
}

fn kms_code<T: core::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(e) => e
            .kms_error()
            .unwrap_or_else(|| panic!("not a KMS error: {e:?}"))
            .code
            .clone(),
        Ok(v) => panic!("expected a KMS error, got {v:?}"),
    }
}

fn envelope_err<T: core::fmt::Debug>(r: Result<T, Error>) -> EnvelopeError {
    match r {
        Err(Error::Common(keybroker_common::Error::Envelope(e))) => e,
        other => panic!("expected an envelope error, got {other:?}"),
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 253).unwrap() ^ 0x5a)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cache_each_seal_and_open_is_one_kms_call() {
    let s = InProcessStack::builder().start().await.unwrap();
    let envelope = Envelope::new(s.client.clone(), s.key_arn.clone());
    let start = sent(&s.client);
    let mut messages = Vec::new();
    for len in [0, 1, 1000, 200_000] {
        messages.push((
            data(len),
            envelope.seal(&data(len), &ctx("a")).await.unwrap(),
        ));
    }
    assert_eq!(sent(&s.client) - start, 4, "one GenerateDataKey per seal");
    assert_eq!(peek_header(&messages[0].1).unwrap().key_id(), s.key_arn);
    for (pt, m) in &messages {
        assert_eq!(&envelope.open(m, &ctx("a")).await.unwrap()[..], &pt[..]);
    }
    assert_eq!(sent(&s.client) - start, 8, "one Decrypt per open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_bounds_kms_calls_by_its_limits() {
    let s = InProcessStack::builder().start().await.unwrap();
    let cache = DataKeyCache::new(
        CachingConfig::new(Duration::from_secs(300))
            .with_max_messages_encrypted(5)
            .with_max_bytes_encrypted(1 << 20),
    )
    .unwrap();
    let envelope = Envelope::new(s.client.clone(), s.key_arn.clone()).with_cache(cache);
    let start = sent(&s.client);
    let mut messages = Vec::new();
    for i in 0..12 {
        let pt = data(100 + i);
        messages.push((pt.clone(), envelope.seal(&pt, &ctx("a")).await.unwrap()));
    }
    // 12 messages, at most 5 per data key: 3 GenerateDataKey calls.
    assert_eq!(sent(&s.client) - start, 3);
    let sealed = sent(&s.client);
    for _ in 0..2 {
        for (pt, m) in &messages {
            assert_eq!(&envelope.open(m, &ctx("a")).await.unwrap()[..], &pt[..]);
        }
    }
    // One Decrypt per distinct data key, however often its messages open.
    assert_eq!(sent(&s.client) - sealed, 3);

    // Another context is another cache entry: one more call.
    let before = sent(&s.client);
    let m = envelope.seal(b"b", &ctx("b")).await.unwrap();
    envelope.seal(b"b2", &ctx("b")).await.unwrap();
    assert_eq!(sent(&s.client) - before, 1);
    // A message over max_bytes_encrypted gets its own, uncached key.
    let before = sent(&s.client);
    envelope
        .seal(&data((1 << 20) + 1), &ctx("b"))
        .await
        .unwrap();
    let again = envelope.seal(b"b3", &ctx("b")).await.unwrap();
    assert_eq!(sent(&s.client) - before, 1);
    assert_eq!(
        peek_header(&again).unwrap().ciphertext_blob(),
        peek_header(&m).unwrap().ciphertext_blob()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_round_trip_through_the_stack() {
    let s = InProcessStack::builder().start().await.unwrap();
    let envelope = Envelope::new(s.client.clone(), ALIAS);
    let pt = data(5 << 20);
    let mut sealed = Vec::new();
    let n = envelope
        .seal_stream(&pt[..], &mut sealed, &ctx("a"))
        .await
        .unwrap();
    assert_eq!(n, pt.len() as u64);
    // Sealed through the alias, recorded as the key ARN, opened through
    // the alias (KMS resolves it for Decrypt's KeyId).
    assert_eq!(peek_header(&sealed).unwrap().key_id(), s.key_arn);
    let mut opened = Vec::new();
    envelope
        .open_stream(&sealed[..], &mut opened, &ctx("a"))
        .await
        .unwrap();
    assert_eq!(opened, pt);
    assert_eq!(
        &envelope.open(&sealed, &ctx("a")).await.unwrap()[..],
        &pt[..]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_context_other_key_and_tampering_are_refused() {
    let s = InProcessStack::builder().start().await.unwrap();
    let cache = DataKeyCache::new(CachingConfig::new(Duration::from_secs(300))).unwrap();
    let envelope = Envelope::new(s.client.clone(), s.key_arn.clone())
        .with_cache(cache)
        .with_frame_len(1024)
        .unwrap();
    let pt = data(5000);
    let m = envelope.seal(&pt, &ctx("a")).await.unwrap();
    assert_eq!(&envelope.open(&m, &ctx("a")).await.unwrap()[..], &pt[..]);

    // KMS binds the context to the data key's blob: Decrypt refuses.
    assert_eq!(
        kms_code(envelope.open(&m, &ctx("b")).await),
        "InvalidCiphertextException"
    );
    assert_eq!(
        kms_code(envelope.open(&m, &EncryptionContext::new()).await),
        "InvalidCiphertextException"
    );

    // A message of another KMS key is not opened under this envelope's key.
    let other_arn = s
        .sdk
        .create_key()
        .policy(enclave_key_policy(DEFAULT_ACCOUNT_ID, &hex::encode(PCR0)).to_string())
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let other = Envelope::new(s.client.clone(), other_arn);
    let from_other = other.seal(b"other key", &ctx("a")).await.unwrap();
    assert_eq!(
        &other.open(&from_other, &ctx("a")).await.unwrap()[..],
        b"other key"
    );
    assert_eq!(
        kms_code(envelope.open(&from_other, &ctx("a")).await),
        "IncorrectKeyException"
    );

    // Modified messages (the data key comes from the cache now).
    let header_len = peek_header(&m).unwrap().encoded_len();
    let mut tampered = m.clone();
    tampered[header_len + 3000] ^= 0x40;
    assert_eq!(
        envelope_err(envelope.open(&tampered, &ctx("a")).await),
        EnvelopeError::FrameAuthentication { sequence: 3 }
    );
    let mut tampered = m.clone();
    tampered[10] ^= 1; // message id
    assert_eq!(
        envelope_err(envelope.open(&tampered, &ctx("a")).await),
        EnvelopeError::HeaderAuthentication
    );
    assert_eq!(
        envelope_err(envelope.open(&m[..m.len() - 20], &ctx("a")).await),
        EnvelopeError::Truncated
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enclave_the_key_policy_does_not_allow_cannot_open() {
    let s = InProcessStack::builder().start().await.unwrap();
    let envelope = Envelope::new(s.client.clone(), s.key_arn.clone());
    let m = envelope.seal(b"for PCR0 only", &ctx("a")).await.unwrap();
    let stranger = s.client_with_pcr0([0x13; 48]).await.unwrap();
    let theirs = Envelope::new(stranger, s.key_arn.clone());
    assert_eq!(
        kms_code(theirs.open(&m, &ctx("a")).await),
        "AccessDeniedException"
    );
    assert_eq!(
        kms_code(theirs.seal(b"x", &ctx("a")).await),
        "AccessDeniedException"
    );
}

//! Unit tests of the envelope API and the data-key cache, with a counting
//! fake KMS.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keybroker_common::kms::KmsError;

use super::*;

const KEY_ID: &str = "alias/app";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/fake";

/// Data keys by blob, with the context they were generated under.
type Issued = HashMap<Vec<u8>, ([u8; 32], EncryptionContext)>;

/// A KMS double: random data keys, blobs `blob-<n>`, `Decrypt` that checks
/// the key id and (unless told not to) the encryption context, and counters.
struct FakeKms {
    generated: AtomicU64,
    decrypted: AtomicU64,
    keys: Mutex<Issued>,
    bind_context: bool,
    key_len: usize,
    fail: AtomicBool,
    /// `Decrypt` answers a wrong key, as a decryption with implicit
    /// rejection does for a tampered `CiphertextForRecipient`:
    /// 0 no, 1 the right length, 2 16 bytes.
    tamper: AtomicU64,
}

impl FakeKms {
    fn new() -> Arc<Self> {
        Arc::new(Self::plain())
    }

    fn plain() -> Self {
        Self {
            generated: AtomicU64::new(0),
            decrypted: AtomicU64::new(0),
            keys: Mutex::default(),
            bind_context: true,
            key_len: 32,
            fail: AtomicBool::new(false),
            tamper: AtomicU64::new(0),
        }
    }

    fn generated(&self) -> u64 {
        self.generated.load(Ordering::SeqCst)
    }

    fn decrypted(&self) -> u64 {
        self.decrypted.load(Ordering::SeqCst)
    }
}

fn kms_error(code: &str) -> Error {
    Error::Common(KmsError::new(code, "fake").into())
}

impl DataKeySource for FakeKms {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        assert_eq!(key_id, KEY_ID);
        if self.fail.load(Ordering::SeqCst) {
            return Err(kms_error("KMSInternalException"));
        }
        let n = self.generated.fetch_add(1, Ordering::SeqCst);
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).unwrap();
        let blob = format!("blob-{n}").into_bytes();
        self.keys
            .lock()
            .unwrap()
            .insert(blob.clone(), (key, context.clone()));
        Ok(DataKey {
            key_id: Some(KEY_ARN.into()),
            ciphertext_blob: Blob(blob),
            plaintext: SecretBytes::from_slice(&key[..self.key_len]),
            key_material_id: None,
        })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<SecretBytes, Error> {
        self.decrypted.fetch_add(1, Ordering::SeqCst);
        if key_id != KEY_ID {
            return Err(kms_error("IncorrectKeyException"));
        }
        match self.keys.lock().unwrap().get(ciphertext_blob) {
            Some((key, c)) if c == context || !self.bind_context => {
                let mut key = key[..self.key_len].to_vec();
                match self.tamper.load(Ordering::SeqCst) {
                    0 => {}
                    1 => key[0] ^= 1,
                    _ => key.truncate(16),
                }
                Ok(SecretBytes::new(key))
            }
            _ => Err(kms_error("InvalidCiphertextException")),
        }
    }
}

fn ctx(tenant: &str) -> EncryptionContext {
    EncryptionContext::from([
        ("purpose".to_owned(), "test".to_owned()),
        ("tenant".to_owned(), tenant.to_owned()),
    ])
}

fn cached(kms: &Arc<FakeKms>, config: CachingConfig) -> Envelope<Arc<FakeKms>> {
    Envelope::new(kms.clone(), KEY_ID).with_cache(DataKeyCache::new(config).unwrap())
}

fn minutes(n: u64) -> CachingConfig {
    CachingConfig::new(Duration::from_secs(60 * n))
}

fn blob_of(message: &[u8]) -> Vec<u8> {
    peek_header(message).unwrap().ciphertext_blob().to_vec()
}

fn envelope_err<T: core::fmt::Debug>(r: Result<T, Error>) -> EnvelopeError {
    match r {
        Err(Error::Common(keybroker_common::Error::Envelope(e))) => e,
        other => panic!("expected an envelope error, got {other:?}"),
    }
}

fn kms_code<T: core::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(e) => e.kms_error().expect("a KMS error").code.clone(),
        Ok(v) => panic!("expected a KMS error, got {v:?}"),
    }
}

/// Seals `n` messages of `len` bytes under `context`; returns their blobs.
async fn seal_n(
    envelope: &Envelope<Arc<FakeKms>>,
    n: usize,
    len: usize,
    context: &EncryptionContext,
) -> Vec<Vec<u8>> {
    let mut blobs = Vec::new();
    for _ in 0..n {
        let m = envelope.seal(&vec![7u8; len], context).await.unwrap();
        assert_eq!(
            &envelope.open(&m, context).await.unwrap()[..],
            &vec![7u8; len][..]
        );
        blobs.push(blob_of(&m));
    }
    blobs
}

#[tokio::test]
async fn without_a_cache_every_seal_and_open_calls_kms() {
    let kms = FakeKms::new();
    let envelope = Envelope::new(kms.clone(), KEY_ID);
    let mut messages = Vec::new();
    for i in 0..3u8 {
        messages.push(envelope.seal(&[i; 100], &ctx("a")).await.unwrap());
    }
    assert_eq!(kms.generated(), 3);
    let header = peek_header(&messages[0]).unwrap();
    assert_eq!(header.key_id(), KEY_ARN, "the header records the key ARN");
    assert_eq!(header.frame_len(), DEFAULT_FRAME_LEN);
    for (i, m) in (0..3u8).zip(&messages) {
        assert_eq!(&envelope.open(m, &ctx("a")).await.unwrap()[..], &[i; 100]);
    }
    assert_eq!(kms.decrypted(), 3);
    assert_ne!(blob_of(&messages[0]), blob_of(&messages[1]));
}

#[tokio::test]
async fn a_cached_key_seals_at_most_max_messages() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5).with_max_messages_encrypted(3));
    let blobs = seal_n(&envelope, 7, 10, &ctx("a")).await;
    assert_eq!(kms.generated(), 3);
    let (a, b, c) = (&blobs[0], &blobs[3], &blobs[6]);
    assert_eq!(blobs, [a, a, a, b, b, b, c].map(Clone::clone));
    assert!(a != b && b != c);
    // Seals: 3 misses, 4 hits; the opens in seal_n: one miss per key, then hits.
    let stats = envelope.cache().unwrap().stats();
    assert_eq!((stats.hits, stats.misses), (4 + 4, 3 + 3), "{stats:?}");
}

#[tokio::test]
async fn a_cached_key_seals_at_most_max_bytes_and_larger_messages_bypass_it() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5).with_max_bytes_encrypted(100));
    let mut blobs = Vec::new();
    // 40 + 40 + 20 = 100 bytes: exactly the limit, one key.
    // Then 1 byte: 101 would exceed it, a new key.
    // Then 101 bytes: more than the limit alone, a key of its own, not cached.
    // Then 10 bytes: the second key again.
    for len in [40, 40, 20, 1, 101, 10] {
        blobs.extend(seal_n(&envelope, 1, len, &ctx("a")).await);
    }
    assert_eq!(kms.generated(), 3);
    let (a, b, c) = (&blobs[0], &blobs[3], &blobs[4]);
    assert_eq!(blobs, [a, a, a, b, c, b].map(Clone::clone));
    assert!(a != b && b != c && a != c);
}

#[tokio::test(start_paused = true)]
async fn cached_keys_expire_after_max_age() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(1));
    let first = envelope.seal(b"one", &ctx("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    let second = envelope.seal(b"two", &ctx("a")).await.unwrap();
    assert_eq!(kms.generated(), 1);
    assert_eq!(blob_of(&first), blob_of(&second));
    // The age counts from when KMS generated the key, not from its last use.
    tokio::time::advance(Duration::from_secs(2)).await;
    let third = envelope.seal(b"three", &ctx("a")).await.unwrap();
    assert_eq!(kms.generated(), 2);
    assert_ne!(blob_of(&second), blob_of(&third));

    // Decrypted keys too.
    envelope.open(&first, &ctx("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    envelope.open(&second, &ctx("a")).await.unwrap();
    assert_eq!(kms.decrypted(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    envelope.open(&first, &ctx("a")).await.unwrap();
    assert_eq!(kms.decrypted(), 2);
}

#[tokio::test]
async fn the_least_recently_used_entry_makes_room() {
    let kms = FakeKms::new();
    let envelope = Envelope::new(kms.clone(), KEY_ID)
        .with_cache(DataKeyCache::new(minutes(5).with_capacity(2)).unwrap());
    let seal = |tenant: &'static str| {
        let envelope = &envelope;
        async move { blob_of(&envelope.seal(b"x", &ctx(tenant)).await.unwrap()) }
    };
    let a = seal("a").await;
    let b = seal("b").await;
    assert_eq!(seal("a").await, a); // a is now the most recent
    let c = seal("c").await; // evicts b
    assert_eq!(kms.generated(), 3);
    assert_eq!(seal("a").await, a);
    assert_eq!(seal("c").await, c);
    assert_ne!(seal("b").await, b, "b was evicted: a new key");
    assert_eq!(kms.generated(), 4);
    let stats = envelope.cache().unwrap().stats();
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.evictions, 2, "{stats:?}");
}

#[tokio::test]
async fn entries_are_partitioned_by_context_and_key_id() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5));
    let a = seal_n(&envelope, 2, 10, &ctx("a")).await;
    let b = seal_n(&envelope, 2, 10, &ctx("b")).await;
    assert_eq!(kms.generated(), 2);
    assert_eq!(a[0], a[1]);
    assert_eq!(b[0], b[1]);
    assert_ne!(a[0], b[0]);
    // Another key id sharing the cache does not get these keys (and the
    // fake refuses to decrypt them under its key id).
    let other =
        Envelope::new(kms.clone(), "alias/other").with_cache(envelope.cache().unwrap().clone());
    let m = envelope.seal(b"x", &ctx("a")).await.unwrap();
    envelope.open(&m, &ctx("a")).await.unwrap();
    assert_eq!(
        kms_code(other.open(&m, &ctx("a")).await),
        "IncorrectKeyException"
    );
}

#[tokio::test]
async fn decrypted_keys_are_cached_per_blob_and_context() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5));
    let m1 = envelope.seal(b"one", &ctx("a")).await.unwrap();
    let m2 = envelope.seal(b"two", &ctx("a")).await.unwrap();
    assert_eq!(blob_of(&m1), blob_of(&m2));
    for _ in 0..3 {
        assert_eq!(&envelope.open(&m1, &ctx("a")).await.unwrap()[..], b"one");
        assert_eq!(&envelope.open(&m2, &ctx("a")).await.unwrap()[..], b"two");
    }
    assert_eq!(kms.decrypted(), 1);
    let m3 = envelope.seal(b"three", &ctx("b")).await.unwrap();
    assert_eq!(&envelope.open(&m3, &ctx("b")).await.unwrap()[..], b"three");
    assert_eq!(kms.decrypted(), 2);
    // The same blob under another context is not served from the cache:
    // KMS is asked, and refuses.
    assert_eq!(
        kms_code(envelope.open(&m1, &ctx("b")).await),
        "InvalidCiphertextException"
    );
    assert_eq!(kms.decrypted(), 3);
}

#[tokio::test]
async fn the_header_authenticates_the_context_even_where_kms_does_not() {
    let kms = Arc::new(FakeKms {
        bind_context: false,
        ..FakeKms::plain()
    });
    let envelope = Envelope::new(kms.clone(), KEY_ID);
    let m = envelope.seal(b"secret", &ctx("a")).await.unwrap();
    for wrong in [ctx("b"), EncryptionContext::new(), {
        let mut c = ctx("a");
        c.insert("extra".into(), "x".into());
        c
    }] {
        assert_eq!(
            envelope_err(envelope.open(&m, &wrong).await),
            EnvelopeError::HeaderAuthentication
        );
    }
    assert_eq!(&envelope.open(&m, &ctx("a")).await.unwrap()[..], b"secret");
}

#[tokio::test]
async fn tampered_truncated_and_extended_messages_fail_with_typed_errors() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5)).with_frame_len(16).unwrap();
    let m = envelope.seal(&[1u8; 40], &ctx("a")).await.unwrap();
    let header_len = peek_header(&m).unwrap().encoded_len();

    let mut tampered = m.clone();
    tampered[header_len + 4] ^= 1; // first frame's ciphertext
    assert_eq!(
        envelope_err(envelope.open(&tampered, &ctx("a")).await),
        EnvelopeError::FrameAuthentication { sequence: 1 }
    );
    let mut tampered = m.clone();
    tampered[header_len - 1] ^= 1; // header tag
    assert_eq!(
        envelope_err(envelope.open(&tampered, &ctx("a")).await),
        EnvelopeError::HeaderAuthentication
    );
    assert_eq!(
        envelope_err(envelope.open(&m[..m.len() - 1], &ctx("a")).await),
        EnvelopeError::Truncated
    );
    assert_eq!(
        envelope_err(envelope.open(&m[..10], &ctx("a")).await),
        EnvelopeError::Truncated
    );
    let mut longer = m.clone();
    longer.push(0);
    assert_eq!(
        envelope_err(envelope.open(&longer, &ctx("a")).await),
        EnvelopeError::TrailingData
    );
    assert_eq!(
        envelope_err(envelope.open(b"not a message at all", &ctx("a")).await),
        EnvelopeError::BadMagic
    );
    let e = envelope.open(&tampered, &ctx("a")).await.unwrap_err();
    assert!(!e.is_retryable());
    assert_eq!(&envelope.open(&m, &ctx("a")).await.unwrap()[..], &[1u8; 40]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_seals_share_a_warm_key() {
    let kms = FakeKms::new();
    let envelope = Arc::new(cached(&kms, minutes(5)));
    envelope.seal(b"warm", &ctx("a")).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let envelope = envelope.clone();
        tasks.spawn(async move { envelope.seal(&[i; 64], &ctx("a")).await.unwrap() });
    }
    let messages = tasks.join_all().await;
    assert_eq!(kms.generated(), 1);
    assert!(messages.iter().all(|m| blob_of(m) == blob_of(&messages[0])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_seals_never_exceed_the_message_limit() {
    const TASKS: usize = 16;
    const EACH: usize = 20;
    const MAX: u64 = 25;
    let kms = FakeKms::new();
    let envelope = Arc::new(cached(&kms, minutes(5).with_max_messages_encrypted(MAX)));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let envelope = envelope.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                let pt = format!("{t}/{i}");
                let m = envelope.seal(pt.as_bytes(), &ctx("a")).await.unwrap();
                out.push((pt, m));
            }
            out
        });
    }
    let mut per_key: HashMap<Vec<u8>, u64> = HashMap::new();
    for (pt, m) in tasks.join_all().await.into_iter().flatten() {
        assert_eq!(
            &envelope.open(&m, &ctx("a")).await.unwrap()[..],
            pt.as_bytes()
        );
        *per_key.entry(blob_of(&m)).or_default() += 1;
    }
    assert!(per_key.values().all(|&n| n <= MAX), "{per_key:?}");
    let messages = (TASKS * EACH) as u64;
    assert_eq!(per_key.values().sum::<u64>(), messages);
    assert!(kms.generated() >= messages.div_ceil(MAX));
}

#[tokio::test]
async fn streams_round_trip_and_match_in_memory_messages() {
    let kms = FakeKms::new();
    let envelope = Envelope::new(kms.clone(), KEY_ID)
        .with_frame_len(16)
        .unwrap();
    for len in [0usize, 1, 15, 16, 17, 48, 100] {
        let pt: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let mut sealed = Vec::new();
        let n = envelope
            .seal_stream(&pt[..], &mut sealed, &ctx("a"))
            .await
            .unwrap();
        assert_eq!(n, len as u64);
        let in_memory = envelope.seal(&pt, &ctx("a")).await.unwrap();
        assert_eq!(sealed.len(), in_memory.len(), "one encoding per length");
        assert_eq!(
            &envelope.open(&sealed, &ctx("a")).await.unwrap()[..],
            &pt[..]
        );
        for message in [&sealed, &in_memory] {
            let mut out = Vec::new();
            let n = envelope
                .open_stream(&message[..], &mut out, &ctx("a"))
                .await
                .unwrap();
            assert_eq!((n, &out), (len as u64, &pt), "len {len}");
        }
    }
}

#[tokio::test]
async fn stream_seals_bypass_the_cache() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5));
    for _ in 0..2 {
        let mut sealed = Vec::new();
        envelope
            .seal_stream(&b"streamed"[..], &mut sealed, &ctx("a"))
            .await
            .unwrap();
    }
    assert_eq!(kms.generated(), 2);
    assert_eq!(envelope.cache().unwrap().stats().entries, 0);
}

#[tokio::test]
async fn open_stream_writes_only_authenticated_frames_and_reports_damage() {
    let kms = FakeKms::new();
    let envelope = Envelope::new(kms.clone(), KEY_ID)
        .with_frame_len(16)
        .unwrap();
    let pt: Vec<u8> = (0..80u8).collect(); // 5 full frames and an empty final frame
    let m = envelope.seal(&pt, &ctx("a")).await.unwrap();
    let header_len = peek_header(&m).unwrap().encoded_len();
    let frame = 4 + 16 + 16;

    // Frame 3 modified: frames 1 and 2 were written, nothing after.
    let mut tampered = m.clone();
    tampered[header_len + 2 * frame + 4] ^= 1;
    let mut out = Vec::new();
    assert_eq!(
        envelope_err(
            envelope
                .open_stream(&tampered[..], &mut out, &ctx("a"))
                .await
        ),
        EnvelopeError::FrameAuthentication { sequence: 3 }
    );
    assert_eq!(out, &pt[..32]);

    // Final frame missing: every frame was written before the truncation
    // showed; this is why the output of a failed open_stream is discarded.
    let mut out = Vec::new();
    assert_eq!(
        envelope_err(
            envelope
                .open_stream(&m[..header_len + 5 * frame], &mut out, &ctx("a"))
                .await
        ),
        EnvelopeError::Truncated
    );
    assert_eq!(out, pt);

    let mut longer = m.clone();
    longer.extend_from_slice(b"more");
    assert_eq!(
        envelope_err(
            envelope
                .open_stream(&longer[..], &mut Vec::new(), &ctx("a"))
                .await
        ),
        EnvelopeError::TrailingData
    );
    // A wrong context fails at the header: nothing is written.
    let kms_unbound = Arc::new(FakeKms {
        bind_context: false,
        ..FakeKms::plain()
    });
    let envelope = Envelope::new(kms_unbound, KEY_ID);
    let m = envelope.seal(&pt, &ctx("a")).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(
        envelope_err(envelope.open_stream(&m[..], &mut out, &ctx("b")).await),
        EnvelopeError::HeaderAuthentication
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn source_errors_propagate_and_nothing_is_cached() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5));
    kms.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        kms_code(envelope.seal(b"x", &ctx("a")).await),
        "KMSInternalException"
    );
    assert_eq!(envelope.cache().unwrap().stats().entries, 0);
    kms.fail.store(false, Ordering::SeqCst);
    envelope.seal(b"x", &ctx("a")).await.unwrap();
    assert_eq!(envelope.cache().unwrap().stats().entries, 1);
}

/// A wrong data key from `Decrypt` (what a tampered `CiphertextForRecipient`
/// decrypts to) fails the header, whatever its length, and never enters the
/// cache: the next open asks KMS again, as after any failure, and an honest
/// answer then opens and is cached.
#[tokio::test]
async fn only_a_key_that_authenticates_the_header_is_cached() {
    let kms = FakeKms::new();
    let envelope = cached(&kms, minutes(5));
    let sealer = Envelope::new(kms.clone(), KEY_ID);
    let m = sealer.seal(b"secret", &ctx("a")).await.unwrap();
    for tamper in [1, 2] {
        kms.tamper.store(tamper, Ordering::SeqCst);
        for _ in 0..2 {
            let before = kms.decrypted();
            assert_eq!(
                envelope_err(envelope.open(&m, &ctx("a")).await),
                EnvelopeError::HeaderAuthentication,
                "tamper {tamper}"
            );
            assert_eq!(kms.decrypted(), before + 1, "asked KMS again");
            let mut out = Vec::new();
            assert_eq!(
                envelope_err(envelope.open_stream(&m[..], &mut out, &ctx("a")).await),
                EnvelopeError::HeaderAuthentication
            );
            assert!(out.is_empty());
        }
        assert_eq!(envelope.cache().unwrap().stats().entries, 0);
    }
    kms.tamper.store(0, Ordering::SeqCst);
    assert_eq!(&envelope.open(&m, &ctx("a")).await.unwrap()[..], b"secret");
    assert_eq!(envelope.cache().unwrap().stats().entries, 1);
    let before = kms.decrypted();
    assert_eq!(&envelope.open(&m, &ctx("a")).await.unwrap()[..], b"secret");
    assert_eq!(kms.decrypted(), before, "served from the cache");
}

#[tokio::test]
async fn a_data_key_of_the_wrong_length_is_refused() {
    let kms = Arc::new(FakeKms {
        key_len: 16,
        ..FakeKms::plain()
    });
    let envelope = Envelope::new(kms, KEY_ID);
    assert_eq!(
        envelope_err(envelope.seal(b"x", &ctx("a")).await),
        EnvelopeError::DataKeyLength { len: 16 }
    );
}

#[test]
fn configuration_is_validated() {
    let invalid = |c: CachingConfig| matches!(DataKeyCache::new(c), Err(Error::InvalidArgument(_)));
    assert!(invalid(CachingConfig::new(Duration::ZERO)));
    assert!(invalid(minutes(1).with_capacity(0)));
    assert!(invalid(minutes(1).with_max_messages_encrypted(0)));
    assert!(invalid(minutes(1).with_max_messages_encrypted(
        CachingConfig::MAX_MESSAGES_ENCRYPTED + 1
    )));
    let c = minutes(1);
    assert_eq!(
        (
            c.max_messages_encrypted(),
            c.max_bytes_encrypted(),
            c.capacity()
        ),
        (1 << 32, (1 << 63) - 1, CachingConfig::DEFAULT_CAPACITY)
    );
    let kms = FakeKms::new();
    assert!(
        Envelope::new(kms.clone(), KEY_ID)
            .with_frame_len(0)
            .is_err()
    );
    assert!(
        Envelope::new(kms, KEY_ID)
            .with_frame_len((4 << 20) + 1)
            .is_err()
    );
}

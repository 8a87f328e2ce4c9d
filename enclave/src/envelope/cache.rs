//! The data-key cache: the AWS Encryption SDK's caching CMM limits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keybroker_common::kms::Blob;
use keybroker_common::secret::SecretBytes;
use tokio::time::Instant;

use crate::Error;

/// A data key and what a message header records about it. Zeroized when the
/// last holder (cache entry or message being sealed) drops it.
pub(crate) struct Material {
    pub(crate) key: SecretBytes,
    pub(crate) key_id: String,
    pub(crate) ciphertext_blob: Blob,
}

/// Limits of a [`DataKeyCache`], as the AWS Encryption SDK's caching
/// cryptographic materials manager defines them.
///
/// A data key from the cache seals a message only if, counting that message,
/// the key has been used for at most `max_messages_encrypted` messages and
/// `max_bytes_encrypted` plaintext bytes, and it is younger than `max_age`.
/// Otherwise a new data key is generated (and cached in its place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachingConfig {
    max_age: Duration,
    max_messages_encrypted: u64,
    max_bytes_encrypted: u64,
    capacity: usize,
}

impl CachingConfig {
    /// Default and largest `max_messages_encrypted`: 2^32, the AWS Encryption
    /// SDK's limit.
    pub const MAX_MESSAGES_ENCRYPTED: u64 = 1 << 32;
    /// Default `max_bytes_encrypted`: 2^63 - 1, the AWS Encryption SDK's default.
    pub const DEFAULT_MAX_BYTES_ENCRYPTED: u64 = i64::MAX as u64;
    /// Default number of entries.
    pub const DEFAULT_CAPACITY: usize = 100;

    /// Limits with the required `max_age` (how long a data key may be used
    /// after KMS generated or decrypted it) and the defaults for the rest:
    /// 2^32 messages, 2^63 - 1 bytes, [`Self::DEFAULT_CAPACITY`] entries.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            max_messages_encrypted: Self::MAX_MESSAGES_ENCRYPTED,
            max_bytes_encrypted: Self::DEFAULT_MAX_BYTES_ENCRYPTED,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }

    /// Messages one cached data key may seal, 1..=2^32.
    pub fn with_max_messages_encrypted(mut self, n: u64) -> Self {
        self.max_messages_encrypted = n;
        self
    }

    /// Plaintext bytes one cached data key may seal. A message larger than
    /// this gets a data key of its own that is not cached.
    pub fn with_max_bytes_encrypted(mut self, n: u64) -> Self {
        self.max_bytes_encrypted = n;
        self
    }

    /// Entries (encryption and decryption) the cache holds; the least
    /// recently used is evicted to make room. At least 1.
    pub fn with_capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// How long a data key may be used after KMS generated or decrypted it.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Messages one cached data key may seal.
    pub fn max_messages_encrypted(&self) -> u64 {
        self.max_messages_encrypted
    }

    /// Plaintext bytes one cached data key may seal.
    pub fn max_bytes_encrypted(&self) -> u64 {
        self.max_bytes_encrypted
    }

    /// Entries the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Counters of a [`DataKeyCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries held now.
    pub entries: usize,
    /// Lookups answered from the cache (encryption and decryption).
    pub hits: u64,
    /// Lookups that found no usable entry.
    pub misses: u64,
    /// Entries removed because they expired, reached a limit or were the
    /// least recently used when room was needed.
    pub evictions: u64,
}

/// A cache of data keys for [`super::Envelope`], so that repeated seals and
/// opens do not call KMS each time (the AWS Encryption SDK's caching CMM with
/// a local LRU cache).
///
/// - Encryption entries are keyed by (KMS key id, encryption context): a
///   message sealed under another context never reuses a key. Each counts
///   the messages and bytes it sealed ([`CachingConfig`]).
/// - Decryption entries are keyed by (KMS key id, `CiphertextBlob`,
///   encryption context): only a `Decrypt` answered for exactly these fills
///   one, and only once a message header authenticated with its key (a
///   tampered answer yields a wrong key, which is never cached). They are
///   limited by age only.
/// - Expired entries are never used and are removed when met; the least
///   recently used entry makes room for a new one.
///
/// Keys are held as [`SecretBytes`] and zeroized when their entry is evicted
/// or the cache drops (once no seal in progress still uses them).
///
/// Cheap to clone (shared state); thread-safe. Share one cache only between
/// envelopes that use the same [`super::DataKeySource`]: an entry is served
/// to whichever envelope asks for the same key id and context.
#[derive(Clone)]
pub struct DataKeyCache {
    config: CachingConfig,
    state: Arc<Mutex<State>>,
}

impl core::fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Encrypt {
        key_id: String,
        context: Vec<u8>,
    },
    Decrypt {
        key_id: String,
        blob: Vec<u8>,
        context: Vec<u8>,
    },
}

struct Entry {
    material: Arc<Material>,
    created: Instant,
    messages: u64,
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    /// Entries by last use (a tick, unique), least recent first.
    lru: BTreeMap<u64, CacheKey>,
    tick: u64,
    stats: CacheStats,
}

impl State {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.last_used);
            self.stats.evictions += 1;
        }
    }

    fn touch(&mut self, key: &CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.last_used);
            e.last_used = tick;
            self.lru.insert(tick, key.clone());
        }
    }

    fn insert(&mut self, key: CacheKey, entry: Entry, capacity: usize, max_age: Duration) {
        self.remove(&key);
        if self.entries.len() >= capacity {
            let now = Instant::now();
            let expired: Vec<CacheKey> = self
                .entries
                .iter()
                .filter(|(_, e)| now.duration_since(e.created) > max_age)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &expired {
                self.remove(k);
            }
        }
        while self.entries.len() >= capacity {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if self.entries.remove(&oldest).is_some() {
                self.stats.evictions += 1;
            }
        }
        self.tick += 1;
        let tick = self.tick;
        self.lru.insert(tick, key.clone());
        self.entries.insert(
            key,
            Entry {
                last_used: tick,
                ..entry
            },
        );
    }
}

impl DataKeyCache {
    /// A cache with these limits.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `max_age` is zero, `capacity` is zero or
    /// `max_messages_encrypted` is outside 1..=2^32.
    pub fn new(config: CachingConfig) -> Result<Self, Error> {
        if config.max_age.is_zero() {
            return Err(Error::InvalidArgument(
                "cache max_age must be positive".into(),
            ));
        }
        if config.capacity == 0 {
            return Err(Error::InvalidArgument(
                "cache capacity must be at least 1".into(),
            ));
        }
        if !(1..=CachingConfig::MAX_MESSAGES_ENCRYPTED).contains(&config.max_messages_encrypted) {
            return Err(Error::InvalidArgument(
                "cache max_messages_encrypted must be in 1..=2^32".into(),
            ));
        }
        Ok(Self {
            config,
            state: Arc::default(),
        })
    }

    /// The limits.
    pub fn config(&self) -> &CachingConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            entries: state.entries.len(),
            ..state.stats
        }
    }

    /// Removes every entry (their keys are zeroized once unused).
    pub fn clear(&self) {
        let mut state = self.lock();
        let n = state.entries.len() as u64;
        state.entries.clear();
        state.lru.clear();
        state.stats.evictions += n;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every
        // mutation is a single insert or remove), so a poisoned lock is
        // still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.created) > self.config.max_age
    }

    /// Whether a message of `len` bytes may use the cache at all.
    pub(crate) fn cacheable(&self, len: u64) -> bool {
        len <= self.config.max_bytes_encrypted
    }

    /// The cached data key for sealing one more message of `len` bytes
    /// under (key id, context), counting that message; `None` (and the entry
    /// evicted) if it is expired or would exceed a limit.
    pub(crate) fn take_encrypt(
        &self,
        key_id: &str,
        context: &[u8],
        len: u64,
    ) -> Option<Arc<Material>> {
        let key = CacheKey::Encrypt {
            key_id: key_id.to_owned(),
            context: context.to_vec(),
        };
        let now = Instant::now();
        let mut state = self.lock();
        let usable = match state.entries.get_mut(&key) {
            None => None,
            Some(e) => {
                let messages = e.messages.saturating_add(1);
                let bytes = e.bytes.saturating_add(len);
                if self.expired(e, now)
                    || messages > self.config.max_messages_encrypted
                    || bytes > self.config.max_bytes_encrypted
                {
                    None
                } else {
                    e.messages = messages;
                    e.bytes = bytes;
                    Some(e.material.clone())
                }
            }
        };
        match usable {
            Some(m) => {
                state.touch(&key);
                state.stats.hits += 1;
                Some(m)
            }
            None => {
                state.remove(&key);
                state.stats.misses += 1;
                None
            }
        }
    }

    /// Caches a freshly generated data key that seals a message of `len`
    /// bytes (its first use).
    pub(crate) fn put_encrypt(
        &self,
        key_id: &str,
        context: &[u8],
        material: Arc<Material>,
        len: u64,
    ) {
        let key = CacheKey::Encrypt {
            key_id: key_id.to_owned(),
            context: context.to_vec(),
        };
        let entry = Entry {
            material,
            created: Instant::now(),
            messages: 1,
            bytes: len,
            last_used: 0,
        };
        self.lock()
            .insert(key, entry, self.config.capacity, self.config.max_age);
    }

    /// The cached plaintext of `blob` under (key id, context), if fresh.
    pub(crate) fn get_decrypt(
        &self,
        key_id: &str,
        blob: &[u8],
        context: &[u8],
    ) -> Option<Arc<Material>> {
        let key = CacheKey::Decrypt {
            key_id: key_id.to_owned(),
            blob: blob.to_vec(),
            context: context.to_vec(),
        };
        let now = Instant::now();
        let mut state = self.lock();
        let found = state
            .entries
            .get(&key)
            .map(|e| (self.expired(e, now), e.material.clone()));
        match found {
            Some((false, m)) => {
                state.touch(&key);
                state.stats.hits += 1;
                Some(m)
            }
            Some((true, _)) => {
                state.remove(&key);
                state.stats.misses += 1;
                None
            }
            None => {
                state.stats.misses += 1;
                None
            }
        }
    }

    /// Caches the plaintext KMS `Decrypt` returned for `blob` under
    /// (key id, context).
    pub(crate) fn put_decrypt(
        &self,
        key_id: &str,
        blob: &[u8],
        context: &[u8],
        material: Arc<Material>,
    ) {
        let key = CacheKey::Decrypt {
            key_id: key_id.to_owned(),
            blob: blob.to_vec(),
            context: context.to_vec(),
        };
        let entry = Entry {
            material,
            created: Instant::now(),
            messages: 0,
            bytes: 0,
            last_used: 0,
        };
        self.lock()
            .insert(key, entry, self.config.capacity, self.config.max_age);
    }
}

//! A bounded cache of verified attestation documents ([`VerificationCache`]).

use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::age::millis;
use super::verify::sha256;
use super::{AttestationError, MAX_DOCUMENT_LEN, VerifiedAttestation, Verifier};
use crate::UnixMillis;

/// A bounded cache of [`VerifiedAttestation`]s.
///
/// Verifying a genuine document costs five P-384 ECDSA checks (four
/// certificate signatures and the COSE signature) plus the X.509 parsing;
/// an enclave sends the same document with every request until it rotates
/// its recipient key. [`VerificationCache::verify`] remembers each document
/// that verified, keyed by the SHA-256 of its bytes, so that the next request
/// with it costs a hash and a map lookup.
///
/// A hit is only returned when verifying again at `now` would succeed, so the
/// cache changes the cost, never the answer:
///
/// - the verification outcome depends only on the bytes (the key), the
///   verifier's pinned roots and the time; a hit requires that the caller's
///   [`Verifier`] pins the entry's root ([`VerifiedAttestation::root_sha256`]),
///   so verifiers with different roots can share one cache;
/// - time enters only through the certificates' validity periods: a hit
///   requires `now` inside every certificate's period, i.e. between
///   [`VerifiedAttestation::chain_not_before`] and
///   [`VerifiedAttestation::chain_not_after`] (the earliest expiry of the
///   chain, normally the leaf's); after that the document is verified again,
///   and fails as expired;
/// - with a maximum document age, an entry also ends when the document
///   becomes older than it, so the cache never keeps what the caller's age
///   check refuses. (The age check itself stays the caller's, on every
///   request: [`super::check_document_age`].)
///
/// Only successes are cached. The cache holds at most
/// [`VerificationCache::capacity`] entries: when it is full, an insertion
/// first drops expired entries, then the least recently used one. No I/O and
/// no clock: the caller passes `now`. Thread-safe (one short-lived lock, never
/// held while verifying).
pub struct VerificationCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// Incremented on every use; an entry's `last_used` is its value then.
    tick: u64,
    hits: u64,
    misses: u64,
}

struct Entry {
    verified: VerifiedAttestation,
    last_used: u64,
}

/// What a [`VerificationCache`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that verified the document.
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
}

impl VerificationCache {
    /// Default [`VerificationCache::capacity`]. An enclave sends one document
    /// until it rotates its recipient key, so a parent with a few enclaves
    /// needs a handful of entries; 256 leaves room for many, at most about
    /// 2 MiB (a document with its chain is at most 8 KiB).
    pub const DEFAULT_CAPACITY: usize = 256;

    /// A cache of at most `capacity` documents; 0 caches nothing (every
    /// call verifies).
    pub fn new(capacity: usize) -> Self {
        VerificationCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hits, misses and entries so far.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            entries: inner.entries.len(),
        }
    }

    /// [`Verifier::verify`]`(document, now)`, answered from the cache when
    /// the same bytes verified before and would verify again at `now` (see
    /// [`VerificationCache`]). `max_age` is the caller's maximum document
    /// age, which bounds how long an entry lives.
    ///
    /// A hit returns the value the original verification returned, so its
    /// [`VerifiedAttestation::verified_at`] is the time of that
    /// verification.
    ///
    /// # Errors
    /// Whatever [`Verifier::verify`] returns at `now`.
    pub fn verify(
        &self,
        verifier: &Verifier,
        document: &[u8],
        now: UnixMillis,
        max_age: Option<Duration>,
    ) -> Result<VerifiedAttestation, AttestationError> {
        if document.len() > MAX_DOCUMENT_LEN {
            // Not hashed: no cached document is this large.
            return Err(AttestationError::TooLarge {
                len: document.len(),
                max: MAX_DOCUMENT_LEN,
            });
        }
        let key = sha256(document);
        {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(entry) = inner.entries.get_mut(&key)
                && usable(&entry.verified, verifier, now, max_age)
            {
                entry.last_used = tick;
                let hit = entry.verified.clone();
                inner.hits += 1;
                return Ok(hit);
            }
            inner.misses += 1;
        }
        let verified = verifier.verify(document, now)?;
        if self.capacity > 0 && usable(&verified, verifier, now, max_age) {
            self.lock()
                .insert(key, verified.clone(), self.capacity, now, max_age);
        }
        Ok(verified)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent whatever panicked while holding the lock
        // (each operation is one insert, remove or field update).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for VerificationCache {
    /// A cache of [`VerificationCache::DEFAULT_CAPACITY`] entries.
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl core::fmt::Debug for VerificationCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VerificationCache")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    fn insert(
        &mut self,
        key: [u8; 32],
        verified: VerifiedAttestation,
        capacity: usize,
        now: UnixMillis,
        max_age: Option<Duration>,
    ) {
        if !self.entries.contains_key(&key) && self.entries.len() >= capacity {
            self.entries
                .retain(|_, e| !expired(&e.verified, now, max_age));
            while self.entries.len() >= capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| *k);
                let Some(k) = oldest else { break };
                self.entries.remove(&k);
            }
        }
        self.tick += 1;
        let last_used = self.tick;
        self.entries.insert(
            key,
            Entry {
                verified,
                last_used,
            },
        );
    }
}

/// Whether verifying the entry's document with `verifier` at `now` would
/// succeed, and it is within `max_age`.
fn usable(
    v: &VerifiedAttestation,
    verifier: &Verifier,
    now: UnixMillis,
    max_age: Option<Duration>,
) -> bool {
    verifier.trusts_root(v.root_sha256())
        && v.chain_not_before() <= now
        && !expired(v, now, max_age)
}

/// Whether the entry can never be used again at `now` or later: its chain
/// has expired, or the document is older than `max_age`.
fn expired(v: &VerifiedAttestation, now: UnixMillis, max_age: Option<Duration>) -> bool {
    now > v.chain_not_after()
        || max_age.is_some_and(|age| now.0.saturating_sub(v.timestamp().0) > millis(age))
}

//! Test support for the Keybroker workspace: one home for what the tests of
//! several crates need. A dev-dependency only.
//!
//! - [`fixtures`]: where `../shared/fixtures` is, with the one rule for
//!   when it is absent (the test says so and skips, or fails under
//!   `CI=true`).
//! - [`pki`] (feature `pki`): a test attestation PKI (P-384, like the Nitro
//!   PKI) that signs attestation documents.
//! - [`raw_client`] and [`fake_proxy`] (feature `net`): the two ends of the
//!   enclave <-> proxy protocol as test doubles, on the same framed
//!   connection as the product ([`keybroker_framing`]).
//! - [`sdk`] (feature `sdk`): a real `aws-sdk-kms` client for a test
//!   endpoint, and assertions on KMS error codes.
//! - [`process`]: running a built binary with standard input.
//! - [`bench`]: the median timings the benchmarks print.
//!
//! Test code: helpers panic on failure (with a message saying what failed),
//! which is how a test reports it.

#![forbid(unsafe_code)]
// Test helpers: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bench;
#[cfg(feature = "net")]
pub mod fake_proxy;
pub mod fixtures;
#[cfg(feature = "pki")]
pub mod pki;
pub mod process;
#[cfg(feature = "net")]
pub mod raw_client;
#[cfg(feature = "sdk")]
pub mod sdk;

/// Now, in milliseconds since the Unix epoch (the tests' clock).
pub fn now() -> keybroker_common::UnixMillis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    keybroker_common::UnixMillis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

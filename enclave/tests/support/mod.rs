//! Support for the client tests: the fake parent proxy (one home for it,
//! [`keybroker_test_support::fake_proxy`], re-exported here), recipient keys
//! under a mock NSM, and helpers that tamper with KMS answers.
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use keybroker_common::attestation::Verifier;
use keybroker_enclave::{MockCa, MockNsm, MockNsmConfig, RecipientKeys, RecipientKeysConfig};
pub use keybroker_test_support::fake_proxy::*;

/// What a parent mounting a padding-oracle probe does to a
/// `CiphertextForRecipient` whose plaintext is a multiple of 16 bytes long
/// (a data key of `AES_256`), so that its last block is all padding (16
/// bytes of 0x10): it flips the last byte of the block before, which flips
/// the same bit of the last plaintext byte. With `valid_padding` the last
/// byte becomes 0x01 (valid PKCS#7 padding, and a plaintext 15 bytes longer
/// with a garbled block); without, 0x00 (never valid).
pub fn probe_padding(cfr: &[u8], valid_padding: bool) -> Vec<u8> {
    let parts = keybroker_common::cms::parse(cfr).unwrap();
    let ct = &parts.ciphertext;
    assert!(ct.len() >= 32, "needs a block before the last");
    let tail = &ct[ct.len() - 32..];
    let at = cfr.windows(32).position(|w| w == tail).unwrap() + 15;
    let mut out = cfr.to_vec();
    out[at] ^= if valid_padding { 0x10 ^ 0x01 } else { 0x10 };
    out
}

/// A P-384 public key (DER SubjectPublicKeyInfo) of the caller's.
pub fn p384_spki() -> Vec<u8> {
    use aws_lc_rs::agreement::{ECDH_P384, PrivateKey};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let key = PrivateKey::generate(&ECDH_P384).unwrap();
    let der: PublicKeyX509Der<'_> = key.compute_public_key().unwrap().as_der().unwrap();
    der.as_ref().to_vec()
}

/// A mock NSM, recipient keys under it, and a verifier for its root.
pub async fn keys() -> (RecipientKeys, Verifier) {
    keys_with(RecipientKeysConfig::default()).await
}

pub async fn keys_with(config: RecipientKeysConfig) -> (RecipientKeys, Verifier) {
    let ca = MockCa::generate().unwrap();
    let nsm = MockNsm::new(&ca, MockNsmConfig::default()).unwrap();
    let verifier = Verifier::from_trusted_roots([ca.root_der()]).unwrap();
    let keys = RecipientKeys::new(Arc::new(nsm), config).await.unwrap();
    (keys, verifier)
}

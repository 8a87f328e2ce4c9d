//! Fuzz target: `keybroker_common::cms` on arbitrary bytes.
//!
//! `parse` must never panic; when it succeeds, `decrypt` with a fixed
//! recipient key must not panic either (it fails with a typed error unless
//! the input happens to be a ciphertext for that key).
#![no_main]

use keybroker_common::cms::{self, RecipientPrivateKey};
use std::sync::OnceLock;

fn key() -> &'static RecipientPrivateKey {
    static KEY: OnceLock<RecipientPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RecipientPrivateKey::generate_2048().expect("RSA-2048 key generation"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(parts) = cms::parse(data) {
        assert!(parts.ciphertext.len() % 16 == 0 && !parts.ciphertext.is_empty());
        let _ = cms::decrypt_parts(&parts, key());
    }
});

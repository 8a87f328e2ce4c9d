//! Fuzz target: `keybroker_common::cms` on arbitrary bytes.
//!
//! `parse` must never panic; when it succeeds, `decrypt` with a fixed
//! recipient key must not panic either, and must not fail: a ciphertext
//! that does not decrypt yields its implicit-rejection value, of the
//! expected length when one is given.
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
        let any = cms::decrypt_parts(&parts, key(), None).expect("no failure after parsing");
        assert!(any.len() < parts.ciphertext.len());
        let fixed = cms::decrypt_parts(&parts, key(), Some(32)).expect("no failure after parsing");
        assert_eq!(fixed.len(), 32);
    }
});

//! Fuzzes what the enclave reads from KMS in end-to-end mode
//! (`keybroker_enclave::e2e`): `KmsResponse::from_json` on response bodies
//! (capped at 1 MiB by the client) and the key pinning of
//! `keybroker_common::key_allowlist` on the `KeyId` they carry.
//!
//! Properties checked on arbitrary bytes:
//! - parsing and matching never panic;
//! - a `KeyId` admitted by the allowlist is a key ARN of an allowed account
//!   and region, and resolves to itself;
//! - a resolved request key id resolves to itself again (idempotent).
#![no_main]

use keybroker_common::key_allowlist::KeyAllowlist;
use keybroker_common::kms::{KmsResponse, Operation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let allow = KeyAllowlist::parse([
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:us-east-1:111122223333:alias/app",
        "arn:aws:kms:eu-west-1:444455556666:*",
    ])
    .expect("valid entries");
    if let Some(op) = Operation::ALL.get(usize::from(*selector)) {
        if let Ok(response) = KmsResponse::from_json(*op, body) {
            if let Some(k) = response.key_id() {
                if allow.check_response_key(Some(k)).is_ok() {
                    assert!(k.contains(":key/"));
                    assert_eq!(allow.resolve(k).as_deref(), Ok(k));
                }
            }
        }
        return;
    }
    if let Ok(id) = std::str::from_utf8(body) {
        if let Ok(resolved) = allow.resolve(id) {
            assert!(resolved.starts_with("arn:"));
            assert_eq!(allow.resolve(&resolved), Ok(resolved.clone()));
        }
    }
});

//! Fuzzes what the enclave reads from the instance metadata service through
//! a stock `vsock-proxy` relay (`keybroker_common::imds`): the role listing
//! and the credentials document, both from the untrusted parent.
//!
//! Properties checked on arbitrary bytes:
//! - parsing never panics;
//! - an accepted role name is one non-empty path segment (it cannot point
//!   the next request elsewhere);
//! - an accepted document's secret never shows in its `Debug`.
#![no_main]

use keybroker_common::imds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(role) = imds::role_name(data) {
        assert!(!role.is_empty() && role.len() <= 64);
        assert!(!role.contains('/') && !role.contains('?'));
        assert!(role != "." && role != "..");
    }
    if let Ok(c) = imds::parse_credentials(data) {
        let secret = c.secret_access_key.expose();
        if secret.len() >= 8 {
            assert!(!format!("{c:?}").contains(secret));
        }
    }
});

//! Fuzzes the KMS JSON request parsing of the in-enclave KMS endpoint
//! (`keybroker_enclave::endpoint`, AWS JSON 1.1 bodies from apps inside the
//! enclave): `KmsRequest::from_json`, the `X-Amz-Target` parsing, and the
//! `DeriveSharedSecret` public key (`EcdhCurve::of_spki`, whose curve fixes
//! the shared secret's length).
//!
//! Properties checked on arbitrary bytes:
//! - parsing never panics (the endpoint also caps bodies at 512 KiB);
//! - whatever parses re-serializes to a body that parses to the same request
//!   (what the endpoint relays is what the app sent);
//! - a public key that parses names a curve whose secret is 32, 48 or 66
//!   bytes. Selector 0xFF feeds the bytes to the SPKI parser directly.
#![no_main]

use keybroker_common::kms::{EcdhCurve, KmsRequest, Operation, aws_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    if *selector == 0xFF {
        if let Ok(curve) = EcdhCurve::of_spki(body) {
            assert!([32, 48, 66].contains(&curve.shared_secret_len()));
        }
        return;
    }
    let Some(op) = Operation::ALL.get(usize::from(*selector)) else {
        if let Ok(target) = std::str::from_utf8(body) {
            if let Ok(op) = aws_json::operation_name(Some(target)) {
                assert!(!op.is_empty() && target.ends_with(op));
            }
        }
        return;
    };
    let Ok(request) = KmsRequest::from_json(*op, body) else {
        return;
    };
    // Externally tagged: {"<Operation>": <the KMS body>}.
    let tagged = serde_json::to_value(&request).expect("a parsed request serializes");
    let inner = serde_json::to_vec(&tagged[op.as_str()]).expect("its body serializes");
    let again = KmsRequest::from_json(*op, &inner).expect("its body parses");
    assert_eq!(again, request);
    if let KmsRequest::DeriveSharedSecret(r) = &request {
        if let Ok(n) = r.shared_secret_len() {
            assert!([32, 48, 66].contains(&n));
        }
    }
});

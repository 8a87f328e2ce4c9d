//! Fuzzes the KMS JSON request parsing of the in-enclave KMS endpoint
//! (`keybroker_enclave::endpoint`, AWS JSON 1.1 bodies from apps inside the
//! enclave) on the `keybroker_common::kms` request types, and the
//! `X-Amz-Target` parsing.
//!
//! Properties checked on arbitrary bytes:
//! - parsing never panics (the endpoint also caps bodies at 512 KiB);
//! - whatever parses re-serializes to JSON that parses to the same request
//!   (what the endpoint relays is what the app sent).
#![no_main]

use keybroker_common::kms::{
    DecryptRequest, DescribeKeyRequest, GenerateDataKeyPairRequest,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyRequest,
    GenerateDataKeyWithoutPlaintextRequest, GenerateRandomRequest, aws_json,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0 => round_trip::<GenerateDataKeyRequest>(body),
        1 => round_trip::<DecryptRequest>(body),
        2 => round_trip::<GenerateDataKeyPairRequest>(body),
        3 => round_trip::<GenerateRandomRequest>(body),
        4 => round_trip::<GenerateDataKeyWithoutPlaintextRequest>(body),
        5 => round_trip::<GenerateDataKeyPairWithoutPlaintextRequest>(body),
        6 => round_trip::<DescribeKeyRequest>(body),
        _ => {
            if let Ok(target) = std::str::from_utf8(body) {
                if let Ok(op) = aws_json::operation_name(Some(target)) {
                    assert!(!op.is_empty() && target.ends_with(op));
                }
            }
        }
    }
});

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(request) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let json = serde_json::to_vec(&request).expect("a parsed request serializes");
    let again: T = serde_json::from_slice(&json).expect("its JSON parses");
    assert_eq!(again, request);
}

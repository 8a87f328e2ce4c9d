//! Fuzz target: the NSM attestation parser and verifier must never panic,
//! whatever the bytes. Seed it with `../shared/fixtures/attestation/*.cbor`.
#![no_main]

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{UnverifiedAttestation, Verifier};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = UnverifiedAttestation::parse(data) {
        // A parsed document satisfies the documented limits.
        let doc = parsed.document();
        assert!(doc.pcrs.len() <= keybroker_common::attestation::MAX_PCR_COUNT);
        assert!(!doc.cabundle.is_empty());
        // Verify at the document's own time, as the fixture tests do, so
        // genuine seeds reach the signature checks.
        let at = doc.timestamp;
        let _ = Verifier::aws_nitro().verify_parsed(parsed, at);
    }
    let _ = Verifier::aws_nitro().verify(data, UnixMillis(1_725_719_859_545));
});

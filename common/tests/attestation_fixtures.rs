//! Genuine AWS Nitro Enclaves attestation documents (`../shared/fixtures/attestation`,
//! listed in `manifest.json`) verified against the built-in AWS root at their
//! own timestamps, and each kind of tampering rejected with its own error.

// Test helpers outside `#[test]` functions may fail loudly.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{
    AWS_NITRO_ROOT_G1_SHA256, AttestationError, UnverifiedAttestation, Verifier,
};
use keybroker_test_support::fixtures;
use serde_json::Value;

struct Fixture {
    entry: Value,
    bytes: Vec<u8>,
}

impl Fixture {
    fn name(&self) -> &str {
        self.entry["file"].as_str().unwrap()
    }
    fn at(&self) -> UnixMillis {
        UnixMillis(self.entry["timestamp_ms"].as_u64().unwrap())
    }
    fn leaf_time(&self, key: &str) -> UnixMillis {
        parse_rfc3339(self.entry[key].as_str().unwrap())
    }
}

fn load() -> Option<Vec<Fixture>> {
    let dir = fixtures::attestation()?;
    let list = fixtures::manifest(&dir)
        .into_iter()
        .map(|entry| Fixture {
            bytes: fixtures::read(&dir, entry["file"].as_str().unwrap()),
            entry,
        })
        .collect();
    Some(list)
}

fn find(fixtures: &[Fixture], name: &str) -> Vec<u8> {
    fixtures
        .iter()
        .find(|f| f.name() == name)
        .unwrap()
        .bytes
        .clone()
}

/// `YYYY-MM-DDTHH:MM:SS+00:00` as milliseconds (the manifest's format).
fn parse_rfc3339(s: &str) -> UnixMillis {
    assert!(s.ends_with("+00:00"), "{s}");
    let n = |r: std::ops::Range<usize>| s[r].parse::<u8>().unwrap();
    let year = s[0..4].parse::<u16>().unwrap();
    let dt = der::DateTime::new(year, n(5..7), n(8..10), n(11..13), n(14..16), n(17..19)).unwrap();
    UnixMillis(u64::try_from(dt.unix_duration().as_millis()).unwrap())
}

fn len_of(entry: &Value, key: &str) -> Option<usize> {
    match &entry[key] {
        Value::Number(n) => Some(usize::try_from(n.as_u64().unwrap()).unwrap()),
        // The manifest writes the string "null" for a CBOR null.
        _ => None,
    }
}

#[test]
fn aws_root_fingerprint_matches_the_published_certificate() {
    let Some(dir) = fixtures::attestation() else {
        return;
    };
    let der = std::fs::read(dir.join("aws_nitro_root_g1.der")).unwrap();
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    assert_eq!(d.as_ref(), AWS_NITRO_ROOT_G1_SHA256);
    // Pinning the same root again is a no-op.
    let mut v = Verifier::aws_nitro();
    v.add_trusted_root(&der).unwrap();
    assert_eq!(v.trusted_root_fingerprints(), &[AWS_NITRO_ROOT_G1_SHA256]);
}

#[test]
fn genuine_documents_verify_and_match_the_manifest() {
    let Some(fixtures) = load() else { return };
    let verifier = Verifier::aws_nitro();
    let mut valid = 0;
    for f in fixtures.iter().filter(|f| f.entry["expect"] == "valid") {
        let name = f.name();
        let v = verifier
            .verify(&f.bytes, f.at())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = &f.entry;
        assert_eq!(v.module_id(), e["module_id"].as_str().unwrap(), "{name}");
        assert_eq!(v.timestamp(), f.at(), "{name}");
        assert_eq!(
            hex::encode(v.pcr(0).unwrap()),
            e["pcr0"].as_str().unwrap(),
            "{name}"
        );
        let indices: Vec<u64> = v.pcrs().keys().map(|i| u64::from(*i)).collect();
        let want: Vec<u64> = e["pcr_indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
        assert_eq!(indices, want, "{name}");
        assert!(v.pcrs().values().all(|p| p.len() == 48), "{name}");
        assert_eq!(
            v.public_key().map(<[u8]>::len),
            len_of(e, "public_key_len"),
            "{name}"
        );
        assert_eq!(
            v.user_data().map(<[u8]>::len),
            len_of(e, "user_data_len"),
            "{name}"
        );
        assert_eq!(v.nonce().map(<[u8]>::len), len_of(e, "nonce_len"), "{name}");
        assert_eq!(e["cose_tagged"], Value::Bool(f.bytes[0] == 0xD2), "{name}");
        // Leaf first, AWS root last.
        let subjects = v.chain_subjects();
        assert_eq!(subjects.len(), v.document().cabundle.len() + 1, "{name}");
        assert!(
            subjects.last().unwrap().contains("CN=aws.nitro-enclaves"),
            "{name}"
        );
        assert!(subjects[0].contains(v.module_id()), "{name}: {subjects:?}");
        valid += 1;
    }
    assert_eq!(valid, 11, "the manifest lists 11 valid documents");
}

#[test]
fn genuine_chain_with_bad_signature_is_rejected() {
    let Some(fixtures) = load() else { return };
    let bad: Vec<_> = fixtures
        .iter()
        .filter(|f| f.entry["expect"] == "invalid-signature")
        .collect();
    assert_eq!(bad.len(), 1);
    for f in bad {
        assert_eq!(
            Verifier::aws_nitro().verify(&f.bytes, f.at()).unwrap_err(),
            AttestationError::BadSignature,
            "{}",
            f.name()
        );
    }
}

#[test]
fn tampering_is_rejected_with_distinct_errors() {
    let Some(fixtures) = load() else { return };
    let verifier = Verifier::aws_nitro();
    let f = fixtures
        .iter()
        .find(|f| f.name() == "blocky-nitrite_nitro_attestation.cbor")
        .unwrap();
    let module_id = f.entry["module_id"].as_str().unwrap();
    assert!(verifier.verify(&f.bytes, f.at()).is_ok());

    // A flipped payload byte: the last byte of the 1024-byte nonce, just
    // before the signature's `58 60` head and its 96 bytes.
    let mut flipped = f.bytes.clone();
    let pos = flipped.len() - 96 - 2 - 1;
    flipped[pos] ^= 0x01;
    let flip_err = verifier.verify(&flipped, f.at()).unwrap_err();
    assert_eq!(flip_err, AttestationError::BadSignature);

    // Before the leaf's notBefore and after its notAfter.
    let before = UnixMillis(f.leaf_time("leaf_not_before").0 - 1);
    let early = verifier.verify(&f.bytes, before).unwrap_err();
    assert!(
        matches!(&early, AttestationError::CertificateNotYetValid { subject, .. } if subject.contains(module_id)),
        "{early}"
    );
    let after = UnixMillis(f.leaf_time("leaf_not_after").0 + 1);
    let late = verifier.verify(&f.bytes, after).unwrap_err();
    assert!(
        matches!(&late, AttestationError::CertificateExpired { subject, .. } if subject.contains(module_id)),
        "{late}"
    );
    // The boundaries themselves are inside the validity period.
    assert!(
        verifier
            .verify(&f.bytes, f.leaf_time("leaf_not_before"))
            .is_ok()
    );
    assert!(
        verifier
            .verify(&f.bytes, f.leaf_time("leaf_not_after"))
            .is_ok()
    );

    // A verifier that pins another root (here: one of the document's own
    // intermediates) rejects the AWS root.
    let parsed = UnverifiedAttestation::parse(&f.bytes).unwrap();
    let other = Verifier::from_trusted_roots([parsed.document().cabundle[1].as_slice()]).unwrap();
    let root_err = other.verify(&f.bytes, f.at()).unwrap_err();
    assert_eq!(
        root_err,
        AttestationError::UntrustedRoot {
            sha256: hex::encode(AWS_NITRO_ROOT_G1_SHA256)
        }
    );

    // A truncated file.
    let trunc_err = verifier
        .verify(&f.bytes[..f.bytes.len() / 2], f.at())
        .unwrap_err();
    assert_eq!(trunc_err, AttestationError::Truncated);

    let kinds = [&flip_err, &early, &late, &root_err, &trunc_err].map(std::mem::discriminant);
    for (i, a) in kinds.iter().enumerate() {
        for b in &kinds[i + 1..] {
            assert_ne!(a, b, "errors must be distinct variants");
        }
    }
}

#[test]
fn indefinite_length_map_fixture_parses() {
    let Some(fixtures) = load() else { return };
    let bytes = find(&fixtures, "sui-sentinel_sentinel-move_indefinite-map.cbor");
    // COSE header, then the payload bstr head (59 xx xx), then `BF` (map, indefinite).
    assert_eq!(bytes[10], 0xBF);
    let doc = UnverifiedAttestation::parse(&bytes)
        .unwrap()
        .into_document();
    assert_eq!(doc.pcrs.len(), 16);
    assert_eq!(doc.public_key.map(|k| k.len()), Some(32));
}

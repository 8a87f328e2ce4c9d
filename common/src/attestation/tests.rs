//! Unit tests: build -> verify round trips with an rcgen-made P-384 chain,
//! encoding variants (tagged, indefinite-length maps, null/absent optionals),
//! size limits and chain failures.

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use ciborium::Value;
use coset::{CborSerializable, CoseSign1};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384, date_time_ymd,
};

use super::build::{encode_payload, sign_payload};
use super::*;
use crate::{Error, UnixMillis};

/// 2024-01-01T12:00:00Z, inside every test certificate's validity.
const AT: UnixMillis = UnixMillis(1_704_110_400_000);
/// Leaf validity: 2024-01-01T00:00:00Z ..= 2024-01-02T00:00:00Z.
const LEAF_NOT_BEFORE: UnixMillis = UnixMillis(1_704_067_200_000);
const LEAF_NOT_AFTER: UnixMillis = UnixMillis(1_704_153_600_000);

struct Pki {
    root: Vec<u8>,
    inter: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: EcdsaKeyPair,
}

fn params(cn: &str, is_ca: IsCa) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Keybroker test");
    if matches!(is_ca, IsCa::Ca(_)) {
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2040, 1, 1);
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2024, 1, 2);
    }
    p.is_ca = is_ca;
    p
}

fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap()
}

/// root -> intermediate -> leaf, with configurable CA flags.
fn pki_with(root_ca: IsCa, inter_ca: IsCa) -> Pki {
    let root_key = key();
    let root_params = params("test root", root_ca);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let inter_key = key();
    let inter_params = params("test intermediate", inter_ca);
    let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    let inter_issuer = Issuer::new(inter_params, inter_key);

    let leaf_key = key();
    let leaf = params("test leaf", IsCa::ExplicitNoCa)
        .signed_by(&leaf_key, &inter_issuer)
        .unwrap();
    let leaf_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &leaf_key.serialize_der())
            .unwrap();
    Pki {
        root: root.der().to_vec(),
        inter: inter.der().to_vec(),
        leaf: leaf.der().to_vec(),
        leaf_key,
    }
}

fn pki() -> Pki {
    pki_with(
        IsCa::Ca(BasicConstraints::Unconstrained),
        IsCa::Ca(BasicConstraints::Constrained(0)),
    )
}

fn document(pki: &Pki) -> AttestationDocument {
    let pcrs = (0u8..16).map(|i| (i, vec![i; 48])).collect();
    AttestationDocument {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        digest: Digest::Sha384,
        timestamp: AT,
        pcrs,
        certificate: pki.leaf.clone(),
        cabundle: vec![pki.root.clone(), pki.inter.clone()],
        public_key: Some(vec![0x30; 294]),
        user_data: Some(b"user data".to_vec()),
        nonce: None,
    }
}

fn verifier(pki: &Pki) -> Verifier {
    Verifier::from_trusted_roots([pki.root.as_slice()]).unwrap()
}

fn sign(pki: &Pki, payload: &[u8]) -> Vec<u8> {
    sign_payload(payload, &pki.leaf_key, &SystemRandom::new()).unwrap()
}

fn build(pki: &Pki, doc: &AttestationDocument) -> Vec<u8> {
    build_signed_document(doc, &pki.leaf_key, &SystemRandom::new()).unwrap()
}

/// Encodes a payload map from (key, value) pairs, in the given order.
fn payload_of(entries: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

/// The nine entries of `doc`'s payload as CBOR values, in NSM order.
fn entries(doc: &AttestationDocument) -> Vec<(&'static str, Value)> {
    let payload = encode_payload(doc).unwrap();
    let Value::Map(map) = ciborium::de::from_reader::<Value, _>(payload.as_slice()).unwrap() else {
        panic!("payload is a map");
    };
    map.into_iter()
        .zip(parse::FIELDS)
        .map(|((_, v), k)| (k, v))
        .collect()
}

#[test]
fn build_verify_round_trip() {
    let pki = pki();
    let doc = document(&pki);
    let bytes = build(&pki, &doc);
    // Same layout as genuine NSM documents.
    assert!(bytes.starts_with(&[0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0]));
    let verified = verifier(&pki).verify(&bytes, AT).unwrap();
    assert_eq!(verified.document(), &doc);
    assert_eq!(verified.pcr(0), Some(&[0u8; 48][..]));
    assert_eq!(verified.public_key(), Some(&[0x30; 294][..]));
    assert_eq!(verified.nonce(), None);
    assert_eq!(verified.verified_at(), AT);
    let subjects = verified.chain_subjects();
    assert_eq!(subjects.len(), 3);
    assert!(subjects[0].contains("CN=test leaf"), "{subjects:?}");
    assert!(subjects[1].contains("CN=test intermediate"), "{subjects:?}");
    assert!(subjects[2].contains("CN=test root"), "{subjects:?}");
}

#[test]
fn payload_has_nine_keys_in_nsm_order_with_nulls() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    let sign1 = CoseSign1::from_slice(&bytes).unwrap();
    let payload = sign1.payload.unwrap();
    assert_eq!(payload[0], 0xA9, "definite map of 9 entries");
    let Value::Map(map) = ciborium::de::from_reader::<Value, _>(payload.as_slice()).unwrap() else {
        panic!("payload is a map");
    };
    let keys: Vec<_> = map.iter().map(|(k, _)| k.as_text().unwrap()).collect();
    assert_eq!(keys, parse::FIELDS);
    assert_eq!(map[8].1, Value::Null);
}

#[test]
fn sig_structure_matches_coset() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    let sign1 = CoseSign1::from_slice(&bytes).unwrap();
    let parsed = UnverifiedAttestation::parse(&bytes).unwrap();
    assert_eq!(parsed.sig_structure(), sign1.tbs_data(b""));
    // Long and short lengths of the CBOR head.
    for len in [0usize, 23, 24, 255, 256, 65535, 65536] {
        let payload = vec![7u8; len];
        let ours = parse::sig_structure(&[0xA1, 0x01, 0x38, 0x22], &payload);
        let theirs = coset::CoseSign1Builder::new()
            .protected(
                coset::HeaderBuilder::new()
                    .algorithm(coset::iana::Algorithm::ES384)
                    .build(),
            )
            .payload(payload)
            .build()
            .tbs_data(b"");
        assert_eq!(ours, theirs, "payload length {len}");
    }
}

#[test]
fn tagged_document_verifies() {
    let pki = pki();
    let mut bytes = vec![0xD2];
    bytes.extend(build(&pki, &document(&pki)));
    assert!(verifier(&pki).verify(&bytes, AT).is_ok());
    // Another tag is rejected.
    bytes[0] = 0xD1;
    assert!(matches!(
        UnverifiedAttestation::parse(&bytes),
        Err(AttestationError::Malformed(_))
    ));
}

#[test]
fn indefinite_length_payload_map_verifies() {
    let pki = pki();
    let doc = document(&pki);
    let mut payload = encode_payload(&doc).unwrap();
    assert_eq!(payload[0], 0xA9);
    payload[0] = 0xBF; // map, indefinite length
    payload.push(0xFF); // break
    let bytes = sign(&pki, &payload);
    let verified = verifier(&pki).verify(&bytes, AT).unwrap();
    assert_eq!(verified.document(), &doc);
}

#[test]
fn optional_fields_absent_or_null_are_none() {
    let pki = pki();
    let mut doc = document(&pki);
    let mut e = entries(&doc);
    e.truncate(6); // drop public_key, user_data, nonce
    let bytes = sign(&pki, &payload_of(e));
    let parsed = verifier(&pki).verify(&bytes, AT).unwrap();
    doc.public_key = None;
    doc.user_data = None;
    doc.nonce = None;
    assert_eq!(parsed.document(), &doc);
    // And all three as explicit null, through the builder.
    let bytes = build(&pki, &doc);
    assert_eq!(verifier(&pki).verify(&bytes, AT).unwrap().document(), &doc);
}

#[test]
fn empty_user_fields_are_accepted() {
    let pki = pki();
    let mut doc = document(&pki);
    doc.user_data = Some(Vec::new());
    doc.nonce = Some(vec![1; MAX_USER_FIELD_LEN]);
    let bytes = build(&pki, &doc);
    assert_eq!(verifier(&pki).verify(&bytes, AT).unwrap().document(), &doc);
}

#[test]
fn oversize_fields_are_rejected() {
    let pki = pki();
    for field in ["public_key", "user_data", "nonce"] {
        let mut doc = document(&pki);
        let big = Some(vec![0u8; MAX_USER_FIELD_LEN + 1]);
        match field {
            "public_key" => doc.public_key = big,
            "user_data" => doc.user_data = big,
            _ => doc.nonce = big,
        }
        // The builder refuses to emit it...
        let err = build_signed_document(&doc, &pki.leaf_key, &SystemRandom::new()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        // ...and the parser rejects a signed one.
        let mut e = entries(&document(&pki));
        for (k, v) in &mut e {
            if *k == field {
                *v = Value::Bytes(vec![0u8; MAX_USER_FIELD_LEN + 1]);
            }
        }
        let bytes = sign(&pki, &payload_of(e));
        assert_eq!(
            UnverifiedAttestation::parse(&bytes).unwrap_err(),
            AttestationError::FieldTooLarge {
                field,
                len: MAX_USER_FIELD_LEN + 1,
                max: MAX_USER_FIELD_LEN
            }
        );
    }
}

#[test]
fn oversize_document_is_rejected_before_parsing() {
    let bytes = vec![0x84; MAX_DOCUMENT_LEN + 1];
    assert_eq!(
        UnverifiedAttestation::parse(&bytes).unwrap_err(),
        AttestationError::TooLarge {
            len: MAX_DOCUMENT_LEN + 1,
            max: MAX_DOCUMENT_LEN
        }
    );
}

#[test]
fn oversize_certificates_and_bundles_are_rejected() {
    let pki = pki();
    let mut e = entries(&document(&pki));
    e[4].1 = Value::Bytes(vec![0x30; MAX_CERTIFICATE_LEN + 1]);
    let err = UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::FieldTooLarge {
                field: "certificate",
                ..
            }
        ),
        "{err}"
    );

    let mut e = entries(&document(&pki));
    e[5].1 = Value::Array(vec![Value::Bytes(pki.root.clone()); MAX_CABUNDLE_LEN + 1]);
    let err = UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::FieldTooLarge {
                field: "cabundle",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn invalid_pcrs_are_rejected() {
    let pki = pki();
    let cases = [
        (Value::Integer(32.into()), vec![0u8; 48], 32u64, 48usize),
        (Value::Integer(1.into()), vec![0u8; 47], 1, 47),
        (Value::Integer((-1).into()), vec![0u8; 48], u64::MAX, 48),
    ];
    for (index, value, want_index, want_len) in cases {
        let mut e = entries(&document(&pki));
        e[3].1 = Value::Map(vec![(index, Value::Bytes(value))]);
        assert_eq!(
            UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err(),
            AttestationError::InvalidPcr {
                index: want_index,
                len: want_len
            }
        );
    }
    let mut doc = document(&pki);
    doc.pcrs = BTreeMap::from([(40, vec![0; 48])]);
    assert!(build_signed_document(&doc, &pki.leaf_key, &SystemRandom::new()).is_err());
}

#[test]
fn unknown_duplicate_missing_and_mistyped_fields_are_rejected() {
    let pki = pki();
    let mut e = entries(&document(&pki));
    e.push(("extra", Value::Null));
    assert_eq!(
        UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err(),
        AttestationError::UnknownField("extra".into())
    );

    let mut e = entries(&document(&pki));
    e.push(("nonce", Value::Null));
    assert_eq!(
        UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err(),
        AttestationError::DuplicateField("nonce")
    );

    let mut e = entries(&document(&pki));
    e.remove(2);
    assert_eq!(
        UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err(),
        AttestationError::MissingField("timestamp")
    );

    let mut e = entries(&document(&pki));
    e[0].1 = Value::Bytes(b"id".to_vec());
    assert!(matches!(
        UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err(),
        AttestationError::WrongType {
            field: "module_id",
            ..
        }
    ));

    let mut e = entries(&document(&pki));
    e[1].1 = Value::Text("SHA256".into());
    assert!(matches!(
        UnverifiedAttestation::parse(&sign(&pki, &payload_of(e))).unwrap_err(),
        AttestationError::UnsupportedAlgorithm(_)
    ));
}

#[test]
fn wrong_cose_algorithm_and_headers_are_rejected() {
    let pki = pki();
    let good = build(&pki, &document(&pki));
    let mut sign1 = CoseSign1::from_slice(&good).unwrap();

    let mut es256 = sign1.clone();
    es256.protected = coset::ProtectedHeader {
        original_data: None,
        header: coset::HeaderBuilder::new()
            .algorithm(coset::iana::Algorithm::ES256)
            .build(),
    };
    assert!(matches!(
        UnverifiedAttestation::parse(&es256.to_vec().unwrap()).unwrap_err(),
        AttestationError::UnsupportedAlgorithm(_)
    ));

    let mut kid = sign1.clone();
    kid.unprotected.key_id = b"kid".to_vec();
    assert!(matches!(
        UnverifiedAttestation::parse(&kid.to_vec().unwrap()).unwrap_err(),
        AttestationError::Malformed(_)
    ));

    sign1.signature.push(0);
    assert_eq!(
        UnverifiedAttestation::parse(&sign1.to_vec().unwrap()).unwrap_err(),
        AttestationError::BadSignatureLength { len: 97 }
    );

    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        UnverifiedAttestation::parse(&trailing).unwrap_err(),
        AttestationError::Malformed(_)
    ));
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    for len in 0..bytes.len() {
        assert_eq!(
            UnverifiedAttestation::parse(&bytes[..len]).unwrap_err(),
            AttestationError::Truncated,
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn truncated_payload_inside_a_complete_document_is_malformed() {
    let pki = pki();
    let payload = encode_payload(&document(&pki)).unwrap();
    let bytes = sign(&pki, &payload[..payload.len() - 10]);
    assert!(matches!(
        UnverifiedAttestation::parse(&bytes).unwrap_err(),
        AttestationError::Malformed(_)
    ));
}

#[test]
fn byte_flips_never_verify_and_never_panic() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    let v = verifier(&pki);
    for i in (0..bytes.len()).step_by(5) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(v.verify(&b, AT).is_err(), "flip at {i} verified");
    }
}

#[test]
fn payload_change_breaks_signature() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    let mut b = bytes.clone();
    // Flip a bit of the last byte of the payload's "user data" value.
    let pos = b.windows(9).position(|w| w == b"user data").unwrap();
    b[pos] ^= 0x20;
    assert_eq!(
        verifier(&pki).verify(&b, AT).unwrap_err(),
        AttestationError::BadSignature
    );
}

#[test]
fn time_outside_validity_is_rejected() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    let v = verifier(&pki);
    assert!(v.verify(&bytes, LEAF_NOT_BEFORE).is_ok());
    assert!(v.verify(&bytes, LEAF_NOT_AFTER).is_ok());
    let err = v
        .verify(&bytes, UnixMillis(LEAF_NOT_BEFORE.0 - 1))
        .unwrap_err();
    assert!(
        matches!(&err, AttestationError::CertificateNotYetValid { subject, not_before, .. }
            if subject.contains("test leaf") && *not_before == LEAF_NOT_BEFORE),
        "{err}"
    );
    let err = v
        .verify(&bytes, UnixMillis(LEAF_NOT_AFTER.0 + 1))
        .unwrap_err();
    assert!(
        matches!(&err, AttestationError::CertificateExpired { subject, not_after, .. }
            if subject.contains("test leaf") && *not_after == LEAF_NOT_AFTER),
        "{err}"
    );
    // Messages name the times in RFC 3339.
    assert!(err.to_string().contains("2024-01-02T00:00:00Z"), "{err}");
}

#[test]
fn non_ca_intermediate_is_rejected() {
    for inter in [IsCa::NoCa, IsCa::ExplicitNoCa] {
        let pki = pki_with(IsCa::Ca(BasicConstraints::Unconstrained), inter);
        let bytes = build(&pki, &document(&pki));
        let err = verifier(&pki).verify(&bytes, AT).unwrap_err();
        assert!(
            matches!(&err, AttestationError::NotCa { subject } if subject.contains("test intermediate")),
            "{err}"
        );
    }
}

#[test]
fn path_length_constraint_is_enforced() {
    let pki = pki_with(
        IsCa::Ca(BasicConstraints::Constrained(0)),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let bytes = build(&pki, &document(&pki));
    let err = verifier(&pki).verify(&bytes, AT).unwrap_err();
    assert!(
        matches!(
            &err,
            AttestationError::PathLenExceeded {
                path_len: 0,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_root_is_rejected() {
    let pki = pki();
    let other = pki_with(
        IsCa::Ca(BasicConstraints::Unconstrained),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let bytes = build(&pki, &document(&pki));
    for v in [Verifier::aws_nitro(), verifier(&other)] {
        let err = v.verify(&bytes, AT).unwrap_err();
        assert!(
            matches!(&err, AttestationError::UntrustedRoot { sha256 } if sha256.len() == 64),
            "{err}"
        );
    }
    // Trusting both works.
    let mut v = verifier(&other);
    v.add_trusted_root(&pki.root).unwrap();
    assert!(v.verify(&bytes, AT).is_ok());
    // A trusted root must at least parse as a certificate.
    assert!(matches!(
        Verifier::aws_nitro().add_trusted_root(b"not a certificate"),
        Err(AttestationError::BadCertificate { .. })
    ));
}

#[test]
fn foreign_intermediate_is_rejected() {
    let pki = pki();
    // Same root, but an intermediate from another PKI: names do not chain.
    let other = pki_with(
        IsCa::Ca(BasicConstraints::Unconstrained),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let mut doc = document(&pki);
    doc.cabundle[1] = other.inter.clone();
    let bytes = build(&pki, &doc);
    // other.inter is issued by other.root, whose name equals pki.root's name
    // ("test root"): names chain, the signature does not.
    let err = verifier(&pki).verify(&bytes, AT).unwrap_err();
    assert!(
        matches!(&err, AttestationError::BadCertificateSignature { subject } if subject.contains("test intermediate")),
        "{err}"
    );

    // A root in place of the intermediate: the leaf's issuer name does not match.
    let mut doc = document(&pki);
    doc.cabundle[1] = pki.root.clone();
    let bytes = build(&pki, &doc);
    let err = verifier(&pki).verify(&bytes, AT).unwrap_err();
    assert!(matches!(err, AttestationError::ChainBroken { .. }), "{err}");
}

#[test]
fn builder_rejects_a_key_that_does_not_match_the_leaf() {
    let ours = pki();
    let other = pki();
    let err =
        build_signed_document(&document(&ours), &other.leaf_key, &SystemRandom::new()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn garbage_never_panics() {
    let v = Verifier::aws_nitro();
    let inputs: [&[u8]; 8] = [
        b"",
        &[0x84],
        &[0x84, 0x40, 0xA0, 0xF6, 0x40],
        &[0xD2, 0xD2, 0x84],
        &[0xBF; 300],
        &[0x9F; 300],
        &[
            0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0, 0x5B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0xFF, 0xFF,
        ],
        &[
            0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0, 0x41, 0xA0, 0x58, 0x60,
        ],
    ];
    for input in inputs {
        assert!(v.verify(input, AT).is_err());
    }
}

#[test]
fn verified_attestation_reports_the_chain_window_and_root() {
    let pki = pki();
    let v = verifier(&pki)
        .verify(&build(&pki, &document(&pki)), AT)
        .unwrap();
    // The leaf (one day) expires first and starts last of the three.
    assert_eq!(v.chain_not_before(), LEAF_NOT_BEFORE);
    assert_eq!(v.chain_not_after(), LEAF_NOT_AFTER);
    assert_eq!(v.root_sha256(), &verify::sha256(&pki.root));
    assert!(verifier(&pki).trusts_root(v.root_sha256()));
    assert!(!Verifier::aws_nitro().trusts_root(v.root_sha256()));
}

const MINUTE: core::time::Duration = core::time::Duration::from_secs(60);

#[test]
fn document_age_is_bounded_both_ways() {
    let ts = AT;
    let at = |ms: u64| UnixMillis(ts.0 + ms);
    // Up to the maximum age (inclusive) is fresh.
    assert_eq!(check_document_age(ts, ts, 5 * MINUTE), Ok(()));
    assert_eq!(check_document_age(ts, at(300_000), 5 * MINUTE), Ok(()));
    let err = check_document_age(ts, at(300_001), 5 * MINUTE).unwrap_err();
    assert_eq!(
        err,
        AttestationError::DocumentTooOld {
            timestamp: ts,
            at: at(300_001),
            max_age_ms: 300_000
        }
    );
    assert!(
        err.to_string()
            .contains("older than the maximum age of 300 s"),
        "{err}"
    );
    // Ahead of the verifier's clock: tolerated up to MAX_CLOCK_SKEW.
    let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap();
    let early = UnixMillis(ts.0 - skew);
    assert_eq!(check_document_age(ts, early, 5 * MINUTE), Ok(()));
    let earlier = UnixMillis(early.0 - 1);
    let err = check_document_age(ts, earlier, 5 * MINUTE).unwrap_err();
    assert_eq!(
        err,
        AttestationError::DocumentFromFuture {
            timestamp: ts,
            at: earlier,
            max_skew_ms: skew
        }
    );
    assert!(
        err.to_string().contains("ahead of the verification time"),
        "{err}"
    );
    // Extremes do not overflow.
    assert!(check_document_age(UnixMillis(0), UnixMillis(u64::MAX), 5 * MINUTE).is_err());
    assert!(check_document_age(UnixMillis(u64::MAX), UnixMillis(0), 5 * MINUTE).is_err());
}

/// `n` different documents of one chain (they differ in the nonce).
fn documents(pki: &Pki, n: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut doc = document(pki);
            doc.nonce = Some(vec![i]);
            build(pki, &doc)
        })
        .collect()
}

#[test]
fn cache_hit_returns_what_the_verifier_returned() {
    let pki = pki();
    let v = verifier(&pki);
    let bytes = build(&pki, &document(&pki));
    let cache = VerificationCache::default();
    let cold = cache.verify(&v, &bytes, AT, None).unwrap();
    assert_eq!(cold, v.verify(&bytes, AT).unwrap());
    let later = UnixMillis(AT.0 + 60_000);
    let hit = cache.verify(&v, &bytes, later, None).unwrap();
    // The same proof, from the verification that filled the entry.
    assert_eq!(hit, cold);
    assert_eq!(hit.verified_at(), AT);
    assert_eq!(
        cache.stats(),
        CacheStats {
            hits: 1,
            misses: 1,
            entries: 1
        }
    );
}

#[test]
fn cache_misses_for_another_document_and_never_caches_failures() {
    let pki = pki();
    let v = verifier(&pki);
    let docs = documents(&pki, 2);
    let cache = VerificationCache::default();
    cache.verify(&v, &docs[0], AT, None).unwrap();
    cache.verify(&v, &docs[1], AT, None).unwrap();
    assert_eq!(cache.stats().misses, 2);
    assert_eq!(cache.stats().hits, 0);
    // One flipped bit: another key, and a failure that is not remembered.
    let mut tampered = docs[0].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    for _ in 0..2 {
        assert_eq!(
            cache.verify(&v, &tampered, AT, None),
            Err(AttestationError::BadSignature)
        );
    }
    assert_eq!(cache.stats().misses, 4);
    assert_eq!(cache.stats().entries, 2);
    // Too large: refused without hashing, as the verifier would.
    let huge = vec![0u8; MAX_DOCUMENT_LEN + 1];
    assert!(matches!(
        cache.verify(&v, &huge, AT, None),
        Err(AttestationError::TooLarge { .. })
    ));
}

#[test]
fn cache_entry_ends_with_the_chain_and_is_verified_again() {
    let pki = pki();
    let v = verifier(&pki);
    let bytes = build(&pki, &document(&pki));
    let cache = VerificationCache::default();
    cache.verify(&v, &bytes, AT, None).unwrap();
    // The last millisecond of the leaf's validity: still a hit.
    cache.verify(&v, &bytes, LEAF_NOT_AFTER, None).unwrap();
    assert_eq!(cache.stats().hits, 1);
    // One past it: verified again, and expired.
    let err = cache
        .verify(&v, &bytes, UnixMillis(LEAF_NOT_AFTER.0 + 1), None)
        .unwrap_err();
    assert!(
        matches!(err, AttestationError::CertificateExpired { .. }),
        "{err}"
    );
    // A clock that went back before the leaf's notBefore: verified again.
    let err = cache
        .verify(&v, &bytes, UnixMillis(LEAF_NOT_BEFORE.0 - 1), None)
        .unwrap_err();
    assert!(
        matches!(err, AttestationError::CertificateNotYetValid { .. }),
        "{err}"
    );
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().misses, 3);
}

#[test]
fn cache_entry_never_outlives_the_document_age_limit() {
    let pki = pki();
    let v = verifier(&pki);
    let bytes = build(&pki, &document(&pki)); // timestamp AT
    let cache = VerificationCache::default();
    let limit = Some(5 * MINUTE);
    cache.verify(&v, &bytes, AT, limit).unwrap();
    cache
        .verify(&v, &bytes, UnixMillis(AT.0 + 300_000), limit)
        .unwrap();
    assert_eq!(cache.stats().hits, 1);
    // Older than the limit: not answered from the cache (the chain is still
    // valid, so verification succeeds; the caller's age check refuses it),
    // and not cached again.
    let old = UnixMillis(AT.0 + 300_001);
    assert!(cache.verify(&v, &bytes, old, limit).is_ok());
    assert!(cache.verify(&v, &bytes, old, limit).is_ok());
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().misses, 3);
}

#[test]
fn cache_hit_needs_a_verifier_that_trusts_the_root() {
    let pki = pki();
    let bytes = build(&pki, &document(&pki));
    let cache = VerificationCache::default();
    cache.verify(&verifier(&pki), &bytes, AT, None).unwrap();
    let err = cache
        .verify(&Verifier::aws_nitro(), &bytes, AT, None)
        .unwrap_err();
    assert!(
        matches!(err, AttestationError::UntrustedRoot { .. }),
        "{err}"
    );
    assert_eq!(cache.stats().hits, 0);
}

#[test]
fn cache_size_is_bounded_and_evicts_the_least_recently_used() {
    let pki = pki();
    let v = verifier(&pki);
    let docs = documents(&pki, 4);
    let cache = VerificationCache::new(2);
    cache.verify(&v, &docs[0], AT, None).unwrap();
    cache.verify(&v, &docs[1], AT, None).unwrap();
    cache.verify(&v, &docs[0], AT, None).unwrap(); // hit: docs[1] is now the oldest
    cache.verify(&v, &docs[2], AT, None).unwrap(); // evicts docs[1]
    assert_eq!(cache.stats().entries, 2);
    let before = cache.stats();
    cache.verify(&v, &docs[0], AT, None).unwrap();
    cache.verify(&v, &docs[2], AT, None).unwrap();
    assert_eq!(cache.stats().hits, before.hits + 2);
    cache.verify(&v, &docs[1], AT, None).unwrap();
    assert_eq!(cache.stats().misses, before.misses + 1);
    // Expired entries go first, even the most recently used one.
    let cache = VerificationCache::new(2);
    let later = UnixMillis(AT.0 + 2 * 60_000);
    let at_later = |nonce: u8| {
        let mut doc = document(&pki);
        doc.timestamp = later;
        doc.nonce = Some(vec![nonce]);
        build(&pki, &doc)
    };
    let (y, z) = (at_later(1), at_later(2));
    cache.verify(&v, &y, AT, Some(MINUTE)).unwrap();
    cache.verify(&v, &docs[0], AT, Some(MINUTE)).unwrap(); // timestamp AT
    // At `later`, docs[0] is two minutes old: dropped for z, y stays.
    cache.verify(&v, &z, later, Some(MINUTE)).unwrap();
    let before = cache.stats();
    cache.verify(&v, &y, later, Some(MINUTE)).unwrap();
    assert_eq!(cache.stats().hits, before.hits + 1);
    assert_eq!(cache.stats().entries, 2);
    // Capacity 0 caches nothing.
    let off = VerificationCache::new(0);
    off.verify(&v, &docs[3], AT, None).unwrap();
    off.verify(&v, &docs[3], AT, None).unwrap();
    assert_eq!(
        off.stats(),
        CacheStats {
            hits: 0,
            misses: 2,
            entries: 0
        }
    );
}

//! Unit tests: the one index rule (exhaustively over a structured space),
//! values, images, the table and flag formats, nitro-cli JSON, condition
//! keys, matching against verified documents, and the genuine documents'
//! PCR lengths.

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384, date_time_ymd,
};

use super::*;
use crate::UnixMillis;
use crate::attestation::{AttestationDocument, Digest, Verifier, build_signed_document};

fn idx(n: u8) -> PcrIndex {
    PcrIndex::new(n).unwrap()
}

fn hex48(byte: u8) -> String {
    hex::encode([byte; PCR_LEN])
}

fn value(n: u8, byte: u8) -> PcrValue {
    PcrValue::parse(idx(n), &hex48(byte)).unwrap()
}

#[test]
fn index_rule_is_exhaustively_one_rule() {
    let prefixes = ["", "PCR", "pcr", "Pcr", "pCR", "PCR ", " ", "P"];
    let mut bodies: Vec<String> = (0..=120).map(|n: u32| n.to_string()).collect();
    bodies.extend(
        [
            "00", "01", "031", "+1", "-1", "1 ", "", "x", "1x", "0x1", "３",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    for prefix in prefixes {
        for body in &bodies {
            let text = format!("{prefix}{body}");
            let got = text.parse::<PcrIndex>();
            let canonical = body.parse::<u8>().ok().filter(|n| n.to_string() == *body);
            let expect = canonical
                .filter(|n| *n <= MAX_PCR_INDEX)
                .filter(|_| matches!(prefix, "" | "PCR" | "pcr"));
            assert_eq!(got.as_ref().ok().map(|i| i.get()), expect, "{text:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("not 0..=31"), "{e}");
            }
        }
    }
    assert_eq!(PcrIndex::all().count(), 32);
    assert_eq!(idx(8).to_string(), "PCR8");
    assert!(PcrIndex::new(32).is_err());
    assert_eq!(PcrIndex::try_from(31).unwrap().get(), 31);
    // Display round-trips through the parser.
    for i in PcrIndex::all() {
        assert_eq!(i.to_string().parse::<PcrIndex>().unwrap(), i);
    }
}

#[test]
fn values_are_48_nonzero_bytes_in_either_case_and_print_lower_case() {
    let upper = hex48(0xab).to_uppercase();
    let v = PcrValue::parse(idx(0), &format!("  {upper}\n")).unwrap();
    assert_eq!(v.as_hex(), hex48(0xab));
    assert_eq!(v.to_string(), hex48(0xab));
    assert_eq!(v.as_bytes(), &[0xab; 48]);
    assert!(v.matches(&[0xab; 48]));
    assert!(!v.matches(&[0xab; 32]));
    let mixed = format!("aB{}", "ab".repeat(47));
    assert_eq!(
        PcrValue::parse(idx(0), &mixed).unwrap().as_hex(),
        hex48(0xab)
    );
    for len in [0usize, 1, 32, 47, 49, 64] {
        let e = PcrValue::parse(idx(1), &"ab".repeat(len)).unwrap_err();
        assert_eq!(e, MeasurementError::WrongLength { index: idx(1), len });
        assert!(
            e.to_string().contains(&format!("PCR1 is {len} bytes")),
            "{e}"
        );
    }
    let e = PcrValue::parse(idx(2), &"zz".repeat(48)).unwrap_err();
    assert!(e.to_string().starts_with("PCR2 is not hex"), "{e}");
    assert!(PcrValue::parse(idx(2), "abc").is_err());
    // All zeros: refused as debug-mode whatever the length.
    for len in [1usize, 32, 48, 64] {
        let e = PcrValue::from_bytes(idx(8), &vec![0; len]).unwrap_err();
        assert_eq!(e, MeasurementError::AllZero { index: idx(8) });
        assert!(e.to_string().contains("debug-mode"), "{e}");
    }
    assert!(
        PcrValue::parse(idx(0), &hex48(0))
            .unwrap_err()
            .to_string()
            .starts_with("PCR0 is all zeros")
    );
    let mut one_bit = [0u8; 48];
    one_bit[47] = 1;
    assert!(PcrValue::from_bytes(idx(0), &one_bit).is_ok());
}

#[test]
fn images_require_pcr0_and_each_pcr_once() {
    let m = ImageMeasurements::new(value(0, 0xa0))
        .with_pcr(idx(2), value(2, 0xa2))
        .unwrap();
    assert_eq!(m.image_sha384().as_hex(), hex48(0xa0));
    assert_eq!(m.pcr_count(), 2);
    assert_eq!(m.get(idx(2)), Some(&value(2, 0xa2)));
    assert_eq!(m.get(idx(1)), None);
    let e = m.clone().with_pcr(idx(0), value(0, 1)).unwrap_err();
    assert_eq!(e, MeasurementError::DuplicatePcr { index: idx(0) });
    assert!(m.clone().with_pcr(idx(2), value(2, 1)).is_err());
    let from =
        ImageMeasurements::from_pcrs([(idx(2), value(2, 0xa2)), (idx(0), value(0, 0xa0))]).unwrap();
    assert_eq!(from, m);
    let order: Vec<u8> = from.pcrs().map(|(i, _)| i.get()).collect();
    assert_eq!(order, [0, 2]);
    assert_eq!(
        ImageMeasurements::from_pcrs([(idx(2), value(2, 0xa2))]).unwrap_err(),
        MeasurementError::MissingImageSha384
    );
    assert!(ImageMeasurements::from_pcrs([(idx(0), value(0, 1)), (idx(0), value(0, 2))]).is_err());
}

#[test]
fn condition_keys_have_one_home() {
    assert_eq!(
        idx(0).condition_key(),
        "kms:RecipientAttestation:ImageSha384"
    );
    assert_eq!(idx(0).pcr_condition_key(), "kms:RecipientAttestation:PCR0");
    assert_eq!(idx(8).condition_key(), "kms:RecipientAttestation:PCR8");
    let m = ImageMeasurements::new(value(0, 0xa0))
        .with_pcr(idx(8), value(8, 0xa8))
        .unwrap();
    let conditions: Vec<(String, String)> = m
        .condition_values()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    assert_eq!(
        conditions,
        [
            (IMAGE_SHA384_CONDITION_KEY.to_owned(), hex48(0xa0)),
            ("kms:RecipientAttestation:PCR8".to_owned(), hex48(0xa8)),
        ]
    );
    let pcr0 = [0xA0u8; 48];
    let pcr3 = [0u8; 32];
    let attested = attested_condition_values([(0u8, &pcr0[..]), (3, &pcr3[..]), (40, &pcr0[..])]);
    assert_eq!(
        attested,
        [
            (IMAGE_SHA384_CONDITION_KEY.to_owned(), hex48(0xa0)),
            ("kms:RecipientAttestation:PCR0".to_owned(), hex48(0xa0)),
            ("kms:RecipientAttestation:PCR3".to_owned(), "00".repeat(32)),
        ]
    );
}

#[test]
fn pcr_entries_and_the_pcr_flag() {
    let h = hex48(0xab);
    assert_eq!(parse_pcr("0", &h).unwrap(), (idx(0), value(0, 0xab)));
    assert_eq!(parse_pcr("PCR8", &h).unwrap().0, idx(8));
    assert_eq!(parse_pcr("pcr31", &h).unwrap().0, idx(31));
    assert_eq!(parse_pcr_assignment(&format!("2={h}")).unwrap().0, idx(2));
    assert!(matches!(
        parse_pcr_assignment(&h),
        Err(MeasurementError::NotAssignment { .. })
    ));
    assert!(parse_pcr("x", &h).is_err());
    assert!(parse_pcr("32", &h).is_err());
    let e = parse_pcr_assignment(&format!("0={}", hex48(0))).unwrap_err();
    assert!(e.to_string().contains("debug-mode"), "{e}");
}

fn table(entries: &[(&str, String)]) -> Result<ImageSpec, MeasurementError> {
    let map: BTreeMap<&str, &str> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ImageSpec::parse_table(map)
}

#[test]
fn image_tables_parse_and_refuse_what_the_config_refuses() {
    let spec = table(&[
        ("name", "v1".into()),
        ("pcr0", hex48(0xa0)),
        ("pcr2", hex48(0xa2)),
    ])
    .unwrap();
    assert_eq!(spec.name.as_deref(), Some("v1"));
    assert_eq!(
        spec.measurements,
        ImageMeasurements::new(value(0, 0xa0))
            .with_pcr(idx(2), value(2, 0xa2))
            .unwrap()
    );
    let spec = table(&[("PCR0", hex48(0xb0))]).unwrap();
    assert_eq!(spec.name, None);
    for (entries, expect) in [
        (vec![("pcr2", hex48(0xa2))], "pcr0 is required"),
        (vec![("name", "x".into())], "pcr0 is required"),
        (vec![("pcr0", hex48(0))], "debug-mode"),
        (
            vec![("pcr0", hex48(0xa0)), ("pcr8", hex48(0))],
            "debug-mode",
        ),
        (
            vec![("pcr0", hex48(0xa0)), ("nmae", "x".into())],
            "unknown key \"nmae\"",
        ),
        (
            vec![("pcr0", hex48(0xa0)), ("pcr", hex48(0xa2))],
            "not 0..=31",
        ),
        (
            vec![("pcr0", hex48(0xa0)), ("pcr32", hex48(0xa2))],
            "not 0..=31",
        ),
        (
            vec![("pcr0", hex48(0xa0)), ("PCR0", hex48(0xb0))],
            "PCR0 is given twice",
        ),
        (vec![("pcr0", "abcd".into())], "2 bytes"),
        (vec![("pcr0", "ab".repeat(32))], "32 bytes"),
    ] {
        let e = table(&entries).unwrap_err().to_string();
        assert!(e.contains(expect), "{entries:?}: {e}");
    }
}

#[test]
fn image_flags_parse() {
    let (a0, a2, b0) = (hex48(0xa0), hex48(0xa2), hex48(0xb0));
    let spec = ImageSpec::parse_flag(&format!("pcr0={a0}, pcr2={a2},name=v1.2")).unwrap();
    assert_eq!(spec.name.as_deref(), Some("v1.2"));
    assert_eq!(spec.measurements.pcr_count(), 2);
    assert_eq!(
        ImageSpec::parse_flag(&format!("PCR0={b0}")).unwrap().name,
        None
    );
    for (flag, expect) in [
        (format!("pcr2={a2}"), "pcr0"),
        (a0.clone(), "KEY=VALUE"),
        (format!("pcr0={a0},pcr0={b0}"), "twice"),
        (format!("pcr0={}", hex48(0)), "debug-mode"),
        (format!("pcr0={a0},name=a,name=b"), "name is given twice"),
    ] {
        let e = ImageSpec::parse_flag(&flag).unwrap_err().to_string();
        assert!(e.contains(expect), "{flag}: {e}");
    }
    // Long input is quoted cut short.
    let e = ImageSpec::parse_flag(&"x".repeat(5000))
        .unwrap_err()
        .to_string();
    assert!(e.len() < 200, "{e}");
}

#[test]
fn nitro_cli_json_is_read_with_the_same_rules() {
    let text = format!(
        "Start building the Enclave Image...\n{{\"Measurements\": {{\"HashAlgorithm\": \
         \"Sha384 {{ ... }}\", \"PCR0\": \"{}\", \"PCR2\": \"{}\"}}}}\n",
        hex48(0xA0).to_uppercase(),
        hex48(0xa2)
    );
    let m = ImageMeasurements::from_nitro_cli_json(&text).unwrap();
    assert_eq!(m.image_sha384().as_hex(), hex48(0xa0));
    assert_eq!(m.get(idx(2)), Some(&value(2, 0xa2)));
    for (text, expect) in [
        (
            format!("{{\"PCR0\": \"{}\"}}", "ab".repeat(32)),
            "PCR0 is 32 bytes",
        ),
        (
            format!(
                "{{\"PCR0\": \"{}\", \"PCR01\": \"{}\"}}",
                hex48(1),
                hex48(2)
            ),
            "unknown measurement \"PCR01\"",
        ),
        (format!("{{\"PCR2\": \"{}\"}}", hex48(2)), "no PCR0"),
        (format!("{{\"PCR0\": \"{}\"}}", hex48(0)), "debug-mode"),
    ] {
        let e = ImageMeasurements::from_nitro_cli_json(&text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{expect}: {e}");
    }
}

/// A root -> leaf P-384 chain and a verifier for it (2024-01-01T12:00Z).
struct Pki {
    root: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: EcdsaKeyPair,
}

const AT: UnixMillis = UnixMillis(1_704_110_400_000);

fn pki() -> Pki {
    let params = |cn: &str, ca: bool| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2040, 1, 1);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        } else {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        p
    };
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let root_params = params("measurements test root", true);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let leaf = params("measurements test leaf", false)
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    Pki {
        root: root.der().to_vec(),
        leaf: leaf.der().to_vec(),
        leaf_key: EcdsaKeyPair::from_pkcs8(
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            &leaf_key.serialize_der(),
        )
        .unwrap(),
    }
}

impl Pki {
    fn verified(&self, pcrs: &[(u8, Vec<u8>)]) -> VerifiedAttestation {
        let doc = AttestationDocument {
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            digest: Digest::Sha384,
            timestamp: AT,
            pcrs: pcrs.iter().cloned().collect(),
            certificate: self.leaf.clone(),
            cabundle: vec![self.root.clone()],
            public_key: Some(vec![0x30; 294]),
            user_data: None,
            nonce: None,
        };
        let bytes = build_signed_document(&doc, &self.leaf_key, &SystemRandom::new()).unwrap();
        Verifier::from_trusted_roots([self.root.as_slice()])
            .unwrap()
            .verify(&bytes, AT)
            .unwrap()
    }
}

#[test]
fn matching_a_verified_document() {
    let pki = pki();
    let image = ImageMeasurements::new(value(0, 0xa0))
        .with_pcr(idx(2), value(2, 0xa2))
        .unwrap();
    let doc = |pcrs: &[(u8, Vec<u8>)]| pki.verified(pcrs);
    // Every PCR of the image, extra PCRs (even all-zero ones) ignored.
    let good = doc(&[
        (0, vec![0xa0; 48]),
        (1, vec![0; 48]),
        (2, vec![0xa2; 48]),
        (3, vec![7; 48]),
    ]);
    assert!(image.matches(&good));
    assert_eq!(image.first_mismatch(&good), None);
    // One byte off.
    let mut off = vec![0xa2; 48];
    off[17] ^= 1;
    let d = doc(&[(0, vec![0xa0; 48]), (2, off.clone())]);
    assert!(!image.matches(&d));
    assert_eq!(
        image.first_mismatch(&d),
        Some(PcrMismatch::Differs {
            index: idx(2),
            expected: &value(2, 0xa2),
            actual: &off,
        })
    );
    // The right value at the wrong index.
    let d = doc(&[(0, vec![0xa0; 48]), (3, vec![0xa2; 48])]);
    assert_eq!(
        image.first_mismatch(&d),
        Some(PcrMismatch::Absent {
            index: idx(2),
            expected: &value(2, 0xa2),
        })
    );
    // A value of another length (the CDDL allows 32 and 64) never matches.
    let d = doc(&[(0, vec![0xa0; 32]), (2, vec![0xa2; 48])]);
    assert!(!image.matches(&d));
    // A debug-mode document.
    let d = doc(&(0u8..16).map(|i| (i, vec![0; 48])).collect::<Vec<_>>());
    assert!(!image.matches(&d));
}

/// Genuine documents (`../shared/fixtures/attestation`, when present) have
/// 48-byte PCRs only: the reason [`PcrValue`] is 48 bytes.
#[test]
fn genuine_documents_have_48_byte_pcrs() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/attestation"
    ));
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("note: {} is absent; skipping", dir.display());
        return;
    };
    let mut seen = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("cbor") {
            continue;
        }
        let doc = crate::attestation::UnverifiedAttestation::parse(&std::fs::read(&path).unwrap())
            .unwrap();
        assert_eq!(doc.document().digest, Digest::Sha384);
        for (i, v) in &doc.document().pcrs {
            assert_eq!(v.len(), PCR_LEN, "{} PCR{i}", path.display());
        }
        // What a request with it carries: both PCR0 keys, lower-case hex.
        let values =
            attested_condition_values(doc.document().pcrs.iter().map(|(i, v)| (*i, v.as_slice())));
        assert_eq!(values.len(), doc.document().pcrs.len() + 1);
        assert!(values.iter().all(|(_, v)| *v == v.to_lowercase()));
        seen += 1;
    }
    assert!(seen > 0);
}

//! Property: the proxy admits exactly the enclaves that the generated KMS
//! key policy admits.
//!
//! A seeded generator (no proptest: deterministic, many cases) makes image
//! descriptions and attestation documents. Each image is written twice, in
//! the text the operator gives each tool for the same image:
//!
//! - the proxy: `--allow-image pcr0=HEX,pcrN=HEX` (or, for one image, the
//!   `--pcr N=HEX` flags), through the proxy's parsers
//!   (`keybroker_proxy::measurements::parse_image_flag` / `parse_pcr_flag`,
//!   into `AllowedImage`);
//! - the key policy generator: the nitro-cli JSON (`policy --pcrs-json`),
//!   through `keybroker_proxy::key_policy`.
//!
//! Then (1) both accept the description or both refuse it, and (2) for
//! documents made by the harness's mock NSM (exact images, one byte off, a
//! value at the wrong index, extra PCRs, PCRs mixed from two images,
//! debug-mode all zeros, random), the proxy's `AdmissionPolicy::evaluate` forwards
//! a `GenerateDataKey` with that `Recipient` exactly when the mock KMS's
//! policy engine allows `kms:GenerateDataKey` under the generated policy.
//!
//! Before both used `keybroker_common::measurements`, the proxy parsed PCRs
//! with its own rules (32, 48 or 64 bytes; no PCR0 needed in the `--pcr`
//! form; `pcr01` read as PCR1) and admitted images the key policy denied:
//! the kinds `OtherLength`, `NoPcr0` and `NonCanonicalIndex` cover those.
//! The same cases also go through the shared parsers and
//! `ImageMeasurements::matches` directly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use keybroker_common::UnixMillis;
use keybroker_common::attestation::{VerifiedAttestation, Verifier};
use keybroker_common::kms::{DataKeySpec, GenerateDataKeyRequest, KmsRequest, RecipientInfo};
use keybroker_common::measurements::{self, ImageSpec};
use keybroker_enclave::{MockCa, MockNsm, MockNsmConfig, Nsm};
use keybroker_harness::mock_kms::policy::{Policy as KeyPolicy, RequestContext, evaluate};
use keybroker_proxy::admission::AdmissionPolicy as Admission;
use keybroker_proxy::key_policy::{EnclaveKeyPolicy, ImageMeasurements};
use keybroker_proxy::measurements::{AllowedImage, parse_image_flag, parse_pcr_flag};

const PARENT: &str = "arn:aws:iam::111122223333:role/keybroker-parent";
const ADMIN: &str = "arn:aws:iam::111122223333:role/KeyAdmins";
const ACCOUNT: &str = "111122223333";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// PCRs in a mock NSM document (as in genuine ones: 16 of 48 bytes).
const DOCUMENT_PCRS: u8 = 16;
const CASES: usize = 300;
const DOCUMENTS_PER_CASE: usize = 3;
const SEED: u64 = 0x6b65_7962_726f_6b65;

/// What kind of image description a case has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// 48-byte values, PCR0 and others, `pcrN`/`PCRN`, hex of any case.
    Valid,
    /// One value is all zeros (debug mode): refused by both.
    AllZero,
    /// An index 32, `pcrx`, or a value that is not hex: refused by both.
    Malformed,
    /// One value of 32 or 64 bytes (not zero). The proxy once accepted it.
    OtherLength,
    /// One image without PCR0, in the proxy's `--pcr N=HEX` form. The
    /// proxy once accepted it and admitted any PCR0.
    NoPcr0,
    /// An index spelled with a leading zero (`pcr01`). The proxy once
    /// read it as PCR1.
    NonCanonicalIndex,
}

/// splitmix64: small, seeded, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
    /// A non-zero 48-byte value.
    fn pcr(&mut self) -> [u8; 48] {
        let mut v = [0u8; 48];
        v.copy_from_slice(&self.bytes(48));
        v[0] |= 1;
        v
    }
    /// Hex of `bytes` with each digit in random case.
    fn hex(&mut self, bytes: &[u8]) -> String {
        hex::encode(bytes)
            .chars()
            .map(|c| {
                if self.chance(2) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }
}

/// One PCR of an image description: the index as the proxy writes it
/// (`pcr2`), as nitro-cli names it (`PCR2`), the number meant, the value.
#[derive(Clone, Debug)]
struct Entry {
    proxy_key: String,
    json_key: String,
    index: u8,
    hex: String,
    /// The bytes meant, when the value is 48 bytes of hex.
    value: Option<[u8; 48]>,
}

#[derive(Clone, Debug)]
struct Image {
    entries: Vec<Entry>,
}

impl Image {
    fn valid(rng: &mut Rng) -> Image {
        let mut indices = BTreeSet::from([0u8]);
        for _ in 0..rng.below(4) {
            let i = if rng.chance(8) {
                16 + rng.below(16)
            } else {
                1 + rng.below(15)
            };
            indices.insert(u8::try_from(i).unwrap());
        }
        let entries = indices
            .into_iter()
            .map(|i| {
                let v = rng.pcr();
                let prefix = if rng.chance(2) { "pcr" } else { "PCR" };
                Entry {
                    proxy_key: format!("{prefix}{i}"),
                    json_key: format!("PCR{i}"),
                    index: i,
                    hex: rng.hex(&v),
                    value: Some(v),
                }
            })
            .collect();
        Image { entries }
    }

    /// `kind` applied to one entry of a valid image.
    fn of_kind(rng: &mut Rng, kind: Kind) -> Image {
        let mut image = Image::valid(rng);
        let n = image.entries.len();
        let e = &mut image.entries[rng.below(n)];
        match kind {
            Kind::Valid => {}
            Kind::AllZero => {
                let len = [48, 32, 64][rng.below(3)];
                e.hex = "00".repeat(len);
                e.value = None;
            }
            Kind::Malformed => match rng.below(3) {
                0 => {
                    e.proxy_key = "pcr32".into();
                    e.json_key = "PCR32".into();
                }
                1 => {
                    e.proxy_key = "pcrx".into();
                    e.json_key = "PCRx".into();
                }
                _ => e.hex = format!("zz{}", &e.hex[2..]),
            },
            Kind::OtherLength => {
                let len = if rng.chance(2) { 32 } else { 64 };
                let mut v = rng.bytes(len);
                v[0] |= 1;
                e.hex = rng.hex(&v);
                e.value = None;
            }
            Kind::NoPcr0 => {
                image.entries.retain(|e| e.index != 0);
                if image.entries.is_empty() {
                    let v = rng.pcr();
                    image.entries.push(Entry {
                        proxy_key: "2".into(),
                        json_key: "PCR2".into(),
                        index: 2,
                        hex: rng.hex(&v),
                        value: Some(v),
                    });
                }
            }
            Kind::NonCanonicalIndex => {
                e.proxy_key = format!("pcr0{}", e.index);
                e.json_key = format!("PCR0{}", e.index);
            }
        }
        image
    }

    /// `--allow-image` text.
    fn allow_image_flag(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}={}", e.proxy_key, e.hex))
            .collect();
        parts.join(",")
    }

    /// The `--pcr INDEX=HEX` flags (index without the prefix).
    fn pcr_flags(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                let index = e
                    .proxy_key
                    .trim_start_matches("pcr")
                    .trim_start_matches("PCR");
                format!("{index}={}", e.hex)
            })
            .collect()
    }

    /// The nitro-cli JSON of the image.
    fn nitro_cli_json(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert("HashAlgorithm".into(), "Sha384 { ... }".into());
        for e in &self.entries {
            m.insert(e.json_key.clone(), e.hex.clone().into());
        }
        serde_json::json!({"Measurements": m}).to_string()
    }
}

/// The proxy: the allowed images from the operator's flags, or `None`
/// if it refuses them.
fn proxy_images(images: &[Image], pcr_form: bool) -> Option<Vec<AllowedImage>> {
    if pcr_form {
        // `serve --pcr N=HEX ...` (one image), as `cli.rs` builds it.
        let mut pcrs = BTreeMap::new();
        for flag in images[0].pcr_flags() {
            let (i, v) = parse_pcr_flag(&flag).ok()?;
            pcrs.insert(i, v);
        }
        return AllowedImage::new(pcrs).ok().map(|i| vec![i]);
    }
    images
        .iter()
        .map(|i| parse_image_flag(&i.allow_image_flag()).ok())
        .collect()
}

/// The same flags through the shared parsers of
/// `keybroker_common::measurements`: what the proxy does once it switches
/// (`ImageSpec::parse_flag` for `--allow-image`, `parse_pcr_assignment` and
/// `ImageMeasurements::from_pcrs` for `--pcr`).
fn shared_images(images: &[Image], pcr_form: bool) -> Option<Vec<measurements::ImageMeasurements>> {
    if pcr_form {
        let pcrs: Vec<_> = images[0]
            .pcr_flags()
            .iter()
            .map(|f| measurements::parse_pcr_assignment(f).ok())
            .collect::<Option<_>>()?;
        return measurements::ImageMeasurements::from_pcrs(pcrs)
            .ok()
            .map(|m| vec![m]);
    }
    images
        .iter()
        .map(|i| {
            ImageSpec::parse_flag(&i.allow_image_flag())
                .ok()
                .map(|s| s.measurements)
        })
        .collect()
}

/// The generated key policy (parsed by the mock KMS), or `None` if the
/// generator refuses the images.
fn key_policy(images: &[Image]) -> Option<KeyPolicy> {
    let measured: Vec<ImageMeasurements> = images
        .iter()
        .map(|i| ImageMeasurements::from_nitro_cli_json(&i.nitro_cli_json()).ok())
        .collect::<Option<_>>()?;
    let policy = EnclaveKeyPolicy::new(PARENT, measured)
        .ok()?
        .with_key_admin(ADMIN)
        .unwrap();
    Some(KeyPolicy::parse(&policy.document().to_json_pretty().unwrap()).unwrap())
}

/// A document's PCRs `0..16`: derived from the images with a near miss.
fn document_pcrs(rng: &mut Rng, images: &[Image]) -> BTreeMap<u8, [u8; 48]> {
    let mut pcrs = BTreeMap::new();
    for i in 0..DOCUMENT_PCRS {
        // Extra PCRs: unused ones are zero in genuine documents; sometimes
        // random.
        pcrs.insert(i, if rng.chance(3) { rng.pcr() } else { [0; 48] });
    }
    let pick = |rng: &mut Rng| &images[rng.below(images.len())];
    let put = |pcrs: &mut BTreeMap<u8, [u8; 48]>, image: &Image| {
        for e in &image.entries {
            if let (Some(v), true) = (e.value, e.index < DOCUMENT_PCRS) {
                pcrs.insert(e.index, v);
            }
        }
    };
    match rng.below(7) {
        // Exactly one image (plus the extra PCRs).
        0 | 1 => put(&mut pcrs, pick(rng)),
        // One byte off in one PCR.
        2 => {
            let image = pick(rng);
            put(&mut pcrs, image);
            let e = &image.entries[rng.below(image.entries.len())];
            if let Some(p) = pcrs.get_mut(&e.index) {
                p[rng.below(48)] ^= 1 << rng.below(8);
            }
        }
        // A value at the wrong index.
        3 => {
            let image = pick(rng);
            put(&mut pcrs, image);
            let e = &image.entries[rng.below(image.entries.len())];
            if let Some(v) = e.value {
                let shift = u8::try_from(1 + rng.below(15)).unwrap();
                let other = (e.index + shift) % DOCUMENT_PCRS;
                pcrs.insert(other, v);
                pcrs.insert(e.index % DOCUMENT_PCRS, rng.pcr());
            }
        }
        // Two images mixed: PCR0 of one, the rest of another.
        4 => {
            let (a, b) = (pick(rng), pick(rng));
            put(&mut pcrs, b);
            put(&mut pcrs, a);
            for e in &b.entries {
                let keep = e.index != 0 && e.index < DOCUMENT_PCRS && rng.chance(2);
                if let (Some(v), true) = (e.value, keep) {
                    pcrs.insert(e.index, v);
                }
            }
        }
        // Debug mode: all zeros.
        5 => pcrs.values_mut().for_each(|v| *v = [0; 48]),
        // Random.
        _ => {}
    }
    pcrs
}

fn now() -> UnixMillis {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UnixMillis(u64::try_from(d.as_millis()).unwrap())
}

/// A signed document from the mock NSM with exactly these PCRs `0..16`.
fn document(ca: &MockCa, pcrs: &BTreeMap<u8, [u8; 48]>) -> Vec<u8> {
    let config = pcrs.iter().fold(MockNsmConfig::default(), |c, (i, v)| {
        c.with_pcr(u16::from(*i), *v)
    });
    let nsm = MockNsm::new(ca, config).unwrap();
    nsm.attestation(Some(vec![0x30; 294]), None, None).unwrap()
}

/// Whether today's proxy forwards a GenerateDataKey with `doc`.
fn proxy_admits(admission: &Admission, doc: &[u8]) -> bool {
    let request = KmsRequest::GenerateDataKey(GenerateDataKeyRequest {
        key_id: Some(KEY_ARN.into()),
        key_spec: Some(DataKeySpec::Aes256),
        recipient: Some(RecipientInfo::new(doc.to_vec())),
        ..Default::default()
    });
    admission.evaluate(&request, 1024, now()).verdict.is_ok()
}

/// Whether KMS (the mock's policy engine) allows kms:GenerateDataKey with
/// `doc` under `policy`; `None` (no policy could be generated) allows
/// nothing.
fn kms_admits(policy: Option<&KeyPolicy>, verified: &VerifiedAttestation) -> bool {
    let Some(policy) = policy else { return false };
    let ctx = RequestContext::new("kms:GenerateDataKey", PARENT, ACCOUNT, KEY_ARN)
        .with_attestation(verified);
    evaluate(policy, &ctx).is_allowed()
}

#[derive(Default)]
struct Tally {
    cases: usize,
    admitted: usize,
}

#[test]
fn proxy_admission_equals_the_generated_key_policy() {
    let seed = std::env::var("KEYBROKER_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut rng = Rng(seed);
    let ca = MockCa::generate().unwrap();
    let verifier = Verifier::from_trusted_roots([ca.root_der()]).unwrap();
    let kinds = [
        Kind::Valid,
        Kind::Valid,
        Kind::Valid,
        Kind::AllZero,
        Kind::Malformed,
        Kind::OtherLength,
        Kind::NoPcr0,
        Kind::NonCanonicalIndex,
    ];
    let mut tally: BTreeMap<Kind, Tally> = BTreeMap::new();
    for case in 0..CASES {
        let kind = kinds[rng.below(kinds.len())];
        let count = if kind == Kind::NoPcr0 {
            1
        } else {
            1 + rng.below(3)
        };
        let odd = rng.below(count);
        let images: Vec<Image> = (0..count)
            .map(|i| {
                if i == odd {
                    Image::of_kind(&mut rng, kind)
                } else {
                    Image::valid(&mut rng)
                }
            })
            .collect();
        let pcr_form = kind == Kind::NoPcr0 || (count == 1 && rng.chance(2));
        let proxy = proxy_images(&images, pcr_form);
        let policy = key_policy(&images);
        let shared = shared_images(&images, pcr_form);
        let what = || format!("seed {seed:#x} case {case} ({kind:?}): {images:#?}");
        let t = tally.entry(kind).or_default();
        t.cases += 1;
        assert_eq!(
            proxy.is_some(),
            policy.is_some(),
            "the proxy accepts the description / the key policy generator does; {}",
            what()
        );
        if kind == Kind::Valid {
            assert!(policy.is_some(), "{}", what());
        }
        // With the shared types every kind agrees, already.
        assert_eq!(
            shared.is_some(),
            policy.is_some(),
            "shared types; {}",
            what()
        );
        if proxy.is_none() && shared.is_none() {
            continue;
        }
        // (A refused configuration admits nothing; an empty image list
        // would check no PCRs, so there is no admission to ask.)
        let admission = proxy.map(|allowed_images| Admission {
            allowed_images,
            verifier: verifier.clone(),
            ..Admission::default()
        });
        for _ in 0..DOCUMENTS_PER_CASE {
            let pcrs = document_pcrs(&mut rng, &images);
            let doc = document(&ca, &pcrs);
            let verified = verifier.verify(&doc, now()).unwrap();
            let by_proxy = admission.as_ref().is_some_and(|a| proxy_admits(a, &doc));
            let by_kms = kms_admits(policy.as_ref(), &verified);
            let by_shared = shared
                .iter()
                .flatten()
                .any(|image| image.matches(&verified));
            assert_eq!(by_shared, by_kms, "shared types; {}", what());
            assert_eq!(
                by_proxy,
                by_kms,
                "the proxy admits / KMS admits; document PCRs {:?}; {}",
                pcrs.iter()
                    .map(|(i, v)| (i, hex::encode(&v[..4])))
                    .collect::<Vec<_>>(),
                what()
            );
            t.admitted += usize::from(by_kms);
        }
    }
    for (kind, t) in &tally {
        eprintln!(
            "{kind:?}: {} cases, {} documents admitted",
            t.cases, t.admitted
        );
    }
    // The generator covers every kind, and the exact-image documents are
    // admitted (the property is not vacuous).
    for kind in kinds {
        assert!(tally.get(&kind).is_some_and(|t| t.cases > 0), "{kind:?}");
    }
    assert!(tally[&Kind::Valid].admitted > 0);
}

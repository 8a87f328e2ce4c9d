//! A test attestation PKI: a P-384 root, optionally an intermediate, and a
//! leaf whose key signs attestation documents
//! ([`keybroker_common::attestation::build_signed_document`]), like the
//! Nitro PKI without its short leaf lifetime (rcgen's default validity
//! covers "now").
//!
//! The product's mock NSM (`keybroker_enclave::MockCa`) is the enclave's
//! own development PKI behind a feature; this one is for tests of crates
//! that must not depend on the enclave (the proxy, the mock KMS).

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use keybroker_common::UnixMillis;
use keybroker_common::attestation::{AttestationDocument, Digest, build_signed_document};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};

/// The `module_id` of every test document.
pub const MODULE_ID: &str = "i-0123456789abcdef0-enc0123456789abcdef";

/// A leaf certificate and its signing key.
pub struct Leaf {
    /// The certificate (DER).
    pub der: Vec<u8>,
    /// Its key, which signs documents.
    pub key: EcdsaKeyPair,
}

/// Root, intermediate (optional) and leaf, P-384.
pub struct TestPki {
    /// The root certificate (DER): what a verifier trusts.
    pub root_der: Vec<u8>,
    /// The root certificate (PEM).
    pub root_pem: String,
    /// The intermediate certificate (DER); empty without one.
    pub inter_der: Vec<u8>,
    /// The leaf certificate (DER).
    pub leaf_der: Vec<u8>,
    /// The leaf's key.
    pub leaf_key: EcdsaKeyPair,
    /// The leaf's issuer (the intermediate, or the root without one), for
    /// further leaves.
    issuer: Issuer<'static, KeyPair>,
}

fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap()
}

fn signer(key: &KeyPair) -> EcdsaKeyPair {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key.serialize_der()).unwrap()
}

/// Named certificate parameters with the key usages of a CA or a leaf.
fn named(cn: &str, is_ca: IsCa) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Keybroker harness test");
    p.key_usages = if matches!(is_ca, IsCa::Ca(_)) {
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    p.is_ca = is_ca;
    p
}

/// Unnamed parameters (rcgen's defaults), a CA's or a leaf's.
fn unnamed(is_ca: bool) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    if is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p
}

#[allow(clippy::new_without_default)]
impl TestPki {
    /// Root -> intermediate -> leaf, with names and key usages, like the
    /// Nitro PKI.
    pub fn new() -> TestPki {
        let root_key = key();
        let root_params = named(
            "harness test root",
            IsCa::Ca(BasicConstraints::Unconstrained),
        );
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let inter_key = key();
        let inter_params = named(
            "harness test intermediate",
            IsCa::Ca(BasicConstraints::Constrained(0)),
        );
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
        let issuer = Issuer::new(inter_params, inter_key);
        let leaf_key = key();
        let leaf = named("harness test leaf", IsCa::ExplicitNoCa)
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        TestPki {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            inter_der: inter.der().to_vec(),
            leaf_der: leaf.der().to_vec(),
            leaf_key: signer(&leaf_key),
            issuer,
        }
    }

    /// Root -> leaf, unnamed (rcgen's default parameters): the smallest
    /// chain a verifier accepts.
    pub fn without_intermediate() -> TestPki {
        let root_key = key();
        let root_params = unnamed(true);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);
        let leaf_key = key();
        let leaf = unnamed(false).signed_by(&leaf_key, &issuer).unwrap();
        TestPki {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            inter_der: Vec::new(),
            leaf_der: leaf.der().to_vec(),
            leaf_key: signer(&leaf_key),
            issuer,
        }
    }

    /// The `cabundle` of a document: root first, then the intermediate.
    pub fn cabundle(&self) -> Vec<Vec<u8>> {
        let mut bundle = vec![self.root_der.clone()];
        if !self.inter_der.is_empty() {
            bundle.push(self.inter_der.clone());
        }
        bundle
    }

    /// Another leaf from the same issuer, named `CN=<common_name>`, valid
    /// from `not_before` to `not_after` (year, month, day).
    pub fn leaf(
        &self,
        common_name: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Leaf {
        let key = key();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().to_vec(),
            key: signer(&key),
        }
    }

    /// An unsigned document from this PKI's leaf: [`MODULE_ID`], SHA-384,
    /// the given PCRs, public key and time.
    pub fn payload(
        &self,
        pcrs: BTreeMap<u8, Vec<u8>>,
        public_key: Option<Vec<u8>>,
        timestamp: UnixMillis,
    ) -> AttestationDocument {
        AttestationDocument {
            module_id: MODULE_ID.into(),
            digest: Digest::Sha384,
            timestamp,
            pcrs,
            certificate: self.leaf_der.clone(),
            cabundle: self.cabundle(),
            public_key,
            user_data: None,
            nonce: None,
        }
    }

    /// `doc` signed with the leaf key (COSE_Sign1).
    pub fn sign(&self, doc: &AttestationDocument) -> Vec<u8> {
        sign_with(&self.leaf_key, doc)
    }

    /// A signed document carrying `public_key` ([`TestPki::payload`], then
    /// [`TestPki::sign`]).
    pub fn document(
        &self,
        pcrs: BTreeMap<u8, Vec<u8>>,
        public_key: Option<Vec<u8>>,
        timestamp: UnixMillis,
    ) -> Vec<u8> {
        self.sign(&self.payload(pcrs, public_key, timestamp))
    }
}

/// `doc` signed with `key` (COSE_Sign1).
pub fn sign_with(key: &EcdsaKeyPair, doc: &AttestationDocument) -> Vec<u8> {
    build_signed_document(doc, key, &SystemRandom::new()).unwrap()
}

/// 16 PCRs of 48 bytes: PCR `i` is `[i; 48]`, but PCR0 is `pcr0`.
pub fn pcrs(pcr0: [u8; 48]) -> BTreeMap<u8, Vec<u8>> {
    let mut m: BTreeMap<u8, Vec<u8>> = (0u8..16).map(|i| (i, vec![i; 48])).collect();
    m.insert(0, pcr0.to_vec());
    m
}

/// 16 PCRs of 48 bytes, each `[fill; 48]` but the `(index, byte)` pairs
/// of `set`.
pub fn pcrs_filled(fill: u8, set: &[(u8, u8)]) -> BTreeMap<u8, Vec<u8>> {
    (0u8..16)
        .map(|i| {
            let b = set.iter().find(|(j, _)| *j == i).map_or(fill, |(_, b)| *b);
            (i, vec![b; 48])
        })
        .collect()
}

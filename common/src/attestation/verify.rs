//! Verification: certificate chain to a pinned root, then the COSE signature.

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5912::{
    ECDSA_WITH_SHA_384, ID_CE_BASIC_CONSTRAINTS, ID_CE_KEY_USAGE, ID_EC_PUBLIC_KEY, SECP_384_R_1,
};
use der::asn1::BitStringRef;
use der::{Decode, Reader, SliceReader};
use spki::AlgorithmIdentifierRef;
use x509_cert::TbsCertificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::time::Time;

use super::AttestationError;
use super::parse::{AttestationDocument, UnverifiedAttestation};
use crate::UnixMillis;

/// SHA-256 of the DER of the AWS Nitro Enclaves Root-G1 certificate
/// (`CN=aws.nitro-enclaves`, valid 2019-10-28 to 2049-10-28), as published
/// by AWS in "Verifying the root of trust" (fingerprint
/// `64:1A:03:21:A3:E2:44:EF:E4:56:46:31:95:D6:06:31:7E:D7:CD:CC:3C:17:56:E0:98:93:F3:C6:8F:79:BB:5B`).
pub const AWS_NITRO_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1A, 0x03, 0x21, 0xA3, 0xE2, 0x44, 0xEF, 0xE4, 0x56, 0x46, 0x31, 0x95, 0xD6, 0x06, 0x31,
    0x7E, 0xD7, 0xCD, 0xCC, 0x3C, 0x17, 0x56, 0xE0, 0x98, 0x93, 0xF3, 0xC6, 0x8F, 0x79, 0xBB, 0x5B,
];

/// Verifies attestation documents against a set of pinned root certificates.
///
/// A root is trusted when the SHA-256 of `cabundle[0]`'s DER equals a pinned
/// fingerprint (the AWS Nitro Enclaves guide's "root of trust" check); the root's
/// own signature is then irrelevant. [`Verifier::aws_nitro`] pins only the
/// AWS Nitro Enclaves Root-G1; development roots (the mock NSM's CA) are added
/// explicitly with [`Verifier::add_trusted_root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    roots: Vec<[u8; 32]>,
}

impl Default for Verifier {
    /// Same as [`Verifier::aws_nitro`].
    fn default() -> Self {
        Self::aws_nitro()
    }
}

impl Verifier {
    /// A verifier that trusts only the AWS Nitro Enclaves Root-G1.
    pub fn aws_nitro() -> Self {
        Verifier {
            roots: vec![AWS_NITRO_ROOT_G1_SHA256],
        }
    }

    /// A verifier that trusts only the given roots (DER certificates), not
    /// the AWS root. For tests and development setups with a mock NSM.
    pub fn from_trusted_roots<'a>(
        roots: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, AttestationError> {
        let mut verifier = Verifier { roots: Vec::new() };
        for root in roots {
            verifier.add_trusted_root(root)?;
        }
        Ok(verifier)
    }

    /// Pins one more root certificate (DER). The certificate must parse as
    /// X.509; it is pinned by the SHA-256 of exactly these bytes.
    pub fn add_trusted_root(&mut self, der: &[u8]) -> Result<&mut Self, AttestationError> {
        ParsedCert::parse(der, "trusted root")?;
        let fingerprint = sha256(der);
        if !self.roots.contains(&fingerprint) {
            self.roots.push(fingerprint);
        }
        Ok(self)
    }

    /// The pinned SHA-256 fingerprints.
    pub fn trusted_root_fingerprints(&self) -> &[[u8; 32]] {
        &self.roots
    }

    /// Parses and verifies `bytes` at time `at`. See [`Verifier::verify_parsed`].
    pub fn verify(
        &self,
        bytes: &[u8],
        at: UnixMillis,
    ) -> Result<VerifiedAttestation, AttestationError> {
        self.verify_parsed(UnverifiedAttestation::parse(bytes)?, at)
    }

    /// Verifies a parsed document at time `at`:
    ///
    /// 1. `cabundle[0]` is a pinned root (SHA-256 of its DER);
    /// 2. every certificate (root, intermediates, leaf) is valid at `at`
    ///    (RFC 5280 section 4.1.2.5, bounds inclusive);
    /// 3. for each link issuer -> subject in `cabundle[0] -> ... ->
    ///    cabundle[n] -> certificate`: subject's issuer name equals the
    ///    issuer's subject name, the issuer is a CA (basicConstraints cA, and
    ///    keyCertSign when keyUsage is present), its pathLenConstraint allows
    ///    the intermediates below it, no unknown critical extension is
    ///    present, and the signature is ecdsa-with-SHA384 by the issuer's
    ///    P-384 key (RFC 5758 section 3.2);
    /// 4. the COSE_Sign1 signature is ES384 (raw `r || s`) over the
    ///    `Sig_structure` (RFC 9052 section 4.4) by the leaf's P-384 key.
    ///
    /// The leaf is not required to carry subject/authority key identifiers
    /// (genuine NSM leaf certificates have none).
    pub fn verify_parsed(
        &self,
        doc: UnverifiedAttestation,
        at: UnixMillis,
    ) -> Result<VerifiedAttestation, AttestationError> {
        let root_der = doc.document.cabundle.first().ok_or_else(|| {
            AttestationError::Malformed("payload field `cabundle` is empty".into())
        })?;
        let fingerprint = sha256(root_der);
        if !self.roots.contains(&fingerprint) {
            return Err(AttestationError::UntrustedRoot {
                sha256: hex::encode(fingerprint),
            });
        }

        // Chain in signing order: root first, leaf last.
        let mut chain = Vec::with_capacity(doc.document.cabundle.len() + 1);
        for (i, der) in doc.document.cabundle.iter().enumerate() {
            chain.push(ParsedCert::parse(der, &format!("cabundle[{i}]"))?);
        }
        chain.push(ParsedCert::parse(&doc.document.certificate, "certificate")?);

        // The chain's validity window: the latest notBefore and the
        // earliest notAfter (what bounds a cached verification).
        let mut chain_not_before = UnixMillis(0);
        let mut chain_not_after = UnixMillis(u64::MAX);
        for cert in &chain {
            let (not_before, not_after) = cert.check_time(at)?;
            chain_not_before = chain_not_before.max(not_before);
            chain_not_after = chain_not_after.min(not_after);
            cert.check_critical_extensions()?;
        }

        // Index of the leaf; every certificate before it is an issuer.
        let leaf_index = chain.len() - 1;
        for (i, pair) in chain.windows(2).enumerate() {
            let [issuer, subject] = pair else { continue };
            // Intermediate CAs that follow `issuer` (at i), the leaf excluded.
            let below = leaf_index.saturating_sub(i + 1);
            issuer.check_can_issue(below)?;
            if subject.tbs.issuer() != issuer.tbs.subject() {
                return Err(AttestationError::ChainBroken {
                    subject: subject.subject(),
                    issuer: subject.tbs.issuer().to_string(),
                    expected: issuer.subject(),
                });
            }
            subject.check_signed_by(issuer)?;
        }

        let leaf = chain
            .last()
            .ok_or_else(|| AttestationError::Malformed("empty chain".into()))?;
        let leaf_key = leaf.p384_key()?;
        let tbs = doc.sig_structure();
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, leaf_key)
            .verify(&tbs, &doc.signature)
            .map_err(|_| AttestationError::BadSignature)?;

        let chain_subjects = chain.iter().rev().map(ParsedCert::subject).collect();
        Ok(VerifiedAttestation {
            document: doc.document,
            chain_subjects,
            verified_at: at,
            chain_not_before,
            chain_not_after,
            root_sha256: fingerprint,
        })
    }

    /// Whether `cabundle[0]` with this SHA-256 fingerprint is pinned.
    pub fn trusts_root(&self, sha256: &[u8; 32]) -> bool {
        self.roots.contains(sha256)
    }
}

/// An attestation document whose certificate chain and COSE signature were
/// checked by a [`Verifier`]. Only the verifier constructs one (private
/// fields, no public constructor, no `Deserialize`), so code that releases a
/// key can demand it as proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAttestation {
    document: AttestationDocument,
    chain_subjects: Vec<String>,
    verified_at: UnixMillis,
    chain_not_before: UnixMillis,
    chain_not_after: UnixMillis,
    root_sha256: [u8; 32],
}

impl VerifiedAttestation {
    /// The verified payload.
    pub fn document(&self) -> &AttestationDocument {
        &self.document
    }

    /// The NSM module id.
    pub fn module_id(&self) -> &str {
        &self.document.module_id
    }

    /// The document's own creation time.
    pub fn timestamp(&self) -> UnixMillis {
        self.document.timestamp
    }

    /// All PCRs, by index.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.document.pcrs
    }

    /// One PCR, if present.
    pub fn pcr(&self, index: u8) -> Option<&[u8]> {
        self.document.pcrs.get(&index).map(Vec::as_slice)
    }

    /// The enclave-supplied public key, if any.
    pub fn public_key(&self) -> Option<&[u8]> {
        self.document.public_key.as_deref()
    }

    /// The enclave-supplied user data, if any.
    pub fn user_data(&self) -> Option<&[u8]> {
        self.document.user_data.as_deref()
    }

    /// The consumer-supplied nonce, if any.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.document.nonce.as_deref()
    }

    /// Subjects (RFC 4514 strings) of the verified chain, leaf first, root last.
    pub fn chain_subjects(&self) -> &[String] {
        &self.chain_subjects
    }

    /// The time the chain was checked against.
    pub fn verified_at(&self) -> UnixMillis {
        self.verified_at
    }

    /// The latest `notBefore` of the chain's certificates: before it, the
    /// same document would not verify.
    pub fn chain_not_before(&self) -> UnixMillis {
        self.chain_not_before
    }

    /// The earliest `notAfter` of the chain's certificates (for genuine
    /// documents the leaf's, about three hours after issue): after it, the
    /// same document no longer verifies.
    pub fn chain_not_after(&self) -> UnixMillis {
        self.chain_not_after
    }

    /// SHA-256 of `cabundle[0]`'s DER, the pinned root the chain ends in.
    pub fn root_sha256(&self) -> &[u8; 32] {
        &self.root_sha256
    }

    /// The verified payload, by value.
    pub fn into_document(self) -> AttestationDocument {
        self.document
    }
}

/// SHA-256 of `bytes`.
pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// One certificate: the decoded `TBSCertificate` plus the raw bytes needed
/// to check its signature without re-encoding.
struct ParsedCert<'a> {
    tbs_der: &'a [u8],
    tbs: TbsCertificate,
    sig_alg: ObjectIdentifier,
    sig_alg_has_params: bool,
    signature: &'a [u8],
}

impl<'a> ParsedCert<'a> {
    fn parse(der: &'a [u8], which: &str) -> Result<Self, AttestationError> {
        let bad = |detail: String| AttestationError::BadCertificate {
            which: which.to_owned(),
            detail,
        };
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
        // signatureValue } (RFC 5280 section 4.1).
        let mut reader = SliceReader::new(der).map_err(|e| bad(e.to_string()))?;
        let (tbs_der, sig_alg, signature) = reader
            .sequence(|r| {
                let tbs = r.tlv_bytes()?;
                let alg = AlgorithmIdentifierRef::decode(r)?;
                let sig = BitStringRef::decode(r)?;
                Ok::<_, der::Error>((tbs, alg, sig))
            })
            .map_err(|e| bad(e.to_string()))?;
        reader.finish().map_err(|e| bad(e.to_string()))?;
        let tbs = TbsCertificate::from_der(tbs_der).map_err(|e| bad(e.to_string()))?;
        let signature = signature
            .as_bytes()
            .ok_or_else(|| bad("signature BIT STRING has unused bits".into()))?;
        Ok(ParsedCert {
            tbs_der,
            tbs,
            sig_alg: sig_alg.oid,
            sig_alg_has_params: sig_alg.parameters.is_some(),
            signature,
        })
    }

    fn subject(&self) -> String {
        self.tbs.subject().to_string()
    }

    /// Checks that `at` is inside the validity period, and returns the
    /// period (`notBefore`, `notAfter`).
    fn check_time(&self, at: UnixMillis) -> Result<(UnixMillis, UnixMillis), AttestationError> {
        let validity = self.tbs.validity();
        let not_before = time_ms(validity.not_before);
        let not_after = time_ms(validity.not_after);
        if at < not_before {
            return Err(AttestationError::CertificateNotYetValid {
                subject: self.subject(),
                not_before,
                at,
            });
        }
        if at > not_after {
            return Err(AttestationError::CertificateExpired {
                subject: self.subject(),
                not_after,
                at,
            });
        }
        Ok((not_before, not_after))
    }

    fn check_critical_extensions(&self) -> Result<(), AttestationError> {
        for ext in self.tbs.extensions().map(Vec::as_slice).unwrap_or_default() {
            if ext.critical
                && ext.extn_id != ID_CE_BASIC_CONSTRAINTS
                && ext.extn_id != ID_CE_KEY_USAGE
            {
                return Err(AttestationError::UnsupportedCriticalExtension {
                    subject: self.subject(),
                    oid: ext.extn_id.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Checks that this certificate may issue a certificate with `below`
    /// intermediate CAs between it and the leaf (RFC 5280 sections 4.2.1.3,
    /// 4.2.1.9).
    fn check_can_issue(&self, below: usize) -> Result<(), AttestationError> {
        let not_ca = || AttestationError::NotCa {
            subject: self.subject(),
        };
        let bad = |detail: String| AttestationError::BadCertificate {
            which: self.subject(),
            detail,
        };
        let constraints = self
            .tbs
            .get_extension::<BasicConstraints>()
            .map_err(|e| bad(format!("basicConstraints: {e}")))?;
        let Some((_, constraints)) = constraints.filter(|(_, bc)| bc.ca) else {
            return Err(not_ca());
        };
        let usage = self
            .tbs
            .get_extension::<KeyUsage>()
            .map_err(|e| bad(format!("keyUsage: {e}")))?;
        if let Some((_, usage)) = usage
            && !usage.key_cert_sign()
        {
            return Err(not_ca());
        }
        if let Some(path_len) = constraints.path_len_constraint
            && below > usize::from(path_len)
        {
            return Err(AttestationError::PathLenExceeded {
                subject: self.subject(),
                path_len,
                found: below,
            });
        }
        Ok(())
    }

    /// The certificate's P-384 public key as an uncompressed point.
    fn p384_key(&self) -> Result<&[u8], AttestationError> {
        let spki = self.tbs.subject_public_key_info();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP_384_R_1) {
            return Err(AttestationError::UnsupportedAlgorithm(format!(
                "certificate `{}` key is {} (curve {}), expected an EC P-384 key",
                self.subject(),
                spki.algorithm.oid,
                curve.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            )));
        }
        spki.subject_public_key
            .as_bytes()
            .ok_or_else(|| AttestationError::BadCertificate {
                which: self.subject(),
                detail: "public key BIT STRING has unused bits".into(),
            })
    }

    /// Checks this certificate's signature with `issuer`'s key.
    fn check_signed_by(&self, issuer: &ParsedCert<'_>) -> Result<(), AttestationError> {
        // RFC 5758 section 3.2: ecdsa-with-SHA384 has absent parameters, and
        // RFC 5280 section 4.1.1.2 requires the outer algorithm to equal the
        // TBS `signature` field.
        let inner = self.tbs.signature();
        if self.sig_alg != ECDSA_WITH_SHA_384
            || self.sig_alg_has_params
            || inner.oid != ECDSA_WITH_SHA_384
            || inner.parameters.is_some()
        {
            return Err(AttestationError::UnsupportedAlgorithm(format!(
                "certificate `{}` is signed with {}, expected ecdsa-with-SHA384",
                self.subject(),
                self.sig_alg
            )));
        }
        let key = issuer.p384_key()?;
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, key)
            .verify(self.tbs_der, self.signature)
            .map_err(|_| AttestationError::BadCertificateSignature {
                subject: self.subject(),
            })
    }
}

fn time_ms(t: Time) -> UnixMillis {
    UnixMillis(u64::try_from(t.to_unix_duration().as_millis()).unwrap_or(u64::MAX))
}

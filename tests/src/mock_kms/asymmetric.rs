//! Asymmetric KMS keys of the mock: their key specs and the cryptography of
//! `GetPublicKey`, `DeriveSharedSecret` and RSA `Encrypt` / `Decrypt`.
//!
//! | `KeySpec` | `KeyUsage` | operations |
//! | --- | --- | --- |
//! | `ECC_NIST_P256`, `ECC_NIST_P384`, `ECC_NIST_P521`, `ECC_SECG_P256K1` | `KEY_AGREEMENT` | `GetPublicKey`, `DeriveSharedSecret` (`ECDH`) |
//! | `RSA_2048`, `RSA_3072`, `RSA_4096` | `ENCRYPT_DECRYPT` | `GetPublicKey`, `Encrypt`, `Decrypt` (`RSAES_OAEP_SHA_1`, `RSAES_OAEP_SHA_256`) |
//!
//! The private key is held as an unencrypted PKCS#8 v1 `PrivateKeyInfo`
//! (zeroized on drop, never in `Debug`); the public key as the DER
//! SubjectPublicKeyInfo `GetPublicKey` returns. ECDH on the NIST curves and
//! RSA-OAEP use aws-lc-rs; ECDH on secp256k1 (which aws-lc-rs does not
//! offer for agreement) uses the RustCrypto `k256` crate with the scalar
//! taken from the same PKCS#8 key.

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::{AsBigEndian as _, AsDer as _, EcPrivateKeyBin, Pkcs8V1Der};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use keybroker_common::kms::{EcdhCurve, EncryptionAlgorithm};
use zeroize::Zeroizing;

/// The RSA key sizes KMS offers (`KeySpec` `RSA_2048`, `RSA_3072`, `RSA_4096`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaSize {
    /// `RSA_2048`
    Rsa2048,
    /// `RSA_3072`
    Rsa3072,
    /// `RSA_4096`
    Rsa4096,
}

impl RsaSize {
    /// The modulus size in bits.
    pub const fn bits(self) -> usize {
        match self {
            Self::Rsa2048 => 2048,
            Self::Rsa3072 => 3072,
            Self::Rsa4096 => 4096,
        }
    }
}

/// The `KeySpec` of an asymmetric key the mock offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsymmetricSpec {
    /// An elliptic-curve key for `KEY_AGREEMENT`.
    Ecc(EcdhCurve),
    /// An RSA key for `ENCRYPT_DECRYPT`.
    Rsa(RsaSize),
}

/// `EncryptionAlgorithms` of an RSA `ENCRYPT_DECRYPT` key, as KMS lists them.
pub const RSA_ENCRYPTION_ALGORITHMS: [EncryptionAlgorithm; 2] = [
    EncryptionAlgorithm::RsaesOaepSha1,
    EncryptionAlgorithm::RsaesOaepSha256,
];

impl AsymmetricSpec {
    /// Every asymmetric `KeySpec` the mock offers.
    pub const ALL: [AsymmetricSpec; 7] = [
        Self::Ecc(EcdhCurve::NistP256),
        Self::Ecc(EcdhCurve::NistP384),
        Self::Ecc(EcdhCurve::NistP521),
        Self::Ecc(EcdhCurve::SecgP256k1),
        Self::Rsa(RsaSize::Rsa2048),
        Self::Rsa(RsaSize::Rsa3072),
        Self::Rsa(RsaSize::Rsa4096),
    ];

    /// The `KeySpec` spelling (`"ECC_NIST_P256"`, `"RSA_2048"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ecc(c) => c.as_str(),
            Self::Rsa(RsaSize::Rsa2048) => "RSA_2048",
            Self::Rsa(RsaSize::Rsa3072) => "RSA_3072",
            Self::Rsa(RsaSize::Rsa4096) => "RSA_4096",
        }
    }

    /// The spec named `s`, if the mock offers it.
    pub fn from_key_spec(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The one `KeyUsage` the mock offers for this spec: `KEY_AGREEMENT`
    /// for ECC, `ENCRYPT_DECRYPT` for RSA.
    pub const fn key_usage(self) -> &'static str {
        match self {
            Self::Ecc(_) => "KEY_AGREEMENT",
            Self::Rsa(_) => "ENCRYPT_DECRYPT",
        }
    }

    fn ecdsa_alg(curve: EcdhCurve) -> &'static EcdsaSigningAlgorithm {
        match curve {
            EcdhCurve::NistP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            EcdhCurve::NistP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            EcdhCurve::NistP521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
            EcdhCurve::SecgP256k1 => &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
        }
    }
}

/// Why `DeriveSharedSecret` could not use the caller's `PublicKey`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgreementError {
    /// The public key is not a DER SubjectPublicKeyInfo of an EC key on a
    /// curve KMS offers, or its point is not on the curve.
    #[error("{0}")]
    Malformed(String),
    /// The public key is on another curve than the KMS key.
    #[error("the public key is on {found}, the KMS key on {expected}")]
    WrongCurve {
        /// The KMS key's curve.
        expected: &'static str,
        /// The public key's curve.
        found: &'static str,
    },
    /// Not a key-agreement key, or a backend failure.
    #[error("{0}")]
    Internal(&'static str),
}

/// An asymmetric KMS key pair: the private key (PKCS#8, secret) and the
/// public key (DER SubjectPublicKeyInfo).
pub struct AsymmetricKey {
    spec: AsymmetricSpec,
    private_pkcs8: Zeroizing<Vec<u8>>,
    public_spki: Vec<u8>,
}

impl std::fmt::Debug for AsymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsymmetricKey")
            .field("spec", &self.spec)
            .field("private_pkcs8", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl Clone for AsymmetricKey {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec,
            private_pkcs8: Zeroizing::new(self.private_pkcs8.to_vec()),
            public_spki: self.public_spki.clone(),
        }
    }
}

impl AsymmetricKey {
    /// Generates a new key pair of `spec` (`CreateKey`).
    pub fn generate(spec: AsymmetricSpec) -> Result<Self, String> {
        let private = match spec {
            AsymmetricSpec::Ecc(curve) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let doc = EcdsaKeyPair::generate_pkcs8(AsymmetricSpec::ecdsa_alg(curve), &rng)
                    .map_err(|_| format!("{} key generation failed", spec.as_str()))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            AsymmetricSpec::Rsa(size) => {
                let ks = match size {
                    RsaSize::Rsa2048 => KeySize::Rsa2048,
                    RsaSize::Rsa3072 => KeySize::Rsa3072,
                    RsaSize::Rsa4096 => KeySize::Rsa4096,
                };
                let key = PrivateDecryptingKey::generate(ks)
                    .map_err(|_| format!("{} key generation failed", spec.as_str()))?;
                let der: Pkcs8V1Der<'_> = key
                    .as_der()
                    .map_err(|_| format!("{} key export failed", spec.as_str()))?;
                Zeroizing::new(der.as_ref().to_vec())
            }
        };
        Self::from_pkcs8(spec, &private)
    }

    /// A key pair from its PKCS#8 private key (state and seed files),
    /// checked to be of `spec`.
    pub fn from_pkcs8(spec: AsymmetricSpec, pkcs8: &[u8]) -> Result<Self, String> {
        let bad = || format!("the private key is not a PKCS#8 {} key", spec.as_str());
        let public_spki = match spec {
            AsymmetricSpec::Ecc(curve) => {
                let kp = EcdsaKeyPair::from_pkcs8(AsymmetricSpec::ecdsa_alg(curve), pkcs8)
                    .map_err(|_| bad())?;
                kp.public_key()
                    .as_der()
                    .map_err(|_| bad())?
                    .as_ref()
                    .to_vec()
            }
            AsymmetricSpec::Rsa(size) => {
                let key = PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| bad())?;
                if key.key_size_bits() != size.bits() {
                    return Err(format!(
                        "the private key is RSA-{}, not {}",
                        key.key_size_bits(),
                        spec.as_str()
                    ));
                }
                key.public_key()
                    .as_der()
                    .map_err(|_| bad())?
                    .as_ref()
                    .to_vec()
            }
        };
        Ok(Self {
            spec,
            private_pkcs8: Zeroizing::new(pkcs8.to_vec()),
            public_spki,
        })
    }

    /// The key spec.
    pub fn spec(&self) -> AsymmetricSpec {
        self.spec
    }

    /// The public key as `GetPublicKey` returns it (DER SubjectPublicKeyInfo).
    pub fn public_key_spki(&self) -> &[u8] {
        &self.public_spki
    }

    /// The private key (PKCS#8 v1 DER). Secret: for persistence only.
    pub fn private_pkcs8(&self) -> &[u8] {
        &self.private_pkcs8
    }

    /// `DeriveSharedSecret` with `ECDH`: the raw shared secret (the
    /// x-coordinate of the shared point, as long as a field element) of this
    /// key and `peer_spki`, a DER SubjectPublicKeyInfo on the same curve.
    pub fn derive_shared_secret(
        &self,
        peer_spki: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AgreementError> {
        let AsymmetricSpec::Ecc(curve) = self.spec else {
            return Err(AgreementError::Internal("not a key-agreement key"));
        };
        let found =
            EcdhCurve::of_spki(peer_spki).map_err(|e| AgreementError::Malformed(e.to_string()))?;
        if found != curve {
            return Err(AgreementError::WrongCurve {
                expected: curve.as_str(),
                found: found.as_str(),
            });
        }
        let off_curve =
            || AgreementError::Malformed("PublicKey: the point is not on the curve".to_owned());
        let alg = match curve {
            EcdhCurve::NistP256 => &agreement::ECDH_P256,
            EcdhCurve::NistP384 => &agreement::ECDH_P384,
            EcdhCurve::NistP521 => &agreement::ECDH_P521,
            EcdhCurve::SecgP256k1 => return self.derive_secp256k1(peer_spki),
        };
        let private = agreement::PrivateKey::from_private_key_der(alg, &self.private_pkcs8)
            .map_err(|_| AgreementError::Internal("stored private key does not parse"))?;
        let secret = agreement::agree(
            &private,
            agreement::UnparsedPublicKey::new(alg, peer_spki),
            off_curve(),
            |s| Ok(Zeroizing::new(s.to_vec())),
        )?;
        if secret.len() != curve.shared_secret_len() {
            return Err(AgreementError::Internal("unexpected shared secret length"));
        }
        Ok(secret)
    }

    fn derive_secp256k1(&self, peer_spki: &[u8]) -> Result<Zeroizing<Vec<u8>>, AgreementError> {
        use der::Decode as _;
        let spki = spki::SubjectPublicKeyInfoRef::from_der(peer_spki).map_err(|_| {
            AgreementError::Malformed("PublicKey: not a DER SubjectPublicKeyInfo".to_owned())
        })?;
        let point = spki.subject_public_key.as_bytes().ok_or_else(|| {
            AgreementError::Malformed("PublicKey: the key bits are not whole bytes".to_owned())
        })?;
        let peer = k256::PublicKey::from_sec1_bytes(point).map_err(|_| {
            AgreementError::Malformed("PublicKey: the point is not on the curve".to_owned())
        })?;
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
            &self.private_pkcs8,
        )
        .map_err(|_| AgreementError::Internal("stored private key does not parse"))?;
        let scalar: EcPrivateKeyBin<'_> = kp
            .private_key()
            .as_be_bytes()
            .map_err(|_| AgreementError::Internal("private key export failed"))?;
        let secret = k256::SecretKey::from_slice(scalar.as_ref())
            .map_err(|_| AgreementError::Internal("stored private key is not a scalar"))?;
        let shared = k256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
        Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
    }

    /// The largest plaintext `Encrypt` takes under this RSA key with `alg`
    /// (RFC 8017 section 7.1.1: k - 2 hLen - 2 bytes; KMS documents 214 and
    /// 190 bytes for RSA_2048, 342 and 318 for RSA_3072, 470 and 446 for
    /// RSA_4096, for SHA-1 and SHA-256). `None` for an ECC key or a
    /// non-RSA algorithm.
    pub fn max_plaintext_len(&self, alg: EncryptionAlgorithm) -> Option<usize> {
        let AsymmetricSpec::Rsa(size) = self.spec else {
            return None;
        };
        let h = match alg {
            EncryptionAlgorithm::RsaesOaepSha1 => 20,
            EncryptionAlgorithm::RsaesOaepSha256 => 32,
            _ => return None,
        };
        Some(size.bits() / 8 - 2 * h - 2)
    }

    fn oaep(alg: EncryptionAlgorithm) -> Option<&'static OaepAlgorithm> {
        match alg {
            EncryptionAlgorithm::RsaesOaepSha1 => Some(&OAEP_SHA1_MGF1SHA1),
            EncryptionAlgorithm::RsaesOaepSha256 => Some(&OAEP_SHA256_MGF1SHA256),
            _ => None,
        }
    }

    /// `Encrypt` under an RSA key: RSAES-OAEP of `plaintext` (which the
    /// caller has checked against [`Self::max_plaintext_len`]), no label.
    pub fn rsa_encrypt(
        &self,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, &'static str> {
        let oaep = Self::oaep(alg).ok_or("not an RSA-OAEP algorithm")?;
        let public = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&self.public_spki)
            .map_err(|_| "stored public key does not parse")?;
        let key = OaepPublicEncryptingKey::new(public).map_err(|_| "not an RSA key")?;
        let mut out = vec![0u8; key.ciphertext_size()];
        let n = key
            .encrypt(oaep, plaintext, &mut out, None)
            .map_err(|_| "RSA-OAEP encryption failed")?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// `Decrypt` under an RSA key: the RSAES-OAEP plaintext, or `None` when
    /// the ciphertext does not decrypt with `alg` (KMS answers
    /// `InvalidCiphertextException`).
    pub fn rsa_decrypt(
        &self,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, &'static str> {
        let oaep = Self::oaep(alg).ok_or("not an RSA-OAEP algorithm")?;
        let private = PrivateDecryptingKey::from_pkcs8(&self.private_pkcs8)
            .map_err(|_| "stored private key does not parse")?;
        let key = OaepPrivateDecryptingKey::new(private).map_err(|_| "not an RSA key")?;
        if ciphertext.len() != key.key_size_bytes() {
            return Ok(None);
        }
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let n = match key.decrypt(oaep, ciphertext, &mut out, None) {
            Ok(pt) => pt.len(),
            Err(_) => return Ok(None),
        };
        out.truncate(n);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_their_names_and_usages() {
        for s in AsymmetricSpec::ALL {
            assert_eq!(AsymmetricSpec::from_key_spec(s.as_str()), Some(s));
        }
        assert_eq!(AsymmetricSpec::from_key_spec("SYMMETRIC_DEFAULT"), None);
        assert_eq!(
            AsymmetricSpec::Ecc(EcdhCurve::NistP256).key_usage(),
            "KEY_AGREEMENT"
        );
        assert_eq!(
            AsymmetricSpec::Rsa(RsaSize::Rsa2048).key_usage(),
            "ENCRYPT_DECRYPT"
        );
    }

    #[test]
    fn ecdh_agrees_between_two_keys_of_each_curve_and_refuses_other_curves() {
        for curve in EcdhCurve::ALL {
            let a = AsymmetricKey::generate(AsymmetricSpec::Ecc(curve)).unwrap();
            let b = AsymmetricKey::generate(AsymmetricSpec::Ecc(curve)).unwrap();
            let ab = a.derive_shared_secret(b.public_key_spki()).unwrap();
            let ba = b.derive_shared_secret(a.public_key_spki()).unwrap();
            assert_eq!(ab.as_slice(), ba.as_slice(), "{curve:?}");
            assert_eq!(ab.len(), curve.shared_secret_len());
            assert_eq!(
                EcdhCurve::of_spki(a.public_key_spki()).unwrap(),
                curve,
                "GetPublicKey's SPKI names the curve"
            );
            // Round trip through the stored form.
            let back =
                AsymmetricKey::from_pkcs8(AsymmetricSpec::Ecc(curve), a.private_pkcs8()).unwrap();
            assert_eq!(back.public_key_spki(), a.public_key_spki());
        }
        let p256 = AsymmetricKey::generate(AsymmetricSpec::Ecc(EcdhCurve::NistP256)).unwrap();
        let p384 = AsymmetricKey::generate(AsymmetricSpec::Ecc(EcdhCurve::NistP384)).unwrap();
        assert!(matches!(
            p256.derive_shared_secret(p384.public_key_spki()),
            Err(AgreementError::WrongCurve { .. })
        ));
        assert!(matches!(
            p256.derive_shared_secret(b"\x30\x03\x02\x01\x00"),
            Err(AgreementError::Malformed(_))
        ));
        // A point off the curve: flip the last coordinate byte.
        let mut bad = p256.public_key_spki().to_vec();
        if let Some(last) = bad.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            p256.derive_shared_secret(&bad),
            Err(AgreementError::Malformed(_))
        ));
    }

    #[test]
    fn rsa_oaep_round_trips_with_both_hashes_and_refuses_the_other_hash() {
        let k = AsymmetricKey::generate(AsymmetricSpec::Rsa(RsaSize::Rsa2048)).unwrap();
        assert_eq!(
            k.max_plaintext_len(EncryptionAlgorithm::RsaesOaepSha1),
            Some(214)
        );
        assert_eq!(
            k.max_plaintext_len(EncryptionAlgorithm::RsaesOaepSha256),
            Some(190)
        );
        for alg in RSA_ENCRYPTION_ALGORITHMS {
            let max = k.max_plaintext_len(alg).unwrap();
            let ct = k.rsa_encrypt(alg, &vec![7u8; max]).unwrap();
            assert_eq!(ct.len(), 256);
            assert_eq!(
                k.rsa_decrypt(alg, &ct).unwrap().unwrap().as_slice(),
                vec![7u8; max]
            );
        }
        let ct = k
            .rsa_encrypt(EncryptionAlgorithm::RsaesOaepSha1, b"x")
            .unwrap();
        assert!(
            k.rsa_decrypt(EncryptionAlgorithm::RsaesOaepSha256, &ct)
                .unwrap()
                .is_none()
        );
        assert!(
            AsymmetricKey::from_pkcs8(AsymmetricSpec::Rsa(RsaSize::Rsa3072), k.private_pkcs8())
                .is_err()
        );
    }
}

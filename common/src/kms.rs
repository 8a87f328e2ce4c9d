//! Typed KMS requests and responses, in the shapes of the AWS KMS API
//! (AWS JSON 1.1, `X-Amz-Target: TrentService.<Operation>`).
//!
//! Field names and JSON spellings follow the KMS API reference: serialized
//! with `serde_json` these types are exactly the request and response bodies
//! KMS sends and accepts (blobs as base64 strings, absent optionals omitted).
//! Serialized with a binary format (CBOR on the enclave <-> proxy wire), blobs
//! are byte strings. Unknown response fields are ignored, as SDKs do.
//!
//! Plaintext fields (`Plaintext`, `PrivateKeyPlaintext`) are
//! [`SecretBytes`]: zeroized on drop and redacted in `Debug`.

use std::collections::BTreeMap;

use core::fmt;
use serde::{Deserialize, Serialize};

use crate::secret::SecretBytes;

/// KMS `EncryptionContext`: a string map matched exactly (case-sensitive) on
/// decrypt; order is irrelevant, so it is kept sorted.
pub type EncryptionContext = BTreeMap<String, String>;

/// A binary blob (`CiphertextBlob`, `PublicKey`, `AttestationDocument`, ...):
/// base64 in JSON, a byte string in CBOR. Not secret.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(v)
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        blob_serde::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        blob_serde::deserialize(d).map(Blob)
    }
}

/// Blob encoding: base64 for human-readable formats (JSON), bytes otherwise.
pub(crate) mod blob_serde {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use core::fmt;
    use serde::de::Visitor;

    pub(crate) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(b))
        } else {
            s.serialize_bytes(b)
        }
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string or a byte string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD
                    .decode(v)
                    .map_err(|_| E::custom("blob is not valid base64"))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        // `deserialize_byte_buf`, not `deserialize_bytes`: ciborium serves
        // borrowed bytes only from a 4 KiB scratch buffer and rejects longer
        // byte strings (attestation documents are ~4.5 KiB).
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_byte_buf(V)
        }
    }
}

/// KMS `KeySpec` for `GenerateDataKey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataKeySpec {
    /// 256-bit symmetric key.
    #[serde(rename = "AES_256")]
    Aes256,
    /// 128-bit symmetric key.
    #[serde(rename = "AES_128")]
    Aes128,
}

impl DataKeySpec {
    /// Key length in bytes.
    pub const fn byte_len(self) -> usize {
        match self {
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Aes128 => 16,
        }
    }
}

/// KMS `KeyPairSpec` for `GenerateDataKeyPair[WithoutPlaintext]`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DataKeyPairSpec {
    #[serde(rename = "RSA_2048")]
    Rsa2048,
    #[serde(rename = "RSA_3072")]
    Rsa3072,
    #[serde(rename = "RSA_4096")]
    Rsa4096,
    #[serde(rename = "ECC_NIST_P256")]
    EccNistP256,
    #[serde(rename = "ECC_NIST_P384")]
    EccNistP384,
    #[serde(rename = "ECC_NIST_P521")]
    EccNistP521,
    #[serde(rename = "ECC_SECG_P256K1")]
    EccSecgP256k1,
    #[serde(rename = "SM2")]
    Sm2,
    #[serde(rename = "ECC_NIST_EDWARDS25519")]
    EccNistEdwards25519,
}

impl DataKeyPairSpec {
    /// Every spec, in the order of the KMS API reference.
    pub const ALL: [DataKeyPairSpec; 9] = [
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::EccNistP256,
        Self::EccNistP384,
        Self::EccNistP521,
        Self::EccSecgP256k1,
        Self::Sm2,
        Self::EccNistEdwards25519,
    ];

    /// The KMS spelling, e.g. `"RSA_2048"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "RSA_2048",
            Self::Rsa3072 => "RSA_3072",
            Self::Rsa4096 => "RSA_4096",
            Self::EccNistP256 => "ECC_NIST_P256",
            Self::EccNistP384 => "ECC_NIST_P384",
            Self::EccNistP521 => "ECC_NIST_P521",
            Self::EccSecgP256k1 => "ECC_SECG_P256K1",
            Self::Sm2 => "SM2",
            Self::EccNistEdwards25519 => "ECC_NIST_EDWARDS25519",
        }
    }
}

/// KMS `KeyEncryptionAlgorithm` of a `Recipient`. KMS supports exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyEncryptionAlgorithm {
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    #[serde(rename = "RSAES_OAEP_SHA_256")]
    RsaesOaepSha256,
}

/// KMS `EncryptionAlgorithm` (`Encrypt`, `Decrypt`, `ReEncrypt`).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncryptionAlgorithm {
    #[serde(rename = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
    #[serde(rename = "RSAES_OAEP_SHA_1")]
    RsaesOaepSha1,
    #[serde(rename = "RSAES_OAEP_SHA_256")]
    RsaesOaepSha256,
    #[serde(rename = "SM2PKE")]
    Sm2Pke,
}

/// KMS `KeyAgreementAlgorithm` (`DeriveSharedSecret`). KMS supports exactly
/// one: ECDH, whose result is the raw shared secret (the x-coordinate of the
/// shared point, NIST SP 800-56A rev. 3 section 5.7.1.2), with no KDF applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAgreementAlgorithm {
    /// Elliptic-curve Diffie-Hellman.
    #[serde(rename = "ECDH")]
    Ecdh,
}

/// KMS `DryRunModifiers` of `Decrypt`: `IGNORE_CIPHERTEXT` makes a dry run
/// check permissions without validating the ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DryRunModifier {
    /// Skip ciphertext validation in a dry run.
    #[serde(rename = "IGNORE_CIPHERTEXT")]
    IgnoreCiphertext,
}

/// KMS `KeySpec` of a key-agreement key: the elliptic curve of
/// `DeriveSharedSecret`'s `PublicKey` must be the KMS key's.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EcdhCurve {
    #[serde(rename = "ECC_NIST_P256")]
    NistP256,
    #[serde(rename = "ECC_NIST_P384")]
    NistP384,
    #[serde(rename = "ECC_NIST_P521")]
    NistP521,
    #[serde(rename = "ECC_SECG_P256K1")]
    SecgP256k1,
}

impl EcdhCurve {
    /// Every curve KMS offers for `KEY_AGREEMENT`.
    pub const ALL: [EcdhCurve; 4] = [
        Self::NistP256,
        Self::NistP384,
        Self::NistP521,
        Self::SecgP256k1,
    ];

    /// The KMS `KeySpec` spelling, e.g. `"ECC_NIST_P256"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NistP256 => "ECC_NIST_P256",
            Self::NistP384 => "ECC_NIST_P384",
            Self::NistP521 => "ECC_NIST_P521",
            Self::SecgP256k1 => "ECC_SECG_P256K1",
        }
    }

    /// The named-curve OID of an `id-ecPublicKey` SubjectPublicKeyInfo
    /// (RFC 5480 section 2.1.1.1; secp256k1 from SEC 2).
    pub const fn oid(self) -> const_oid::ObjectIdentifier {
        use const_oid::ObjectIdentifier as Oid;
        match self {
            Self::NistP256 => Oid::new_unwrap("1.2.840.10045.3.1.7"),
            Self::NistP384 => Oid::new_unwrap("1.3.132.0.34"),
            Self::NistP521 => Oid::new_unwrap("1.3.132.0.35"),
            Self::SecgP256k1 => Oid::new_unwrap("1.3.132.0.10"),
        }
    }

    /// The length of an ECDH shared secret on this curve: the size of a
    /// field element (SEC 1 section 3.3.1).
    pub const fn shared_secret_len(self) -> usize {
        match self {
            Self::NistP256 | Self::SecgP256k1 => 32,
            Self::NistP384 => 48,
            Self::NistP521 => 66,
        }
    }

    /// The curve of a DER SubjectPublicKeyInfo (`id-ecPublicKey` with a
    /// named curve, RFC 5480 section 2), as `DeriveSharedSecret` takes it.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if it is longer than KMS's bound
    /// ([`PUBLIC_KEY_MAX`]), does not parse, is not an EC key or names another curve.
    pub fn of_spki(der: &[u8]) -> Result<Self, crate::Error> {
        use der::Decode;
        const ID_EC_PUBLIC_KEY: const_oid::ObjectIdentifier =
            const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        let bad = |why: &str| crate::Error::InvalidArgument(format!("PublicKey: {why}"));
        if der.len() > PUBLIC_KEY_MAX {
            return Err(bad("longer than 8192 bytes"));
        }
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|_| bad("not a DER SubjectPublicKeyInfo"))?;
        if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
            return Err(bad("not an elliptic-curve key"));
        }
        let curve = spki
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok())
            .ok_or_else(|| bad("no named curve"))?;
        Self::ALL
            .into_iter()
            .find(|c| c.oid() == curve)
            .ok_or_else(|| bad("a curve KMS does not offer for key agreement"))
    }
}

/// The largest `PublicKey` KMS accepts in `DeriveSharedSecret` (bytes).
pub const PUBLIC_KEY_MAX: usize = 8192;

/// KMS `RecipientInfo`: the attestation document whose public key KMS
/// encrypts the response to (`CiphertextForRecipient`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecipientInfo {
    /// Must be `RSAES_OAEP_SHA_256`.
    pub key_encryption_algorithm: KeyEncryptionAlgorithm,
    /// The signed NSM attestation document (1..=262144 bytes).
    pub attestation_document: Blob,
}

impl RecipientInfo {
    /// A recipient for `document` with the one algorithm KMS supports.
    pub fn new(document: Vec<u8>) -> Self {
        Self {
            key_encryption_algorithm: KeyEncryptionAlgorithm::RsaesOaepSha256,
            attestation_document: Blob(document),
        }
    }
}

macro_rules! kms_shape {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "PascalCase")]
        pub struct $name {
            $($(#[$fm])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $f: $t,)*
        }
    };
}

kms_shape! {
    /// KMS `GenerateDataKey` request.
    pub struct GenerateDataKeyRequest {
        /// Key id, key ARN, alias name or alias ARN (1..=2048 chars). Required.
        pub key_id: Option<String>,
        /// Exactly one of `KeySpec` and `NumberOfBytes`.
        pub key_spec: Option<DataKeySpec>,
        /// 1..=1024.
        pub number_of_bytes: Option<u32>,
        /// Bound to the ciphertext; must match exactly on decrypt.
        pub encryption_context: Option<EncryptionContext>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// With it, `Plaintext` is absent and `CiphertextForRecipient` returned.
        pub recipient: Option<RecipientInfo>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKey` response.
    pub struct GenerateDataKeyResponse {
        /// The key ARN.
        pub key_id: Option<String>,
        /// The data key encrypted under the KMS key.
        pub ciphertext_blob: Option<Blob>,
        /// Absent when the request had a `Recipient`.
        pub plaintext: Option<SecretBytes>,
        /// CMS EnvelopedData to the recipient's public key.
        pub ciphertext_for_recipient: Option<Blob>,
        /// Identifies the key material (newer KMS responses).
        pub key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKeyWithoutPlaintext` request (no `Recipient`).
    pub struct GenerateDataKeyWithoutPlaintextRequest {
        /// Key id, key ARN, alias name or alias ARN. Required.
        pub key_id: Option<String>,
        /// Exactly one of `KeySpec` and `NumberOfBytes`.
        pub key_spec: Option<DataKeySpec>,
        /// 1..=1024.
        pub number_of_bytes: Option<u32>,
        /// Bound to the ciphertext.
        pub encryption_context: Option<EncryptionContext>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKeyWithoutPlaintext` response.
    pub struct GenerateDataKeyWithoutPlaintextResponse {
        /// The key ARN.
        pub key_id: Option<String>,
        /// The data key encrypted under the KMS key.
        pub ciphertext_blob: Option<Blob>,
        /// Identifies the key material.
        pub key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `Decrypt` request.
    pub struct DecryptRequest {
        /// Ciphertext from `Encrypt`/`GenerateDataKey*` (1..=6144 bytes). Required.
        pub ciphertext_blob: Option<Blob>,
        /// Must equal the context used at encryption.
        pub encryption_context: Option<EncryptionContext>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// Optional for symmetric keys; when given it must be the key that encrypted.
        pub key_id: Option<String>,
        /// Defaults to `SYMMETRIC_DEFAULT`.
        pub encryption_algorithm: Option<EncryptionAlgorithm>,
        /// With it, `Plaintext` is absent and `CiphertextForRecipient` returned.
        pub recipient: Option<RecipientInfo>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
        /// With `DryRun`: `IGNORE_CIPHERTEXT` skips ciphertext validation.
        pub dry_run_modifiers: Option<Vec<DryRunModifier>>,
    }
}

kms_shape! {
    /// KMS `Decrypt` response.
    pub struct DecryptResponse {
        /// The key ARN.
        pub key_id: Option<String>,
        /// Absent when the request had a `Recipient`.
        pub plaintext: Option<SecretBytes>,
        /// The algorithm used.
        pub encryption_algorithm: Option<EncryptionAlgorithm>,
        /// CMS EnvelopedData to the recipient's public key.
        pub ciphertext_for_recipient: Option<Blob>,
        /// Identifies the key material.
        pub key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKeyPair` request.
    pub struct GenerateDataKeyPairRequest {
        /// Bound to the private key ciphertext.
        pub encryption_context: Option<EncryptionContext>,
        /// Symmetric KMS key that encrypts the private key. Required.
        pub key_id: Option<String>,
        /// Required.
        pub key_pair_spec: Option<DataKeyPairSpec>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// With it, `PrivateKeyPlaintext` is absent and `CiphertextForRecipient` returned.
        pub recipient: Option<RecipientInfo>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKeyPair` response.
    pub struct GenerateDataKeyPairResponse {
        /// The private key (PKCS#8 DER) encrypted under the KMS key.
        pub private_key_ciphertext_blob: Option<Blob>,
        /// PKCS#8 DER private key; absent when the request had a `Recipient`.
        pub private_key_plaintext: Option<SecretBytes>,
        /// DER SubjectPublicKeyInfo.
        pub public_key: Option<Blob>,
        /// The key ARN.
        pub key_id: Option<String>,
        /// The spec generated.
        pub key_pair_spec: Option<DataKeyPairSpec>,
        /// CMS EnvelopedData of the private key to the recipient's public key.
        pub ciphertext_for_recipient: Option<Blob>,
        /// Identifies the key material.
        pub key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKeyPairWithoutPlaintext` request (no `Recipient`).
    pub struct GenerateDataKeyPairWithoutPlaintextRequest {
        /// Bound to the private key ciphertext.
        pub encryption_context: Option<EncryptionContext>,
        /// Symmetric KMS key. Required.
        pub key_id: Option<String>,
        /// Required.
        pub key_pair_spec: Option<DataKeyPairSpec>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
    }
}

kms_shape! {
    /// KMS `GenerateDataKeyPairWithoutPlaintext` response.
    pub struct GenerateDataKeyPairWithoutPlaintextResponse {
        /// The private key (PKCS#8 DER) encrypted under the KMS key.
        pub private_key_ciphertext_blob: Option<Blob>,
        /// DER SubjectPublicKeyInfo.
        pub public_key: Option<Blob>,
        /// The key ARN.
        pub key_id: Option<String>,
        /// The spec generated.
        pub key_pair_spec: Option<DataKeyPairSpec>,
        /// Identifies the key material.
        pub key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `GenerateRandom` request (no `DryRun`).
    pub struct GenerateRandomRequest {
        /// 1..=1024.
        pub number_of_bytes: Option<u32>,
        /// Generate in a CloudHSM key store.
        pub custom_key_store_id: Option<String>,
        /// With it, `Plaintext` is absent and `CiphertextForRecipient` returned.
        pub recipient: Option<RecipientInfo>,
    }
}

kms_shape! {
    /// KMS `GenerateRandom` response.
    pub struct GenerateRandomResponse {
        /// The random bytes; absent when the request had a `Recipient`.
        pub plaintext: Option<SecretBytes>,
        /// CMS EnvelopedData of the random bytes to the recipient.
        pub ciphertext_for_recipient: Option<Blob>,
    }
}

kms_shape! {
    /// KMS `DeriveSharedSecret` request: ECDH between the KMS key-agreement
    /// key `KeyId` and the caller's `PublicKey`.
    pub struct DeriveSharedSecretRequest {
        /// A `KEY_AGREEMENT` key: id, ARN, alias name or alias ARN. Required.
        pub key_id: Option<String>,
        /// Must be `ECDH`. Required.
        pub key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
        /// The other party's DER SubjectPublicKeyInfo, on the KMS key's curve.
        /// Required.
        pub public_key: Option<Blob>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
        /// With it, `SharedSecret` is absent and `CiphertextForRecipient` returned.
        pub recipient: Option<RecipientInfo>,
    }
}

kms_shape! {
    /// KMS `DeriveSharedSecret` response.
    pub struct DeriveSharedSecretResponse {
        /// The key ARN.
        pub key_id: Option<String>,
        /// The raw ECDH shared secret; absent when the request had a `Recipient`.
        pub shared_secret: Option<SecretBytes>,
        /// CMS EnvelopedData of the shared secret to the recipient.
        pub ciphertext_for_recipient: Option<Blob>,
        /// The algorithm used (`ECDH`).
        pub key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
        /// `AWS_KMS` or `EXTERNAL`: where the key material came from.
        pub key_origin: Option<String>,
    }
}

impl DeriveSharedSecretRequest {
    /// The length of the shared secret this request asks for, from the curve
    /// of its `PublicKey` (KMS refuses a key on another curve than the KMS
    /// key's). A client checks it before sending, so that the answer's length
    /// can be enforced.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for a missing or unusable
    /// `PublicKey`, or a `KeyAgreementAlgorithm` other than `ECDH`.
    pub fn shared_secret_len(&self) -> Result<usize, crate::Error> {
        if self.key_agreement_algorithm != Some(KeyAgreementAlgorithm::Ecdh) {
            return Err(crate::Error::InvalidArgument(
                "DeriveSharedSecret needs KeyAgreementAlgorithm ECDH".into(),
            ));
        }
        let key = self.public_key.as_ref().ok_or_else(|| {
            crate::Error::InvalidArgument("DeriveSharedSecret needs PublicKey".into())
        })?;
        Ok(EcdhCurve::of_spki(&key.0)?.shared_secret_len())
    }
}

kms_shape! {
    /// KMS `GetPublicKey` request (served by the mock KMS).
    pub struct GetPublicKeyRequest {
        /// An asymmetric key: id, ARN, alias name or alias ARN. Required.
        pub key_id: Option<String>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
    }
}

kms_shape! {
    /// KMS `GetPublicKey` response.
    pub struct GetPublicKeyResponse {
        /// The key ARN.
        pub key_id: Option<String>,
        /// DER SubjectPublicKeyInfo.
        pub public_key: Option<Blob>,
        /// Deprecated twin of `KeySpec`, still sent by KMS.
        pub customer_master_key_spec: Option<String>,
        /// `RSA_2048`, `ECC_NIST_P256`, ...
        pub key_spec: Option<String>,
        /// `ENCRYPT_DECRYPT`, `KEY_AGREEMENT`, `SIGN_VERIFY`.
        pub key_usage: Option<String>,
        /// For `ENCRYPT_DECRYPT` keys.
        pub encryption_algorithms: Option<Vec<EncryptionAlgorithm>>,
        /// For `SIGN_VERIFY` keys.
        pub signing_algorithms: Option<Vec<String>>,
        /// For `KEY_AGREEMENT` keys.
        pub key_agreement_algorithms: Option<Vec<KeyAgreementAlgorithm>>,
    }
}

/// The `NumberOfBytes` range of `GenerateDataKey` and `GenerateRandom`
/// (KMS API reference: 1..=1024).
pub const NUMBER_OF_BYTES: core::ops::RangeInclusive<u32> = 1..=1024;

fn number_of_bytes(n: u32) -> Result<usize, crate::Error> {
    if !NUMBER_OF_BYTES.contains(&n) {
        return Err(crate::Error::InvalidArgument(format!(
            "NumberOfBytes {n} is outside {}..={}",
            NUMBER_OF_BYTES.start(),
            NUMBER_OF_BYTES.end()
        )));
    }
    usize::try_from(n).map_err(|_| crate::Error::InvalidArgument("NumberOfBytes overflow".into()))
}

impl GenerateDataKeyRequest {
    /// The length of the data key this request asks for: that of its
    /// `KeySpec` or its `NumberOfBytes` (1..=1024), of exactly one of them,
    /// as KMS requires. A client checks it before sending, so that the
    /// answer's length can be enforced.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for neither, both, or a
    /// `NumberOfBytes` out of range.
    pub fn data_key_len(&self) -> Result<usize, crate::Error> {
        match (self.key_spec, self.number_of_bytes) {
            (Some(spec), None) => Ok(spec.byte_len()),
            (None, Some(n)) => number_of_bytes(n),
            (None, None) => Err(crate::Error::InvalidArgument(
                "GenerateDataKey needs KeySpec or NumberOfBytes".into(),
            )),
            (Some(_), Some(_)) => Err(crate::Error::InvalidArgument(
                "GenerateDataKey takes KeySpec or NumberOfBytes, not both".into(),
            )),
        }
    }
}

impl GenerateRandomRequest {
    /// The number of random bytes this request asks for (`NumberOfBytes`,
    /// 1..=1024).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] when it is absent or out of range.
    pub fn random_len(&self) -> Result<usize, crate::Error> {
        match self.number_of_bytes {
            Some(n) => number_of_bytes(n),
            None => Err(crate::Error::InvalidArgument(
                "GenerateRandom needs NumberOfBytes".into(),
            )),
        }
    }
}

kms_shape! {
    /// KMS `Encrypt` request (served by the mock KMS; never by the broker,
    /// since it would send plaintext through the parent).
    pub struct EncryptRequest {
        /// Required.
        pub key_id: Option<String>,
        /// 1..=4096 bytes. Required.
        pub plaintext: Option<SecretBytes>,
        /// Bound to the ciphertext.
        pub encryption_context: Option<EncryptionContext>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// Defaults to `SYMMETRIC_DEFAULT`.
        pub encryption_algorithm: Option<EncryptionAlgorithm>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
    }
}

kms_shape! {
    /// KMS `Encrypt` response.
    pub struct EncryptResponse {
        /// The ciphertext.
        pub ciphertext_blob: Option<Blob>,
        /// The key ARN.
        pub key_id: Option<String>,
        /// The algorithm used.
        pub encryption_algorithm: Option<EncryptionAlgorithm>,
        /// Identifies the key material.
        pub key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `ReEncrypt` request.
    pub struct ReEncryptRequest {
        /// Required.
        pub ciphertext_blob: Option<Blob>,
        /// Context of the source ciphertext.
        pub source_encryption_context: Option<EncryptionContext>,
        /// Optional source key.
        pub source_key_id: Option<String>,
        /// Required.
        pub destination_key_id: Option<String>,
        /// Context for the new ciphertext.
        pub destination_encryption_context: Option<EncryptionContext>,
        /// Source algorithm.
        pub source_encryption_algorithm: Option<EncryptionAlgorithm>,
        /// Destination algorithm.
        pub destination_encryption_algorithm: Option<EncryptionAlgorithm>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
        /// Check permissions only.
        pub dry_run: Option<bool>,
    }
}

kms_shape! {
    /// KMS `ReEncrypt` response.
    pub struct ReEncryptResponse {
        /// The new ciphertext.
        pub ciphertext_blob: Option<Blob>,
        /// ARN of the source key.
        pub source_key_id: Option<String>,
        /// ARN of the destination key.
        pub key_id: Option<String>,
        /// Source algorithm.
        pub source_encryption_algorithm: Option<EncryptionAlgorithm>,
        /// Destination algorithm.
        pub destination_encryption_algorithm: Option<EncryptionAlgorithm>,
        /// Source key material id.
        pub source_key_material_id: Option<String>,
        /// Destination key material id.
        pub destination_key_material_id: Option<String>,
    }
}

kms_shape! {
    /// KMS `DescribeKey` request.
    pub struct DescribeKeyRequest {
        /// Key id, key ARN, alias name or alias ARN. Required.
        pub key_id: Option<String>,
        /// 0..=10 grant tokens.
        pub grant_tokens: Option<Vec<String>>,
    }
}

kms_shape! {
    /// KMS `DescribeKey` response.
    pub struct DescribeKeyResponse {
        /// The key's metadata.
        pub key_metadata: Option<KeyMetadata>,
    }
}

/// KMS `KeyMetadata` (the fields Keybroker uses; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    /// 12-digit account id.
    #[serde(
        rename = "AWSAccountId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_account_id: Option<String>,
    /// The key id (UUID).
    pub key_id: String,
    /// The key ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Seconds since the epoch (KMS sends a JSON number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<f64>,
    /// Whether the key is enabled.
    #[serde(default)]
    pub enabled: bool,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ENCRYPT_DECRYPT`, `SIGN_VERIFY`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<String>,
    /// `Enabled`, `Disabled`, `PendingDeletion`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_state: Option<String>,
    /// When a key pending deletion is deleted (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    /// `AWS_KMS`, `EXTERNAL`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `CUSTOMER` or `AWS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_manager: Option<String>,
    /// `SYMMETRIC_DEFAULT`, `RSA_2048`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    /// Deprecated twin of `KeySpec`, still sent by KMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_master_key_spec: Option<String>,
    /// Algorithms the key supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<Vec<EncryptionAlgorithm>>,
    /// For `SIGN_VERIFY` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<Vec<String>>,
    /// For `KEY_AGREEMENT` keys: `["ECDH"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<Vec<KeyAgreementAlgorithm>>,
    /// Whether the key is multi-Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<bool>,
}

/// The KMS operations the broker carries between enclave and parent. Names
/// are the `X-Amz-Target` suffixes (`TrentService.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// `GenerateDataKey`
    GenerateDataKey,
    /// `GenerateDataKeyWithoutPlaintext`
    GenerateDataKeyWithoutPlaintext,
    /// `Decrypt`
    Decrypt,
    /// `GenerateDataKeyPair`
    GenerateDataKeyPair,
    /// `GenerateDataKeyPairWithoutPlaintext`
    GenerateDataKeyPairWithoutPlaintext,
    /// `GenerateRandom`
    GenerateRandom,
    /// `DescribeKey`
    DescribeKey,
    /// `DeriveSharedSecret`
    DeriveSharedSecret,
}

impl Operation {
    /// Every brokered operation.
    pub const ALL: [Operation; 8] = [
        Self::GenerateDataKey,
        Self::GenerateDataKeyWithoutPlaintext,
        Self::Decrypt,
        Self::GenerateDataKeyPair,
        Self::GenerateDataKeyPairWithoutPlaintext,
        Self::GenerateRandom,
        Self::DescribeKey,
        Self::DeriveSharedSecret,
    ];

    /// The KMS operation name, e.g. `"GenerateDataKey"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::GenerateDataKey => "GenerateDataKey",
            Self::GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Self::Decrypt => "Decrypt",
            Self::GenerateDataKeyPair => "GenerateDataKeyPair",
            Self::GenerateDataKeyPairWithoutPlaintext => "GenerateDataKeyPairWithoutPlaintext",
            Self::GenerateRandom => "GenerateRandom",
            Self::DescribeKey => "DescribeKey",
            Self::DeriveSharedSecret => "DeriveSharedSecret",
        }
    }

    /// Parses a KMS operation name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Whether KMS returns plaintext key material for this operation unless
    /// the request carries a `Recipient` (the five operations that accept
    /// one; `DeriveSharedSecret`'s shared secret is key material).
    pub const fn returns_plaintext(self) -> bool {
        matches!(
            self,
            Self::GenerateDataKey
                | Self::Decrypt
                | Self::GenerateDataKeyPair
                | Self::GenerateRandom
                | Self::DeriveSharedSecret
        )
    }
}

/// A brokered KMS request.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KmsRequest {
    GenerateDataKey(GenerateDataKeyRequest),
    GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextRequest),
    Decrypt(DecryptRequest),
    GenerateDataKeyPair(GenerateDataKeyPairRequest),
    GenerateDataKeyPairWithoutPlaintext(GenerateDataKeyPairWithoutPlaintextRequest),
    GenerateRandom(GenerateRandomRequest),
    DescribeKey(DescribeKeyRequest),
    DeriveSharedSecret(DeriveSharedSecretRequest),
}

impl KmsRequest {
    /// Parses the AWS JSON 1.1 body of a call to `op` (the body of
    /// `X-Amz-Target: TrentService.<op>`), as KMS reads it.
    ///
    /// # Errors
    /// The `serde_json` error for malformed JSON or a field of the wrong
    /// type (KMS answers those with `SerializationException`).
    pub fn from_json(op: Operation, body: &[u8]) -> Result<Self, serde_json::Error> {
        use serde_json::from_slice;
        Ok(match op {
            Operation::GenerateDataKey => Self::GenerateDataKey(from_slice(body)?),
            Operation::GenerateDataKeyWithoutPlaintext => {
                Self::GenerateDataKeyWithoutPlaintext(from_slice(body)?)
            }
            Operation::Decrypt => Self::Decrypt(from_slice(body)?),
            Operation::GenerateDataKeyPair => Self::GenerateDataKeyPair(from_slice(body)?),
            Operation::GenerateDataKeyPairWithoutPlaintext => {
                Self::GenerateDataKeyPairWithoutPlaintext(from_slice(body)?)
            }
            Operation::GenerateRandom => Self::GenerateRandom(from_slice(body)?),
            Operation::DescribeKey => Self::DescribeKey(from_slice(body)?),
            Operation::DeriveSharedSecret => Self::DeriveSharedSecret(from_slice(body)?),
        })
    }

    /// The AWS JSON 1.1 body of this request, as KMS reads it (the inverse
    /// of [`KmsRequest::from_json`]).
    ///
    /// # Errors
    /// The `serde_json` error (these types always serialize).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        use serde_json::to_vec;
        match self {
            Self::GenerateDataKey(r) => to_vec(r),
            Self::GenerateDataKeyWithoutPlaintext(r) => to_vec(r),
            Self::Decrypt(r) => to_vec(r),
            Self::GenerateDataKeyPair(r) => to_vec(r),
            Self::GenerateDataKeyPairWithoutPlaintext(r) => to_vec(r),
            Self::GenerateRandom(r) => to_vec(r),
            Self::DescribeKey(r) => to_vec(r),
            Self::DeriveSharedSecret(r) => to_vec(r),
        }
    }

    /// The operation this request is for.
    pub fn operation(&self) -> Operation {
        match self {
            Self::GenerateDataKey(_) => Operation::GenerateDataKey,
            Self::GenerateDataKeyWithoutPlaintext(_) => Operation::GenerateDataKeyWithoutPlaintext,
            Self::Decrypt(_) => Operation::Decrypt,
            Self::GenerateDataKeyPair(_) => Operation::GenerateDataKeyPair,
            Self::GenerateDataKeyPairWithoutPlaintext(_) => {
                Operation::GenerateDataKeyPairWithoutPlaintext
            }
            Self::GenerateRandom(_) => Operation::GenerateRandom,
            Self::DescribeKey(_) => Operation::DescribeKey,
            Self::DeriveSharedSecret(_) => Operation::DeriveSharedSecret,
        }
    }

    /// The `Recipient` of the request, for the operations that accept one.
    pub fn recipient(&self) -> Option<&RecipientInfo> {
        match self {
            Self::GenerateDataKey(r) => r.recipient.as_ref(),
            Self::Decrypt(r) => r.recipient.as_ref(),
            Self::GenerateDataKeyPair(r) => r.recipient.as_ref(),
            Self::GenerateRandom(r) => r.recipient.as_ref(),
            Self::DeriveSharedSecret(r) => r.recipient.as_ref(),
            Self::GenerateDataKeyWithoutPlaintext(_)
            | Self::GenerateDataKeyPairWithoutPlaintext(_)
            | Self::DescribeKey(_) => None,
        }
    }

    /// The `KeyId` field of the request, for the operations that have one
    /// (`None` for `GenerateRandom`), to rewrite it (key pinning).
    pub fn key_id_mut(&mut self) -> Option<&mut Option<String>> {
        match self {
            Self::GenerateDataKey(r) => Some(&mut r.key_id),
            Self::GenerateDataKeyWithoutPlaintext(r) => Some(&mut r.key_id),
            Self::Decrypt(r) => Some(&mut r.key_id),
            Self::GenerateDataKeyPair(r) => Some(&mut r.key_id),
            Self::GenerateDataKeyPairWithoutPlaintext(r) => Some(&mut r.key_id),
            Self::GenerateRandom(_) => None,
            Self::DescribeKey(r) => Some(&mut r.key_id),
            Self::DeriveSharedSecret(r) => Some(&mut r.key_id),
        }
    }

    /// The key named by the request, if any (`KeyId`).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::GenerateDataKey(r) => r.key_id.as_deref(),
            Self::GenerateDataKeyWithoutPlaintext(r) => r.key_id.as_deref(),
            Self::Decrypt(r) => r.key_id.as_deref(),
            Self::GenerateDataKeyPair(r) => r.key_id.as_deref(),
            Self::GenerateDataKeyPairWithoutPlaintext(r) => r.key_id.as_deref(),
            Self::GenerateRandom(_) => None,
            Self::DescribeKey(r) => r.key_id.as_deref(),
            Self::DeriveSharedSecret(r) => r.key_id.as_deref(),
        }
    }
}

/// A brokered KMS response.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KmsResponse {
    GenerateDataKey(GenerateDataKeyResponse),
    GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextResponse),
    Decrypt(DecryptResponse),
    GenerateDataKeyPair(GenerateDataKeyPairResponse),
    GenerateDataKeyPairWithoutPlaintext(GenerateDataKeyPairWithoutPlaintextResponse),
    GenerateRandom(GenerateRandomResponse),
    DescribeKey(DescribeKeyResponse),
    DeriveSharedSecret(DeriveSharedSecretResponse),
}

impl KmsResponse {
    /// Parses the AWS JSON 1.1 body of a successful KMS answer to `op`, as
    /// the AWS SDKs read it (unknown fields ignored).
    ///
    /// # Errors
    /// The `serde_json` error for malformed JSON or a field of the wrong type.
    pub fn from_json(op: Operation, body: &[u8]) -> Result<Self, serde_json::Error> {
        use serde_json::from_slice;
        Ok(match op {
            Operation::GenerateDataKey => Self::GenerateDataKey(from_slice(body)?),
            Operation::GenerateDataKeyWithoutPlaintext => {
                Self::GenerateDataKeyWithoutPlaintext(from_slice(body)?)
            }
            Operation::Decrypt => Self::Decrypt(from_slice(body)?),
            Operation::GenerateDataKeyPair => Self::GenerateDataKeyPair(from_slice(body)?),
            Operation::GenerateDataKeyPairWithoutPlaintext => {
                Self::GenerateDataKeyPairWithoutPlaintext(from_slice(body)?)
            }
            Operation::GenerateRandom => Self::GenerateRandom(from_slice(body)?),
            Operation::DescribeKey => Self::DescribeKey(from_slice(body)?),
            Operation::DeriveSharedSecret => Self::DeriveSharedSecret(from_slice(body)?),
        })
    }

    /// The AWS JSON 1.1 body of this response, as KMS sends it (the inverse
    /// of [`KmsResponse::from_json`]), in a zeroizing buffer allocated at its
    /// final size, since it may carry plaintext
    /// ([`crate::secret::to_json_zeroizing`]).
    ///
    /// # Errors
    /// The `serde_json` error (these types always serialize).
    pub fn to_json(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, serde_json::Error> {
        use crate::secret::to_json_zeroizing as z;
        match self {
            Self::GenerateDataKey(r) => z(r, false),
            Self::GenerateDataKeyWithoutPlaintext(r) => z(r, false),
            Self::Decrypt(r) => z(r, false),
            Self::GenerateDataKeyPair(r) => z(r, false),
            Self::GenerateDataKeyPairWithoutPlaintext(r) => z(r, false),
            Self::GenerateRandom(r) => z(r, false),
            Self::DescribeKey(r) => z(r, false),
            Self::DeriveSharedSecret(r) => z(r, false),
        }
    }

    /// The `KeyId` the response names (`KeyMetadata.Arn` for `DescribeKey`;
    /// `None` for `GenerateRandom`, which names no key).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::GenerateDataKey(r) => r.key_id.as_deref(),
            Self::GenerateDataKeyWithoutPlaintext(r) => r.key_id.as_deref(),
            Self::Decrypt(r) => r.key_id.as_deref(),
            Self::GenerateDataKeyPair(r) => r.key_id.as_deref(),
            Self::GenerateDataKeyPairWithoutPlaintext(r) => r.key_id.as_deref(),
            Self::GenerateRandom(_) => None,
            Self::DescribeKey(r) => r.key_metadata.as_ref().and_then(|m| m.arn.as_deref()),
            Self::DeriveSharedSecret(r) => r.key_id.as_deref(),
        }
    }

    /// The operation this response answers.
    pub fn operation(&self) -> Operation {
        match self {
            Self::GenerateDataKey(_) => Operation::GenerateDataKey,
            Self::GenerateDataKeyWithoutPlaintext(_) => Operation::GenerateDataKeyWithoutPlaintext,
            Self::Decrypt(_) => Operation::Decrypt,
            Self::GenerateDataKeyPair(_) => Operation::GenerateDataKeyPair,
            Self::GenerateDataKeyPairWithoutPlaintext(_) => {
                Operation::GenerateDataKeyPairWithoutPlaintext
            }
            Self::GenerateRandom(_) => Operation::GenerateRandom,
            Self::DescribeKey(_) => Operation::DescribeKey,
            Self::DeriveSharedSecret(_) => Operation::DeriveSharedSecret,
        }
    }

    /// Whether the response carries a plaintext field (`Plaintext` or
    /// `PrivateKeyPlaintext`). The proxy refuses to relay such responses.
    pub fn has_plaintext(&self) -> bool {
        match self {
            Self::GenerateDataKey(r) => r.plaintext.is_some(),
            Self::Decrypt(r) => r.plaintext.is_some(),
            Self::GenerateDataKeyPair(r) => r.private_key_plaintext.is_some(),
            Self::GenerateRandom(r) => r.plaintext.is_some(),
            Self::DeriveSharedSecret(r) => r.shared_secret.is_some(),
            Self::GenerateDataKeyWithoutPlaintext(_)
            | Self::GenerateDataKeyPairWithoutPlaintext(_)
            | Self::DescribeKey(_) => false,
        }
    }
}

/// A KMS error (`{"__type": ..., "message": ...}` in AWS JSON 1.1), as KMS
/// sent it or as the proxy produced it on KMS's behalf. Never carries key
/// material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KmsError {
    /// The `__type`, without any namespace prefix, e.g. `NotFoundException`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// HTTP status KMS answers with for this error.
    pub status: u16,
    /// Whether the AWS SDKs would retry this error (5xx and throttling).
    pub retryable: bool,
}

impl KmsError {
    /// An error with the status and retry behaviour real KMS gives `code`
    /// (DESIGN.md: 400 for client errors; 500 `KMSInternalException`,
    /// `KeyUnavailableException`; 503 `DependencyTimeoutException`;
    /// throttling retryable).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let (status, retryable) = match code.as_str() {
            "KMSInternalException" | "KeyUnavailableException" => (500, true),
            "DependencyTimeoutException" => (503, true),
            "ThrottlingException" | "LimitExceededException" => {
                (400, code == "ThrottlingException")
            }
            _ => (400, false),
        };
        Self {
            code,
            message: message.into(),
            status,
            retryable,
        }
    }

    /// Strips a `namespace#` prefix from a `__type` such as
    /// `com.amazonaws.kms#NotFoundException`, as the AWS SDKs do.
    pub fn normalize_code(raw: &str) -> &str {
        let tail = raw.rsplit_once('#').map_or(raw, |(_, t)| t);
        tail.split_once(':').map_or(tail, |(h, _)| h)
    }
}

/// The AWS JSON 1.1 framing of the KMS API, shared by every KMS-speaking
/// HTTP server in Keybroker (the in-enclave endpoint, the mock KMS).
///
/// A call is `POST /` with `X-Amz-Target: TrentService.<Operation>` and
/// `Content-Type: application/x-amz-json-1.1`; an error is a JSON object
/// `{"__type": <code>, "message": <text>}` with the error's HTTP status
/// (KMS API reference, "Common Errors"; AWS JSON 1.1 protocol).
pub mod aws_json {
    use super::KmsError;

    /// `Content-Type` of requests and responses.
    pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

    /// Prefix of the `X-Amz-Target` header value (KMS's service name).
    pub const TARGET_PREFIX: &str = "TrentService.";

    /// Response header carrying the request id.
    pub const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

    /// The `n`th request id of a server, in the UUID shape KMS uses.
    pub fn request_id(n: u64) -> String {
        format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
    }

    /// The operation name of an `X-Amz-Target` value, or the
    /// `UnknownOperationException` AWS JSON services answer for a missing or
    /// foreign target.
    ///
    /// # Errors
    /// `UnknownOperationException` (400).
    pub fn operation_name(target: Option<&str>) -> Result<&str, KmsError> {
        let target = target.ok_or_else(|| {
            KmsError::new("UnknownOperationException", "Missing X-Amz-Target header")
        })?;
        target
            .strip_prefix(TARGET_PREFIX)
            .filter(|op| !op.is_empty())
            .ok_or_else(|| {
                KmsError::new(
                    "UnknownOperationException",
                    format!("Unknown operation {target}"),
                )
            })
    }

    /// The body of an error response: `{"__type": ..., "message": ...}`
    /// (`message` omitted when empty, as KMS does for some errors).
    pub fn error_body(e: &KmsError) -> String {
        let body = if e.message.is_empty() {
            serde_json::json!({ "__type": e.code })
        } else {
            serde_json::json!({ "__type": e.code, "message": e.message })
        };
        body.to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn targets_and_error_bodies() {
            assert_eq!(
                operation_name(Some("TrentService.GenerateDataKey")),
                Ok("GenerateDataKey")
            );
            for bad in [
                None,
                Some("TrentService."),
                Some("DynamoDB_20120810.GetItem"),
            ] {
                assert_eq!(
                    operation_name(bad).map_err(|e| e.code),
                    Err("UnknownOperationException".to_owned())
                );
            }
            let e = KmsError::new("NotFoundException", "Alias x is not found.");
            let v: serde_json::Value = serde_json::from_str(&error_body(&e)).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"__type": "NotFoundException", "message": "Alias x is not found."})
            );
            assert_eq!(request_id(255), "00000000-0000-4000-8000-0000000000ff");
            let bare: serde_json::Value =
                serde_json::from_str(&error_body(&KmsError::new("X", ""))).unwrap();
            assert_eq!(bare, serde_json::json!({"__type": "X"}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_parse_by_operation() {
        let r = KmsRequest::from_json(
            Operation::GenerateDataKey,
            br#"{"KeyId":"alias/a","KeySpec":"AES_256"}"#,
        )
        .unwrap();
        assert_eq!(r.operation(), Operation::GenerateDataKey);
        assert_eq!(r.key_id(), Some("alias/a"));
        let r = KmsRequest::from_json(Operation::GenerateRandom, br#"{"NumberOfBytes":8}"#);
        let r = r.unwrap();
        assert_eq!(r.operation(), Operation::GenerateRandom);
        assert_eq!(r.to_json().unwrap(), br#"{"NumberOfBytes":8}"#);
        // Malformed JSON or a field of the wrong type is an error.
        assert!(KmsRequest::from_json(Operation::GenerateDataKey, br#"{"KeyId": 7}"#).is_err());
        assert!(KmsRequest::from_json(Operation::GenerateDataKey, b"[").is_err());
    }

    #[test]
    fn generate_data_key_json_matches_kms_shape() {
        let req = GenerateDataKeyRequest {
            key_id: Some("alias/app".into()),
            key_spec: Some(DataKeySpec::Aes256),
            encryption_context: Some([("purpose".to_string(), "test".to_string())].into()),
            recipient: Some(RecipientInfo::new(vec![1, 2, 3])),
            ..Default::default()
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "KeyId": "alias/app",
                "KeySpec": "AES_256",
                "EncryptionContext": {"purpose": "test"},
                "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "AQID"}
            })
        );
        let back: GenerateDataKeyRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
    }

    /// A DER SubjectPublicKeyInfo with algorithm `alg` and parameters `params`.
    fn spki_with(alg: &str, params: Option<&str>, key: &[u8]) -> Vec<u8> {
        use der::Encode;
        let algorithm = spki::AlgorithmIdentifierOwned {
            oid: alg.parse().unwrap(),
            parameters: params.map(|p| {
                let oid: const_oid::ObjectIdentifier = p.parse().unwrap();
                der::Any::encode_from(&oid).unwrap()
            }),
        };
        spki::SubjectPublicKeyInfoOwned {
            algorithm,
            subject_public_key: der::asn1::BitString::from_bytes(key).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn derive_shared_secret_length_follows_the_public_key_curve() {
        use aws_lc_rs::agreement::{self, PrivateKey};
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        for (alg, curve, len) in [
            (&agreement::ECDH_P256, EcdhCurve::NistP256, 32),
            (&agreement::ECDH_P384, EcdhCurve::NistP384, 48),
            (&agreement::ECDH_P521, EcdhCurve::NistP521, 66),
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let der: PublicKeyX509Der<'_> = key.compute_public_key().unwrap().as_der().unwrap();
            assert_eq!(EcdhCurve::of_spki(der.as_ref()).unwrap(), curve);
            let req = DeriveSharedSecretRequest {
                key_id: Some("alias/agree".into()),
                key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
                public_key: Some(Blob(der.as_ref().to_vec())),
                ..Default::default()
            };
            assert_eq!(req.shared_secret_len().unwrap(), len);
        }
        let k1 = spki_with("1.2.840.10045.2.1", Some("1.3.132.0.10"), &[4; 65]);
        assert_eq!(EcdhCurve::of_spki(&k1).unwrap(), EcdhCurve::SecgP256k1);

        // Refused locally, before anything is sent.
        let x25519 = spki_with("1.3.101.110", None, &[9; 32]);
        let rsa = spki_with("1.2.840.113549.1.1.1", None, &[0x30, 0]);
        let brainpool = spki_with("1.2.840.10045.2.1", Some("1.3.36.3.3.2.8.1.1.7"), &[4; 65]);
        let no_curve = spki_with("1.2.840.10045.2.1", None, &[4; 65]);
        for bad in [
            &x25519[..],
            &rsa,
            &brainpool,
            &no_curve,
            b"not der",
            &[],
            &vec![0x30; PUBLIC_KEY_MAX + 1],
        ] {
            assert!(
                matches!(
                    EcdhCurve::of_spki(bad),
                    Err(crate::Error::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        let mut req = DeriveSharedSecretRequest {
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            ..Default::default()
        };
        assert!(req.shared_secret_len().is_err(), "no PublicKey");
        req.public_key = Some(Blob(k1));
        req.key_agreement_algorithm = None;
        assert!(req.shared_secret_len().is_err(), "no algorithm");
    }

    #[test]
    fn derive_shared_secret_json_matches_kms_shape() {
        let body = br#"{"KeyId":"alias/agree","KeyAgreementAlgorithm":"ECDH","PublicKey":"AQI=","GrantTokens":["g"],"DryRun":false,"Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256","AttestationDocument":"AwQ="}}"#;
        let KmsRequest::DeriveSharedSecret(req) =
            KmsRequest::from_json(Operation::DeriveSharedSecret, body).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(req.public_key, Some(Blob(vec![1, 2])));
        assert_eq!(req.recipient, Some(RecipientInfo::new(vec![3, 4])));
        let resp = KmsResponse::from_json(
            Operation::DeriveSharedSecret,
            br#"{"KeyId":"arn:k","SharedSecret":"BQY=","KeyAgreementAlgorithm":"ECDH","KeyOrigin":"AWS_KMS"}"#,
        )
        .unwrap();
        assert!(resp.has_plaintext());
        assert_eq!(resp.key_id(), Some("arn:k"));
        assert!(Operation::DeriveSharedSecret.returns_plaintext());
        let d: DecryptRequest = serde_json::from_str(
            r#"{"CiphertextBlob":"AA==","DryRun":true,"DryRunModifiers":["IGNORE_CIPHERTEXT"]}"#,
        )
        .unwrap();
        assert_eq!(
            d.dry_run_modifiers,
            Some(vec![DryRunModifier::IgnoreCiphertext])
        );
    }

    #[test]
    fn response_ignores_unknown_fields_and_decodes_blobs() {
        let r: GenerateDataKeyResponse = serde_json::from_str(
            r#"{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/x","CiphertextBlob":"AAE=","CiphertextForRecipient":"AgM=","SomethingNew":1}"#,
        )
        .unwrap();
        assert_eq!(r.ciphertext_blob, Some(Blob(vec![0, 1])));
        assert_eq!(r.ciphertext_for_recipient, Some(Blob(vec![2, 3])));
        assert!(r.plaintext.is_none());
    }

    #[test]
    fn requested_lengths_need_exactly_one_spec_in_range() {
        let gdk = |key_spec, number_of_bytes| GenerateDataKeyRequest {
            key_spec,
            number_of_bytes,
            ..Default::default()
        };
        assert_eq!(gdk(Some(DataKeySpec::Aes256), None).data_key_len(), Ok(32));
        assert_eq!(gdk(Some(DataKeySpec::Aes128), None).data_key_len(), Ok(16));
        assert_eq!(gdk(None, Some(1024)).data_key_len(), Ok(1024));
        for bad in [
            gdk(None, None),
            gdk(Some(DataKeySpec::Aes256), Some(32)),
            gdk(None, Some(0)),
            gdk(None, Some(1025)),
        ] {
            assert!(
                matches!(bad.data_key_len(), Err(crate::Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let random = |number_of_bytes| GenerateRandomRequest {
            number_of_bytes,
            ..Default::default()
        };
        assert_eq!(random(Some(1)).random_len(), Ok(1));
        assert!(random(None).random_len().is_err());
        assert!(random(Some(1025)).random_len().is_err());
    }

    #[test]
    fn bad_base64_is_an_error_not_a_panic() {
        let r = serde_json::from_str::<DecryptRequest>(r#"{"CiphertextBlob":"!!!"}"#);
        assert!(r.is_err());
    }

    #[test]
    fn error_codes_map_to_kms_status() {
        assert_eq!(KmsError::new("NotFoundException", "x").status, 400);
        assert!(!KmsError::new("AccessDeniedException", "x").retryable);
        assert!(KmsError::new("ThrottlingException", "x").retryable);
        let e = KmsError::new("KMSInternalException", "x");
        assert_eq!((e.status, e.retryable), (500, true));
        assert_eq!(KmsError::new("DependencyTimeoutException", "x").status, 503);
        assert_eq!(
            KmsError::normalize_code("com.amazonaws.kms#NotFoundException"),
            "NotFoundException"
        );
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.as_str()), Some(op));
        }
        assert_eq!(Operation::from_name("Encrypt"), None);
    }
}

#[cfg(test)]
mod cbor_tests {
    use super::*;

    #[test]
    fn blobs_are_cbor_byte_strings() {
        let r = KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
            key_id: Some("k".into()),
            ciphertext_blob: Some(Blob(vec![0xAA; 4])),
            plaintext: Some(SecretBytes::from_slice(&[7; 3])),
            ..Default::default()
        });
        let mut out = Vec::new();
        ciborium::into_writer(&r, &mut out).unwrap();
        let big = DecryptRequest {
            ciphertext_blob: Some(Blob(vec![0x5A; 10_000])),
            recipient: Some(RecipientInfo::new(vec![0xA5; 20_000])),
            ..Default::default()
        };
        let mut big_cbor = Vec::new();
        ciborium::into_writer(&big, &mut big_cbor).unwrap();
        let back: DecryptRequest = ciborium::from_reader(big_cbor.as_slice()).unwrap();
        assert_eq!(
            back, big,
            "blobs larger than ciborium's scratch buffer decode"
        );
        // A byte string header for 4 bytes (0x44), not base64 text.
        assert!(out.windows(5).any(|w| w == [0x44, 0xAA, 0xAA, 0xAA, 0xAA]));
        let back: KmsResponse = ciborium::from_reader(out.as_slice()).unwrap();
        assert_eq!(back, r);
    }
}

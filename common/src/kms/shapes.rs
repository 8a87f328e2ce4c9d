//! The request and response bodies of the KMS operations Keybroker sends or
//! the mock KMS serves (KMS API reference, "Request Syntax" and "Response
//! Syntax" of each operation), field for field.

use serde::{Deserialize, Serialize};

use super::{
    Blob, DataKeyPairSpec, DataKeySpec, DryRunModifier, EcdhCurve, EncryptionAlgorithm,
    EncryptionContext, KeyAgreementAlgorithm, RecipientInfo,
};
use crate::secret::SecretBytes;

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

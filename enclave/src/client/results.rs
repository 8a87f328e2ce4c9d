//! What the operations with `Recipient` return: the plaintext inside the
//! enclave, the rest of KMS's answer beside it. Each converts to the KMS
//! response a call without `Recipient` gets (`From`, the one place for it):
//! the endpoint answers SDKs with it, the command line prints it.

use keybroker_common::kms::{
    Blob, DataKeyPairSpec, DecryptResponse, DeriveSharedSecretResponse, EncryptionAlgorithm,
    GenerateDataKeyPairResponse, GenerateDataKeyResponse, GenerateRandomResponse,
    KeyAgreementAlgorithm,
};
use keybroker_common::secret::SecretBytes;

/// A data key from [`Client::generate_data_key`](super::Client::generate_data_key).
#[derive(Debug)]
pub struct DataKey {
    /// ARN of the KMS key (`KeyId` of the response).
    pub key_id: Option<String>,
    /// The data key encrypted under the KMS key: store it, and recover the
    /// data key later with [`Client::decrypt`](super::Client::decrypt).
    pub ciphertext_blob: Blob,
    /// The data key. Zeroized on drop.
    pub plaintext: SecretBytes,
    /// `KeyMaterialId` of the response.
    pub key_material_id: Option<String>,
}

/// The result of [`Client::decrypt`](super::Client::decrypt).
#[derive(Debug)]
pub struct Decrypted {
    /// ARN of the KMS key that decrypted.
    pub key_id: Option<String>,
    /// The algorithm used.
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// The plaintext. Zeroized on drop.
    pub plaintext: SecretBytes,
    /// `KeyMaterialId` of the response.
    pub key_material_id: Option<String>,
}

/// A data key pair from [`Client::generate_data_key_pair`](super::Client::generate_data_key_pair).
#[derive(Debug)]
pub struct DataKeyPair {
    /// ARN of the KMS key.
    pub key_id: Option<String>,
    /// The spec generated.
    pub key_pair_spec: Option<DataKeyPairSpec>,
    /// DER `SubjectPublicKeyInfo`.
    pub public_key: Option<Blob>,
    /// The private key encrypted under the KMS key.
    pub private_key_ciphertext_blob: Blob,
    /// The private key, DER PKCS#8. Zeroized on drop.
    pub private_key_plaintext: SecretBytes,
    /// `KeyMaterialId` of the response.
    pub key_material_id: Option<String>,
}

/// A shared secret from [`Client::derive_shared_secret`](super::Client::derive_shared_secret).
#[derive(Debug)]
pub struct SharedSecret {
    /// ARN of the KMS key-agreement key (`KeyId` of the response).
    pub key_id: Option<String>,
    /// The raw ECDH shared secret (as KMS's `SharedSecret`: the
    /// x-coordinate of the shared point, no KDF applied; derive keys from it
    /// with a KDF). Zeroized on drop.
    pub shared_secret: SecretBytes,
    /// `KeyAgreementAlgorithm` of the response (`ECDH`).
    pub key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
    /// `KeyOrigin` of the response (`AWS_KMS` or `EXTERNAL`).
    pub key_origin: Option<String>,
}

impl From<DataKey> for GenerateDataKeyResponse {
    fn from(k: DataKey) -> Self {
        Self {
            ciphertext_blob: Some(k.ciphertext_blob),
            plaintext: Some(k.plaintext),
            key_id: k.key_id,
            key_material_id: k.key_material_id,
            ciphertext_for_recipient: None,
        }
    }
}

impl From<Decrypted> for DecryptResponse {
    fn from(d: Decrypted) -> Self {
        Self {
            key_id: d.key_id,
            plaintext: Some(d.plaintext),
            encryption_algorithm: d.encryption_algorithm,
            key_material_id: d.key_material_id,
            ciphertext_for_recipient: None,
        }
    }
}

impl From<DataKeyPair> for GenerateDataKeyPairResponse {
    fn from(p: DataKeyPair) -> Self {
        Self {
            private_key_ciphertext_blob: Some(p.private_key_ciphertext_blob),
            private_key_plaintext: Some(p.private_key_plaintext),
            public_key: p.public_key,
            key_id: p.key_id,
            key_pair_spec: p.key_pair_spec,
            key_material_id: p.key_material_id,
            ciphertext_for_recipient: None,
        }
    }
}

impl From<SharedSecret> for DeriveSharedSecretResponse {
    fn from(d: SharedSecret) -> Self {
        Self {
            key_id: d.key_id,
            shared_secret: Some(d.shared_secret),
            ciphertext_for_recipient: None,
            key_agreement_algorithm: d.key_agreement_algorithm,
            key_origin: d.key_origin,
        }
    }
}

/// The KMS `GenerateRandom` response for the bytes of
/// [`Client::generate_random`](super::Client::generate_random) (a function:
/// both types are foreign to this crate).
pub fn random_response(plaintext: SecretBytes) -> GenerateRandomResponse {
    GenerateRandomResponse {
        plaintext: Some(plaintext),
        ciphertext_for_recipient: None,
    }
}

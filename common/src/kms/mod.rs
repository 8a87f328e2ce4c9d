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
//! [`SecretBytes`](crate::secret::SecretBytes): zeroized on drop and redacted in `Debug`.
//!
//! One home per idea: the string enums and their spellings in `enums`
//! (declared once each through one macro), the error types of KMS with their
//! HTTP statuses in `error_code` ([`KmsErrorCode`]), the request and response
//! shapes in `shapes`, the brokered request/response unions in `brokered`,
//! [`KmsError`] in `error` and the HTTP framing in [`aws_json`].

use std::collections::BTreeMap;

use core::fmt;
use serde::{Deserialize, Serialize};

pub mod aws_json;
mod brokered;
pub(crate) mod enums;
mod error;
mod error_code;
mod shapes;
#[cfg(test)]
mod tests;

pub use brokered::{KmsRequest, KmsResponse};
pub use enums::{
    DataKeyPairSpec, DataKeySpec, DryRunModifier, EcdhCurve, EncryptionAlgorithm,
    KeyAgreementAlgorithm, KeyEncryptionAlgorithm, Operation, UnknownKmsValue,
};
pub use error::KmsError;
pub use error_code::KmsErrorCode;
pub use shapes::*;

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
        crate::blob_serde::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::blob_serde::deserialize(d).map(Blob)
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

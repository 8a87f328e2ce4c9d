//! [`KmsRequest`] and [`KmsResponse`]: one request or response of any
//! brokered [`Operation`], as the enclave and the proxy carry it.

use serde::{Deserialize, Serialize};

use super::*;

/// The matches [`KmsRequest`] and [`KmsResponse`] share: both enums have one
/// variant per [`Operation`], named after it, so each match is written once.
/// `from_json OP, BODY` is the body of `from_json`; `operation of SELF` the
/// body of `operation`.
macro_rules! per_operation {
    (operation of $self:ident) => {
        match $self {
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
    };
    (from_json $op:expr, $body:expr) => {{
        use serde_json::from_slice;
        Ok(match $op {
            Operation::GenerateDataKey => Self::GenerateDataKey(from_slice($body)?),
            Operation::GenerateDataKeyWithoutPlaintext => {
                Self::GenerateDataKeyWithoutPlaintext(from_slice($body)?)
            }
            Operation::Decrypt => Self::Decrypt(from_slice($body)?),
            Operation::GenerateDataKeyPair => Self::GenerateDataKeyPair(from_slice($body)?),
            Operation::GenerateDataKeyPairWithoutPlaintext => {
                Self::GenerateDataKeyPairWithoutPlaintext(from_slice($body)?)
            }
            Operation::GenerateRandom => Self::GenerateRandom(from_slice($body)?),
            Operation::DescribeKey => Self::DescribeKey(from_slice($body)?),
            Operation::DeriveSharedSecret => Self::DeriveSharedSecret(from_slice($body)?),
        })
    }};
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
        per_operation!(from_json op, body)
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
        per_operation!(operation of self)
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
        per_operation!(from_json op, body)
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
        per_operation!(operation of self)
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

//! The KMS error types (`__type` of an AWS JSON 1.1 error body) Keybroker
//! sends, receives or serves from the mock KMS, with the HTTP status and the
//! retry behaviour of each: the one table both come from.

use super::enums::kms_enum;

kms_enum! {
    /// A KMS error type: the `__type` of `{"__type": ..., "message": ...}`
    /// without a namespace prefix (KMS API reference, the "Errors" section of
    /// each operation and "Common Errors"; DESIGN.md "KMS API facts" and
    /// "End-to-end mode facts").
    ///
    /// [`KmsErrorCode::http_status`] and [`KmsErrorCode::is_retryable`] give
    /// what real KMS and the AWS SDKs do with each. [`super::KmsError`] keeps
    /// its code as a string so that errors this build does not know are
    /// relayed unchanged.
    pub enum KmsErrorCode {
        /// The caller is not allowed the action: the key policy or IAM denies
        /// it, or a `kms:RecipientAttestation:*` condition is unmet.
        AccessDenied = "AccessDeniedException",
        /// The alias (or other resource) already exists.
        AlreadyExists = "AlreadyExistsException",
        /// No custom key store has the given id.
        CustomKeyStoreNotFound = "CustomKeyStoreNotFoundException",
        /// A system component KMS depends on timed out. HTTP 503, retryable.
        DependencyTimeout = "DependencyTimeoutException",
        /// The KMS key is disabled.
        Disabled = "DisabledException",
        /// `DryRun`: the request would have succeeded.
        DryRunOperation = "DryRunOperationException",
        /// The session token of temporary credentials has expired.
        ExpiredToken = "ExpiredTokenException",
        /// The `Authorization` header lacks a required part (SigV4).
        IncompleteSignature = "IncompleteSignatureException",
        /// The ciphertext was encrypted under another KMS key than the one
        /// named.
        IncorrectKey = "IncorrectKeyException",
        /// The ciphertext or its encryption context is not valid.
        InvalidCiphertext = "InvalidCiphertextException",
        /// A grant token is not valid.
        InvalidGrantToken = "InvalidGrantTokenException",
        /// The key's `KeyUsage` or `KeySpec` does not support the operation
        /// or algorithm.
        InvalidKeyUsage = "InvalidKeyUsageException",
        /// A pagination `Marker` is not valid.
        InvalidMarker = "InvalidMarkerException",
        /// The SigV4 signature does not match, or the request time is outside
        /// the allowed skew ("Signature expired").
        InvalidSignature = "InvalidSignatureException",
        /// The key cannot be used right now (its key store is unavailable).
        /// HTTP 500, retryable.
        KeyUnavailable = "KeyUnavailableException",
        /// An internal KMS error. HTTP 500, retryable.
        KmsInternal = "KMSInternalException",
        /// The key's state (for example `PendingDeletion`) does not allow the
        /// operation.
        KmsInvalidState = "KMSInvalidStateException",
        /// A resource quota was exceeded (not the request rate: that is
        /// `ThrottlingException`).
        LimitExceeded = "LimitExceededException",
        /// The key policy is not valid JSON or not a valid policy.
        MalformedPolicyDocument = "MalformedPolicyDocumentException",
        /// The request carries no `Authorization` header (SigV4).
        MissingAuthenticationToken = "MissingAuthenticationTokenException",
        /// The caller may not act on the resource (for example an
        /// `alias/aws/` alias).
        NotAuthorized = "NotAuthorizedException",
        /// The key or alias does not exist.
        NotFound = "NotFoundException",
        /// The body is not valid JSON or a member has the wrong type (AWS
        /// JSON 1.1).
        Serialization = "SerializationException",
        /// The request rate exceeds a KMS quota. Retryable.
        Throttling = "ThrottlingException",
        /// The `X-Amz-Target` names no operation of the service (AWS JSON 1.1).
        UnknownOperation = "UnknownOperationException",
        /// The access key id or session token is not known (SigV4).
        UnrecognizedClient = "UnrecognizedClientException",
        /// The operation is not supported for this key or in this Region.
        UnsupportedOperation = "UnsupportedOperationException",
        /// A parameter is missing, out of range or malformed.
        Validation = "ValidationException",
    }
}

impl KmsErrorCode {
    /// The HTTP status KMS answers with: 500 for `KMSInternalException` and
    /// `KeyUnavailableException`, 503 for `DependencyTimeoutException`, 400
    /// for every other error, the authentication errors included (KMS API
    /// reference, each error's "HTTP Status Code"; DESIGN.md).
    pub const fn http_status(self) -> u16 {
        match self {
            Self::KmsInternal | Self::KeyUnavailable => 500,
            Self::DependencyTimeout => 503,
            _ => 400,
        }
    }

    /// Whether the AWS SDKs retry this error: the server errors (5xx) and
    /// `ThrottlingException`; no other 400 (DESIGN.md: "The Rust SDK retries
    /// 5xx and throttling, not other 400s").
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::KmsInternal | Self::KeyUnavailable | Self::DependencyTimeout | Self::Throttling
        )
    }
}

/// The wire spelling, for APIs that take the code as a string
/// ([`super::KmsError::new`]).
impl From<KmsErrorCode> for String {
    fn from(code: KmsErrorCode) -> Self {
        code.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retries_follow_kms() {
        for code in KmsErrorCode::ALL {
            assert!(code.as_str().ends_with("Exception"), "{code}");
            assert_eq!(code.as_str().parse(), Ok(code));
            let server = code.http_status() >= 500;
            assert_eq!(
                code.is_retryable(),
                server || code == KmsErrorCode::Throttling,
                "{code}"
            );
        }
        assert_eq!(KmsErrorCode::KmsInternal.http_status(), 500);
        assert_eq!(KmsErrorCode::KeyUnavailable.http_status(), 500);
        assert_eq!(KmsErrorCode::DependencyTimeout.http_status(), 503);
        assert_eq!(KmsErrorCode::Throttling.http_status(), 400);
        assert_eq!(KmsErrorCode::InvalidSignature.http_status(), 400);
        assert!(!KmsErrorCode::LimitExceeded.is_retryable());
        assert!(!KmsErrorCode::AccessDenied.is_retryable());
        assert_eq!(KmsErrorCode::KmsInternal.as_str(), "KMSInternalException");
        assert_eq!(
            "KMSInvalidStateException".parse(),
            Ok(KmsErrorCode::KmsInvalidState)
        );
        assert!(
            "com.amazonaws.kms#NotFoundException"
                .parse::<KmsErrorCode>()
                .is_err()
        );
        assert_eq!(String::from(KmsErrorCode::NotFound), "NotFoundException");
    }
}

//! Where the proxy sends the requests it accepted: the [`KmsBackend`] trait,
//! and its real implementation over `aws-sdk-kms` ([`SdkKmsBackend`]).
//!
//! The trait keeps the server testable with a fake backend. The SDK
//! implementation converts each of the seven [`KmsRequest`] variants field by
//! field to the SDK's input (KMS API names: `KeyId`, `KeySpec`,
//! `NumberOfBytes`, `EncryptionContext`, `GrantTokens`, `Recipient`, `DryRun`,
//! `EncryptionAlgorithm`, `KeyPairSpec`, `CustomKeyStoreId`,
//! `CiphertextBlob`) and the SDK's output back to the [`keybroker_common::kms`]
//! types. Failures become [`WireError`]s:
//!
//! - KMS answered with an error: [`WireError::kms`] with the real `__type`
//!   code (normalized, [`KmsError::normalize_code`]), message, HTTP status and
//!   retryability (5xx and throttling are retryable);
//! - KMS could not be reached, timed out at the HTTP layer, or its answer
//!   could not be read: [`ErrorCode::Unavailable`], retryable.

use std::future::Future;
use std::pin::Pin;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob as SdkBlob;
use aws_sdk_kms::types as sdk;
use keybroker_common::kms::*;
use keybroker_common::protocol::{ErrorCode, WireError};
use keybroker_common::secret::SecretBytes;

use crate::admission::Admitted;
use crate::settings::KmsSettings;

/// The future a [`KmsBackend`] returns.
pub type BackendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<KmsResponse, WireError>> + Send + 'a>>;

/// Performs one KMS call. Implementations: [`SdkKmsBackend`] (AWS KMS or the
/// mock KMS over HTTP), fakes in tests ([`FnBackend`]).
///
/// The server forwards only what the admission policy admitted, through
/// [`KmsBackend::forward`], which takes the [`Admitted`] proof; `call` is
/// what implementations provide (and what a wrapping backend calls on the
/// backend it wraps). The server applies the request's deadline around the
/// call (dropping the future on timeout), so implementations need no
/// timeout of their own.
pub trait KmsBackend: Send + Sync + 'static {
    /// Sends `request` and returns KMS's response, or the error to relay.
    fn call(&self, request: KmsRequest) -> BackendFuture<'_>;

    /// Forwards a request the admission policy admitted (the server's only
    /// way to reach KMS).
    fn forward(&self, admitted: Admitted) -> BackendFuture<'_> {
        self.call(admitted.into_request())
    }
}

/// A shared backend (tests keep a clone to inspect it).
impl<T: KmsBackend + ?Sized> KmsBackend for std::sync::Arc<T> {
    fn call(&self, request: KmsRequest) -> BackendFuture<'_> {
        (**self).call(request)
    }
}

/// A backend from a closure returning a future: `FnBackend(|req| async move
/// { ... })`. For tests and tools.
#[derive(Clone)]
pub struct FnBackend<F>(pub F);

impl<F, Fut> KmsBackend for FnBackend<F>
where
    F: Fn(KmsRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<KmsResponse, WireError>> + Send + 'static,
{
    fn call(&self, request: KmsRequest) -> BackendFuture<'_> {
        Box::pin((self.0)(request))
    }
}

/// The real backend: an `aws_sdk_kms::Client`.
#[derive(Clone, Debug)]
pub struct SdkKmsBackend {
    client: aws_sdk_kms::Client,
}

impl SdkKmsBackend {
    /// Wraps a configured client (tests build one with static credentials and
    /// a local endpoint).
    pub fn new(client: aws_sdk_kms::Client) -> Self {
        SdkKmsBackend { client }
    }

    /// Builds a client from the AWS default chain (credentials: environment,
    /// profile, web identity, ECS/EC2 instance role; region: environment,
    /// profile, IMDS), overridden by `settings`.
    pub async fn from_settings(settings: &KmsSettings) -> Self {
        Self::from_sdk_config(&load_sdk_config(settings).await)
    }

    /// Builds a client from a loaded configuration ([`load_sdk_config`]).
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_kms::Client::new(config))
    }
}

/// Loads the AWS configuration from the default chain, overridden by
/// `settings`: the KMS client and the credentials handed to the enclave
/// ([`crate::credentials::AwsConfigCredentials`]) share its region and
/// credential provider.
pub async fn load_sdk_config(settings: &KmsSettings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some(attempts) = settings.max_attempts {
        loader = loader.retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(attempts.max(1)),
        );
    }
    if let Some(connect) = settings.connect_timeout {
        loader = loader.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(connect)
                .build(),
        );
    }
    loader.load().await
}

impl SdkKmsBackend {
    async fn dispatch(&self, request: KmsRequest) -> Result<KmsResponse, WireError> {
        let c = &self.client;
        Ok(match request {
            KmsRequest::GenerateDataKey(r) => {
                let out = c
                    .generate_data_key()
                    .set_key_id(r.key_id)
                    .set_key_spec(r.key_spec.map(|s| sdk::DataKeySpec::from(s.as_str())))
                    .set_number_of_bytes(number_of_bytes(r.number_of_bytes)?)
                    .set_encryption_context(r.encryption_context.map(|m| m.into_iter().collect()))
                    .set_grant_tokens(r.grant_tokens)
                    .set_recipient(r.recipient.map(recipient))
                    .set_dry_run(r.dry_run)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
                    key_id: out.key_id,
                    ciphertext_blob: out.ciphertext_blob.map(blob),
                    plaintext: out.plaintext.map(secret),
                    ciphertext_for_recipient: out.ciphertext_for_recipient.map(blob),
                    key_material_id: out.key_material_id,
                })
            }
            KmsRequest::GenerateDataKeyWithoutPlaintext(r) => {
                let out = c
                    .generate_data_key_without_plaintext()
                    .set_key_id(r.key_id)
                    .set_key_spec(r.key_spec.map(|s| sdk::DataKeySpec::from(s.as_str())))
                    .set_number_of_bytes(number_of_bytes(r.number_of_bytes)?)
                    .set_encryption_context(r.encryption_context.map(|m| m.into_iter().collect()))
                    .set_grant_tokens(r.grant_tokens)
                    .set_dry_run(r.dry_run)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::GenerateDataKeyWithoutPlaintext(
                    GenerateDataKeyWithoutPlaintextResponse {
                        key_id: out.key_id,
                        ciphertext_blob: out.ciphertext_blob.map(blob),
                        key_material_id: out.key_material_id,
                    },
                )
            }
            KmsRequest::Decrypt(r) => {
                let out = c
                    .decrypt()
                    .set_ciphertext_blob(r.ciphertext_blob.map(|b| SdkBlob::new(b.0)))
                    .set_encryption_context(r.encryption_context.map(|m| m.into_iter().collect()))
                    .set_grant_tokens(r.grant_tokens)
                    .set_key_id(r.key_id)
                    .set_encryption_algorithm(
                        r.encryption_algorithm
                            .map(|a| sdk::EncryptionAlgorithmSpec::from(a.as_str())),
                    )
                    .set_recipient(r.recipient.map(recipient))
                    .set_dry_run(r.dry_run)
                    .set_dry_run_modifiers(r.dry_run_modifiers.map(|m| {
                        m.iter()
                            .map(|m| sdk::DryRunModifierType::from(m.as_str()))
                            .collect()
                    }))
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::Decrypt(DecryptResponse {
                    key_id: out.key_id,
                    plaintext: out.plaintext.map(secret),
                    encryption_algorithm: out
                        .encryption_algorithm
                        .and_then(|a| a.as_str().parse().ok()),
                    ciphertext_for_recipient: out.ciphertext_for_recipient.map(blob),
                    key_material_id: out.key_material_id,
                })
            }
            KmsRequest::GenerateDataKeyPair(r) => {
                let out = c
                    .generate_data_key_pair()
                    .set_encryption_context(r.encryption_context.map(|m| m.into_iter().collect()))
                    .set_key_id(r.key_id)
                    .set_key_pair_spec(
                        r.key_pair_spec
                            .map(|s| sdk::DataKeyPairSpec::from(s.as_str())),
                    )
                    .set_grant_tokens(r.grant_tokens)
                    .set_recipient(r.recipient.map(recipient))
                    .set_dry_run(r.dry_run)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::GenerateDataKeyPair(GenerateDataKeyPairResponse {
                    private_key_ciphertext_blob: out.private_key_ciphertext_blob.map(blob),
                    private_key_plaintext: out.private_key_plaintext.map(secret),
                    public_key: out.public_key.map(blob),
                    key_id: out.key_id,
                    key_pair_spec: out.key_pair_spec.and_then(|s| s.as_str().parse().ok()),
                    ciphertext_for_recipient: out.ciphertext_for_recipient.map(blob),
                    key_material_id: out.key_material_id,
                })
            }
            KmsRequest::GenerateDataKeyPairWithoutPlaintext(r) => {
                let out = c
                    .generate_data_key_pair_without_plaintext()
                    .set_encryption_context(r.encryption_context.map(|m| m.into_iter().collect()))
                    .set_key_id(r.key_id)
                    .set_key_pair_spec(
                        r.key_pair_spec
                            .map(|s| sdk::DataKeyPairSpec::from(s.as_str())),
                    )
                    .set_grant_tokens(r.grant_tokens)
                    .set_dry_run(r.dry_run)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::GenerateDataKeyPairWithoutPlaintext(
                    GenerateDataKeyPairWithoutPlaintextResponse {
                        private_key_ciphertext_blob: out.private_key_ciphertext_blob.map(blob),
                        public_key: out.public_key.map(blob),
                        key_id: out.key_id,
                        key_pair_spec: out.key_pair_spec.and_then(|s| s.as_str().parse().ok()),
                        key_material_id: out.key_material_id,
                    },
                )
            }
            KmsRequest::GenerateRandom(r) => {
                let out = c
                    .generate_random()
                    .set_number_of_bytes(number_of_bytes(r.number_of_bytes)?)
                    .set_custom_key_store_id(r.custom_key_store_id)
                    .set_recipient(r.recipient.map(recipient))
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::GenerateRandom(GenerateRandomResponse {
                    plaintext: out.plaintext.map(secret),
                    ciphertext_for_recipient: out.ciphertext_for_recipient.map(blob),
                })
            }
            KmsRequest::DescribeKey(r) => {
                let out = c
                    .describe_key()
                    .set_key_id(r.key_id)
                    .set_grant_tokens(r.grant_tokens)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::DescribeKey(DescribeKeyResponse {
                    key_metadata: out.key_metadata.map(key_metadata),
                })
            }
            KmsRequest::DeriveSharedSecret(r) => {
                let out = c
                    .derive_shared_secret()
                    .set_key_id(r.key_id)
                    .set_key_agreement_algorithm(
                        r.key_agreement_algorithm
                            .map(|a| sdk::KeyAgreementAlgorithmSpec::from(a.as_str())),
                    )
                    .set_public_key(r.public_key.map(|b| SdkBlob::new(b.0)))
                    .set_grant_tokens(r.grant_tokens)
                    .set_dry_run(r.dry_run)
                    .set_recipient(r.recipient.map(recipient))
                    .send()
                    .await
                    .map_err(sdk_error)?;
                KmsResponse::DeriveSharedSecret(DeriveSharedSecretResponse {
                    key_id: out.key_id,
                    shared_secret: out.shared_secret.map(secret),
                    ciphertext_for_recipient: out.ciphertext_for_recipient.map(blob),
                    key_agreement_algorithm: out
                        .key_agreement_algorithm
                        .and_then(|a| a.as_str().parse().ok()),
                    key_origin: out.key_origin.map(|o| o.as_str().to_owned()),
                })
            }
        })
    }
}

impl KmsBackend for SdkKmsBackend {
    fn call(&self, request: KmsRequest) -> BackendFuture<'_> {
        Box::pin(self.dispatch(request))
    }
}

/// `NumberOfBytes` is an `Integer` (i32) in the KMS model; KMS accepts
/// 1..=1024.
fn number_of_bytes(n: Option<u32>) -> Result<Option<i32>, WireError> {
    n.map(|n| {
        i32::try_from(n).map_err(|_| {
            WireError::new(
                ErrorCode::BadRequest,
                format!("NumberOfBytes {n} is out of range (KMS accepts 1..=1024)"),
            )
        })
    })
    .transpose()
}

fn recipient(r: RecipientInfo) -> sdk::RecipientInfo {
    sdk::RecipientInfo::builder()
        .key_encryption_algorithm(sdk::KeyEncryptionMechanism::from(
            r.key_encryption_algorithm.as_str(),
        ))
        .attestation_document(SdkBlob::new(r.attestation_document.0))
        .build()
}

fn blob(b: SdkBlob) -> Blob {
    Blob(b.into_inner())
}

/// Plaintext from KMS goes straight into a zeroizing container (the policy
/// then refuses to relay it).
fn secret(b: SdkBlob) -> SecretBytes {
    SecretBytes::new(b.into_inner())
}

fn key_metadata(m: sdk::KeyMetadata) -> KeyMetadata {
    KeyMetadata {
        aws_account_id: m.aws_account_id,
        key_id: m.key_id,
        arn: m.arn,
        creation_date: m.creation_date.map(|d| d.as_secs_f64()),
        enabled: m.enabled,
        description: m.description,
        key_usage: m.key_usage.map(|v| v.as_str().to_owned()),
        key_state: m.key_state.map(|v| v.as_str().to_owned()),
        deletion_date: m.deletion_date.map(|d| d.as_secs_f64()),
        origin: m.origin.map(|v| v.as_str().to_owned()),
        key_manager: m.key_manager.map(|v| v.as_str().to_owned()),
        key_spec: m.key_spec.map(|v| v.as_str().to_owned()),
        #[allow(deprecated)]
        customer_master_key_spec: m.customer_master_key_spec.map(|v| v.as_str().to_owned()),
        encryption_algorithms: m.encryption_algorithms.map(|algs| {
            algs.iter()
                .filter_map(|a| a.as_str().parse().ok())
                .collect()
        }),
        signing_algorithms: m
            .signing_algorithms
            .map(|algs| algs.iter().map(|a| a.as_str().to_owned()).collect()),
        key_agreement_algorithms: m.key_agreement_algorithms.map(|algs| {
            algs.iter()
                .filter_map(|a| a.as_str().parse().ok())
                .collect()
        }),
        multi_region: m.multi_region,
    }
}

/// Maps an SDK failure to the error relayed to the enclave.
pub fn sdk_error<E>(e: SdkError<E, HttpResponse>) -> WireError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(service) => {
            let code = e
                .code()
                .map(KmsError::normalize_code)
                .unwrap_or("UnknownError")
                .to_owned();
            let message = e.message().unwrap_or_default().to_owned();
            let mut kms = KmsError::new(code, message);
            let status = service.raw().status().as_u16();
            if status != 0 {
                kms.status = status;
                kms.retryable = kms.retryable || status >= 500;
            }
            WireError::kms(kms)
        }
        SdkError::TimeoutError(_) => WireError::new(
            ErrorCode::Unavailable,
            "KMS did not answer in time (SDK timeout)",
        ),
        SdkError::DispatchFailure(_) => WireError::new(
            ErrorCode::Unavailable,
            format!("KMS unreachable: {}", DisplayErrorContext(&e)),
        ),
        SdkError::ResponseError(_) => WireError::new(
            ErrorCode::Unavailable,
            format!("KMS response unreadable: {}", DisplayErrorContext(&e)),
        ),
        // ConstructionFailure (e.g. no credentials or region) and future
        // variants: the proxy's environment, retryable once fixed.
        _ => WireError::new(
            ErrorCode::Unavailable,
            format!("KMS call failed: {}", DisplayErrorContext(&e)),
        ),
    }
}

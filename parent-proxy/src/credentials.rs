//! The AWS credentials the proxy hands to the enclave on `GetCredentials`
//! (protocol version 2, end-to-end mode: the enclave signs its KMS requests
//! itself, issue 10 "Credentials").
//!
//! [`CredentialSource`] is where they come from: [`AwsConfigCredentials`]
//! (aws-config's default chain: environment variables `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, profiles, web identity, the
//! ECS container role, the EC2 instance role through IMDSv2; cached and
//! refreshed before expiry by the SDK), or [`StaticCredentials`] (tests).
//!
//! Credentials are never logged: the types here redact them in `Debug`, the
//! secret parts are [`keybroker_common::secret::SecretString`]s (zeroized on
//! drop), and the server zeroizes the frame that carried them once written.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use keybroker_common::protocol::{AwsCredentialsWire, ErrorCode, WireError};
use keybroker_common::secret::SecretString;

/// The future a [`CredentialSource`] returns.
pub type CredentialsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AwsCredentialsWire, WireError>> + Send + 'a>>;

/// Where the proxy's credentials come from.
///
/// The server bounds each call with the default request timeout and checks
/// the result with [`AwsCredentialsWire::validate`] before sending it.
pub trait CredentialSource: Send + Sync + 'static {
    /// Current credentials, or the error to send the enclave (retryable
    /// [`ErrorCode::Unavailable`] when the chain failed for now).
    fn credentials(&self) -> CredentialsFuture<'_>;
}

/// Credentials from aws-config's provider chain.
#[derive(Clone)]
pub struct AwsConfigCredentials {
    provider: SharedCredentialsProvider,
}

impl std::fmt::Debug for AwsConfigCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfigCredentials")
            .finish_non_exhaustive()
    }
}

impl AwsConfigCredentials {
    /// Wraps a provider (the one of an `SdkConfig`, or any other).
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        AwsConfigCredentials { provider }
    }

    /// The provider of a loaded `SdkConfig` (`aws_config::defaults(..).load()`);
    /// `None` if it has none.
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Option<Self> {
        config.credentials_provider().map(Self::new)
    }
}

impl CredentialSource for AwsConfigCredentials {
    fn credentials(&self) -> CredentialsFuture<'_> {
        Box::pin(async move {
            let creds = self.provider.provide_credentials().await.map_err(|e| {
                // The chain's errors name providers and causes, never
                // secrets.
                tracing::warn!(error = %aws_sdk_kms::error::DisplayErrorContext(&e), "cannot get AWS credentials");
                WireError::new(
                    ErrorCode::Unavailable,
                    "the proxy cannot get AWS credentials right now",
                )
            })?;
            Ok(AwsCredentialsWire {
                access_key_id: creds.access_key_id().to_owned(),
                secret_access_key: SecretString::from_str_copy(creds.secret_access_key()),
                session_token: creds.session_token().map(SecretString::from_str_copy),
                expiration_ms: creds.expiry().map(unix_millis),
            })
        })
    }
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Fixed credentials (tests, tools).
#[derive(Clone, Debug)]
pub struct StaticCredentials(pub AwsCredentialsWire);

impl CredentialSource for StaticCredentials {
    fn credentials(&self) -> CredentialsFuture<'_> {
        let creds = self.0.clone();
        Box::pin(async move { Ok(creds) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    #[tokio::test]
    async fn aws_config_credentials_are_converted() {
        let expiry = UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_123);
        let provider = SharedCredentialsProvider::new(Credentials::new(
            "ASIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("IQoJb3JpZ2luX2Vj".into()),
            Some(expiry),
            "test",
        ));
        let source = AwsConfigCredentials::new(provider);
        assert!(!format!("{source:?}").contains("wJalr"));
        let c = source.credentials().await.unwrap();
        assert_eq!(c.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        assert_eq!(
            c.secret_access_key.expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        assert_eq!(
            c.session_token.as_ref().map(SecretString::expose),
            Some("IQoJb3JpZ2luX2Vj")
        );
        assert_eq!(c.expiration_ms, Some(1_800_000_000_123));
        assert_eq!(c.validate(), Ok(()));
    }

    #[tokio::test]
    async fn a_failing_chain_is_unavailable() {
        #[derive(Debug)]
        struct None_;
        impl ProvideCredentials for None_ {
            fn provide_credentials<'a>(
                &'a self,
            ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                    aws_credential_types::provider::error::CredentialsError::not_loaded(
                        "no credentials in this test",
                    ),
                ))
            }
        }
        let source = AwsConfigCredentials::new(SharedCredentialsProvider::new(None_));
        let e = source.credentials().await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(e.retryable());
    }
}

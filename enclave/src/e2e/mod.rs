//! End-to-end mode: the enclave speaks HTTPS to the KMS endpoint itself, and
//! the parent relays only TLS records (issue 10; DESIGN.md "Trust model").
//!
//! [`crate::Client`] in this mode ([`crate::Client::new_e2e`]) sends each KMS
//! call as AWS JSON 1.1 over TLS over a byte tunnel from
//! [`ParentLink::open_tunnel`]:
//!
//! - **TLS** ([`tls`]): rustls with the aws-lc-rs provider, TLS 1.2+, the
//!   Amazon Trust Services roots built in, hostname verification; a
//!   development CA only in `mock-nsm` builds ([`TrustRoots::mock_with_dev_ca_pem`]).
//! - **HTTP** ([`http`]): hyper HTTP/1.1 with keep-alive and a connection
//!   pool, so steady load needs no TLS handshake per request
//!   ([`crate::ClientStats::tls_handshakes`] counts them); response bodies
//!   are limited ([`E2eConfig::max_response_len`], 1 MiB) while they are read.
//! - **SigV4**: signed in the enclave with the `aws-sigv4` crate (service
//!   `kms`, the configured region, `X-Amz-Target: TrentService.<Op>`,
//!   `Content-Type: application/x-amz-json-1.1`, `X-Amz-Security-Token` for
//!   temporary credentials).
//! - **Credentials** ([`credentials`]): from [`ParentLink::credentials`],
//!   cached, refreshed [`E2eConfig::credential_refresh_margin`] (5 min)
//!   before they expire and when KMS answers `ExpiredTokenException`;
//!   zeroized, never logged.
//! - **Clock**: a skew offset corrected from the `Date` header of every KMS
//!   response (authenticated by TLS); requests are signed at now + skew, and
//!   a request refused for its time (`InvalidSignatureException` "Signature
//!   expired", `RequestExpired`, ...) is signed again and retried once within
//!   its deadline, as the AWS SDKs do.
//! - **Key pinning** ([`keybroker_common::key_allowlist`]): requests carry
//!   full ARNs resolved against [`E2eConfig::allowlist`] (or are refused
//!   before anything is sent); `Decrypt` always sends `KeyId`; the `KeyId` of
//!   every response must be an allowed key ARN (and the very key sent, when
//!   a key ARN was sent), else [`crate::Error::KeyNotAllowed`] and no
//!   plaintext.
//! - **Retries**, within the call's deadline: 5xx, throttling and
//!   `DependencyTimeoutException` with the client's back-off; a request that
//!   was never sent (no tunnel, a pooled connection that had closed) again;
//!   a request lost in flight once if the operation is read-only at KMS (as
//!   in broker mode). Certificate failures and other KMS errors are not
//!   retried.
//!
//! # Why `aws-sigv4` and not `aws-sdk-kms` with a custom connector
//!
//! - The request and response types already exist
//!   ([`keybroker_common::kms`], shared with broker mode, the endpoint and
//!   the mock KMS), and so does the `Recipient`/CMS path in the client: with
//!   the SDK every call would be converted twice and the `CiphertextForRecipient`
//!   handling duplicated.
//! - Fewer moving parts in the measured image: no SDK runtime, orchestrator,
//!   retry and identity-cache layers, endpoint resolver or default credential
//!   chain (which must never run in the enclave: credentials come from the
//!   parent only, and the endpoint only from the image).
//! - Control of what matters here: connection reuse over parent tunnels (one
//!   pool, handshake counting), response size limits, the `Date`-based clock
//!   skew, and the `KeyId` check on every response before anything is
//!   decrypted.

pub mod config;
pub mod credentials;
pub mod http;
pub mod link;
pub mod tls;
pub mod vsock_proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::Full;
use keybroker_common::key_allowlist::{KeyAllowlist, KeyPinError};
use keybroker_common::kms::{KmsError, KmsErrorCode, KmsRequest, KmsResponse, Operation, aws_json};
use keybroker_common::protocol::ProtocolError;
use tokio::time::Instant;

pub use config::KmsSettings;
pub use credentials::AwsCredentials;
pub use http::KmsUrl;
#[cfg(feature = "mock-nsm")]
pub use link::DirectLink;
pub use link::{BoxFuture, ParentLink, ProxyLink};
pub use tls::TrustRoots;
pub use vsock_proxy::VsockProxyLink;

use crate::Error;
use crate::retry::{self, Attempts, Decision, Failure, Policy};
use credentials::CredentialCache;
use http::{Pool, SendFailure};

/// Default [`E2eConfig::max_response_len`]: 1 MiB (KMS answers are a few KiB).
pub const DEFAULT_MAX_RESPONSE_LEN: usize = 1 << 20;
/// Default [`E2eConfig::credential_refresh_margin`].
pub const DEFAULT_CREDENTIAL_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Default [`E2eConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`E2eConfig::max_idle_connections`].
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 256;

/// How the enclave reaches KMS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The parent proxy relays typed requests (trusts the parent with
    /// integrity).
    Broker,
    /// The enclave speaks TLS to KMS through a byte tunnel (this module).
    /// The default: the parent is untrusted (DESIGN.md, "Trust model").
    #[default]
    E2e,
}

/// Configuration of end-to-end mode. Everything here must come from the
/// enclave image (its command line or a configuration file in it), never
/// from the parent at run time.
#[derive(Clone, Debug)]
pub struct E2eConfig {
    /// The SigV4 signing region.
    pub region: String,
    /// The KMS endpoint (default `https://kms.REGION.amazonaws.com`).
    pub endpoint: KmsUrl,
    /// The keys requests may name and responses must carry.
    pub allowlist: KeyAllowlist,
    /// The certificate authorities trusted for the endpoint.
    pub trust: TrustRoots,
    /// Largest response body read.
    pub max_response_len: usize,
    /// Credentials are refreshed this long before they expire.
    pub credential_refresh_margin: Duration,
    /// Idle pooled connections older than this are closed.
    pub idle_timeout: Duration,
    /// Most idle connections kept.
    pub max_idle_connections: usize,
}

impl E2eConfig {
    /// The regional endpoint of `region`, the Amazon Trust Services roots,
    /// default limits.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid region or an empty
    /// allowlist (nothing could be used); [`Error::Tls`] if the roots do not
    /// load.
    pub fn new(region: &str, allowlist: KeyAllowlist) -> Result<Self, Error> {
        if allowlist.is_empty() {
            return Err(Error::InvalidArgument(
                "e2e mode needs at least one allowed key (--allow-key ARN)".into(),
            ));
        }
        Ok(Self {
            region: region.to_owned(),
            endpoint: KmsUrl::regional(region)?,
            allowlist,
            trust: TrustRoots::amazon()?,
            max_response_len: DEFAULT_MAX_RESPONSE_LEN,
            credential_refresh_margin: DEFAULT_CREDENTIAL_REFRESH_MARGIN,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_idle_connections: DEFAULT_MAX_IDLE_CONNECTIONS,
        })
    }

    /// Uses `endpoint` instead of the regional one (FIPS, a VPC endpoint
    /// name, a local mock); the signing region stays.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: KmsUrl) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Trusts `trust` instead of the Amazon roots alone.
    #[must_use]
    pub fn with_trust(mut self, trust: TrustRoots) -> Self {
        self.trust = trust;
        self
    }
}

/// Counters of the end-to-end transport.
#[derive(Default)]
pub(crate) struct E2eCounters {
    pub(crate) requests_sent: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) credential_fetches: AtomicU64,
}

/// The end-to-end transport of a [`crate::Client`].
pub(crate) struct E2eTransport {
    config: E2eConfig,
    link: Arc<dyn ParentLink>,
    pool: Pool,
    credentials: CredentialCache,
    /// Server time minus local time, in milliseconds.
    skew_ms: AtomicI64,
    pub(crate) counters: E2eCounters,
}

/// Errors KMS (and AWS services generally) answer for a request time too far
/// from theirs.
fn is_clock_error(e: &KmsError) -> bool {
    if e.is(KmsErrorCode::InvalidSignature) {
        let m = e.message.to_ascii_lowercase();
        return m.contains("signature expired") || m.contains("signature not yet current");
    }
    // AWS-wide codes, not KMS error types.
    matches!(
        e.code.as_str(),
        "RequestExpired" | "RequestTimeTooSkewed" | "RequestInTheFuture"
    )
}

/// What one attempt produced.
enum Attempt {
    Done(Box<Result<KmsResponse, Error>>),
    /// Send again now (clock corrected, credentials refreshed).
    Again,
    /// Send again after a back-off, if the deadline allows; else this error.
    Backoff(Error),
    /// The request may have reached KMS; retried once if read-only.
    Lost(Error),
}

impl Attempt {
    fn done(r: Result<KmsResponse, Error>) -> Self {
        Self::Done(Box::new(r))
    }
}

impl E2eTransport {
    pub(crate) fn new(config: E2eConfig, link: Arc<dyn ParentLink>) -> Result<Self, Error> {
        let tls = config.trust.client_config()?;
        let pool = Pool::new(
            config.endpoint.clone(),
            tls,
            config.max_idle_connections,
            config.idle_timeout,
            config.max_response_len,
        )?;
        Ok(Self {
            credentials: CredentialCache::new(config.credential_refresh_margin),
            config,
            link,
            pool,
            skew_ms: AtomicI64::new(0),
            counters: E2eCounters::default(),
        })
    }

    pub(crate) fn config(&self) -> &E2eConfig {
        &self.config
    }

    pub(crate) fn tls_handshakes(&self) -> u64 {
        self.pool.handshakes()
    }

    /// Server time minus local time as last measured.
    pub(crate) fn clock_skew(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }

    /// The best estimate of KMS's clock.
    fn now(&self) -> SystemTime {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let local = SystemTime::now();
        let d = Duration::from_millis(skew.unsigned_abs());
        if skew >= 0 {
            local + d
        } else {
            local.checked_sub(d).unwrap_or(local)
        }
    }

    /// Takes the skew from a response's `Date` (1 s resolution, so changes
    /// under a second are ignored).
    fn observe_date(&self, date: SystemTime) {
        let local = SystemTime::now();
        let skew = match date.duration_since(local) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let old = self.skew_ms.load(Ordering::Relaxed);
        if (skew - old).abs() > 1000 {
            if skew.abs() > 60_000 {
                tracing::info!(skew_ms = skew, "correcting the clock skew to KMS");
            }
            self.skew_ms.store(skew, Ordering::Relaxed);
        }
    }

    /// Fetches credentials (if none are cached), within `timeout`.
    pub(crate) async fn prefetch_credentials(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let (_, fetched) = self
            .credentials
            .get(&*self.link, self.now(), deadline)
            .await?;
        if fetched {
            self.counters
                .credential_fetches
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Opens the first connection to KMS (tunnel and TLS handshake) ahead of
    /// the first call, within `timeout`; a failure is left to that call.
    pub(crate) async fn warm_up(&self, timeout: Duration) {
        self.pool.warm_up(&*self.link, timeout).await;
    }

    /// Rewrites the request's `KeyId` to the full allowed ARN (key pinning);
    /// returns what was sent.
    fn pin_request(&self, request: &mut KmsRequest) -> Result<Option<String>, Error> {
        let op = request.operation();
        let allow = &self.config.allowlist;
        let Some(slot) = request.key_id_mut() else {
            return Ok(None);
        };
        let resolved = match slot.as_deref() {
            Some(k) => allow.resolve(k)?,
            None if op == Operation::Decrypt => allow.default_decrypt_key().ok_or_else(|| {
                Error::InvalidArgument(
                    "Decrypt in e2e mode needs a KeyId (key pinning): the allowlist names \
                     more than one key"
                        .into(),
                )
            })?,
            // KMS refuses it (ValidationException); nothing to pin.
            None => return Ok(None),
        };
        *slot = Some(resolved.clone());
        Ok(Some(resolved))
    }

    /// The response's `KeyId` must be an allowed key ARN, and the key sent
    /// when a key ARN was sent.
    fn check_response(
        &self,
        response: &KmsResponse,
        sent: Option<&str>,
    ) -> Result<(), KeyPinError> {
        if response.operation() == Operation::GenerateRandom {
            return Ok(());
        }
        let got = response.key_id();
        self.config.allowlist.check_response_key(got)?;
        if let Some(sent) = sent.filter(|s| s.contains(":key/"))
            && got != Some(sent)
        {
            return Err(KeyPinError::ResponseKeyNotAllowed(
                got.unwrap_or_default().chars().take(128).collect(),
            ));
        }
        Ok(())
    }

    /// A signed HTTP request for `op` with `body`.
    fn signed_request(
        &self,
        op: Operation,
        body: &Bytes,
        identity: &aws_smithy_runtime_api::client::identity::Identity,
    ) -> Result<::http::Request<Full<Bytes>>, Error> {
        let authority = self.pool.url().authority();
        let target = format!("{}{}", aws_json::TARGET_PREFIX, op.as_str());
        let uri = format!("https://{authority}/");
        let headers = [
            ("host", authority.as_str()),
            ("content-type", aws_json::CONTENT_TYPE),
            ("x-amz-target", target.as_str()),
        ];
        let signing_error =
            |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("SigV4: {e}"));
        let signable = SignableRequest::new(
            "POST",
            &uri,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| signing_error(&e))?;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.config.region)
            .name("kms")
            .time(self.now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| signing_error(&e))?
            .into_parts();
        let mut request = ::http::Request::builder()
            .method(::http::Method::POST)
            .uri("/")
            .header(::http::header::HOST, authority.as_str())
            .header(::http::header::CONTENT_TYPE, aws_json::CONTENT_TYPE)
            .header("x-amz-target", target.as_str())
            .header(
                ::http::header::USER_AGENT,
                concat!("keybroker-enclave/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body.clone()))
            .map_err(|e| signing_error(&e))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }

    /// One call (see the module docs for retries), ending by `deadline`.
    pub(crate) async fn call(
        &self,
        mut request: KmsRequest,
        deadline: Instant,
        timeout: Duration,
        client: &Policy,
    ) -> Result<KmsResponse, Error> {
        let op = request.operation();
        let sent = self.pin_request(&mut request)?;
        let body = Bytes::from(
            request
                .to_json()
                .map_err(|e| Error::Internal(format!("request body: {e}")))?,
        );
        let mut clock_retried = false;
        let mut token_retried = false;
        let mut lost_retried = false;
        let mut backoffs: u32 = 0;
        loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                self.attempt(
                    op,
                    &body,
                    sent.as_deref(),
                    client,
                    &mut clock_retried,
                    &mut token_retried,
                ),
            )
            .await;
            let attempt = match attempt {
                Err(_) => {
                    return Err(Error::Timeout {
                        operation: op,
                        after: timeout,
                    });
                }
                Ok(a) => a,
            };
            match attempt {
                Attempt::Done(r) => return *r,
                Attempt::Again => {}
                Attempt::Backoff(e) => {
                    let pause = client.backoff(backoffs);
                    backoffs = backoffs.saturating_add(1);
                    if Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(operation = op.as_str(), error = %e, "retrying after back-off");
                    tokio::time::sleep(pause).await;
                }
                Attempt::Lost(e) => {
                    let attempts = Attempts {
                        retried: lost_retried,
                        busy_answers: 0,
                    };
                    if retry::decide(attempts, Failure::Lost, op) == Decision::GiveUp {
                        tracing::debug!(operation = op.as_str(), error = %e, "KMS connection lost");
                        return Err(Error::ConnectionLost { operation: op });
                    }
                    lost_retried = true;
                }
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn attempt(
        &self,
        op: Operation,
        body: &Bytes,
        sent: Option<&str>,
        client: &Policy,
        clock_retried: &mut bool,
        token_retried: &mut bool,
    ) -> Attempt {
        let deadline = Instant::now() + client.connect_timeout;
        let creds = match self
            .credentials
            .get(&*self.link, self.now(), deadline)
            .await
        {
            Ok((c, fetched)) => {
                if fetched {
                    self.counters
                        .credential_fetches
                        .fetch_add(1, Ordering::Relaxed);
                }
                c
            }
            Err(e) => return Attempt::Backoff(e),
        };
        let request = match self.signed_request(op, body, &creds.identity) {
            Ok(r) => r,
            Err(e) => return Attempt::done(Err(e)),
        };
        self.counters.requests_sent.fetch_add(1, Ordering::Relaxed);
        let response = match self
            .pool
            .send(&*self.link, request, client.connect_timeout)
            .await
        {
            Ok(r) => r,
            Err(SendFailure::NotSent(e)) => return Attempt::Backoff(e),
            Err(SendFailure::Fatal(e)) => return Attempt::done(Err(e)),
            Err(SendFailure::TooLarge) => {
                return Attempt::done(Err(Error::InvalidResponse {
                    operation: op,
                    reason: "KMS response body over the size limit",
                }));
            }
            Err(SendFailure::Lost(e)) => return Attempt::Lost(e),
        };
        if let Some(date) = response.date {
            self.observe_date(date);
        }
        if response.status == 200 {
            let parsed =
                KmsResponse::from_json(op, &response.body).map_err(|_| Error::InvalidResponse {
                    operation: op,
                    reason: "malformed KMS response body",
                });
            return Attempt::done(parsed.and_then(|r| {
                if r.has_plaintext() {
                    return Err(ProtocolError::PlaintextOnWire { operation: op }.into());
                }
                self.check_response(&r, sent)?;
                Ok(r)
            }));
        }
        let e = kms_error(response.status, &response.body);
        if is_clock_error(&e) && !*clock_retried {
            *clock_retried = true;
            tracing::info!(code = %e.code, "request time refused by KMS; signing again");
            return Attempt::Again;
        }
        if e.is(KmsErrorCode::ExpiredToken) && !*token_retried {
            *token_retried = true;
            self.credentials.invalidate(&creds);
            return Attempt::Again;
        }
        if e.retryable {
            return Attempt::Backoff(Error::Common(e.into()));
        }
        Attempt::done(Err(Error::Common(e.into())))
    }
}

/// A KMS error answer (`{"__type": ..., "message": ...}`) with its HTTP
/// status; retryable if 5xx or throttling, as the AWS SDKs decide.
fn kms_error(status: u16, body: &[u8]) -> KmsError {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "__type")]
        code: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let shape = serde_json::from_slice::<Shape>(body).ok();
    let (code, message) = shape.map_or((None, None), |s| (s.code, s.message));
    let code = code.map_or_else(
        || {
            if status >= 500 {
                KmsErrorCode::KmsInternal.into()
            } else {
                format!("HttpStatus{status}")
            }
        },
        |c| KmsError::normalize_code(&c).to_owned(),
    );
    let message: String = message.unwrap_or_default().chars().take(1024).collect();
    let mut e = KmsError::new(code, message);
    e.status = status;
    e.retryable = e.retryable || status >= 500;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_keep_code_status_and_retryability() {
        let e = kms_error(
            400,
            br#"{"__type":"com.amazonaws.kms#ThrottlingException","message":"Rate exceeded"}"#,
        );
        assert_eq!(
            (e.code.as_str(), e.status, e.retryable),
            ("ThrottlingException", 400, true)
        );
        let e = kms_error(503, br#"{"__type":"DependencyTimeoutException"}"#);
        assert!(e.retryable);
        let e = kms_error(400, br#"{"__type":"AccessDeniedException","Message":"no"}"#);
        assert_eq!((e.retryable, e.message.as_str()), (false, "no"));
        let e = kms_error(502, b"<html>");
        assert_eq!(
            (e.code.as_str(), e.retryable),
            ("KMSInternalException", true)
        );
        assert!(is_clock_error(&KmsError::new(
            "InvalidSignatureException",
            "Signature expired: 20260101T000000Z is now earlier than ..."
        )));
        assert!(!is_clock_error(&KmsError::new(
            "InvalidSignatureException",
            "The request signature we calculated does not match"
        )));
    }
}

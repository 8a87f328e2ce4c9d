//! A local AWS KMS for development and tests that speaks the real protocol
//! (AWS JSON 1.1, `TrentService`) and honours `Recipient` (Nitro Enclaves
//! attestation) on `Decrypt`, `GenerateDataKey`, `GenerateDataKeyPair`,
//! `GenerateRandom` and `DeriveSharedSecret`.
//!
//! Operations: `GenerateDataKey`, `GenerateDataKeyWithoutPlaintext`,
//! `GenerateDataKeyPair`, `GenerateDataKeyPairWithoutPlaintext`, `Encrypt`,
//! `Decrypt` (with `DryRunModifiers` `IGNORE_CIPHERTEXT`), `ReEncrypt`,
//! `GenerateRandom`, `GetPublicKey`, `DeriveSharedSecret`, `CreateKey`,
//! `DescribeKey`, `ListKeys`, `CreateAlias`, `ListAliases`, `DeleteAlias`,
//! `EnableKey`, `DisableKey`, `ScheduleKeyDeletion`, `CancelKeyDeletion`,
//! `PutKeyPolicy`, `GetKeyPolicy`.
//!
//! Key specs ([`asymmetric`]): `SYMMETRIC_DEFAULT` (`ENCRYPT_DECRYPT`);
//! `ECC_NIST_P256`, `ECC_NIST_P384`, `ECC_NIST_P521` and `ECC_SECG_P256K1`
//! for `KEY_AGREEMENT` (`GetPublicKey`, `DeriveSharedSecret` with `ECDH`;
//! KMS itself documents only `SIGN_VERIFY` for `ECC_SECG_P256K1`);
//! `RSA_2048`, `RSA_3072` and `RSA_4096` for `ENCRYPT_DECRYPT`
//! (`GetPublicKey`, `Encrypt` / `Decrypt` with `RSAES_OAEP_SHA_1` and
//! `RSAES_OAEP_SHA_256`). Symmetric keys' responses carry `KeyMaterialId`.
//!
//! Run it in-process:
//!
//! ```no_run
//! # async fn f() -> Result<(), keybroker_harness::Error> {
//! use keybroker_harness::mock_kms::{MockKms, MockKmsConfig};
//! let running = MockKms::new(MockKmsConfig::default())?.spawn("127.0.0.1:0").await?;
//! let endpoint = running.endpoint(); // "http://127.0.0.1:PORT"
//! # running.shutdown().await; Ok(()) }
//! ```
//!
//! or as the `keybroker-mock-kms` binary (see `tests/README.md`).
//!
//! By default it serves plain HTTP and checks only that a SigV4
//! `Authorization` header is present. For the enclave's end-to-end mode
//! (TLS and SigV4 from inside the enclave) it can also serve HTTPS under a
//! test CA it makes ([`MockKmsConfig::tls`], [`tls::MockKmsTls`]), verify
//! SigV4 signatures as KMS does ([`MockKmsConfig::credentials`],
//! [`sigv4`]) and run its clock off by some seconds
//! ([`MockKmsConfig::clock_offset_secs`]; every response carries a `Date`
//! from that clock).
//!
//! ```no_run
//! # async fn f() -> Result<(), keybroker_harness::Error> {
//! use keybroker_harness::mock_kms::{MockKms, MockKmsConfig, MockKmsCredentials, MockKmsTls};
//! let dir = std::path::Path::new("/tmp/mock-kms-tls");
//! let tls = MockKmsTls::load_or_create(dir, &["kms.us-east-1.amazonaws.com".into()])?;
//! let running = MockKms::new(MockKmsConfig {
//!     tls: Some(tls),
//!     credentials: Some(MockKmsCredentials::new("AKIDTEST", "secret", None)),
//!     ..MockKmsConfig::default()
//! })?
//! .spawn("127.0.0.1:0")
//! .await?;
//! let endpoint = running.endpoint(); // "https://127.0.0.1:PORT"
//! let ca = running.ca_pem_path(); // Some(".../ca.pem"): what clients trust
//! # running.shutdown().await; Ok(()) }
//! ```
//!
//! Modules: [`server`] (HTTP), [`sigv4`] (signature verification), [`tls`]
//! (test CA, HTTPS listener), [`ops`] (operations and validation; the
//! asymmetric-key operations in its `asym` submodule), [`asymmetric`]
//! (asymmetric key specs and their cryptography),
//! [`store`] (keys, aliases, state and seed files), [`policy`] (key policy
//! evaluation), [`ciphertext`] (the blob format), [`recipient`]
//! (attestation and `CiphertextForRecipient`).

pub mod asymmetric;
pub mod ciphertext;
pub mod cli;
pub mod ops;
pub mod policy;
pub mod recipient;
mod server;
pub mod sigv4;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, ToSocketAddrs};

use crate::Error;
use ops::{Engine, EngineConfig};
use recipient::RecipientVerifier;
use server::ServerState;
pub use sigv4::MockKmsCredentials;
use store::{SeedFile, Store};
pub use tls::MockKmsTls;

/// Default account in ARNs (the AWS documentation's example account).
pub const DEFAULT_ACCOUNT_ID: &str = "111122223333";
/// Default region in ARNs.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default request body limit: 1 MiB (a 256 KiB attestation document is
/// about 350 KiB in base64).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default maximum age of an attestation document: 5 minutes.
pub const DEFAULT_MAX_ATTESTATION_AGE: Duration = Duration::from_secs(300);

/// Configuration of a mock KMS.
#[derive(Debug, Clone)]
pub struct MockKmsConfig {
    /// Region used in ARNs (`us-east-1`).
    pub region: String,
    /// Account used in ARNs and the default key policy (`111122223333`).
    pub account_id: String,
    /// The principal every request is evaluated as, in key policies
    /// (`arn:aws:iam::111122223333:root`). The mock does not map access keys
    /// to principals.
    pub caller_principal: String,
    /// Persist keys, aliases and policies to this JSON file (secret!).
    pub state_file: Option<PathBuf>,
    /// Create these keys at start (see [`store`] for the format).
    pub seed_file: Option<PathBuf>,
    /// Extra trusted attestation roots (DER), beside the AWS Nitro Enclaves
    /// Root-G1 which is always trusted.
    pub attestation_roots_der: Vec<Vec<u8>>,
    /// Attestation documents older than this are rejected.
    pub max_attestation_age: Duration,
    /// Request bodies larger than this are rejected.
    pub max_body_bytes: usize,
    /// Accept requests without a SigV4 `Authorization` header (curl).
    /// Cannot be combined with [`Self::credentials`].
    pub allow_unsigned: bool,
    /// Serve HTTPS with this test CA's server certificate instead of plain
    /// HTTP ([`MockKmsTls::load_or_create`]).
    pub tls: Option<MockKmsTls>,
    /// Verify SigV4 signatures (service `kms`, region [`Self::region`])
    /// against these credentials, refusing as KMS does; `None`: any
    /// credentials are accepted, unverified.
    pub credentials: Option<MockKmsCredentials>,
    /// Seconds the mock's clock is ahead of the system clock (negative:
    /// behind). It decides whether a signature has expired and is the
    /// `Date` header of every response.
    pub clock_offset_secs: i64,
}

impl Default for MockKmsConfig {
    fn default() -> Self {
        Self {
            region: DEFAULT_REGION.into(),
            account_id: DEFAULT_ACCOUNT_ID.into(),
            caller_principal: format!("arn:aws:iam::{DEFAULT_ACCOUNT_ID}:root"),
            state_file: None,
            seed_file: None,
            attestation_roots_der: Vec::new(),
            max_attestation_age: DEFAULT_MAX_ATTESTATION_AGE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            allow_unsigned: false,
            tls: None,
            credentials: None,
            clock_offset_secs: 0,
        }
    }
}

impl MockKmsConfig {
    /// Adds the certificates of a PEM file's text as trusted attestation
    /// roots.
    pub fn add_attestation_roots_pem(&mut self, pem: &str) -> Result<&mut Self, Error> {
        let ders = pem_certificates(pem)?;
        self.attestation_roots_der.extend(ders);
        Ok(self)
    }
}

/// Decodes every `-----BEGIN CERTIFICATE-----` block of a PEM text (RFC 7468,
/// [`keybroker_common::pem::parse_blocks`], at most
/// [`keybroker_common::pem::MAX_PEM_LEN`] bytes); at least one.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    use keybroker_common::pem;
    pem::parse_blocks(pem.as_bytes(), pem::CERTIFICATE, pem::MAX_PEM_LEN).map_err(|e| {
        Error::Config(match e {
            pem::PemError::NoBlock { .. } => "no CERTIFICATE block in the PEM text".into(),
            e => format!("attestation roots: {e}"),
        })
    })
}

/// A configured mock KMS, ready to serve.
#[derive(Debug, Clone)]
pub struct MockKms {
    state: Arc<ServerState>,
    tls: Option<MockKmsTls>,
}

#[allow(clippy::cast_precision_loss)] // epoch milliseconds fit an f64
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1000.0)
}

impl MockKms {
    /// Loads the state file (if it exists), applies the seed file, and
    /// prepares the attestation verifier.
    ///
    /// # Errors
    /// [`Error::Config`] for `allow_unsigned` together with `credentials`,
    /// and for bad attestation roots; [`Error::State`] / [`Error::Seed`] for
    /// the state and seed files.
    pub fn new(config: MockKmsConfig) -> Result<Self, Error> {
        if config.allow_unsigned && config.credentials.is_some() {
            return Err(Error::Config(
                "allow_unsigned (--allow-unsigned) and credentials (--access-key-id) exclude each other"
                    .into(),
            ));
        }
        let mut store = match &config.state_file {
            Some(p) if p.exists() => Store::load(p, &config.region, &config.account_id)?,
            _ => Store::new(&config.region, &config.account_id),
        };
        if let Some(seed) = &config.seed_file {
            store.apply_seed(&SeedFile::load(seed)?, now_secs())?;
        }
        if let Some(p) = &config.state_file {
            store.save(p)?;
        }
        let max_age_ms = u64::try_from(config.max_attestation_age.as_millis()).unwrap_or(u64::MAX);
        let recipient = RecipientVerifier::new(
            config.attestation_roots_der.iter().map(Vec::as_slice),
            max_age_ms,
        )?;
        let engine = Engine::new(
            EngineConfig {
                region: config.region.clone(),
                account_id: config.account_id.clone(),
                caller_principal: config.caller_principal.clone(),
                state_file: config.state_file.clone(),
            },
            store,
            recipient,
        );
        Ok(Self {
            state: Arc::new(ServerState {
                engine,
                max_body_bytes: config.max_body_bytes,
                allow_unsigned: config.allow_unsigned,
                request_counter: std::sync::atomic::AtomicU64::new(1),
                credentials: config.credentials,
                region: config.region,
                clock_offset_secs: config.clock_offset_secs,
            }),
            tls: config.tls,
        })
    }

    /// Calls an operation directly, without HTTP: `op` is the operation
    /// name (`"GenerateDataKey"`), `body` the JSON request.
    pub fn call(
        &self,
        op: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, keybroker_common::kms::KmsError> {
        self.state.engine.handle(op, body.to_string().as_bytes())
    }

    fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(server::handle)
            .with_state(Arc::clone(&self.state))
    }

    /// `https` with [`MockKmsConfig::tls`], else `http`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves on `listener` (HTTPS if [`MockKmsConfig::tls`] is set) until
    /// the future is dropped.
    pub async fn serve(self, listener: TcpListener) -> Result<(), Error> {
        self.serve_until(listener, std::future::pending()).await
    }

    /// Serves on `listener` until `shutdown` completes, then waits for open
    /// connections to finish.
    async fn serve_until(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let router = self.router();
        let result = match &self.tls {
            Some(tls) => {
                let listener = tls::TlsListener::new(listener, tls.server_config())
                    .map_err(|e| Error::Io(format!("cannot read the bound address: {e}")))?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        result.map_err(|e| Error::Io(format!("server failed: {e}")))
    }

    /// Binds `addr` (use port 0 for any free port) and serves in a
    /// background task.
    pub async fn spawn(self, addr: impl ToSocketAddrs) -> Result<RunningMockKms, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Io(format!("cannot bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Io(format!("cannot read the bound address: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let scheme = self.scheme();
        let ca_pem_path = self.tls.as_ref().map(MockKmsTls::ca_pem_path);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = self.serve_until(listener, shutdown).await {
                tracing::error!(error = %e, "mock KMS server failed");
            }
        });
        Ok(RunningMockKms {
            addr,
            scheme,
            ca_pem_path,
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

/// A mock KMS serving in the background. Dropping it stops the server.
#[derive(Debug)]
pub struct RunningMockKms {
    addr: SocketAddr,
    scheme: &'static str,
    ca_pem_path: Option<PathBuf>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningMockKms {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, or `https://ADDR` when serving TLS, for an SDK
    /// endpoint override.
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The test CA's root certificate (`DIR/ca.pem`) when serving TLS.
    pub fn ca_pem_path(&self) -> Option<&std::path::Path> {
        self.ca_pem_path.as_deref()
    }

    /// Stops accepting connections and waits (up to 5 s, then aborts) for
    /// open connections to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for RunningMockKms {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_decode() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAQID\nBA==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem).unwrap(), vec![vec![1, 2, 3, 4]]);
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\nAQID\n").is_err());
        assert!(
            MockKmsConfig::default()
                .add_attestation_roots_pem("nothing")
                .is_err()
        );
    }
}

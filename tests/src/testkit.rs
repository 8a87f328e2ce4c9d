//! The whole stack in one process, for tests and benchmarks: the mock KMS
//! (trusting a fresh mock NSM CA as attestation root), a key created through
//! `aws-sdk-kms` whose policy requires a PCR0, the parent proxy relaying to
//! the mock KMS through `SdkKmsBackend` on `127.0.0.1:0`, and an enclave
//! [`Client`] whose recipient keys the mock NSM attests.
//!
//! [`local`](crate::local) runs the same components as separate processes;
//! this module keeps them in process so tests can reach inside (counters,
//! proxy restarts, clients with other PCRs).
//!
//! ```no_run
//! # async fn f() -> Result<(), keybroker_harness::Error> {
//! use keybroker_harness::testkit::{InProcessStack, gdk};
//! let stack = InProcessStack::builder().start().await?;
//! let key = stack.client.generate_data_key(gdk(&stack.key_arn)).await;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use keybroker_common::address::Address;
use keybroker_common::kms::{DataKeySpec, GenerateDataKeyRequest};
use keybroker_enclave::{
    Client, ClientConfig, KmsEndpoint, MockCa, MockNsm, MockNsmConfig, RecipientKeys,
    RecipientKeysConfig,
};
use keybroker_proxy::backend::SdkKmsBackend;
use keybroker_proxy::metrics::Metrics;
use keybroker_proxy::server::{Proxy, ProxyConfig, ProxyHandle};

use crate::Error;
use crate::local::{enclave_key_policy, kms_client};
use crate::mock_kms::{DEFAULT_ACCOUNT_ID, MockKms, MockKmsConfig, RunningMockKms};

/// The PCR0 the enclave reports and the key policy requires unless a test
/// says otherwise.
pub const PCR0: [u8; 48] = [0x42; 48];

/// Alias of the stack's key.
pub const ALIAS: &str = "alias/keybroker-test";

/// How to build an [`InProcessStack`].
pub struct StackBuilder {
    pcr0_in_policy: [u8; 48],
    enclave_pcr0: [u8; 48],
    proxy_tweak: Box<dyn FnOnce(&mut ProxyConfig) + Send>,
    policy: Option<serde_json::Value>,
    ca_dir: Option<std::path::PathBuf>,
    metrics: Option<Arc<Metrics>>,
}

impl core::fmt::Debug for StackBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StackBuilder")
            .field("pcr0_in_policy", &hex::encode(self.pcr0_in_policy))
            .field("enclave_pcr0", &hex::encode(self.enclave_pcr0))
            .finish_non_exhaustive()
    }
}

impl StackBuilder {
    /// The PCR0 the key policy requires (default [`PCR0`]).
    pub fn pcr0_in_policy(mut self, pcr0: [u8; 48]) -> Self {
        self.pcr0_in_policy = pcr0;
        self
    }

    /// The PCR0 the enclave's mock NSM reports (default [`PCR0`]).
    pub fn enclave_pcr0(mut self, pcr0: [u8; 48]) -> Self {
        self.enclave_pcr0 = pcr0;
        self
    }

    /// A key policy to create the key with, instead of
    /// [`enclave_key_policy`] for `pcr0_in_policy`.
    pub fn key_policy(mut self, policy: serde_json::Value) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Keeps the mock NSM CA in `dir` (created if absent) instead of in
    /// memory, so that processes such as `keybroker-enclave --mock-nsm-ca DIR`
    /// are attested by the same root.
    pub fn ca_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.ca_dir = Some(dir.into());
        self
    }

    /// Has the proxy record into `metrics` (which the test then serves or
    /// reads), instead of its own.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adjusts the proxy's configuration before it binds.
    pub fn proxy_config(mut self, tweak: impl FnOnce(&mut ProxyConfig) + Send + 'static) -> Self {
        self.proxy_tweak = Box::new(tweak);
        self
    }

    /// Starts the mock KMS, creates the key and its alias, starts the proxy
    /// and connects an enclave client.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Io`] when a component fails to start.
    pub async fn start(self) -> Result<InProcessStack, Error> {
        let ca = match &self.ca_dir {
            Some(dir) => MockCa::load_or_create(dir),
            None => MockCa::generate(),
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        let mut cfg = MockKmsConfig::default();
        cfg.attestation_roots_der.push(ca.root_der().to_vec());
        let kms = MockKms::new(cfg)?.spawn("127.0.0.1:0").await?;
        let sdk = kms_client(&kms.endpoint());

        let policy = self.policy.unwrap_or_else(|| {
            enclave_key_policy(DEFAULT_ACCOUNT_ID, &hex::encode(self.pcr0_in_policy))
        });
        let created = sdk
            .create_key()
            .description("keybroker in-process test key")
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| Error::Io(format!("CreateKey: {e:?}")))?;
        let key_arn = created
            .key_metadata()
            .and_then(|m| m.arn())
            .ok_or_else(|| Error::Io("CreateKey returned no ARN".into()))?
            .to_owned();
        sdk.create_alias()
            .alias_name(ALIAS)
            .target_key_id(&key_arn)
            .send()
            .await
            .map_err(|e| Error::Io(format!("CreateAlias: {e:?}")))?;

        let mut config = ProxyConfig::new(Address::Tcp("127.0.0.1:0".into()));
        (self.proxy_tweak)(&mut config);
        let proxy = match self.metrics {
            None => start_proxy(config, &sdk).await?,
            Some(metrics) => Proxy::bind(config, SdkKmsBackend::new(sdk.clone()))
                .await
                .map_err(|e| Error::Io(format!("proxy bind: {e}")))?
                .with_metrics(metrics)
                .spawn(),
        };
        let addr = proxy.local_addr().clone();
        let client = connect_enclave(
            &ca,
            &addr,
            MockNsmConfig::default().with_pcr(0, self.enclave_pcr0),
        )
        .await?;
        Ok(InProcessStack {
            ca,
            kms,
            sdk,
            key_arn,
            proxy,
            addr,
            client,
        })
    }
}

/// Binds and spawns a proxy relaying to the mock KMS behind `sdk`.
///
/// # Errors
/// [`Error::Io`] when the proxy cannot bind.
pub async fn start_proxy(
    config: ProxyConfig,
    sdk: &aws_sdk_kms::Client,
) -> Result<ProxyHandle, Error> {
    Ok(Proxy::bind(config, SdkKmsBackend::new(sdk.clone()))
        .await
        .map_err(|e| Error::Io(format!("proxy bind: {e}")))?
        .spawn())
}

/// A running in-process stack (see the [module docs](self)). Dropping it
/// stops the mock KMS and the proxy.
pub struct InProcessStack {
    /// The mock NSM CA the mock KMS trusts.
    pub ca: MockCa,
    /// The mock KMS (kept serving while the stack lives).
    pub kms: RunningMockKms,
    /// SDK client of the mock KMS (administration: DisableKey, ...).
    pub sdk: aws_sdk_kms::Client,
    /// ARN of the key (alias [`ALIAS`]).
    pub key_arn: String,
    /// The running proxy.
    pub proxy: ProxyHandle,
    /// The address the proxy listens on.
    pub addr: Address,
    /// The enclave's client (mock NSM reporting the builder's enclave PCR0).
    pub client: Client,
}

impl core::fmt::Debug for InProcessStack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InProcessStack")
            .field("kms", &self.kms.endpoint())
            .field("key_arn", &self.key_arn)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl InProcessStack {
    /// A builder with the defaults: policy and enclave both at [`PCR0`].
    pub fn builder() -> StackBuilder {
        StackBuilder {
            pcr0_in_policy: PCR0,
            enclave_pcr0: PCR0,
            proxy_tweak: Box::new(|_| {}),
            policy: None,
            ca_dir: None,
            metrics: None,
        }
    }

    /// Another enclave client of this stack whose mock NSM reports `pcr0`.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot connect.
    pub async fn client_with_pcr0(&self, pcr0: [u8; 48]) -> Result<Client, Error> {
        connect_enclave(
            &self.ca,
            &self.addr,
            MockNsmConfig::default().with_pcr(0, pcr0),
        )
        .await
    }
}

/// Serves `endpoint` (the in-enclave KMS endpoint) on a free loopback port
/// until the runtime ends; returns its address (the endpoint URL is
/// `http://ADDRESS`).
///
/// # Errors
/// [`Error::Io`] if it cannot bind.
pub async fn spawn_kms_endpoint(endpoint: KmsEndpoint) -> Result<std::net::SocketAddr, Error> {
    let io = |e: keybroker_enclave::Error| Error::Io(format!("KMS endpoint: {e}"));
    let listener = keybroker_enclave::endpoint::bind_tcp(([127, 0, 0, 1], 0).into(), false)
        .await
        .map_err(io)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("KMS endpoint address: {e}")))?;
    tokio::spawn(async move { endpoint.serve_tcp(listener, std::future::pending()).await });
    Ok(addr)
}

/// A `GenerateDataKey` request for an AES-256 data key under `key_id`.
pub fn gdk(key_id: &str) -> GenerateDataKeyRequest {
    GenerateDataKeyRequest {
        key_id: Some(key_id.to_owned()),
        key_spec: Some(DataKeySpec::Aes256),
        ..Default::default()
    }
}

/// An enclave client of the proxy at `addr` with recipient keys attested by a
/// mock NSM of `ca` configured by `nsm` (its PCRs).
///
/// # Errors
/// [`Error::Config`] if the mock NSM or the keys cannot be made;
/// [`Error::Io`] if the client cannot connect.
pub async fn connect_enclave(
    ca: &MockCa,
    addr: &Address,
    nsm: MockNsmConfig,
) -> Result<Client, Error> {
    let nsm = MockNsm::new(ca, nsm).map_err(|e| Error::Config(e.to_string()))?;
    let keys = RecipientKeys::new(Arc::new(nsm), RecipientKeysConfig::default())
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    Client::connect(ClientConfig::new(addr.clone()), keys)
        .await
        .map_err(|e| Error::Io(format!("enclave client: {e}")))
}

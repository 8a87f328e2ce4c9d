//! # keybroker-enclave
//!
//! The enclave side of Keybroker: gets AWS KMS data keys through the parent
//! proxy so that their plaintext exists only inside the Nitro Enclave.
//!
//! - [`nsm`]: the [`nsm::Nsm`] trait over the Nitro Secure Module API, and the
//!   real `/dev/nsm` driver ([`nsm::NsmDevice`]);
//! - `mock_nsm` (cargo feature `mock-nsm`, development only): `MockNsm`, a
//!   mock NSM with its own persisted development CA;
//! - [`keys`]: [`RecipientKeys`], the ephemeral RSA-2048 key and attestation
//!   document attached to requests as KMS `Recipient`, rotated in the
//!   background by age and use count;
//! - [`client`]: [`Client`], the KMS operations with `Recipient`, in broker
//!   mode (the framed protocol of `keybroker_common::protocol`, concurrent
//!   requests on one connection, reconnection, deadlines) or in end-to-end
//!   mode;
//! - [`e2e`]: end-to-end mode: HTTPS with SigV4 to KMS over parent tunnels,
//!   key pinning, clock-skew correction ([`E2eConfig`], [`ParentLink`]);
//! - [`retry`]: when a request may be sent again, and the back-off (both
//!   modes);
//! - `endpoint` (cargo feature `endpoint`, default): `KmsEndpoint`, a
//!   KMS-compatible HTTP endpoint (AWS JSON 1.1) so unmodified AWS SDKs
//!   inside the enclave get attested KMS, and its server (TCP, Unix socket,
//!   `--user`, until shutdown);
//! - [`envelope`]: [`Envelope`], envelope encryption (`seal`/`open`,
//!   streaming) with KMS data keys and a [`DataKeyCache`] with the AWS
//!   Encryption SDK's limits;
//! - [`parent`]: protocol version 2 with the parent proxy: AWS credentials
//!   ([`parent::fetch_credentials`]) and byte tunnels
//!   ([`parent::open_tunnel`]) for end-to-end mode;
//! - [`transport`]: `vsock://`, `tcp://` and `unix://` connections;
//! - `loopback` (feature `endpoint`): brings the enclave's `lo` up;
//! - `cli` (cargo feature `cli`, default): the `keybroker-enclave` command
//!   line.
//!
//! A library user of [`Client`] alone depends on this crate with
//! `default-features = false`: no clap, no axum.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keybroker_enclave::Error> {
//! use std::sync::Arc;
//! use keybroker_common::kms::{DataKeySpec, GenerateDataKeyRequest};
//! use keybroker_enclave::{Client, ClientConfig, RecipientKeys, RecipientKeysConfig};
//! use keybroker_enclave::nsm::NsmDevice;
//!
//! let keys = RecipientKeys::new(Arc::new(NsmDevice::open()?), RecipientKeysConfig::default()).await?;
//! let client = Client::connect(ClientConfig::new("vsock://3:5000".parse()?), keys).await?;
//! let key = client
//!     .generate_data_key(GenerateDataKeyRequest {
//!         key_id: Some("alias/app".into()),
//!         key_spec: Some(DataKeySpec::Aes256),
//!         ..Default::default()
//!     })
//!     .await?;
//! assert_eq!(key.plaintext.len(), 32);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod e2e;
#[cfg(feature = "endpoint")]
pub mod endpoint;
pub mod envelope;
mod error;
pub mod keys;
#[cfg(feature = "endpoint")]
pub mod loopback;
#[cfg(feature = "mock-nsm")]
pub mod mock_nsm;
pub mod nsm;
pub mod parent;
pub mod retry;
pub mod telemetry;
pub mod transport;

pub use client::{
    Client, ClientConfig, ClientStats, DataKey, DataKeyPair, Decrypted, SharedSecret,
};
pub use e2e::{AwsCredentials, E2eConfig, KmsUrl, Mode, ParentLink, TrustRoots};
#[cfg(feature = "endpoint")]
pub use endpoint::KmsEndpoint;
pub use envelope::{CachingConfig, DataKeyCache, DataKeySource, Envelope};
pub use error::Error;
pub use keys::{KeyStats, RecipientKeyPair, RecipientKeys, RecipientKeysConfig};
#[cfg(feature = "mock-nsm")]
pub use mock_nsm::{MockCa, MockNsm, MockNsmConfig};
pub use nsm::{Nsm, NsmDevice};

/// Result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

//! # keybroker-proxy
//!
//! Runs on the parent instance, outside the enclave. `keybroker-proxy serve`
//! relays the enclave's typed KMS requests to AWS KMS (or the mock KMS) under
//! an admission policy; `keybroker-proxy attestation verify` checks an NSM attestation
//! document and prints what it attests.
//!
//! Modules, in layers (each uses only those above it):
//!
//! - [`key_policy`]: the KMS key policy that binds a key to enclave images
//!   (`keybroker-proxy key-policy`);
//! - [`measurements`]: PCR values and the enclave images the proxy admits;
//! - [`admission`]: which requests are forwarded (a pure function,
//!   [`admission::AdmissionPolicy`]), and the [`admission::Admitted`] proof;
//! - [`refusal`]: the proxy's refusals and their one wire mapping;
//! - [`audit`]: logging, one audit line per request (and per tunnel);
//! - [`metrics`]: the Prometheus series ([`metrics::Metrics`]), the
//!   metrics listener with `/metrics`, `/healthz` and `/readyz`;
//! - [`tunnel`]: byte tunnels to allowed `host:port` targets (protocol
//!   version 2, end-to-end mode);
//! - [`settings`]: the TOML file and the command line's overrides, to typed
//!   settings;
//! - [`backend`]: where admitted requests go ([`backend::KmsBackend`],
//!   `aws-sdk-kms`);
//! - [`credentials`]: the AWS credentials handed to the enclave
//!   ([`credentials::CredentialSource`]);
//! - [`clock`]: the time the server checks documents at;
//! - [`server`]: the listener, connections, requests ([`server::Proxy`]);
//! - [`verify`]: `attestation verify`;
//! - [`cli`]: the command line (clap), with [`exit`] codes.
//!
//! Beside them: [`files`] (bounded reads) and the crate [`Error`].
//!
//! The binary (`src/main.rs`) only forwards its arguments and standard
//! streams to [`cli::run`], so everything is testable as a library. Tests
//! start a proxy in-process:
//!
//! ```no_run
//! # async fn example() -> keybroker_proxy::Result<()> {
//! use keybroker_proxy::backend::FnBackend;
//! use keybroker_proxy::server::{Proxy, ProxyConfig};
//!
//! let config = ProxyConfig::new("tcp://127.0.0.1:0".parse().expect("address"));
//! let backend = FnBackend(|_req| async {
//!     Err(keybroker_common::protocol::WireError::new(
//!         keybroker_common::protocol::ErrorCode::Unavailable,
//!         "no KMS in this example",
//!     ))
//! });
//! let proxy = Proxy::bind(config, backend).await?.spawn();
//! println!("listening on {}", proxy.local_addr());
//! proxy.shutdown_and_wait().await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod credentials;
mod error;
pub mod exit;
pub mod files;
pub mod key_policy;
mod listener;
pub mod measurements;
pub mod metrics;
pub mod refusal;
pub mod server;
pub mod settings;
mod text;
pub mod tunnel;
pub mod verify;

pub use error::{ConfigError, Error, Result};
pub use listener::Io;

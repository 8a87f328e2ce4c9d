//! # keybroker-proxy
//!
//! Runs on the parent instance, outside the enclave. `keybroker-proxy serve`
//! relays the enclave's typed KMS requests to AWS KMS (or the mock KMS) under
//! a policy; `keybroker-proxy attestation verify` checks an NSM attestation
//! document and prints what it attests.
//!
//! - [`server`]: the listener, connections, requests ([`server::Proxy`]);
//! - [`policy`]: what is forwarded (a pure function, [`policy::Policy`]);
//! - [`backend`]: where it goes ([`backend::KmsBackend`], `aws-sdk-kms`);
//! - [`config`]: the TOML file and limits;
//! - [`audit`]: logging, one audit line per request (and per tunnel);
//! - [`tunnel`]: byte tunnels to allowed `host:port` targets (protocol
//!   version 2, end-to-end mode);
//! - [`credentials`]: the AWS credentials handed to the enclave
//!   ([`credentials::CredentialSource`]);
//! - [`key_policy`]: the KMS key policy that binds a key to enclave images
//!   (`keybroker-proxy policy`);
//! - [`cli`]: the command line.
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

pub mod audit;
pub mod backend;
pub mod cli;
pub mod config;
pub mod credentials;
mod error;
pub mod key_policy;
mod listener;
pub mod policy;
pub mod server;
pub mod tunnel;

pub use error::{Error, Result};
pub use listener::Io;

//! The crate's one error type, split by cause.
//!
//! Errors here are about running the proxy (configuration, sockets, the KMS
//! client). What goes wrong with one enclave request is not an [`Error`]: it
//! becomes a [`keybroker_common::protocol::WireError`] in that request's
//! response, built through the one mapping in `keybroker-common`.

use std::path::PathBuf;

/// Everything that can stop the proxy from starting or serving.
///
/// No variant carries key material: details are file names, addresses,
/// configuration keys and I/O error texts.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local: the configuration (TOML file or flags) is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Local: the key policy generator's input (PCR values, ARNs, nitro-cli
    /// JSON) is invalid; see [`crate::key_policy`].
    #[error("key policy: {0}")]
    KeyPolicy(String),
    /// Local: a file named by the configuration cannot be read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Environment: the listening socket cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address, as configured.
        address: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Environment: an I/O operation of the server failed (accept, signal
    /// handler, runtime).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Environment: the proxy's own server task failed (panicked or was
    /// cancelled).
    #[error("server task failed: {0}")]
    Task(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

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
    Config(#[from] ConfigError),
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
    /// Local: a file (or standard input) is longer than the limit for it.
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        max: usize,
    },
    /// Local: a certificate file (PEM or DER) does not hold usable
    /// certificates, e.g. an attestation root that is not a CA.
    #[error("{}: {reason}", path.display())]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
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

/// What is wrong with the configuration, and where: the places it was
/// found in, outermost first (a file, `policy.allowed_images[0]`, ...), then
/// the message. Nesting adds a place ([`ConfigError::within`]) instead of
/// formatting one error into another's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    places: Vec<String>,
    message: String,
}

impl ConfigError {
    /// A problem described by `message`, not yet placed.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            places: Vec::new(),
            message: message.into(),
        }
    }

    /// The same problem, found inside `place` (added outermost).
    #[must_use]
    pub fn within(mut self, place: impl Into<String>) -> Self {
        self.places.insert(0, place.into());
        self
    }

    /// The message, without the places.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for place in &self.places {
            write!(f, "{place}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Error {
    /// An [`Error::Config`] with this message.
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config(ConfigError::new(message))
    }

    /// This error as a configuration problem: a [`Error::KeyPolicy`] keeps
    /// its message (the key policy generator's input checks apply to the
    /// proxy's images too), any other error its text.
    pub(crate) fn into_config(self) -> ConfigError {
        match self {
            Error::Config(c) => c,
            Error::KeyPolicy(message) => ConfigError::new(message),
            other => ConfigError::new(other.to_string()),
        }
    }

    /// This error, as a configuration problem found inside `place`.
    pub(crate) fn within(self, place: impl Into<String>) -> Self {
        Error::Config(self.into_config().within(place))
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

//! # keybroker-harness
//!
//! Test infrastructure for Keybroker:
//!
//! - [`local`]: the `keybroker-local` launcher (`demo`, `up`): the whole
//!   stack as separate processes on loopback.
//! - [`mock_kms`]: a local KMS (`keybroker-mock-kms`) that speaks the AWS
//!   JSON 1.1 protocol of the real service and honours `Recipient`
//!   (attestation documents, `CiphertextForRecipient`) and key policies with
//!   `kms:RecipientAttestation:*` conditions; optionally HTTPS under a test
//!   CA, SigV4 verification and a shifted clock, for the enclave's
//!   end-to-end mode. For development and tests only: it checks request
//!   signatures only when given credentials and keeps keys in memory or a
//!   plain JSON file.
//! - [`testkit`]: the same stack in one process (mock KMS, proxy, enclave
//!   client with mock NSM), for tests and benchmarks.
#![forbid(unsafe_code)]

pub mod local;
pub mod mock_kms;
pub mod testkit;

/// Errors of the harness itself (configuration, state and seed files, I/O).
/// KMS errors returned to clients are [`keybroker_common::kms::KmsError`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bad configuration (a flag or an attestation root).
    #[error("configuration: {0}")]
    Config(String),
    /// The state file cannot be read, parsed or written.
    #[error("state file: {0}")]
    State(String),
    /// The seed file cannot be read or applied.
    #[error("seed file: {0}")]
    Seed(String),
    /// Sockets and other I/O.
    #[error("I/O: {0}")]
    Io(String),
}

/// The shell of the harness's programs: installs a stderr `tracing`
/// subscriber (filter from `RUST_LOG`, else `default_filter`; an existing
/// subscriber is kept), runs `main` on a multi-threaded tokio runtime and
/// turns its result into an exit code, printing errors as `program: error`.
pub fn run_main<F>(program: &str, default_filter: &str, main: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    use std::process::ExitCode;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

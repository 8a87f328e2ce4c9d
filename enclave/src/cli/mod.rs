//! The command line of the `keybroker-enclave` program (the binary is
//! `fn main() { cli::main_with_args(std::env::args_os()) }`), kept in the
//! library so launchers can run it in-process or re-exec themselves as the
//! enclave.
//!
//! - `serve`: the KMS-compatible endpoint ([`crate::endpoint`]) on loopback
//!   TCP and/or a Unix socket, for AWS SDKs inside the enclave.
//! - `generate-data-key`, `decrypt`, `generate-data-key-pair`,
//!   `generate-random`: one KMS call each, with `Recipient`, for scripts
//!   inside the enclave (in the spirit of `kmstool-enclave-cli`). Output is
//!   the KMS response as JSON with base64 blobs on stdout (field names as in
//!   the KMS API, as `aws kms` prints them); a field written to a file with
//!   its `--*-file` option holds raw bytes and is left out of the JSON. The
//!   JSON, which may carry plaintext in base64, is built in buffers that are
//!   zeroized after the write ([`SecretOutput`]).
//! - `attestation`: a fresh attestation document for a nonce, user data and
//!   public key.
//! - `seal`, `open`: envelope encryption of a file ([`crate::envelope`]),
//!   streamed; `open` replaces its output only once the whole message
//!   authenticates.
//! - `demo`: envelope-encrypts a file under a data key from `GenerateDataKey`
//!   with `Recipient` through the proxy, opens it with the data key from
//!   `Decrypt` with `Recipient`, checks the round trip, and prints a JSON
//!   report (no key material) on stdout.
//! - `mock-nsm init|pcr0` (builds with the `mock-nsm` feature): the
//!   development CA and the mock NSM's default PCR0.
//!
//! Exit codes ([`exit`], the one table, also shown by `--help`): 0 success;
//! 1 refused by KMS, the proxy's policy or the image's key allowlist; 2
//! usage error or invalid input; 3 proxy or KMS unavailable, throttled or
//! timed out (retry later); 4 NSM failure; 5 local I/O error; 6 data that
//! does not authenticate or decode (a tampered or truncated `seal` message,
//! a `CiphertextForRecipient` that does not parse, a KMS answer for a key
//! that is not allowed, a TLS session that does not verify); 7 internal
//! error (not the caller's fault).
//!
//! Modules, by job: [`args`] (the command line's shape), [`exit`],
//! `connect` (NSM and client), [`kms`] (the one-call KMS subcommands),
//! `nsm` (`attestation`, `mock-nsm`), [`envelope`] (`seal`, `open`,
//! `demo`), [`serve`](mod@serve), `output` (JSON and files).

pub mod args;
mod connect;
pub mod envelope;
pub mod exit;
pub mod kms;
mod nsm;
mod output;
pub mod serve;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser as _;

/// `serve --user`'s user and group (the endpoint's [`crate::endpoint::RunAs`]).
pub use crate::endpoint::RunAs;
pub use args::{
    AttestationArgs, BrokerArgs, Cli, Command, ContextArgs, DecryptArgs, DemoArgs,
    DeriveSharedSecretArgs, EnvelopeArgs, GenerateDataKeyArgs, GenerateDataKeyPairArgs,
    GenerateRandomArgs, HexBytes, MockNsmCommand, NsmArgs, ServeArgs,
};
pub use envelope::{demo, envelope_file};
pub use exit::{
    EXIT_INTERNAL, EXIT_IO, EXIT_NSM, EXIT_OK, EXIT_REFUSED, EXIT_UNAUTHENTIC, EXIT_UNAVAILABLE,
    EXIT_USAGE, exit_code,
};
pub use kms::{
    decrypt, derive_shared_secret, generate_data_key, generate_data_key_pair, generate_random,
};
pub use nsm::attestation;
pub use output::SecretOutput;
pub use serve::serve;

use crate::Error;
use output::print_json;

/// Runs the program with `args` (the first item is the program name, as in
/// `std::env::args_os()`): parses them, sets up logging to stderr (`RUST_LOG`,
/// default `info` for `serve`, `warn` otherwise; skipped if the caller already installed a subscriber),
/// runs the subcommand on a new tokio runtime and returns the exit code
/// ([`exit_code`]). `--help` and `--version` print and return success; usage
/// errors return 2.
///
/// This is the production entry point: in a build whose library has the
/// `mock-nsm` feature (any workspace build) it still refuses the mock NSM
/// and the mock KMS CA (exit 2, "no mock NSM"); see
/// [`dangerous_main_with_mock_nsm`].
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_cli(args, false)
}

/// [`main_with_args`] that also reaches the mock NSM and the mock KMS CA:
/// for the development launcher (`keybroker-local component enclave`) and
/// the binary of a `dangerous-mock-nsm-cli` build, never for an enclave
/// with real keys.
#[cfg(feature = "mock-nsm")]
pub fn dangerous_main_with_mock_nsm<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_cli(args, true)
}

fn run_cli<I, T>(args: I, allow_mock: bool) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    #[cfg(feature = "mock-nsm")]
    if let Some(what) = cli.command.mock_requested().filter(|_| !allow_mock) {
        eprintln!(
            "keybroker-enclave: {what}: this binary has no mock NSM (it exists only in \
             `keybroker-local component enclave` and in a `--features dangerous-mock-nsm-cli` build)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    #[cfg(not(feature = "mock-nsm"))]
    let _ = allow_mock;
    // A service logs its lifecycle (readiness, the proxy connection); a
    // one-shot command only what went wrong.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: an enclave's console and the journal
        // get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .try_init();
    let result = match cli.command {
        Command::MockNsm(cmd) => nsm::mock_nsm_command(cmd),
        Command::Attestation(args) => attestation(&args).and_then(|v| print_json(&v)),
        command => {
            let one_shot = !matches!(command, Command::Serve(_));
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("start the tokio runtime", e))
                .and_then(|rt| {
                    let result = rt.block_on(run_async(command));
                    // A one-shot command has written its output: it exits
                    // without waiting for background work, such as the
                    // spare recipient key that is still being generated
                    // (`serve` has drained before it returns).
                    if one_shot {
                        rt.shutdown_background();
                    }
                    result
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybroker-enclave: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The subcommands that need the runtime.
async fn run_async(command: Command) -> Result<(), Error> {
    match command {
        Command::Serve(args) => serve(&args).await,
        Command::GenerateDataKey(args) => print_json(&generate_data_key(&args).await?),
        Command::Decrypt(args) => print_json(&decrypt(&args).await?),
        Command::GenerateDataKeyPair(args) => print_json(&generate_data_key_pair(&args).await?),
        Command::GenerateRandom(args) => print_json(&generate_random(&args).await?),
        Command::DeriveSharedSecret(args) => print_json(&derive_shared_secret(&args).await?),
        Command::Seal(args) => print_json(&envelope_file(&args, true).await?),
        Command::Open(args) => print_json(&envelope_file(&args, false).await?),
        Command::Demo(args) => print_json(&demo(&args).await?),
        Command::Attestation(_) | Command::MockNsm(_) => Err(Error::Internal(
            "synchronous subcommand on the runtime".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::{Mode, TrustRoots};
    use std::path::Path;

    /// Every enclave command line the image and the deploy guide ship (the
    /// `CMD` arrays of `Dockerfile.enclave` and `docs/deploy.md`) parses,
    /// and its KMS settings are complete for its mode: an e2e command names
    /// its region and keys, directly or through the shipped settings file
    /// (which stands in for `/etc/keybroker/enclave.toml` of the image).
    #[test]
    fn the_shipped_and_documented_command_lines_parse_and_are_complete() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut seen = 0;
        for file in ["Dockerfile.enclave", "docs/deploy.md"] {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            for (at, _) in text.match_indices(r#"["/usr/bin/keybroker-enclave""#) {
                let end = at + text[at..].find(']').unwrap() + 1;
                let argv: Vec<String> = serde_json::from_str(&text[at..end]).unwrap();
                let cli =
                    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
                let mut broker = cli.command.broker_args().unwrap().clone();
                if broker.config.as_deref() == Some(Path::new("/etc/keybroker/enclave.toml")) {
                    broker.config = Some(format!("{root}/deploy/enclave-e2e.toml").into());
                }
                let settings = broker.kms_settings().unwrap();
                if settings.mode() == Mode::E2e {
                    settings
                        .e2e_config(TrustRoots::amazon().unwrap())
                        .unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
                }
                seen += 1;
            }
        }
        assert!(seen >= 4, "only {seen} command lines found");
    }
}

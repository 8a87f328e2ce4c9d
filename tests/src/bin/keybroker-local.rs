//! `keybroker-local`: runs the whole Keybroker stack on this machine (mock
//! KMS, parent proxy, enclave with a mock NSM), each as its own process on
//! loopback. See `keybroker_harness::local`.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keybroker_enclave::e2e::Mode;

/// The whole Keybroker stack on one machine, for development.
#[derive(Debug, Parser)]
#[command(name = "keybroker-local", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the stack, get a data key into the mock enclave, encrypt and
    /// decrypt a file there, show that calls without a valid attestation are
    /// denied, print timings, stop.
    Demo(ModeArg),
    /// Start the stack and keep it running until Ctrl-C or SIGTERM; prints
    /// one `NAME: VALUE` line per endpoint when ready.
    Up(ModeArg),
    /// Internal: run one component in this process (how the launcher starts
    /// each process).
    #[command(hide = true)]
    Component {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
        args: Vec<OsString>,
    },
}

/// How the enclave reaches KMS.
#[derive(Debug, clap::Args)]
struct ModeArg {
    /// e2e: the enclave speaks TLS to the mock KMS (HTTPS, SigV4 verified)
    /// through a proxy tunnel; broker: the proxy relays typed requests.
    #[arg(long, value_enum, default_value_t = Mode::E2e)]
    mode: Mode,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (demo, mode) = match cli.command {
        Cmd::Component { args } => return keybroker_harness::local::run_component(args),
        Cmd::Demo(m) => (true, m.mode),
        Cmd::Up(m) => (false, m.mode),
    };
    keybroker_harness::run_main("keybroker-local", "warn", async move {
        if demo {
            keybroker_harness::local::demo(mode).await
        } else {
            keybroker_harness::local::up(mode).await
        }
    })
}

//! `keybroker-enclave`: the enclave program. A thin shell over
//! [`keybroker_enclave::cli`].
//!
//! It reaches the mock NSM only when built with `--features
//! dangerous-mock-nsm-cli` (the boot-test image). A build whose library has
//! `mock-nsm` only, such as any workspace build (the harness enables it and
//! Cargo unifies features), refuses the mock's flags and subcommands.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    #[cfg(feature = "dangerous-mock-nsm-cli")]
    let code = keybroker_enclave::cli::dangerous_main_with_mock_nsm(std::env::args_os());
    #[cfg(not(feature = "dangerous-mock-nsm-cli"))]
    let code = keybroker_enclave::cli::main_with_args(std::env::args_os());
    code
}

//! `keybroker-mock-kms`: a local AWS KMS (AWS JSON 1.1) that honours
//! `Recipient` and key policies with attestation conditions. For
//! development and tests only. See `tests/README.md`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    keybroker_harness::mock_kms::cli::main_with_args(std::env::args_os())
}

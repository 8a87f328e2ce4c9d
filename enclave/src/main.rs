//! `keybroker-enclave`: the enclave program. A thin shell over
//! [`keybroker_enclave::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    keybroker_enclave::cli::main_with_args(std::env::args_os())
}

//! `keybroker-proxy`: see [`keybroker_proxy::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = keybroker_proxy::cli::run(
        std::env::args_os(),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        keybroker_proxy::cli::now(),
    );
    ExitCode::from(code)
}

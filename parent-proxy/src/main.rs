//! `keybroker-proxy`: see [`keybroker_proxy::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    // Unlocked handles: `serve` logs to standard error from worker threads,
    // which a lock held here for the whole run would block.
    let code = keybroker_proxy::cli::run(
        std::env::args_os(),
        &mut std::io::stdin(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        keybroker_proxy::clock::now(),
    );
    ExitCode::from(code)
}

//! The `keybroker-mock-kms` command line, as a library so that the binary and
//! the local launcher (`keybroker-local`, which runs each component as its
//! own process) share it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{DEFAULT_ACCOUNT_ID, DEFAULT_MAX_BODY_BYTES, DEFAULT_REGION, MockKms, MockKmsConfig};
use crate::Error;
use clap::Parser;

/// A local AWS KMS for development and tests: AWS JSON 1.1 on HTTP, key
/// policies with kms:RecipientAttestation conditions, Recipient support.
/// Request signatures are NOT verified.
#[derive(Debug, Parser)]
#[command(name = "keybroker-mock-kms", version)]
pub struct Args {
    /// Address to listen on, e.g. 127.0.0.1:4566 (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// Persist keys, aliases and policies to this JSON file (it holds key
    /// material: keep it secret).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Create the keys in this JSON file at start (fixed ids and material).
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    /// Trust this PEM certificate as an attestation root, besides the AWS
    /// Nitro Enclaves Root-G1 (repeatable).
    #[arg(long = "attestation-root", value_name = "PEM")]
    attestation_roots: Vec<PathBuf>,
    /// Reject attestation documents older than this (e.g. 300, 300s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    max_attestation_age: Duration,
    /// Region used in ARNs.
    #[arg(long, default_value = DEFAULT_REGION)]
    region: String,
    /// Account id used in ARNs and the default key policy.
    #[arg(long, default_value = DEFAULT_ACCOUNT_ID)]
    account_id: String,
    /// Principal ARN every request is evaluated as in key policies
    /// [default: arn:aws:iam::<account-id>:root].
    #[arg(long, value_name = "ARN")]
    caller_principal: Option<String>,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Accept requests without a SigV4 Authorization header (e.g. from curl).
    #[arg(long)]
    allow_unsigned: bool,
}

/// Parses `300`, `300s`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| format!("`{s}` is not a duration (use e.g. 300, 300s, 5m, 1h)"))?;
    Ok(Duration::from_secs(secs))
}

async fn run(args: Args) -> Result<(), Error> {
    let mut config = MockKmsConfig {
        caller_principal: args
            .caller_principal
            .unwrap_or_else(|| format!("arn:aws:iam::{}:root", args.account_id)),
        region: args.region,
        account_id: args.account_id,
        state_file: args.state,
        seed_file: args.seed,
        max_attestation_age: args.max_attestation_age,
        max_body_bytes: args.max_body_bytes,
        allow_unsigned: args.allow_unsigned,
        ..MockKmsConfig::default()
    };
    for path in &args.attestation_roots {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        config.add_attestation_roots_pem(&pem)?;
    }
    let kms = MockKms::new(config)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot bind {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        // If stdout is closed there is nobody to tell; keep serving.
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    tokio::select! {
        r = kms.serve(listener) => r,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted, stopping");
            Ok(())
        }
    }
}

/// Runs `keybroker-mock-kms` with `args` (the first item is the program
/// name) until Ctrl-C; the binary's `main`.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            // clap prints help/version and usage errors itself.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    crate::run_main("keybroker-mock-kms", "info", run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}

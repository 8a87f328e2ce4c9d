//! The `keybroker-mock-kms` command line, as a library so that the binary and
//! the local launcher (`keybroker-local`, which runs each component as its
//! own process) share it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{
    DEFAULT_ACCOUNT_ID, DEFAULT_MAX_BODY_BYTES, DEFAULT_REGION, MockKms, MockKmsConfig,
    MockKmsCredentials, MockKmsTls,
};
use crate::Error;
use clap::Parser;

/// A local AWS KMS for development and tests: AWS JSON 1.1 on HTTP (or
/// HTTPS under a test CA with --tls-dir), key policies with
/// kms:RecipientAttestation conditions, Recipient support. Request
/// signatures are verified only with --access-key-id/--secret-access-key.
#[derive(Parser)]
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
    #[arg(long, conflicts_with = "access_key_id")]
    allow_unsigned: bool,
    /// Serve HTTPS: keep a test CA in DIR (ca.pem, the root clients trust;
    /// created if absent or invalid) and issue a server certificate under it
    /// for localhost, 127.0.0.1 and every --tls-name.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Another name for the server certificate, e.g.
    /// kms.us-east-1.amazonaws.com (repeatable; needs --tls-dir).
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls_dir")]
    tls_names: Vec<String>,
    /// Verify SigV4 signatures: the one access key id accepted.
    #[arg(long, value_name = "ID", requires = "secret_access_key")]
    access_key_id: Option<String>,
    /// Its secret access key (better passed in the environment).
    #[arg(
        long,
        value_name = "SECRET",
        env = "KEYBROKER_MOCK_KMS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "access_key_id"
    )]
    secret_access_key: Option<String>,
    /// The session token requests must carry (X-Amz-Security-Token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KEYBROKER_MOCK_KMS_SESSION_TOKEN",
        hide_env_values = true,
        requires = "access_key_id"
    )]
    session_token: Option<String>,
    /// Run the mock's clock N seconds ahead of the system clock (negative:
    /// behind), for signature expiry and the Date header.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    clock_offset_secs: i64,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("listen", &self.listen)
            .field("tls_dir", &self.tls_dir)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
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
        clock_offset_secs: args.clock_offset_secs,
        ..MockKmsConfig::default()
    };
    if let Some(dir) = &args.tls_dir {
        config.tls = Some(MockKmsTls::load_or_create(dir, &args.tls_names)?);
    }
    if let (Some(id), Some(secret)) = (args.access_key_id, args.secret_access_key) {
        config.credentials = Some(MockKmsCredentials::new(id, secret, args.session_token));
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ca_path = config.tls.as_ref().map(MockKmsTls::ca_pem_path);
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
        // If stdout is closed there is nobody to tell; keep serving. The
        // CA line comes first: whoever waits for "listening on" has both.
        if let Some(ca) = &ca_path {
            let _ = writeln!(out, "test CA: {}", ca.display());
        }
        let _ = writeln!(out, "listening on {scheme}://{addr}");
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
    fn tls_auth_and_clock_flags_parse() {
        let a = Args::try_parse_from([
            "keybroker-mock-kms",
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            "/tmp/x",
            "--tls-name",
            "kms.us-east-1.amazonaws.com",
            "--tls-name",
            "kms.eu-west-1.amazonaws.com",
            "--access-key-id",
            "AKID",
            "--secret-access-key",
            "s3cret",
            "--session-token",
            "tok",
            "--clock-offset-secs",
            "-600",
        ])
        .unwrap();
        assert_eq!(a.tls_names.len(), 2);
        assert_eq!(a.clock_offset_secs, -600);
        assert_eq!(a.session_token.as_deref(), Some("tok"));
        assert!(!format!("{a:?}").contains("s3cret"));

        let fails = |extra: &[&str]| {
            let mut v = vec!["keybroker-mock-kms", "--listen", "127.0.0.1:0"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).is_err()
        };
        assert!(fails(&["--tls-name", "x"]), "--tls-name needs --tls-dir");
        assert!(fails(&["--access-key-id", "AKID"]), "needs the secret");
        assert!(fails(&[
            "--access-key-id",
            "AKID",
            "--secret-access-key",
            "s",
            "--allow-unsigned"
        ]));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}

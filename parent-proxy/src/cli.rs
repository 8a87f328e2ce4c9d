//! Command line of `keybroker-proxy`.
//!
//! ```text
//! keybroker-proxy attestation verify [--root PEM]... [--at MS_OR_RFC3339] FILE
//! keybroker-proxy serve [--config FILE] [--listen ADDR] [--kms-endpoint URL] ...
//! keybroker-proxy key-policy --principal ARN (--pcr0 HEX [--pcr1 HEX] [--pcr2 HEX] [--pcr8 HEX]
//!                        | --pcrs-json FILE...) [--key-admin ARN]... [--account-id ID] [--output FILE]
//! ```
//!
//! `serve` runs the proxy (see [`crate::server`]) until SIGINT or SIGTERM. Once
//! bound it prints `listening: ADDRESS` on standard output (the real port for
//! `tcp://127.0.0.1:0`); logs go to standard error. Exit codes: 0 after a
//! clean shutdown, 1 if serving failed (e.g. the address cannot be bound), 2
//! for usage or configuration errors (among them a non-loopback `tcp://`
//! address without `--allow-non-loopback`).
//!
//! `attestation verify` checks an NSM attestation document (raw CBOR or
//! base64 text; `-` reads standard input) against the AWS Nitro Enclaves
//! Root-G1 plus any `--root` certificates, at `--at` (default: now), and
//! prints a JSON summary. Exit codes: 0 valid, 1 invalid (`invalid: <reason>`
//! on stderr), 2 usage or I/O error.
//!
//! `key-policy` (also spelled `policy`) writes the KMS key policy that gives plaintext only to attested
//! enclaves of the given images (see [`crate::key_policy`] for every
//! statement) as pretty JSON, to standard output or `--output`. The images
//! come either from the `--pcr0` (`--pcr1`, `--pcr2`, `--pcr8`) flags (one
//! image) or from `--pcrs-json` files (repeatable: one image per file, e.g.
//! the old and the new image during a rollout), never both: mixing them is a
//! usage error rather than a silent override. Warnings (e.g. no
//! `--key-admin`) go to standard error. Exit codes: 0 written, 2 usage,
//! invalid input (bad PCR, ARN or JSON; an all-zero debug-mode PCR) or I/O
//! error.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use keybroker_common::UnixMillis;

use crate::audit::LogFormat;
use crate::exit;
use crate::files::read_input;
use crate::measurements::{AllowedImage, parse_image_flag, parse_pcr_flag};
use crate::settings::{Overrides, ServeSettings};
use crate::tunnel::TunnelTarget;
use crate::verify::{parse_time, verify};

/// Top-level arguments.
#[derive(Debug, Parser)]
#[command(
    name = "keybroker-proxy",
    version,
    about = "Keybroker parent-instance proxy"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `keybroker-proxy`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with NSM attestation documents.
    #[command(subcommand)]
    Attestation(AttestationCommand),
    /// Relay enclave requests to KMS until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Write the KMS key policy that releases plaintext only to attested
    /// enclaves of the given image(s). (Also spelled `policy`.)
    #[command(name = "key-policy", alias = "policy")]
    KeyPolicy(KeyPolicyArgs),
}

/// Arguments of `key-policy`.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyPolicyArgs {
    /// The parent principal: the IAM role the proxy runs as (the instance
    /// role), e.g. arn:aws:iam::111122223333:role/keybroker-parent.
    #[arg(long, value_name = "ARN")]
    pub principal: String,
    /// PCR0 (enclave image SHA-384, 96 hex digits) of the one image admitted.
    #[arg(
        long,
        value_name = "HEX",
        required_unless_present = "pcrs_json",
        conflicts_with = "pcrs_json"
    )]
    pub pcr0: Option<String>,
    /// Also require PCR1 (kernel and bootstrap).
    #[arg(long, value_name = "HEX", requires = "pcr0")]
    pub pcr1: Option<String>,
    /// Also require PCR2 (application).
    #[arg(long, value_name = "HEX", requires = "pcr0")]
    pub pcr2: Option<String>,
    /// Also require PCR8 (EIF signing certificate; signed images only).
    #[arg(long, value_name = "HEX", requires = "pcr0")]
    pub pcr8: Option<String>,
    /// The JSON `nitro-cli build-enclave` or `nitro-cli describe-eif`
    /// prints (`-` for standard input); every PCR in it is required.
    /// Repeatable: one admitted image per file (rollouts).
    #[arg(long = "pcrs-json", value_name = "FILE")]
    pub pcrs_json: Vec<PathBuf>,
    /// A key administrator (may manage the key, never use it); repeatable.
    /// Default: the key account's root (IAM policies decide).
    #[arg(long = "key-admin", value_name = "ARN")]
    pub key_admins: Vec<String>,
    /// The account that owns the key (default: the principal's).
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
    /// Write the policy here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Arguments of `serve`. Flags override the `--config` file; list flags
/// (`--allow-key`, `--allow-operation`, `--allow-image`,
/// `--allow-image-json`, `--attestation-root`) add to the file's lists;
/// `--pcr` sets PCRs of the file's single `[policy.expected_pcrs]` image.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see parent-proxy/examples/proxy.toml).
    #[arg(long, value_name = "FILE", env = "KEYBROKER_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listening address: vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH.
    /// Default: vsock://4294967295:5000 (any CID). TCP: loopback only
    /// unless --allow-non-loopback.
    #[arg(long, value_name = "ADDR", env = "KEYBROKER_PROXY_LISTEN")]
    pub listen: Option<String>,
    /// Allow a non-loopback tcp:// --listen address. Whoever reaches it can
    /// use the instance role's KMS access and get its AWS credentials.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// KMS endpoint override, e.g. http://127.0.0.1:4566 for the mock KMS.
    #[arg(long, value_name = "URL", env = "KEYBROKER_KMS_ENDPOINT")]
    pub kms_endpoint: Option<String>,
    /// AWS region (default: the AWS default chain).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// KMS attempts per call, the first included.
    #[arg(long, value_name = "N")]
    pub kms_max_attempts: Option<u32>,
    /// Log format.
    #[arg(
        long,
        value_name = "FORMAT",
        value_parser = clap::builder::PossibleValuesParser::new(LogFormat::NAMES)
            .try_map(|s| s.parse::<LogFormat>())
    )]
    pub log_format: Option<LogFormat>,
    /// Only forward requests for this KeyId (exact string); repeatable.
    #[arg(long = "allow-key", value_name = "KEY")]
    pub allow_keys: Vec<String>,
    /// Only forward this operation (KMS name, e.g. GenerateDataKey); repeatable.
    #[arg(long = "allow-operation", value_name = "OPERATION")]
    pub allow_operations: Vec<String>,
    /// Admit one enclave image: require this PCR value in the Recipient
    /// attestation document (INDEX=HEX, e.g. 0=PCR0_HEX); repeatable, one
    /// flag per PCR of that image. Sets PCRs of the file's
    /// [policy.expected_pcrs] image (a flag wins over the file for the same
    /// index). Documents are then verified. For several images use
    /// --allow-image or --allow-image-json instead.
    #[arg(
        long = "pcr",
        value_name = "INDEX=HEX",
        value_parser = parse_pcr_flag,
        conflicts_with_all = ["allow_images", "allow_image_json"]
    )]
    pub pcrs: Vec<(u8, Vec<u8>)>,
    /// Also admit this enclave image: pcr0=HEX[,pcr1=HEX,pcr2=HEX,pcr8=HEX]
    /// [,name=NAME]; every PCR given must match (never mixed with another
    /// image's). Repeatable (e.g. old and new image during a rollout); adds
    /// to the file's [[policy.allowed_images]]. Documents are then verified.
    #[arg(
        long = "allow-image",
        value_name = "pcr0=HEX[,pcrN=HEX][,name=NAME]",
        value_parser = parse_image_flag
    )]
    pub allow_images: Vec<AllowedImage>,
    /// Also admit the image whose measurements this file holds: the JSON
    /// that `nitro-cli build-enclave` or `nitro-cli describe-eif` prints
    /// (the file given to `policy --pcrs-json`); every PCR in it must
    /// match. Repeatable; adds to the file's images.
    #[arg(long = "allow-image-json", value_name = "FILE")]
    pub allow_image_json: Vec<PathBuf>,
    /// Also trust this attestation root (PEM or DER), e.g. the mock NSM's
    /// CA; repeatable. The AWS Nitro root is always trusted.
    #[arg(long = "attestation-root", value_name = "PEM")]
    pub attestation_roots: Vec<PathBuf>,
    /// Refuse requests whose encoded size exceeds this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_request_len: Option<usize>,
    /// Refuse Recipient attestation documents older than this (ms, by their
    /// timestamp against this host's clock). Default 300000 (5 minutes: the
    /// enclave's 4-minute key rotation plus a minute of margin).
    #[arg(long, value_name = "MS")]
    pub max_document_age_ms: Option<u64>,
    /// Enclave connections served at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Requests in flight per connection.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// KMS calls in flight across all connections (default 512); one more
    /// is answered Busy (retryable).
    #[arg(long, value_name = "N")]
    pub max_kms_in_flight: Option<usize>,
    /// On shutdown, how long in-flight requests may still run (ms).
    #[arg(long, value_name = "MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Forward plaintext-returning operations without Recipient and let the
    /// KMS key policy decide (a plaintext answer is still never relayed).
    /// For demonstrations only.
    #[arg(long)]
    pub dangerous_forward_without_recipient: bool,
    /// Also allow enclaves to open a byte tunnel (end-to-end mode) to this
    /// HOST:PORT, e.g. kms-fips.us-east-1.amazonaws.com:443 or a VPC
    /// endpoint name; repeatable, adds to the file's `[tunnel]` allowed. The
    /// region's KMS endpoint (kms.REGION.amazonaws.com:443) is always
    /// allowed when the proxy knows its region.
    #[arg(long = "tunnel", value_name = "HOST:PORT")]
    pub tunnels: Vec<TunnelTarget>,
    /// Tunnels open at once.
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<usize>,
    /// Do not hand AWS credentials to enclaves (GetCredentials is answered
    /// PolicyDenied); for broker-only fleets.
    #[arg(long)]
    pub no_credentials: bool,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz)
    /// over HTTP here: a port (9464, on 127.0.0.1) or IP:PORT (a
    /// non-loopback address is logged as a warning). Default: none.
    #[arg(long, value_name = "ADDR", env = "KEYBROKER_PROXY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// /readyz also requires at least one open enclave connection.
    #[arg(long)]
    pub ready_requires_enclave: bool,
}

/// Subcommands of `keybroker-proxy attestation`.
#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Verify an attestation document and print a JSON summary.
    Verify(VerifyArgs),
}

/// Arguments of `attestation verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also trust this root certificate (PEM, or DER); repeatable. The AWS
    /// Nitro Enclaves Root-G1 is always trusted.
    #[arg(long = "root", value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Verification time: milliseconds since the Unix epoch or an RFC 3339
    /// timestamp. Default: now.
    #[arg(long, value_name = "MS_OR_RFC3339", value_parser = parse_time)]
    pub at: Option<UnixMillis>,
    /// The document: raw CBOR or base64 text; `-` for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs the command line `args` (program name first) with the given
/// streams, and returns the process exit code. `now` is the default
/// verification time.
pub fn run<I, T>(
    args: I,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    now: UnixMillis,
) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with exit 0; usage errors to
            // stderr with exit 2.
            let out: &mut dyn Write = if e.use_stderr() { stderr } else { stdout };
            let text = e.render().to_string();
            let newline = if text.ends_with('\n') { "" } else { "\n" };
            let _ = write!(out, "{text}{newline}");
            return u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(&args, stdout, stderr),
        Command::KeyPolicy(args) => write_key_policy(&args, stdin, stdout, stderr),
        Command::Attestation(AttestationCommand::Verify(args)) => {
            match verify(&args.roots, &args.file, stdin, args.at.unwrap_or(now)) {
                Ok(summary) => match serde_json::to_string_pretty(&summary) {
                    Ok(json) => {
                        if writeln!(stdout, "{json}").is_err() {
                            return exit::USAGE;
                        }
                        exit::OK
                    }
                    Err(e) => {
                        let _ = writeln!(stderr, "error: JSON output: {e}");
                        exit::USAGE
                    }
                },
                Err(e) => {
                    let _ = writeln!(stderr, "{e}");
                    e.exit_code()
                }
            }
        }
    }
}

/// Merges the `--config` file (if any) and the flags
/// ([`ServeSettings::resolve`]).
pub fn serve_settings(args: &ServeArgs) -> crate::Result<ServeSettings> {
    ServeSettings::resolve(&args.overrides())
}

impl ServeArgs {
    /// The flags as settings overrides.
    pub fn overrides(&self) -> Overrides {
        let a = self.clone();
        Overrides {
            config: a.config,
            listen: a.listen,
            allow_non_loopback: a.allow_non_loopback,
            kms_endpoint: a.kms_endpoint,
            region: a.region,
            kms_max_attempts: a.kms_max_attempts,
            log_format: a.log_format,
            allow_keys: a.allow_keys,
            allow_operations: a.allow_operations,
            pcrs: a.pcrs,
            allow_images: a.allow_images,
            allow_image_json: a.allow_image_json,
            attestation_roots: a.attestation_roots,
            max_request_len: a.max_request_len,
            max_document_age_ms: a.max_document_age_ms,
            max_connections: a.max_connections,
            max_in_flight: a.max_in_flight,
            max_kms_in_flight: a.max_kms_in_flight,
            drain_timeout_ms: a.drain_timeout_ms,
            dangerous_forward_without_recipient: a.dangerous_forward_without_recipient,
            tunnels: a.tunnels,
            max_tunnels: a.max_tunnels,
            no_credentials: a.no_credentials,
            metrics_listen: a.metrics_listen,
            ready_requires_enclave: a.ready_requires_enclave,
        }
    }
}

/// `serve`: resolves the settings, then runs the proxy until
/// SIGINT/SIGTERM ([`crate::server::launch`]); returns the exit code.
pub fn serve(args: &ServeArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let settings = match serve_settings(args) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return exit::USAGE;
        }
    };
    let overrides = args.overrides();
    let reload = std::sync::Arc::new(move || ServeSettings::resolve(&overrides));
    match crate::server::launch::serve_until_signal(settings, reload, stdout) {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            // A refused address (non-loopback TCP) is a configuration error.
            match e {
                crate::Error::Config(_) => exit::USAGE,
                _ => exit::FAILURE,
            }
        }
    }
}

/// Builds the key policy of `key-policy` from its arguments (reading the
/// `--pcrs-json` files, `-` from `stdin`).
pub fn key_policy(
    args: &KeyPolicyArgs,
    stdin: &mut dyn Read,
) -> crate::Result<crate::key_policy::EnclaveKeyPolicy> {
    use crate::key_policy::{EnclaveKeyPolicy, ImageMeasurements, MAX_NITRO_CLI_JSON_LEN};
    let mut images = Vec::new();
    if let Some(pcr0) = &args.pcr0 {
        let mut image = ImageMeasurements::new(pcr0)?;
        for (index, value) in [(1, &args.pcr1), (2, &args.pcr2), (8, &args.pcr8)] {
            if let Some(v) = value {
                image = image.with_pcr(index, v)?;
            }
        }
        images.push(image);
    }
    if args
        .pcrs_json
        .iter()
        .filter(|p| p.as_os_str() == "-")
        .count()
        > 1
    {
        return Err(crate::Error::KeyPolicy(
            "--pcrs-json - (standard input) given twice".into(),
        ));
    }
    for path in &args.pcrs_json {
        let bytes = read_input(path, stdin, MAX_NITRO_CLI_JSON_LEN)?;
        let name = if path.as_os_str() == "-" {
            crate::files::STDIN_NAME.to_owned()
        } else {
            path.display().to_string()
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| crate::Error::KeyPolicy(format!("{name}: not UTF-8 text")))?;
        let image = ImageMeasurements::from_nitro_cli_json(&text)
            .map_err(|e| crate::Error::KeyPolicy(format!("{name}: {e}")))?;
        images.push(image);
    }
    let mut policy = EnclaveKeyPolicy::new(&args.principal, images)?;
    for admin in &args.key_admins {
        policy = policy.with_key_admin(admin)?;
    }
    if let Some(account) = &args.account_id {
        policy = policy.with_account_id(account)?;
    }
    Ok(policy)
}

/// `key-policy`: writes the key policy; returns the exit code.
pub fn write_key_policy(
    args: &KeyPolicyArgs,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    let built = key_policy(args, stdin).and_then(|p| {
        let json = p.document().to_json_pretty()?;
        Ok((p, json))
    });
    let (policy, json) = match built {
        Ok(pair) => pair,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return exit::USAGE;
        }
    };
    for warning in policy.warnings() {
        let _ = writeln!(stderr, "warning: {warning}");
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, format!("{json}\n"))
            .map_err(|e| format!("{}: {e}", path.display())),
        None => writeln!(stdout, "{json}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("standard output: {e}")),
    };
    match written {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            exit::USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flags_set_the_listener_and_kms_bounds() {
        let defaults = serve_settings(&ServeArgs::default()).unwrap();
        assert!(!defaults.proxy.allow_non_loopback);
        assert_eq!(
            defaults.proxy.limits.max_kms_in_flight,
            crate::settings::DEFAULT_MAX_KMS_IN_FLIGHT
        );
        let args = ServeArgs {
            listen: Some("tcp://0.0.0.0:5000".into()),
            allow_non_loopback: true,
            max_kms_in_flight: Some(7),
            ..ServeArgs::default()
        };
        let settings = serve_settings(&args).unwrap();
        assert!(settings.proxy.allow_non_loopback);
        assert_eq!(settings.proxy.limits.max_kms_in_flight, 7);
        let parsed = Cli::try_parse_from([
            "keybroker-proxy",
            "serve",
            "--allow-non-loopback",
            "--max-kms-in-flight",
            "3",
        ])
        .unwrap();
        let Command::Serve(args) = parsed.command else {
            panic!("not serve");
        };
        assert!(args.allow_non_loopback);
        assert_eq!(args.max_kms_in_flight, Some(3));
    }

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let now = UnixMillis(0);
        let code = run(
            ["keybroker-proxy", "attestation", "verify"],
            &mut std::io::empty(),
            &mut out,
            &mut err,
            now,
        );
        assert_eq!(code, exit::USAGE);
        assert!(String::from_utf8_lossy(&err).contains("FILE"));

        let code = run(
            [
                "keybroker-proxy",
                "attestation",
                "verify",
                "--at",
                "soon",
                "x",
            ],
            &mut std::io::empty(),
            &mut out,
            &mut err,
            now,
        );
        assert_eq!(code, exit::USAGE);

        let code = run(
            [
                "keybroker-proxy",
                "attestation",
                "verify",
                "/nonexistent/doc.cbor",
            ],
            &mut std::io::empty(),
            &mut out,
            &mut err,
            now,
        );
        assert_eq!(code, exit::USAGE);

        out.clear();
        let code = run(
            ["keybroker-proxy", "--help"],
            &mut std::io::empty(),
            &mut out,
            &mut err,
            now,
        );
        assert_eq!(code, exit::OK);
        assert!(String::from_utf8_lossy(&out).contains("attestation"));
    }

    #[test]
    fn garbage_on_stdin_is_invalid_not_usage() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = run(
            ["keybroker-proxy", "attestation", "verify", "-"],
            &mut &b"\x84\x01"[..],
            &mut out,
            &mut err,
            UnixMillis(0),
        );
        assert_eq!(code, exit::INVALID);
        assert_eq!(
            String::from_utf8_lossy(&err),
            "invalid: document is truncated\n"
        );
        assert!(out.is_empty());
    }
}

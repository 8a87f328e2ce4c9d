//! Command line of `keybroker-proxy`.
//!
//! ```text
//! keybroker-proxy attestation verify [--root PEM]... [--at MS_OR_RFC3339] FILE
//! keybroker-proxy serve [--config FILE] [--listen ADDR] [--kms-endpoint URL] ...
//! keybroker-proxy policy --principal ARN (--pcr0 HEX [--pcr1 HEX] [--pcr2 HEX] [--pcr8 HEX]
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
//! `policy` writes the KMS key policy that gives plaintext only to attested
//! enclaves of the given images (see [`crate::key_policy`] for every
//! statement) as pretty JSON, to standard output or `--output`. The images
//! come either from the `--pcr0` (`--pcr1`, `--pcr2`, `--pcr8`) flags (one
//! image) or from `--pcrs-json` files (repeatable: one image per file, e.g.
//! the old and the new image during a rollout), never both: mixing them is a
//! usage error rather than a silent override. Warnings (e.g. no
//! `--key-admin`) go to standard error. Exit codes: 0 written, 2 usage,
//! invalid input (bad PCR, ARN or JSON; an all-zero debug-mode PCR) or I/O
//! error.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use clap::{Args, Parser, Subcommand};
use keybroker_common::UnixMillis;
use keybroker_common::attestation::{
    AttestationError, MAX_DOCUMENT_LEN, VerifiedAttestation, Verifier,
};
use serde::Serialize;

/// Exit code: the document verified.
pub const EXIT_VALID: u8 = 0;
/// Exit code: the document was read but does not verify.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: bad usage or an I/O error (clap's convention for usage errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `serve`: the server failed (bind, runtime).
pub const EXIT_FAILURE: u8 = 1;

/// Largest input file read, in bytes: a maximal document as base64 with
/// line breaks fits with room to spare.
pub const MAX_INPUT_LEN: usize = 4 * MAX_DOCUMENT_LEN;

/// Largest `--root` file read, in bytes.
pub const MAX_ROOT_FILE_LEN: usize = 1 << 20;

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
    /// enclaves of the given image(s).
    Policy(PolicyArgs),
}

/// Arguments of `policy`.
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
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
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
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
        value_parser = crate::config::parse_pcr_flag,
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
        value_parser = crate::config::parse_image_flag
    )]
    pub allow_images: Vec<crate::policy::AllowedImage>,
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
    /// endpoint name; repeatable, adds to the file's [tunnel] allowed. The
    /// region's KMS endpoint (kms.REGION.amazonaws.com:443) is always
    /// allowed when the proxy knows its region.
    #[arg(long = "tunnel", value_name = "HOST:PORT")]
    pub tunnels: Vec<crate::tunnel::TunnelTarget>,
    /// Tunnels open at once.
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<usize>,
    /// Do not hand AWS credentials to enclaves (GetCredentials is answered
    /// PolicyDenied); for broker-only fleets.
    #[arg(long)]
    pub no_credentials: bool,
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

/// Why `attestation verify` did not print a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Usage or I/O problem (exit 2).
    Usage(String),
    /// The document does not verify (exit 1).
    Invalid(AttestationError),
}

impl VerifyError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Usage(_) => EXIT_USAGE,
            VerifyError::Invalid(_) => EXIT_INVALID,
        }
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Usage(msg) => write!(f, "error: {msg}"),
            VerifyError::Invalid(e) => write!(f, "invalid: {e}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// JSON summary of a verified document, printed by `attestation verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Always `true`: only verified documents are summarised.
    pub valid: bool,
    /// NSM module id.
    pub module_id: String,
    /// PCR digest function (`SHA384`).
    pub digest: &'static str,
    /// Document creation time, milliseconds since the epoch.
    pub timestamp_ms: u64,
    /// Document creation time, RFC 3339 UTC.
    pub timestamp: String,
    /// Time the chain was verified at, milliseconds since the epoch.
    pub verified_at_ms: u64,
    /// Time the chain was verified at, RFC 3339 UTC.
    pub verified_at: String,
    /// PCR index to lower-case hex value.
    pub pcrs: BTreeMap<u8, String>,
    /// What the `public_key` field holds, e.g. `RSA-2048 SubjectPublicKeyInfo
    /// (294 bytes)`; `null` when absent.
    pub public_key: Option<String>,
    /// Length of `user_data`; `null` when absent.
    pub user_data_len: Option<usize>,
    /// Length of `nonce`; `null` when absent.
    pub nonce_len: Option<usize>,
    /// Certificate subjects, leaf first, root last.
    pub chain: Vec<String>,
}

impl Summary {
    /// Summarises a verified document.
    pub fn new(v: &VerifiedAttestation) -> Self {
        Summary {
            valid: true,
            module_id: v.module_id().to_owned(),
            digest: v.document().digest.as_str(),
            timestamp_ms: v.timestamp().0,
            timestamp: rfc3339(v.timestamp()),
            verified_at_ms: v.verified_at().0,
            verified_at: rfc3339(v.verified_at()),
            pcrs: v.pcrs().iter().map(|(i, p)| (*i, hex::encode(p))).collect(),
            public_key: v.public_key().map(describe_public_key),
            user_data_len: v.user_data().map(<[u8]>::len),
            nonce_len: v.nonce().map(<[u8]>::len),
            chain: v.chain_subjects().to_vec(),
        }
    }
}

/// The current time from the system clock.
pub fn now() -> UnixMillis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
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
            return u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(&args, stdout, stderr),
        Command::Policy(args) => policy(&args, stdin, stdout, stderr),
        Command::Attestation(AttestationCommand::Verify(args)) => match verify(&args, stdin, now) {
            Ok(summary) => match serde_json::to_string_pretty(&summary) {
                Ok(json) => {
                    if writeln!(stdout, "{json}").is_err() {
                        return EXIT_USAGE;
                    }
                    EXIT_VALID
                }
                Err(e) => {
                    let _ = writeln!(stderr, "error: JSON output: {e}");
                    EXIT_USAGE
                }
            },
            Err(e) => {
                let _ = writeln!(stderr, "{e}");
                e.exit_code()
            }
        },
    }
}

/// Everything `serve` needs, from the file and the flags.
#[derive(Debug)]
pub struct ServeSettings {
    /// The server configuration.
    pub proxy: crate::config::ProxyConfig,
    /// How to reach KMS.
    pub kms: crate::config::KmsSettings,
    /// Log format.
    pub log_format: crate::config::LogFormat,
    /// Whether `GetCredentials` is answered with the AWS chain's credentials.
    pub credentials: bool,
}

/// Merges the `--config` file (if any) and the flags.
pub fn serve_settings(args: &ServeArgs) -> crate::Result<ServeSettings> {
    use crate::config::{
        FileConfig, ProxyConfig, add_roots, check_images, load_image_json, parse_operation,
    };
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if let Some(listen) = &args.listen {
        file.listen = Some(listen.clone());
    }
    let l = &mut file.limits;
    l.max_connections = args.max_connections.or(l.max_connections);
    l.max_in_flight_per_connection = args.max_in_flight.or(l.max_in_flight_per_connection);
    l.max_kms_in_flight = args.max_kms_in_flight.or(l.max_kms_in_flight);
    l.drain_timeout_ms = args.drain_timeout_ms.or(l.drain_timeout_ms);
    let k = &mut file.kms;
    k.endpoint = args.kms_endpoint.clone().or(k.endpoint.take());
    k.region = args.region.clone().or(k.region.take());
    k.max_attempts = args.kms_max_attempts.or(k.max_attempts);
    file.tunnel.max_tunnels = args.max_tunnels.or(file.tunnel.max_tunnels);
    let mut tunnels = file.tunnel_settings()?;
    tunnels.allowed.extend(args.tunnels.iter().cloned());

    file.policy.max_document_age_ms = args.max_document_age_ms.or(file.policy.max_document_age_ms);
    let mut policy = file.policy()?;
    if args.dangerous_forward_without_recipient {
        policy.dangerous_forward_without_recipient = true;
    }
    if !args.allow_keys.is_empty() {
        policy
            .allowed_keys
            .get_or_insert_with(Default::default)
            .extend(args.allow_keys.iter().cloned());
    }
    for name in &args.allow_operations {
        let op = parse_operation(name)?;
        policy
            .allowed_operations
            .get_or_insert_with(Default::default)
            .insert(op);
    }
    if !args.pcrs.is_empty() {
        // `--pcr` edits the single image of `[policy.expected_pcrs]`, as it
        // always did (same index: the flag wins).
        if file.policy.allowed_images.is_some() {
            return Err(crate::Error::Config(
                "--pcr sets the PCRs of the single image ([policy.expected_pcrs]), but the \
                 configuration file lists [[policy.allowed_images]]: use --allow-image"
                    .into(),
            ));
        }
        let mut pcrs = file.single_image_pcrs()?;
        pcrs.extend(args.pcrs.iter().cloned());
        policy.allowed_images = vec![crate::policy::AllowedImage::new(pcrs)?];
    }
    policy
        .allowed_images
        .extend(args.allow_images.iter().cloned());
    for path in &args.allow_image_json {
        policy.allowed_images.push(load_image_json(path)?);
    }
    check_images(&policy.allowed_images)?;
    for path in &args.attestation_roots {
        add_roots(&mut policy.verifier, path)?;
    }
    if args.max_request_len.is_some() {
        policy.max_request_len = args.max_request_len;
    }
    Ok(ServeSettings {
        proxy: ProxyConfig {
            listen: file.listen_address()?,
            allow_non_loopback: args.allow_non_loopback || file.allow_non_loopback.unwrap_or(false),
            limits: file.server_limits()?,
            policy,
            tunnels,
        },
        kms: file.kms_settings(),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        credentials: !args.no_credentials && file.credentials.enabled.unwrap_or(true),
    })
}

/// `serve`: runs the proxy until SIGINT/SIGTERM and returns the exit code.
pub fn serve(args: &ServeArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let settings = match serve_settings(args) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return EXIT_USAGE;
        }
    };
    // A subscriber may already be installed (tests calling `run` twice).
    let _ = crate::audit::init_logging(settings.log_format);
    log_allowed_images(&settings.proxy.policy);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(stderr, "error: tokio runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let ServeSettings {
        mut proxy,
        kms,
        credentials,
        ..
    } = settings;
    let bound = runtime.block_on(async {
        let sdk_config = crate::backend::load_sdk_config(&kms).await;
        add_region_kms_target(&mut proxy.tunnels, &sdk_config);
        let backend = crate::backend::SdkKmsBackend::from_sdk_config(&sdk_config);
        let signal = crate::server::shutdown_signal()?;
        let mut proxy = crate::server::Proxy::bind(proxy, backend).await?;
        if credentials {
            match crate::credentials::AwsConfigCredentials::from_sdk_config(&sdk_config) {
                Some(source) => proxy = proxy.with_credentials(std::sync::Arc::new(source)),
                None => tracing::warn!("no AWS credential provider: GetCredentials is refused"),
            }
        }
        Ok::<_, crate::Error>((proxy, signal))
    });
    let (proxy, signal) = match bound {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            let _ = writeln!(stderr, "error: {e}");
            // A refused address (non-loopback TCP) is a configuration error.
            return match e {
                crate::Error::Config(_) => EXIT_USAGE,
                _ => EXIT_FAILURE,
            };
        }
    };
    // The launcher and tests read the real address from here.
    if writeln!(stdout, "listening: {}", proxy.local_addr()).is_err() || stdout.flush().is_err() {
        return EXIT_FAILURE;
    }
    match runtime.block_on(proxy.run_until(signal)) {
        Ok(()) => EXIT_VALID,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            let _ = writeln!(stderr, "error: {e}");
            EXIT_FAILURE
        }
    }
}

/// Allows tunnels to the KMS endpoint of the region the proxy runs in (from
/// `--region`, `[kms] region` or the AWS chain), if it knows one.
fn add_region_kms_target(
    tunnels: &mut crate::tunnel::TunnelSettings,
    sdk_config: &aws_config::SdkConfig,
) {
    let Some(region) = sdk_config.region() else {
        tracing::warn!("no AWS region: no default tunnel target (add one with --tunnel)");
        return;
    };
    match crate::tunnel::TunnelTarget::region_kms(region.as_ref()) {
        Some(target) => {
            tunnels.allowed.insert(target);
        }
        None => {
            tracing::warn!(region = ?region.as_ref(), "the AWS region is not a plausible region name: no default tunnel target")
        }
    }
}

/// Logs, at start, which enclave images the proxy admits (one line per
/// image, with its full PCR values), so that the journal shows what a
/// `denied:PcrMismatch` was checked against.
fn log_allowed_images(policy: &crate::policy::Policy) {
    if policy.allowed_images.is_empty() {
        tracing::warn!(
            "no allowed enclave images: the proxy does not check attestation documents \
             (the KMS key policy alone decides)"
        );
    }
    for image in &policy.allowed_images {
        let pcrs: Vec<String> = image
            .pcrs()
            .iter()
            .map(|(index, value)| format!("PCR{index}={}", hex::encode(value)))
            .collect();
        tracing::info!(
            image = %image.label(),
            pcrs = %pcrs.join(" "),
            "admitting enclave image"
        );
    }
}

/// Builds the key policy of `policy` from its arguments (reading the
/// `--pcrs-json` files, `-` from `stdin`).
pub fn key_policy(
    args: &PolicyArgs,
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
        let (name, bytes) = if path.as_os_str() == "-" {
            let bytes = read_limited(stdin, MAX_NITRO_CLI_JSON_LEN)
                .map_err(|e| crate::Error::KeyPolicy(format!("standard input: {e}")))?;
            ("standard input".to_owned(), bytes)
        } else {
            let file_err = |source| crate::Error::File {
                path: path.clone(),
                source,
            };
            let mut file = std::fs::File::open(path).map_err(file_err)?;
            let bytes = read_limited(&mut file, MAX_NITRO_CLI_JSON_LEN)
                .map_err(|e| crate::Error::KeyPolicy(format!("{}: {e}", path.display())))?;
            (path.display().to_string(), bytes)
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

/// `policy`: writes the key policy; returns the exit code.
pub fn policy(
    args: &PolicyArgs,
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
            return EXIT_USAGE;
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
        Ok(()) => EXIT_VALID,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            EXIT_USAGE
        }
    }
}

/// `attestation verify`: reads the roots and the document, verifies it at
/// `--at` (or `now`), and summarises it.
pub fn verify(
    args: &VerifyArgs,
    stdin: &mut dyn Read,
    now: UnixMillis,
) -> Result<Summary, VerifyError> {
    let mut verifier = Verifier::aws_nitro();
    for path in &args.roots {
        let bytes = read_limited(&mut open(path)?, MAX_ROOT_FILE_LEN)
            .map_err(|e| VerifyError::Usage(format!("{}: {e}", path.display())))?;
        let certs = parse_certificates(&bytes)
            .map_err(|e| VerifyError::Usage(format!("{}: {e}", path.display())))?;
        for der in certs {
            verifier
                .add_trusted_root(&der)
                .map_err(|e| VerifyError::Usage(format!("{}: {e}", path.display())))?;
        }
    }

    let input = if args.file.as_os_str() == "-" {
        read_limited(stdin, MAX_INPUT_LEN)
            .map_err(|e| VerifyError::Usage(format!("standard input: {e}")))?
    } else {
        read_limited(&mut open(&args.file)?, MAX_INPUT_LEN)
            .map_err(|e| VerifyError::Usage(format!("{}: {e}", args.file.display())))?
    };
    let document = decode_document(&input).map_err(VerifyError::Invalid)?;
    let verified = verifier
        .verify(&document, args.at.unwrap_or(now))
        .map_err(VerifyError::Invalid)?;
    Ok(Summary::new(&verified))
}

fn open(path: &Path) -> Result<std::fs::File, VerifyError> {
    std::fs::File::open(path).map_err(|e| VerifyError::Usage(format!("{}: {e}", path.display())))
}

/// Reads at most `max` bytes; more is an error.
fn read_limited(r: &mut dyn Read, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > max {
        return Err(format!("input is larger than {max} bytes"));
    }
    Ok(buf)
}

/// Returns the raw document from file contents that are either raw CBOR or
/// base64 text (standard or URL-safe alphabet, padding optional, whitespace
/// ignored).
///
/// Raw CBOR is recognised by its first byte: `0x84` (untagged COSE_Sign1
/// array) or `0xD2` (tag 18); neither is printable ASCII, so text is never
/// mistaken for it.
pub fn decode_document(input: &[u8]) -> Result<Vec<u8>, AttestationError> {
    if matches!(input.first(), Some(0x84 | 0xD2)) {
        return Ok(input.to_vec());
    }
    let text: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let is_b64 =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=');
    if text.is_empty() || !text.iter().all(is_b64) {
        return Err(AttestationError::Malformed(
            "input is neither a CBOR COSE_Sign1 nor base64 text".into(),
        ));
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if text.iter().any(|b| matches!(b, b'-' | b'_')) {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config)
        .decode(&text)
        .map_err(|e| AttestationError::Malformed(format!("base64: {e}")))
}

/// Extracts the DER certificates from PEM text (`-----BEGIN CERTIFICATE-----`
/// blocks, RFC 7468 section 5). A file with no PEM block that looks like DER
/// (starts with a SEQUENCE, `0x30`) is returned as one certificate.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not PEM text or DER".to_owned())?;
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = rest.get(start + BEGIN.len()..).unwrap_or_default();
        let end = after
            .find(END)
            .ok_or_else(|| "unterminated PEM certificate block".to_owned())?;
        let body: String = after
            .get(..end)
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("PEM base64: {e}"))?;
        certs.push(der);
        rest = after.get(end + END.len()..).unwrap_or_default();
    }
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// Parses `--at`: milliseconds since the epoch, or an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Result<UnixMillis, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(UnixMillis)
            .map_err(|e| format!("milliseconds: {e}"));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected milliseconds since the epoch or RFC 3339: {e}"))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms)
        .map(UnixMillis)
        .map_err(|_| "time before 1970 is not supported".to_owned())
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: UnixMillis) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} ms", t.0))
}

/// Describes an attestation `public_key` field: `RSA-<bits>
/// SubjectPublicKeyInfo (<n> bytes)` when it is a DER RSA
/// SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7, the KMS Recipient shape),
/// else `opaque (<n> bytes)`.
pub fn describe_public_key(key: &[u8]) -> String {
    match aws_lc_rs::rsa::PublicEncryptingKey::from_der(key) {
        Ok(rsa) => format!(
            "RSA-{} SubjectPublicKeyInfo ({} bytes)",
            rsa.key_size_bits(),
            key.len()
        ),
        Err(_) => format!("opaque ({} bytes)", key.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_adds_its_kms_endpoint_as_a_tunnel_target() {
        let mut tunnels = crate::tunnel::TunnelSettings::default();
        let none = aws_config::SdkConfig::builder().build();
        add_region_kms_target(&mut tunnels, &none);
        assert!(tunnels.allowed.is_empty(), "no region, no default target");
        let eu = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .build();
        add_region_kms_target(&mut tunnels, &eu);
        assert!(tunnels.allows("kms.eu-west-1.amazonaws.com", 443));
        assert_eq!(tunnels.allowed.len(), 1);
        let odd = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1.evil.example"))
            .build();
        add_region_kms_target(&mut tunnels, &odd);
        assert_eq!(tunnels.allowed.len(), 1);
    }

    #[test]
    fn serve_flags_set_the_listener_and_kms_bounds() {
        let defaults = serve_settings(&ServeArgs::default()).unwrap();
        assert!(!defaults.proxy.allow_non_loopback);
        assert_eq!(
            defaults.proxy.limits.max_kms_in_flight,
            crate::config::DEFAULT_MAX_KMS_IN_FLIGHT
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
    fn parse_time_accepts_ms_and_rfc3339() {
        assert_eq!(
            parse_time("1725719859545"),
            Ok(UnixMillis(1_725_719_859_545))
        );
        assert_eq!(
            parse_time("2024-09-07T14:37:39.545Z"),
            Ok(UnixMillis(1_725_719_859_545))
        );
        assert_eq!(
            parse_time("2024-09-07T16:37:39.545+02:00"),
            Ok(UnixMillis(1_725_719_859_545))
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UnixMillis(1_725_719_859_545);
        assert_eq!(rfc3339(t), "2024-09-07T14:37:39.545Z");
        assert_eq!(parse_time(&rfc3339(t)), Ok(t));
    }

    #[test]
    fn decode_document_detects_raw_and_base64() {
        let raw = [0x84, 0x44, 0xA1, 0x01, 0x38, 0x22, 0xA0, 0xFF];
        assert_eq!(decode_document(&raw).unwrap(), raw);
        let tagged = [0xD2, 0x84];
        assert_eq!(decode_document(&tagged).unwrap(), tagged);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let wrapped = format!("{}\n{}\n", &b64[..4], &b64[4..]);
        assert_eq!(decode_document(wrapped.as_bytes()).unwrap(), raw);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(decode_document(url.as_bytes()).unwrap(), raw);
        assert!(matches!(
            decode_document(b"not base64!"),
            Err(AttestationError::Malformed(_))
        ));
        assert!(decode_document(b"").is_err());
    }

    #[test]
    fn parse_certificates_reads_pem_blocks_and_der() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let certs = parse_certificates(pem.as_bytes()).unwrap();
        assert_eq!(
            certs,
            vec![vec![0x30, 0x82, 0x01, 0, 0, 0], vec![0x30, 0x00]]
        );
        assert_eq!(
            parse_certificates(&[0x30, 0x00]).unwrap(),
            vec![vec![0x30, 0x00]]
        );
        assert!(parse_certificates(b"nothing here").is_err());
        assert!(parse_certificates(b"-----BEGIN CERTIFICATE-----\nMAA=").is_err());
    }

    #[test]
    fn describe_public_key_recognises_rsa_spki() {
        use aws_lc_rs::encoding::AsDer;
        assert_eq!(describe_public_key(&[1, 2, 3, 4, 5]), "opaque (5 bytes)");
        let key = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap();
        let spki = key.public_key().as_der().unwrap();
        assert_eq!(
            describe_public_key(spki.as_ref()),
            "RSA-2048 SubjectPublicKeyInfo (294 bytes)"
        );
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
        assert_eq!(code, EXIT_USAGE);
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
        assert_eq!(code, EXIT_USAGE);

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
        assert_eq!(code, EXIT_USAGE);

        out.clear();
        let code = run(
            ["keybroker-proxy", "--help"],
            &mut std::io::empty(),
            &mut out,
            &mut err,
            now,
        );
        assert_eq!(code, EXIT_VALID);
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
        assert_eq!(code, EXIT_INVALID);
        assert_eq!(
            String::from_utf8_lossy(&err),
            "invalid: document is truncated\n"
        );
        assert!(out.is_empty());
    }
}

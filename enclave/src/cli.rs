//! The command line of the `keybroker-enclave` program (the binary is
//! `fn main() { cli::main_with_args(std::env::args_os()) }`), kept in the
//! library so launchers can run it in-process or re-exec themselves as the
//! enclave.
//!
//! - `demo`: gets a data key with `Recipient` through the proxy, encrypts a
//!   file with it (AES-256-GCM), recovers the data key with `Decrypt`,
//!   decrypts the file, checks the round trip, and prints a JSON report (no
//!   key material) on stdout.
//! - `mock-nsm init|pcr0` (builds with the `mock-nsm` feature): the
//!   development CA and the mock NSM's default PCR0.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, RandomizedNonceKey, UnboundKey};
use clap::{Args, Parser, Subcommand};
use keybroker_common::address::Address;
use keybroker_common::kms::{DataKeySpec, DecryptRequest, GenerateDataKeyRequest};
use serde_json::json;

use crate::nsm::{Nsm, NsmDevice};
use crate::{Client, ClientConfig, Error, RecipientKeys, RecipientKeysConfig};

/// Keybroker enclave program.
#[derive(Parser, Debug)]
#[command(name = "keybroker-enclave", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Data key round trip through the proxy; prints a JSON report.
    Demo(DemoArgs),
    /// Development mock NSM tools (needs the `mock-nsm` build feature).
    #[command(subcommand)]
    MockNsm(MockNsmCommand),
}

/// Arguments of `demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Proxy address: vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH.
    #[arg(long, env = "KEYBROKER_PROXY")]
    pub proxy: Address,
    /// KMS key id, ARN or alias (alias/NAME).
    #[arg(long)]
    pub key: String,
    /// File to encrypt and decrypt.
    #[arg(long)]
    pub input: PathBuf,
    /// Encryption context entries, KEY=VALUE (repeatable).
    #[arg(long = "context", value_parser = parse_context)]
    pub context: Vec<(String, String)>,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Use the development mock NSM with the CA in this directory (created
    /// if absent) instead of /dev/nsm. Only in builds with `mock-nsm`.
    #[arg(long, value_name = "DIR")]
    pub mock_nsm_ca: Option<PathBuf>,
}

/// `mock-nsm` subcommands.
#[derive(Subcommand, Debug)]
pub enum MockNsmCommand {
    /// Creates (or loads) the development CA in DIR and prints the path of
    /// its root certificate (PEM).
    Init {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Prints the mock NSM's default PCR0 (SHA-384 of the binary), hex.
    Pcr0 {
        /// The enclave binary; default: this program.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

fn parse_context(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs the program with `args` (the first item is the program name, as in
/// `std::env::args_os()`): parses them, sets up logging to stderr (`RUST_LOG`,
/// default `warn`; skipped if the caller already installed a subscriber),
/// runs the subcommand on a new tokio runtime and returns the exit code.
/// `--help` and `--version` print and return success; usage errors return 2.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let result = match cli.command {
        Command::Demo(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the tokio runtime", e))
            .and_then(|rt| rt.block_on(demo(&args)))
            .map(|report| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.to_string())
                );
            }),
        Command::MockNsm(cmd) => mock_nsm_command(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybroker-enclave: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "mock-nsm")]
fn mock_nsm_command(cmd: MockNsmCommand) -> Result<(), Error> {
    use crate::mock_nsm;
    match cmd {
        MockNsmCommand::Init { dir } => {
            let ca = mock_nsm::MockCa::load_or_create(&dir)?;
            let path = ca
                .root_pem_path()
                .unwrap_or_else(|| dir.join(mock_nsm::ROOT_CERT_PEM_FILE));
            println!("{}", path.display());
        }
        MockNsmCommand::Pcr0 { binary } => {
            let pcr0 = match binary {
                Some(path) => mock_nsm::default_pcr0_for(&path)?,
                None => mock_nsm::default_pcr0()?,
            };
            println!("{}", hex::encode(pcr0));
        }
    }
    Ok(())
}

#[cfg(not(feature = "mock-nsm"))]
fn mock_nsm_command(_: MockNsmCommand) -> Result<(), Error> {
    Err(no_mock())
}

#[cfg(not(feature = "mock-nsm"))]
fn no_mock() -> Error {
    Error::InvalidArgument(
        "this build has no mock NSM; rebuild keybroker-enclave with `--features mock-nsm`".into(),
    )
}

/// The NSM: the mock one under the CA in `mock_ca`, or `/dev/nsm`.
fn open_nsm(mock_ca: Option<&PathBuf>) -> Result<(Arc<dyn Nsm>, &'static str), Error> {
    match mock_ca {
        None => Ok((Arc::new(NsmDevice::open()?), "/dev/nsm")),
        #[cfg(feature = "mock-nsm")]
        Some(dir) => {
            let ca = crate::MockNsm::load_or_create_ca(dir)?;
            let nsm = crate::MockNsm::new(&ca, crate::MockNsmConfig::default())?;
            Ok((Arc::new(nsm), "mock"))
        }
        #[cfg(not(feature = "mock-nsm"))]
        Some(_) => Err(no_mock()),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `demo`: a data key with `Recipient` through the proxy, AES-256-GCM
/// encryption of the input file with it, `Decrypt` of the `CiphertextBlob`
/// with `Recipient`, decryption of the file and comparison. Returns the JSON
/// report (sizes, timings, outcome; never key material).
///
/// # Errors
/// Any failure of the NSM, the proxy or KMS, or of reading the file; and
/// [`Error::InvalidArgument`] if the round trip does not reproduce the input
/// (the report is then lost: a mismatch is a failure, not a result).
pub async fn demo(args: &DemoArgs) -> Result<serde_json::Value, Error> {
    let mut timings = BTreeMap::new();
    let t = Instant::now();
    let (nsm, nsm_kind) = open_nsm(args.mock_nsm_ca.as_ref())?;
    let pcr0 = nsm.describe_pcr(0).map(|(_, v)| hex::encode(v)).ok();
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default()).await?;
    timings.insert("nsm_and_recipient_keys", ms(t.elapsed()));

    let t = Instant::now();
    let mut config = ClientConfig::new(args.proxy.clone());
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.connect_timeout = config.connect_timeout.min(config.request_timeout);
    let client = Client::connect(config, keys).await?;
    timings.insert("connect", ms(t.elapsed()));

    let context: BTreeMap<String, String> = args.context.iter().cloned().collect();
    let context = (!context.is_empty()).then_some(context);

    let t = Instant::now();
    let data_key = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(args.key.clone()),
            key_spec: Some(DataKeySpec::Aes256),
            encryption_context: context.clone(),
            ..Default::default()
        })
        .await?;
    timings.insert("generate_data_key", ms(t.elapsed()));

    let input = std::fs::read(&args.input).map_err(|e| Error::Io {
        context: format!("read {}", args.input.display()),
        source: e,
    })?;
    let t = Instant::now();
    let sealing = RandomizedNonceKey::new(&AES_256_GCM, data_key.plaintext.expose())
        .map_err(|_| Error::InvalidArgument("data key is not an AES-256 key".into()))?;
    let mut sealed = input.clone();
    let nonce = sealing
        .seal_in_place_append_tag(Aad::empty(), &mut sealed)
        .map_err(|_| Error::InvalidArgument("AES-256-GCM encryption failed".into()))?;
    timings.insert("encrypt_file", ms(t.elapsed()));

    let t = Instant::now();
    let recovered = client
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(data_key.ciphertext_blob.clone()),
            encryption_context: context.clone(),
            key_id: Some(args.key.clone()),
            ..Default::default()
        })
        .await?;
    timings.insert("decrypt_data_key", ms(t.elapsed()));
    let key_matches = aws_lc_rs::constant_time::verify_slices_are_equal(
        recovered.plaintext.expose(),
        data_key.plaintext.expose(),
    )
    .is_ok();

    let t = Instant::now();
    let opening = UnboundKey::new(&AES_256_GCM, recovered.plaintext.expose())
        .map(LessSafeKey::new)
        .map_err(|_| Error::InvalidArgument("recovered key is not an AES-256 key".into()))?;
    let mut opened = sealed.clone();
    let roundtrip_ok = opening
        .open_in_place(nonce, Aad::empty(), &mut opened)
        .is_ok_and(|plain| plain == input.as_slice());
    timings.insert("decrypt_file", ms(t.elapsed()));

    let keys = client.keys().current();
    let ok = key_matches && roundtrip_ok;
    let report = json!({
        "ok": ok,
        "proxy": args.proxy.to_string(),
        "nsm": nsm_kind,
        "pcr0": pcr0,
        "key_id": data_key.key_id,
        "encryption_context": context,
        "attestation_document_bytes": keys.attestation_document().len(),
        "recipient_public_key_bytes": keys.public_key_spki_der().len(),
        "data_key_bytes": data_key.plaintext.len(),
        "data_key_ciphertext_blob_bytes": data_key.ciphertext_blob.0.len(),
        "input_bytes": input.len(),
        "encrypted_file_bytes": sealed.len(),
        "data_key_recovered_by_decrypt": key_matches,
        "file_roundtrip_ok": roundtrip_ok,
        "timings_ms": timings,
    });
    if ok {
        Ok(report)
    } else {
        Err(Error::InvalidArgument(
            "round trip failed: the decrypted data key or file does not match".into(),
        ))
    }
}

//! The command line of the `keybroker-enclave` program (the binary is
//! `fn main() { cli::main_with_args(std::env::args_os()) }`), kept in the
//! library so launchers can run it in-process or re-exec themselves as the
//! enclave.
//!
//! - `serve`: the KMS-compatible endpoint ([`crate::endpoint`]) on loopback
//!   TCP and/or a Unix socket, for AWS SDKs inside the enclave.
//! - `generate-data-key`, `decrypt`, `generate-data-key-pair`,
//!   `generate-random`: one KMS call each, with `Recipient`, for scripts
//!   inside the enclave (in the spirit of `kmstool-enclave-cli`). Output is
//!   the KMS response as JSON with base64 blobs on stdout (field names as in
//!   the KMS API, as `aws kms` prints them); a field written to a file with
//!   its `--*-file` option holds raw bytes and is left out of the JSON. The
//!   JSON, which may carry plaintext in base64, is built in buffers that are
//!   zeroized after the write ([`SecretOutput`]).
//! - `attestation`: a fresh attestation document for a nonce, user data and
//!   public key.
//! - `seal`, `open`: envelope encryption of a file ([`crate::envelope`]),
//!   streamed; `open` replaces its output only once the whole message
//!   authenticates.
//! - `demo`: envelope-encrypts a file under a data key from `GenerateDataKey`
//!   with `Recipient` through the proxy, opens it with the data key from
//!   `Decrypt` with `Recipient`, checks the round trip, and prints a JSON
//!   report (no key material) on stdout.
//! - `mock-nsm init|pcr0` (builds with the `mock-nsm` feature): the
//!   development CA and the mock NSM's default PCR0.
//!
//! Exit codes ([`exit_code`]): 0 success; 1 refused by KMS, the proxy's
//! policy or the image's key allowlist; 2 usage error or invalid input; 3
//! proxy or KMS unavailable, throttled or timed out (retry later); 4 NSM
//! failure; 5 local I/O error; 6 data that does not authenticate or decode
//! (a tampered or truncated `seal` message, a `CiphertextForRecipient` that
//! does not parse, a KMS answer for a key that is not allowed, a TLS
//! session that does not verify).
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Parser, Subcommand};
use keybroker_common::address::{Address, PARENT_CID};
use keybroker_common::kms::{
    Blob, DataKeyPairSpec, DataKeySpec, DecryptRequest, DeriveSharedSecretRequest,
    EncryptionAlgorithm, GenerateDataKeyPairRequest, GenerateDataKeyRequest, GenerateRandomRequest,
    KeyAgreementAlgorithm,
};
use serde_json::{Map, Value, json};

use crate::e2e::{KmsSettings, Mode, TrustRoots};
use crate::endpoint::{self, KmsEndpoint};
use crate::nsm::{Nsm, NsmDevice};
use crate::{Client, ClientConfig, Error, RecipientKeys, RecipientKeysConfig};
use keybroker_common::key_allowlist::KeyPinError;

/// Keybroker enclave program.
#[derive(Parser, Debug)]
#[command(
    name = "keybroker-enclave",
    version,
    about,
    after_help = "Exit codes: 0 success, 1 refused by KMS, proxy policy or the key allowlist, \
                  2 usage or invalid input, 3 proxy/KMS unavailable or throttled (retry), \
                  4 NSM failure, 5 local I/O error, 6 data that does not authenticate \
                  (tampered message, unusable answer, TLS that does not verify)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// KMS-compatible HTTP endpoint (AWS JSON 1.1) for AWS SDKs in the enclave.
    Serve(ServeArgs),
    /// KMS GenerateDataKey with Recipient: a data key, plaintext only here.
    GenerateDataKey(GenerateDataKeyArgs),
    /// KMS Decrypt with Recipient.
    Decrypt(DecryptArgs),
    /// KMS GenerateDataKeyPair with Recipient.
    GenerateDataKeyPair(GenerateDataKeyPairArgs),
    /// KMS GenerateRandom with Recipient.
    GenerateRandom(GenerateRandomArgs),
    /// KMS DeriveSharedSecret with Recipient: ECDH with a KMS key-agreement
    /// key, the shared secret only here.
    DeriveSharedSecret(DeriveSharedSecretArgs),
    /// A fresh NSM attestation document.
    Attestation(AttestationArgs),
    /// Envelope-encrypts a file (AES-256-GCM under a KMS data key), streaming.
    Seal(EnvelopeArgs),
    /// Decrypts a file made by `seal`; writes nothing unless it authenticates.
    Open(EnvelopeArgs),
    /// Data key round trip through the proxy; prints a JSON report.
    Demo(DemoArgs),
    /// Development mock NSM tools (needs the `mock-nsm` build feature).
    #[command(subcommand)]
    MockNsm(MockNsmCommand),
}

/// Which NSM to use.
#[derive(Args, Debug, Clone)]
pub struct NsmArgs {
    /// Use the development mock NSM with the CA in this directory (created
    /// if absent) instead of /dev/nsm. Only in builds with `mock-nsm`, where
    /// it can also come from the environment (`KEYBROKER_MOCK_NSM_CA`, as in
    /// the boot-test image variant); a production build reads no such
    /// variable.
    #[arg(long, value_name = "DIR")]
    #[cfg_attr(feature = "mock-nsm", arg(env = "KEYBROKER_MOCK_NSM_CA"))]
    pub mock_nsm_ca: Option<PathBuf>,
}

/// How to reach KMS: the parent proxy, the KMS path (mode), and the NSM
/// that attests.
///
/// The mode, region, endpoint and allowed keys come from the image only (its
/// command line, or `--config FILE` inside it; see [`crate::e2e::config`]):
/// deliberately none of them has an environment variable.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Proxy address: vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH.
    #[arg(long, env = "KEYBROKER_PROXY", default_value_t = Address::Vsock { cid: PARENT_CID, port: 5000 })]
    pub proxy: Address,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// KMS path: `e2e` (TLS to KMS inside the enclave; the parent relays
    /// encrypted bytes) or `broker` (the parent relays typed requests; trust
    /// it with integrity). Default: the --config file's, else e2e.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// E2e: the AWS region (SigV4, and the endpoint kms.REGION.amazonaws.com).
    #[arg(long)]
    pub region: Option<String>,
    /// E2e: the KMS endpoint `https://HOST[:PORT]` (FIPS, a VPC endpoint name).
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// E2e: an allowed KMS key: key ARN, alias ARN or
    /// arn:aws:kms:REGION:ACCOUNT:* (repeatable; replaces the file's list).
    #[arg(long = "allow-key", value_name = "ARN")]
    pub allow_key: Vec<String>,
    /// E2e with AWS's stock vsock-proxy instead of keybroker-proxy: the
    /// relay to the KMS endpoint (vsock://3:PORT). Needs --vsock-proxy-imds.
    #[arg(long, value_name = "ADDRESS")]
    pub vsock_proxy_kms: Option<String>,
    /// E2e with the stock vsock-proxy: the relay to IMDS (169.254.169.254:80),
    /// where the enclave gets the instance role's credentials.
    #[arg(long, value_name = "ADDRESS")]
    pub vsock_proxy_imds: Option<String>,
    /// TOML file in the image with mode, region, kms-endpoint, allow-key,
    /// vsock-proxy-kms, vsock-proxy-imds; command-line values override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// E2e, development only: also trust this CA (PEM) for the KMS endpoint
    /// (the mock KMS's). Only in builds with `mock-nsm`.
    #[cfg(feature = "mock-nsm")]
    #[arg(long, value_name = "PEM")]
    pub mock_kms_ca: Option<PathBuf>,
    /// The NSM.
    #[command(flatten)]
    pub nsm: NsmArgs,
}

impl BrokerArgs {
    /// The KMS settings: the command line over the `--config` file.
    ///
    /// # Errors
    /// Reading or parsing the file.
    pub fn kms_settings(&self) -> Result<KmsSettings, Error> {
        let cli = KmsSettings {
            mode: self.mode,
            region: self.region.clone(),
            kms_endpoint: self.kms_endpoint.clone(),
            allow_key: self.allow_key.clone(),
            vsock_proxy_kms: self.vsock_proxy_kms.clone(),
            vsock_proxy_imds: self.vsock_proxy_imds.clone(),
        };
        match &self.config {
            Some(path) => Ok(cli.over(KmsSettings::load(path)?)),
            None => Ok(cli),
        }
    }

    /// The CAs trusted for the KMS endpoint: the Amazon roots (plus
    /// `--mock-kms-ca` in mock builds).
    fn trust_roots(&self) -> Result<TrustRoots, Error> {
        #[cfg(feature = "mock-nsm")]
        if let Some(pem) = &self.mock_kms_ca {
            let bytes =
                std::fs::read(pem).map_err(|e| Error::io(format!("read {}", pem.display()), e))?;
            return TrustRoots::mock_with_dev_ca_pem(&bytes);
        }
        TrustRoots::amazon()
    }
}

/// Arguments of `serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// TCP address to serve on (loopback only unless --allow-non-loopback).
    /// Default 127.0.0.1:8000 when --unix is not given.
    #[arg(long, env = "KEYBROKER_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Unix socket path to serve on (replaces a stale socket).
    #[arg(long, env = "KEYBROKER_UNIX", value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Allow a non-loopback --listen address. Whoever reaches the endpoint
    /// gets plaintext keys.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// After binding, give the Unix socket to UID:GID and drop to that user
    /// and group (no supplementary groups). Needed inside a Nitro Enclave,
    /// whose init starts the image's command as root whatever its `USER`.
    #[arg(long, env = "KEYBROKER_USER", value_name = "UID:GID", value_parser = parse_run_as)]
    pub user: Option<RunAs>,
}

/// A numeric user and group to run as (no name lookups: the enclave has no
/// user database, and the binary is static).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

fn parse_run_as(s: &str) -> Result<RunAs, String> {
    let (uid, gid) = s.split_once(':').ok_or("expected UID:GID")?;
    let id = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric id"))
    };
    Ok(RunAs {
        uid: id(uid)?,
        gid: id(gid)?,
    })
}

/// Drops to `to` for good: supplementary groups cleared, then group, then
/// user, then a check that root cannot be regained. A process already
/// running as `to.uid` is left as it is.
fn drop_privileges(to: RunAs) -> Result<(), Error> {
    use nix::unistd::{Gid, Uid, geteuid, setgid, setgroups, setuid};
    if geteuid().as_raw() == to.uid {
        return Ok(());
    }
    let fail = |what: &str, e: nix::Error| Error::io(format!("drop privileges: {what}"), e.into());
    setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    setgid(Gid::from_raw(to.gid)).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(to.uid)).map_err(|e| fail("setuid", e))?;
    if to.uid != 0 && setuid(Uid::from_raw(0)).is_ok() {
        return Err(Error::InvalidArgument(
            "drop privileges: root could be regained after setuid".into(),
        ));
    }
    Ok(())
}

/// `KEY=VALUE` encryption context entries, grant tokens.
#[derive(Args, Debug, Clone, Default)]
pub struct ContextArgs {
    /// Encryption context entry KEY=VALUE (repeatable); KMS `EncryptionContext`.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context)]
    pub context: Vec<(String, String)>,
    /// Grant token (repeatable, at most 10); KMS `GrantTokens`.
    #[arg(long = "grant-token", value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
}

impl ContextArgs {
    fn context(&self) -> Option<BTreeMap<String, String>> {
        (!self.context.is_empty()).then(|| self.context.iter().cloned().collect())
    }

    fn grant_tokens(&self) -> Option<Vec<String>> {
        (!self.grant_tokens.is_empty()).then(|| self.grant_tokens.clone())
    }
}

/// Arguments of `generate-data-key`.
#[derive(Args, Debug, Clone)]
pub struct GenerateDataKeyArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// KMS key id, ARN, alias name (alias/NAME) or alias ARN; KMS `KeyId`.
    #[arg(long)]
    pub key_id: String,
    /// AES_256 or AES_128; KMS `KeySpec`. Default AES_256 unless
    /// --number-of-bytes is given.
    #[arg(long, value_parser = kms_enum::<DataKeySpec>, conflicts_with = "number_of_bytes")]
    pub key_spec: Option<DataKeySpec>,
    /// Data key length in bytes, 1..=1024; KMS `NumberOfBytes`.
    #[arg(long)]
    pub number_of_bytes: Option<u32>,
    /// Context and grant tokens.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Write the plaintext data key (raw bytes, mode 0600) here.
    #[arg(long, value_name = "FILE")]
    pub plaintext_file: Option<PathBuf>,
    /// Write the CiphertextBlob (raw bytes) here.
    #[arg(long, value_name = "FILE")]
    pub ciphertext_file: Option<PathBuf>,
}

/// Arguments of `decrypt`.
#[derive(Args, Debug, Clone)]
pub struct DecryptArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The CiphertextBlob, base64.
    #[arg(
        long,
        required_unless_present = "ciphertext_file",
        conflicts_with = "ciphertext_file"
    )]
    pub ciphertext_blob: Option<String>,
    /// Read the CiphertextBlob (raw bytes) from this file.
    #[arg(long, value_name = "FILE")]
    pub ciphertext_file: Option<PathBuf>,
    /// The KMS key expected to have encrypted it; KMS `KeyId`.
    #[arg(long)]
    pub key_id: Option<String>,
    /// SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, ...; KMS `EncryptionAlgorithm`.
    #[arg(long, value_parser = kms_enum::<EncryptionAlgorithm>)]
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// Context and grant tokens.
    #[command(flatten)]
    pub context: ContextArgs,
    /// The plaintext's length in bytes, when known (32 for an AES-256 data
    /// key): a ciphertext that does not decrypt to exactly that many bytes
    /// yields that many pseudorandom bytes instead (implicit rejection).
    #[arg(long, value_name = "BYTES")]
    pub plaintext_length: Option<usize>,
    /// Write the plaintext (raw bytes, mode 0600) here.
    #[arg(long, value_name = "FILE")]
    pub plaintext_file: Option<PathBuf>,
}

/// Arguments of `generate-data-key-pair`.
#[derive(Args, Debug, Clone)]
pub struct GenerateDataKeyPairArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The symmetric KMS key that encrypts the private key; KMS `KeyId`.
    #[arg(long)]
    pub key_id: String,
    /// RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384,
    /// ECC_NIST_P521, ECC_SECG_P256K1, SM2 or ECC_NIST_EDWARDS25519; KMS
    /// `KeyPairSpec`.
    #[arg(long, value_parser = kms_enum::<DataKeyPairSpec>)]
    pub key_pair_spec: DataKeyPairSpec,
    /// Context and grant tokens.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Write the private key (DER PKCS#8, mode 0600) here.
    #[arg(long, value_name = "FILE")]
    pub private_key_file: Option<PathBuf>,
    /// Write the PrivateKeyCiphertextBlob (raw bytes) here.
    #[arg(long, value_name = "FILE")]
    pub ciphertext_file: Option<PathBuf>,
    /// Write the public key (DER SubjectPublicKeyInfo) here.
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
}

/// Arguments of `generate-random`.
#[derive(Args, Debug, Clone)]
pub struct GenerateRandomArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// How many bytes, 1..=1024; KMS `NumberOfBytes`.
    #[arg(long)]
    pub number_of_bytes: u32,
    /// Write the bytes (raw, mode 0600) here.
    #[arg(long, value_name = "FILE")]
    pub plaintext_file: Option<PathBuf>,
}

/// Arguments of `derive-shared-secret`.
#[derive(Args, Debug, Clone)]
pub struct DeriveSharedSecretArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The KMS key-agreement key (ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521
    /// or ECC_SECG_P256K1, KEY_AGREEMENT); KMS `KeyId`.
    #[arg(long)]
    pub key_id: String,
    /// The other party's public key, base64 DER SubjectPublicKeyInfo on the
    /// KMS key's curve; KMS `PublicKey`.
    #[arg(
        long,
        required_unless_present = "public_key_file",
        conflicts_with = "public_key_file"
    )]
    pub public_key: Option<String>,
    /// Read the public key from this file: DER SubjectPublicKeyInfo, or PEM
    /// (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes it).
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Grant token (repeatable, at most 10); KMS `GrantTokens`.
    #[arg(long = "grant-token", value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
    /// Write the shared secret (raw bytes, mode 0600) here.
    #[arg(long, value_name = "FILE")]
    pub shared_secret_file: Option<PathBuf>,
}

/// Arguments of `attestation`.
#[derive(Args, Debug, Clone)]
pub struct AttestationArgs {
    /// The NSM.
    #[command(flatten)]
    pub nsm: NsmArgs,
    /// Nonce, hex (at most 512 bytes).
    #[arg(long, value_parser = parse_hex)]
    pub nonce: Option<HexBytes>,
    /// User data, hex (at most 512 bytes).
    #[arg(long, value_parser = parse_hex)]
    pub user_data: Option<HexBytes>,
    /// Public key to embed (file, e.g. DER SubjectPublicKeyInfo; at most 1024 bytes).
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Write the document (COSE_Sign1, raw bytes) here instead of printing
    /// it base64 in the JSON.
    #[arg(long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

/// Bytes given in hex on the command line.
#[derive(Debug, Clone)]
pub struct HexBytes(pub Vec<u8>);

/// Arguments of `seal` and `open`.
#[derive(Args, Debug, Clone)]
pub struct EnvelopeArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The KMS key: `seal` generates the data key under it, `open` lets only
    /// it decrypt (KMS `Decrypt` `KeyId`). Key id, ARN or alias.
    #[arg(long)]
    pub key_id: String,
    /// Encryption context entry KEY=VALUE (repeatable); bound to the data
    /// key by KMS and authenticated by the message header. `open` needs the
    /// same entries.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context)]
    pub context: Vec<(String, String)>,
    /// Input file.
    #[arg(long = "in", value_name = "FILE")]
    pub input: PathBuf,
    /// Output file (mode 0600; replaced only once the whole output is
    /// written and, for `open`, authenticated).
    #[arg(long = "out", value_name = "FILE")]
    pub output: PathBuf,
}

/// Arguments of `demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Proxy and NSM.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// KMS key id, ARN or alias (alias/NAME); `--key-id` as in the other
    /// subcommands.
    #[arg(long, visible_alias = "key-id")]
    pub key: String,
    /// File to encrypt and decrypt.
    #[arg(long)]
    pub input: PathBuf,
    /// Encryption context entries, KEY=VALUE (repeatable).
    #[arg(long = "context", value_parser = parse_context)]
    pub context: Vec<(String, String)>,
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

impl Command {
    /// The KMS path arguments of a subcommand that talks to KMS.
    pub fn broker_args(&self) -> Option<&BrokerArgs> {
        match self {
            Command::Serve(a) => Some(&a.broker),
            Command::GenerateDataKey(a) => Some(&a.broker),
            Command::Decrypt(a) => Some(&a.broker),
            Command::GenerateDataKeyPair(a) => Some(&a.broker),
            Command::GenerateRandom(a) => Some(&a.broker),
            Command::DeriveSharedSecret(a) => Some(&a.broker),
            Command::Seal(a) | Command::Open(a) => Some(&a.broker),
            Command::Demo(a) => Some(&a.broker),
            Command::Attestation(_) | Command::MockNsm(_) => None,
        }
    }

    /// The mock a command asks for (a flag, its environment variable, or
    /// the `mock-nsm` subcommand), if any.
    #[cfg(feature = "mock-nsm")]
    fn mock_requested(&self) -> Option<&'static str> {
        let nsm = match self {
            Command::MockNsm(_) => return Some("mock-nsm"),
            Command::Attestation(a) => &a.nsm,
            other => {
                let broker = other.broker_args()?;
                if broker.mock_kms_ca.is_some() {
                    return Some("--mock-kms-ca");
                }
                &broker.nsm
            }
        };
        nsm.mock_nsm_ca
            .as_ref()
            .map(|_| "--mock-nsm-ca (or KEYBROKER_MOCK_NSM_CA)")
    }
}

fn parse_context(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_hex(s: &str) -> Result<HexBytes, String> {
    hex::decode(s)
        .map(HexBytes)
        .map_err(|e| format!("not hex: {e}"))
}

/// Parses a KMS enum value by its API spelling (`AES_256`, `RSA_2048`, ...).
fn kms_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| format!("unknown value {s:?}"))
}

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code: KMS or the proxy's policy refused the request.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: usage error or invalid input.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the proxy or KMS is unavailable, throttled or timed out.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit code: the NSM failed.
pub const EXIT_NSM: u8 = 4;
/// Exit code: a local file could not be read or written.
pub const EXIT_IO: u8 = 5;
/// Exit code: data that does not authenticate or decode (a tampered
/// envelope message, an answer that does not parse or is for a key that is
/// not allowed, TLS that does not verify).
pub const EXIT_INTERNAL: u8 = 6;

/// The exit code for `e` (see the [module docs](self)).
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Common(keybroker_common::Error::Kms(k)) if k.retryable => EXIT_UNAVAILABLE,
        Error::Common(keybroker_common::Error::Kms(_)) => EXIT_REFUSED,
        Error::Common(keybroker_common::Error::Protocol(_)) if e.is_retryable() => EXIT_UNAVAILABLE,
        Error::Common(keybroker_common::Error::Protocol(_)) if e.remote_error().is_some() => {
            EXIT_REFUSED
        }
        Error::Common(keybroker_common::Error::InvalidArgument(_)) | Error::InvalidArgument(_) => {
            EXIT_USAGE
        }
        Error::Unavailable { .. } | Error::Timeout { .. } | Error::ConnectionLost { .. } => {
            EXIT_UNAVAILABLE
        }
        Error::KeyNotAllowed(KeyPinError::Invalid { .. }) => EXIT_USAGE,
        Error::KeyNotAllowed(
            KeyPinError::RequestKeyNotAllowed(_) | KeyPinError::Unresolvable { .. },
        ) => EXIT_REFUSED,
        Error::Nsm { .. } => EXIT_NSM,
        Error::Io { .. } => EXIT_IO,
        _ => EXIT_INTERNAL,
    }
}

/// Runs the program with `args` (the first item is the program name, as in
/// `std::env::args_os()`): parses them, sets up logging to stderr (`RUST_LOG`,
/// default `info` for `serve`, `warn` otherwise; skipped if the caller already installed a subscriber),
/// runs the subcommand on a new tokio runtime and returns the exit code
/// ([`exit_code`]). `--help` and `--version` print and return success; usage
/// errors return 2.
///
/// This is the production entry point: in a build whose library has the
/// `mock-nsm` feature (any workspace build) it still refuses the mock NSM
/// and the mock KMS CA (exit 2, "no mock NSM"); see
/// [`dangerous_main_with_mock_nsm`].
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_cli(args, false)
}

/// [`main_with_args`] that also reaches the mock NSM and the mock KMS CA:
/// for the development launcher (`keybroker-local component enclave`) and
/// the binary of a `dangerous-mock-nsm-cli` build, never for an enclave
/// with real keys.
#[cfg(feature = "mock-nsm")]
pub fn dangerous_main_with_mock_nsm<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_cli(args, true)
}

fn run_cli<I, T>(args: I, allow_mock: bool) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    #[cfg(feature = "mock-nsm")]
    if let Some(what) = cli.command.mock_requested().filter(|_| !allow_mock) {
        eprintln!(
            "keybroker-enclave: {what}: this binary has no mock NSM (it exists only in \
             `keybroker-local component enclave` and in a `--features dangerous-mock-nsm-cli` build)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    #[cfg(not(feature = "mock-nsm"))]
    let _ = allow_mock;
    // A service logs its lifecycle (readiness, the proxy connection); a
    // one-shot command only what went wrong.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: an enclave's console and the journal
        // get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .try_init();
    let result = match cli.command {
        Command::MockNsm(cmd) => mock_nsm_command(cmd),
        Command::Attestation(args) => attestation(&args).and_then(|v| print_json(&v)),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the tokio runtime", e))
            .and_then(|rt| rt.block_on(run_async(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybroker-enclave: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The subcommands that need the runtime.
async fn run_async(command: Command) -> Result<(), Error> {
    match command {
        Command::Serve(args) => serve(&args).await,
        Command::GenerateDataKey(args) => print_json(&generate_data_key(&args).await?),
        Command::Decrypt(args) => print_json(&decrypt(&args).await?),
        Command::GenerateDataKeyPair(args) => print_json(&generate_data_key_pair(&args).await?),
        Command::GenerateRandom(args) => print_json(&generate_random(&args).await?),
        Command::DeriveSharedSecret(args) => print_json(&derive_shared_secret(&args).await?),
        Command::Seal(args) => print_json(&envelope_file(&args, true).await?),
        Command::Open(args) => print_json(&envelope_file(&args, false).await?),
        Command::Demo(args) => print_json(&demo(&args).await?),
        Command::Attestation(_) | Command::MockNsm(_) => Err(Error::InvalidArgument(
            "internal: synchronous subcommand on the runtime".into(),
        )),
    }
}

/// Prints `v` as pretty JSON and a newline on stdout. The text is built in
/// a zeroizing buffer of exactly its size
/// ([`keybroker_common::secret::to_json_zeroizing`]) and written straight
/// to file descriptor 1, not through stdout's line buffer, so no copy of a
/// base64 plaintext is left in memory after the call.
///
/// # Errors
/// [`Error::Io`] when stdout cannot be written.
fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), Error> {
    use std::os::fd::AsFd as _;
    let text = keybroker_common::secret::to_json_zeroizing(v, true)
        .map_err(|e| Error::InvalidArgument(format!("internal: cannot encode the output: {e}")))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.flush().map_err(|e| Error::io("write stdout", e))?;
    let mut fd = out
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| Error::io("write stdout", e))?;
    fd.write_all(&text)
        .and_then(|()| fd.write_all(b"\n"))
        .map_err(|e| Error::io("write stdout", e))
}

/// The JSON output of a subcommand whose fields may be base64 of plaintext
/// (`Plaintext`, `PrivateKeyPlaintext`): every string in it is zeroized
/// when it drops. Serializes as the JSON object it holds; `Debug` shows the
/// field names only.
#[derive(Default)]
pub struct SecretOutput(Map<String, Value>);

impl core::fmt::Debug for SecretOutput {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl serde::Serialize for SecretOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Drop for SecretOutput {
    fn drop(&mut self) {
        fn wipe(v: &mut Value) {
            match v {
                Value::String(s) => zeroize::Zeroize::zeroize(s),
                Value::Array(a) => a.iter_mut().for_each(wipe),
                Value::Object(m) => m.values_mut().for_each(wipe),
                _ => {}
            }
        }
        self.0.values_mut().for_each(wipe);
    }
}

/// The client for a subcommand: NSM, recipient keys, connection.
async fn connect(args: &BrokerArgs) -> Result<Client, Error> {
    let (nsm, _) = open_nsm(args.nsm.mock_nsm_ca.as_ref())?;
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default()).await?;
    connect_with(args, keys).await
}

/// The connection for a subcommand, with `keys` already made: waits up to
/// the connect timeout for the first connection (broker mode) or the first
/// credentials (e2e mode).
async fn connect_with(args: &BrokerArgs, keys: RecipientKeys) -> Result<Client, Error> {
    let client = new_client(args, keys)?;
    client
        .wait_connected(client.config().connect_timeout)
        .await?;
    Ok(client)
}

/// A client in the mode the image's settings give, connecting in the
/// background.
fn new_client(args: &BrokerArgs, keys: RecipientKeys) -> Result<Client, Error> {
    let mut config = ClientConfig::new(args.proxy.clone());
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.connect_timeout = config.connect_timeout.min(config.request_timeout);
    let settings = args.kms_settings()?;
    match settings.mode() {
        Mode::Broker => {
            // Refuses vsock-proxy relays given in broker mode.
            settings.parent_link(&args.proxy)?;
            Client::new(config, keys)
        }
        Mode::E2e => {
            let e2e = settings.e2e_config(args.trust_roots()?)?;
            let link = settings.parent_link(&args.proxy)?;
            Client::new_e2e(config, e2e, link, keys)
        }
    }
}

/// `serve`: the KMS endpoint until SIGINT/SIGTERM. Prints one
/// `listening: URL` line per listener on stdout once it accepts.
///
/// Start-up follows what a Nitro Enclave gives the program (DESIGN.md, "How
/// an enclave starts"): it runs as root with a fresh tmpfs on `/run` and
/// `lo` down, and when it exits the enclave is gone. So, in this order:
/// 1. the NSM and the first recipient key pair (a missing NSM is fatal:
///    exit code 4);
/// 2. the connection to the parent proxy starts in the background and is
///    retried with backoff for as long as it takes; until it is up, requests
///    wait within their deadline and then get `DependencyTimeoutException`
///    (503, which SDKs retry). Readiness is logged;
/// 3. while still root: `lo` is brought up when a TCP listener is on a
///    loopback address ([`crate::loopback`]), the Unix socket's directory
///    is created (owned by `--user`) when it does not exist, the listeners
///    are bound and the socket given to `--user`;
/// 4. privileges are dropped, then requests are served.
///
/// # Errors
/// NSM and binding failures; a non-loopback address without
/// `allow_non_loopback`.
pub async fn serve(args: &ServeArgs) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = match (args.listen, &args.unix) {
        (None, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8000))),
        (listen, _) => listen,
    };
    let (nsm, _) = open_nsm(args.broker.nsm.mock_nsm_ca.as_ref())?;
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default()).await?;
    let client = new_client(&args.broker, keys)?;
    let readiness = tokio::spawn(log_readiness(client.clone()));
    let endpoint = KmsEndpoint::new(client);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let tcp = match listen {
        Some(addr) => {
            if addr.ip().is_loopback()
                && crate::loopback::ensure_up().await? == crate::loopback::LoopbackState::BroughtUp
            {
                tracing::info!("brought the loopback interface up");
            }
            Some(endpoint::bind_tcp(addr, args.allow_non_loopback).await?)
        }
        None => None,
    };
    let unix = match &args.unix {
        Some(path) => {
            create_socket_dir(path, args.user)?;
            let listener = endpoint::bind_unix(path)?;
            if let Some(to) = args.user {
                chown_no_follow(path, nix::sys::stat::SFlag::S_IFSOCK, to)?;
            }
            Some((path, listener))
        }
        None => None,
    };
    // Everything that may need root (lo, binding, chown) is done; no request
    // is served before this.
    if let Some(to) = args.user {
        drop_privileges(to)?;
    }
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = tcp {
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("local address", e))?;
        println!("listening: http://{local}");
        let (ep, stop) = (endpoint.clone(), stopped());
        servers.spawn(async move { ep.serve_tcp(listener, stop).await });
    }
    if let Some((path, listener)) = unix {
        println!("listening: unix://{}", path.display());
        let (ep, stop) = (endpoint.clone(), stopped());
        servers.spawn(async move { ep.serve_unix(listener, stop).await });
    }
    let _ = std::io::stdout().flush();
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let first = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        done = servers.join_next() => done,
    };
    stop_tx.send_replace(true);
    let mut result = Ok(());
    for done in first
        .into_iter()
        .chain(servers.join_all().await.into_iter().map(Ok))
    {
        match done {
            Ok(Err(e)) if result.is_ok() => result = Err(e),
            Err(e) if result.is_ok() => {
                result = Err(Error::InvalidArgument(format!("endpoint task failed: {e}")));
            }
            _ => {}
        }
    }
    readiness.abort();
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Logs once when the proxy connection is first up, and a warning while it
/// is not: first after one connection attempt's time limit, then at doubling
/// intervals, at most every 5 minutes.
async fn log_readiness(client: Client) {
    let proxy = client.config().address.clone();
    // First report after one connection attempt's time limit.
    let mut wait = client.config().connect_timeout;
    let started = Instant::now();
    loop {
        match client.wait_connected(wait).await {
            Ok(()) => {
                tracing::info!(%proxy, after_ms = started.elapsed().as_millis(), "ready: connected to the parent proxy");
                return;
            }
            Err(e) => {
                tracing::warn!(%proxy, waited_s = started.elapsed().as_secs(), error = %e, "not ready: the parent proxy is not reachable yet; retrying, requests get DependencyTimeoutException until it is");
                wait = (wait * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// Creates the Unix socket's directory when it does not exist, owned by
/// `user`: inside an enclave `/run` is a fresh tmpfs at boot, so whatever the
/// image had under it is hidden. An existing directory is left as it is.
fn create_socket_dir(socket: &Path, user: Option<RunAs>) -> Result<(), Error> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    match user {
        Some(to) => chown_no_follow(dir, nix::sys::stat::SFlag::S_IFDIR, to),
        None => Ok(()),
    }
}

/// Gives the file at `path` to `to` through a descriptor of that file, not
/// by its name: it is opened with `O_PATH | O_NOFOLLOW`, checked through the
/// descriptor to be of type `kind` (the socket or directory just made), and
/// changed with `fchownat(fd, "", AT_EMPTY_PATH)`. A symbolic link put in its
/// place (by whoever can write the directory) is refused, never followed,
/// and the file checked is the file changed.
///
/// (`fchown` on the listening socket's own descriptor would not do: it
/// changes the socket's inode in sockfs, not the file a client connects to.)
fn chown_no_follow(path: &Path, kind: nix::sys::stat::SFlag, to: RunAs) -> Result<(), Error> {
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{Mode, SFlag};
    let fail = |e: nix::Error| Error::io(format!("chown {}", path.display()), e.into());
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    let stat = nix::sys::stat::fstat(&fd).map_err(fail)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != kind {
        return Err(Error::InvalidArgument(format!(
            "refusing to chown {}: not the {} it should be (replaced, or a symbolic link?)",
            path.display(),
            if kind == SFlag::S_IFDIR {
                "directory"
            } else {
                "socket"
            },
        )));
    }
    nix::unistd::fchownat(
        &fd,
        "",
        Some(nix::unistd::Uid::from_raw(to.uid)),
        Some(nix::unistd::Gid::from_raw(to.gid)),
        AtFlags::AT_EMPTY_PATH,
    )
    .map_err(fail)
}

/// Writes `bytes` to `path`, readable by the owner only (it may be key
/// material), replacing the file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = private_file(path)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Creates (or truncates) `path` readable by the owner only.
fn private_file(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))
}

/// Puts `bytes` into `out[field]` as base64, or into `file` as raw bytes.
/// The base64 string is allocated once at its size and moved into `out`
/// (no copies); a [`SecretOutput`] wipes it.
fn emit(
    out: &mut Map<String, Value>,
    field: &str,
    bytes: &[u8],
    file: Option<&PathBuf>,
) -> Result<(), Error> {
    match file {
        Some(path) => write_private(path, bytes),
        None => {
            out.insert(field.to_owned(), Value::String(B64.encode(bytes)));
            Ok(())
        }
    }
}

fn opt_str(out: &mut Map<String, Value>, field: &str, value: Option<String>) {
    if let Some(v) = value {
        out.insert(field.to_owned(), Value::String(v));
    }
}

/// `generate-data-key`: the KMS response as JSON (`KeyId`, `CiphertextBlob`,
/// `Plaintext`, `KeyMaterialId`), blobs written to files where asked.
///
/// # Errors
/// As [`Client::generate_data_key`]; I/O errors writing the files.
pub async fn generate_data_key(args: &GenerateDataKeyArgs) -> Result<SecretOutput, Error> {
    let client = connect(&args.broker).await?;
    let key_spec = match (args.key_spec, args.number_of_bytes) {
        (None, None) => Some(DataKeySpec::Aes256),
        (spec, _) => spec,
    };
    let key = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(args.key_id.clone()),
            key_spec,
            number_of_bytes: args.number_of_bytes,
            encryption_context: args.context.context(),
            grant_tokens: args.context.grant_tokens(),
            ..Default::default()
        })
        .await?;
    let mut output = SecretOutput::default();
    let out = &mut output.0;
    opt_str(out, "KeyId", key.key_id);
    emit(
        out,
        "CiphertextBlob",
        &key.ciphertext_blob.0,
        args.ciphertext_file.as_ref(),
    )?;
    emit(
        out,
        "Plaintext",
        key.plaintext.expose(),
        args.plaintext_file.as_ref(),
    )?;
    opt_str(out, "KeyMaterialId", key.key_material_id);
    Ok(output)
}

/// `decrypt`: `KeyId`, `Plaintext`, `EncryptionAlgorithm`, `KeyMaterialId`.
///
/// With `--plaintext-length`, [`Client::decrypt_expecting`].
///
/// # Errors
/// [`Error::InvalidArgument`] for a ciphertext that is not base64; I/O
/// errors reading or writing files; as [`Client::decrypt`].
pub async fn decrypt(args: &DecryptArgs) -> Result<SecretOutput, Error> {
    let blob = match (&args.ciphertext_blob, &args.ciphertext_file) {
        (_, Some(path)) => {
            std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?
        }
        (Some(b64), None) => B64
            .decode(b64.trim())
            .map_err(|e| Error::InvalidArgument(format!("--ciphertext-blob is not base64: {e}")))?,
        (None, None) => {
            return Err(Error::InvalidArgument(
                "give --ciphertext-blob or --ciphertext-file".into(),
            ));
        }
    };
    let client = connect(&args.broker).await?;
    let request = DecryptRequest {
        ciphertext_blob: Some(Blob(blob)),
        key_id: args.key_id.clone(),
        encryption_algorithm: args.encryption_algorithm,
        encryption_context: args.context.context(),
        grant_tokens: args.context.grant_tokens(),
        ..Default::default()
    };
    let d = match args.plaintext_length {
        Some(n) => client.decrypt_expecting(request, n).await?,
        None => client.decrypt(request).await?,
    };
    let mut output = SecretOutput::default();
    let out = &mut output.0;
    opt_str(out, "KeyId", d.key_id);
    emit(
        out,
        "Plaintext",
        d.plaintext.expose(),
        args.plaintext_file.as_ref(),
    )?;
    if let Some(alg) = d.encryption_algorithm {
        out.insert("EncryptionAlgorithm".into(), json!(alg));
    }
    opt_str(out, "KeyMaterialId", d.key_material_id);
    Ok(output)
}

/// `generate-data-key-pair`: `KeyId`, `KeyPairSpec`, `PublicKey`,
/// `PrivateKeyCiphertextBlob`, `PrivateKeyPlaintext`, `KeyMaterialId`.
///
/// # Errors
/// As [`Client::generate_data_key_pair`]; I/O errors writing the files.
pub async fn generate_data_key_pair(args: &GenerateDataKeyPairArgs) -> Result<SecretOutput, Error> {
    let client = connect(&args.broker).await?;
    let p = client
        .generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some(args.key_id.clone()),
            key_pair_spec: Some(args.key_pair_spec),
            encryption_context: args.context.context(),
            grant_tokens: args.context.grant_tokens(),
            ..Default::default()
        })
        .await?;
    let mut output = SecretOutput::default();
    let out = &mut output.0;
    opt_str(out, "KeyId", p.key_id);
    if let Some(spec) = p.key_pair_spec {
        out.insert("KeyPairSpec".into(), json!(spec));
    }
    if let Some(public) = &p.public_key {
        emit(out, "PublicKey", &public.0, args.public_key_file.as_ref())?;
    }
    emit(
        out,
        "PrivateKeyCiphertextBlob",
        &p.private_key_ciphertext_blob.0,
        args.ciphertext_file.as_ref(),
    )?;
    emit(
        out,
        "PrivateKeyPlaintext",
        p.private_key_plaintext.expose(),
        args.private_key_file.as_ref(),
    )?;
    opt_str(out, "KeyMaterialId", p.key_material_id);
    Ok(output)
}

/// `generate-random`: `Plaintext`.
///
/// # Errors
/// As [`Client::generate_random`]; I/O errors writing the file.
pub async fn generate_random(args: &GenerateRandomArgs) -> Result<SecretOutput, Error> {
    let client = connect(&args.broker).await?;
    let bytes = client
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(args.number_of_bytes),
            ..Default::default()
        })
        .await?;
    let mut output = SecretOutput::default();
    emit(
        &mut output.0,
        "Plaintext",
        bytes.expose(),
        args.plaintext_file.as_ref(),
    )?;
    Ok(output)
}

/// `derive-shared-secret`: `KeyId`, `SharedSecret`, `KeyAgreementAlgorithm`,
/// `KeyOrigin`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a public key that is not base64, DER or
/// PEM; I/O errors on the files; as [`Client::derive_shared_secret`].
pub async fn derive_shared_secret(args: &DeriveSharedSecretArgs) -> Result<SecretOutput, Error> {
    let public_key = match (&args.public_key, &args.public_key_file) {
        (_, Some(path)) => public_key_file(path)?,
        (Some(b64), None) => B64
            .decode(b64.trim())
            .map_err(|e| Error::InvalidArgument(format!("--public-key is not base64: {e}")))?,
        (None, None) => {
            return Err(Error::InvalidArgument(
                "give --public-key or --public-key-file".into(),
            ));
        }
    };
    let client = connect(&args.broker).await?;
    let d = client
        .derive_shared_secret(DeriveSharedSecretRequest {
            key_id: Some(args.key_id.clone()),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: Some(Blob(public_key)),
            grant_tokens: (!args.grant_tokens.is_empty()).then(|| args.grant_tokens.clone()),
            ..Default::default()
        })
        .await?;
    let mut output = SecretOutput::default();
    let out = &mut output.0;
    opt_str(out, "KeyId", d.key_id);
    emit(
        out,
        "SharedSecret",
        d.shared_secret.expose(),
        args.shared_secret_file.as_ref(),
    )?;
    if let Some(alg) = d.key_agreement_algorithm {
        out.insert("KeyAgreementAlgorithm".into(), json!(alg));
    }
    opt_str(out, "KeyOrigin", d.key_origin);
    Ok(output)
}

/// A public key file: DER, or PEM with a `PUBLIC KEY` label (RFC 7468
/// section 13), at most [`keybroker_common::kms::PUBLIC_KEY_MAX`] bytes of
/// DER.
fn public_key_file(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let limit = 4 * keybroker_common::kms::PUBLIC_KEY_MAX as u64;
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut raw))
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    if raw.len() as u64 > limit {
        return Err(Error::InvalidArgument(format!(
            "{} is too large for a public key",
            path.display()
        )));
    }
    let Some(text) = std::str::from_utf8(&raw)
        .ok()
        .filter(|t| t.trim_start().starts_with("-----BEGIN"))
    else {
        return Ok(raw);
    };
    let body = text
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: PEM other than a PUBLIC KEY block",
                path.display()
            ))
        })?;
    let b64: String = body.split_whitespace().collect();
    B64.decode(b64)
        .map_err(|e| Error::InvalidArgument(format!("{}: bad PEM base64: {e}", path.display())))
}

/// `seal` (`sealing`) or `open`: streams `--in` through
/// [`Envelope::seal_stream`](crate::envelope::Envelope::seal_stream) or
/// `open_stream` into a private temporary file beside `--out`, renamed over
/// `--out` only on success (so a failed `open` leaves no unauthenticated
/// plaintext behind). Returns `{"KeyId", "InputBytes", "OutputBytes"}`.
///
/// # Errors
/// I/O errors on the files; the errors of the data-key call; a message that
/// does not authenticate (typed [`keybroker_common::EnvelopeError`]).
pub async fn envelope_file(args: &EnvelopeArgs, sealing: bool) -> Result<Value, Error> {
    use tokio::io::{BufReader, BufWriter};
    let input = tokio::fs::File::open(&args.input)
        .await
        .map_err(|e| Error::io(format!("open {}", args.input.display()), e))?;
    let partial = args.output.with_extension("partial");
    let std_out = private_file(&partial)?;
    let envelope = crate::envelope::Envelope::new(connect(&args.broker).await?, &args.key_id);
    let context: BTreeMap<String, String> = args.context.iter().cloned().collect();
    let mut writer = BufWriter::new(tokio::fs::File::from_std(std_out));
    let result = if sealing {
        envelope
            .seal_stream(BufReader::new(input), &mut writer, &context)
            .await
    } else {
        envelope
            .open_stream(BufReader::new(input), &mut writer, &context)
            .await
    };
    let finished = match result {
        Ok(_) => writer
            .into_inner()
            .sync_all()
            .await
            .map_err(|e| Error::io(format!("write {}", partial.display()), e)),
        Err(e) => Err(e),
    };
    if let Err(e) = finished {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.output)
        .map_err(|e| Error::io(format!("rename to {}", args.output.display()), e))?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat {}", p.display()), e))
    };
    Ok(json!({
        "KeyId": args.key_id,
        "InputBytes": size(&args.input)?,
        "OutputBytes": size(&args.output)?,
    }))
}

/// `attestation`: a fresh document from the NSM, with what it attests
/// (module id, digest, PCRs 0-4 and 8, read back without verification: the
/// document is this enclave's own).
///
/// # Errors
/// NSM failures; I/O errors reading the public key or writing the document.
pub fn attestation(args: &AttestationArgs) -> Result<Value, Error> {
    let (nsm, nsm_kind) = open_nsm(args.nsm.mock_nsm_ca.as_ref())?;
    let public_key = args
        .public_key_file
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| Error::io(format!("read {}", p.display()), e)))
        .transpose()?;
    let document = nsm.attestation(
        public_key,
        args.user_data.clone().map(|h| h.0),
        args.nonce.clone().map(|h| h.0),
    )?;
    let mut out = Map::new();
    out.insert("nsm".into(), json!(nsm_kind));
    if let Ok(parsed) = keybroker_common::attestation::UnverifiedAttestation::parse(&document) {
        let doc = parsed.document();
        out.insert("ModuleId".into(), json!(doc.module_id));
        out.insert("Timestamp".into(), json!(doc.timestamp.0));
        let pcrs: BTreeMap<String, String> = doc
            .pcrs
            .iter()
            .filter(|(i, _)| matches!(i, 0..=4 | 8))
            .map(|(i, v)| (format!("PCR{i}"), hex::encode(v)))
            .collect();
        out.insert("Pcrs".into(), json!(pcrs));
    }
    out.insert("DocumentBytes".into(), json!(document.len()));
    emit(
        &mut out,
        "AttestationDocument",
        &document,
        args.output_file.as_ref(),
    )?;
    Ok(Value::Object(out))
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

/// `demo`: envelope encryption of the input file ([`crate::envelope`],
/// no cache): `seal` gets a data key with `GenerateDataKey` + `Recipient`
/// through the proxy, `open` gets it back with `Decrypt` + `Recipient` (and
/// checks its key commitment), then the result is compared with the input.
/// Returns the JSON report (sizes, timings, KMS calls, outcome; never key
/// material).
///
/// # Errors
/// Any failure of the NSM, the proxy or KMS, or of reading the file; and
/// [`Error::InvalidArgument`] if the round trip does not reproduce the input
/// (the report is then lost: a mismatch is a failure, not a result).
pub async fn demo(args: &DemoArgs) -> Result<serde_json::Value, Error> {
    let mut timings = BTreeMap::new();
    let t = Instant::now();
    let (nsm, nsm_kind) = open_nsm(args.broker.nsm.mock_nsm_ca.as_ref())?;
    let pcr0 = nsm.describe_pcr(0).map(|(_, v)| hex::encode(v)).ok();
    let keys = RecipientKeys::new(nsm, RecipientKeysConfig::default()).await?;
    timings.insert("nsm_and_recipient_keys", ms(t.elapsed()));

    let t = Instant::now();
    let client = connect_with(&args.broker, keys).await?;
    timings.insert("connect", ms(t.elapsed()));

    let context: BTreeMap<String, String> = args.context.iter().cloned().collect();
    let input = std::fs::read(&args.input).map_err(|e| Error::Io {
        context: format!("read {}", args.input.display()),
        source: e,
    })?;
    // No cache: the seal asks KMS for a data key (GenerateDataKey with
    // Recipient), the open asks KMS to decrypt it (Decrypt with Recipient).
    let envelope = crate::envelope::Envelope::new(client.clone(), &args.key);

    let t = Instant::now();
    let sealed = envelope.seal(&input, &context).await?;
    timings.insert("generate_data_key_and_encrypt_file", ms(t.elapsed()));
    let header = crate::envelope::peek_header(&sealed)?;

    let t = Instant::now();
    let opened = envelope.open(&sealed, &context).await?;
    timings.insert("decrypt_data_key_and_file", ms(t.elapsed()));
    let roundtrip_ok = opened.as_slice() == input.as_slice();

    let keys = client.keys().current();
    let kms_calls = client.stats().requests_sent;
    // One GenerateDataKey and one Decrypt, both with Recipient.
    let ok = roundtrip_ok && kms_calls == 2;
    let report = json!({
        "ok": ok,
        "proxy": args.broker.proxy.to_string(),
        "nsm": nsm_kind,
        "pcr0": pcr0,
        "key_id": header.key_id(),
        "encryption_context": (!context.is_empty()).then_some(&context),
        "attestation_document_bytes": keys.attestation_document().len(),
        "recipient_public_key_bytes": keys.public_key_spki_der().len(),
        "data_key_ciphertext_blob_bytes": header.ciphertext_blob().len(),
        "input_bytes": input.len(),
        "encrypted_file_bytes": sealed.len(),
        "kms_calls": kms_calls,
        "file_roundtrip_ok": roundtrip_ok,
        "timings_ms": timings,
    });
    if ok {
        Ok(report)
    } else {
        Err(Error::InvalidArgument(
            "round trip failed: the file does not match, or KMS was not called exactly twice"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::SFlag;
    use std::os::unix::fs::{MetadataExt as _, symlink};

    fn me() -> RunAs {
        RunAs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// `serve --user`: whoever can write the socket's directory may put a
    /// symbolic link where the socket was bound; the owner change must not
    /// follow it (as root it would give the link's target to `--user`).
    #[test]
    fn socket_ownership_is_set_on_the_socket_itself_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kms.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        let to_file = dir.path().join("to-file.sock");
        symlink(&victim, &to_file).unwrap();
        let to_socket = dir.path().join("to-socket.sock");
        symlink(&socket, &to_socket).unwrap();

        for link in [&to_file, &to_socket] {
            let e = chown_no_follow(link, SFlag::S_IFSOCK, me()).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        assert!(chown_no_follow(&victim, SFlag::S_IFSOCK, me()).is_err());
        assert!(chown_no_follow(&socket, SFlag::S_IFDIR, me()).is_err());
        chown_no_follow(&socket, SFlag::S_IFSOCK, me()).unwrap();
        chown_no_follow(dir.path(), SFlag::S_IFDIR, me()).unwrap();

        // Only root can give files away: there, check the owner really is
        // the socket file's (and the victim's is untouched).
        if nix::unistd::geteuid().is_root() {
            let other = RunAs {
                uid: 4321,
                gid: 4322,
            };
            let owner = |p: &Path| {
                let m = std::fs::symlink_metadata(p).unwrap();
                (m.uid(), m.gid())
            };
            let victim_owner = owner(&victim);
            chown_no_follow(&socket, SFlag::S_IFSOCK, other).unwrap();
            assert_eq!(owner(&socket), (4321, 4322));
            assert!(chown_no_follow(&to_file, SFlag::S_IFSOCK, other).is_err());
            assert_eq!(owner(&victim), victim_owner);
        }
    }

    #[test]
    fn secret_output_is_the_json_object_and_hides_values_in_debug() {
        let mut out = SecretOutput::default();
        emit(&mut out.0, "Plaintext", b"\x01\x02\x03", None).unwrap();
        opt_str(&mut out.0, "KeyId", Some("arn:k".into()));
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"Plaintext": "AQID", "KeyId": "arn:k"})
        );
        let shown = format!("{out:?}");
        assert!(
            shown.contains("Plaintext") && !shown.contains("AQID"),
            "{shown}"
        );
    }

    /// Every enclave command line the image and the deploy guide ship (the
    /// `CMD` arrays of `Dockerfile.enclave` and `docs/deploy.md`) parses,
    /// and its KMS settings are complete for its mode: an e2e command names
    /// its region and keys, directly or through the shipped settings file
    /// (which stands in for `/etc/keybroker/enclave.toml` of the image).
    #[test]
    fn the_shipped_and_documented_command_lines_parse_and_are_complete() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut seen = 0;
        for file in ["Dockerfile.enclave", "docs/deploy.md"] {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            for (at, _) in text.match_indices(r#"["/usr/bin/keybroker-enclave""#) {
                let end = at + text[at..].find(']').unwrap() + 1;
                let argv: Vec<String> = serde_json::from_str(&text[at..end]).unwrap();
                let cli =
                    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
                let mut broker = cli.command.broker_args().unwrap().clone();
                if broker.config.as_deref() == Some(Path::new("/etc/keybroker/enclave.toml")) {
                    broker.config = Some(format!("{root}/deploy/enclave-e2e.toml").into());
                }
                let settings = broker.kms_settings().unwrap();
                if settings.mode() == Mode::E2e {
                    settings
                        .e2e_config(TrustRoots::amazon().unwrap())
                        .unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
                }
                seen += 1;
            }
        }
        assert!(seen >= 4, "only {seen} command lines found");
    }

    #[test]
    fn key_pinning_and_tls_failures_have_their_own_exit_codes() {
        let refused = KeyPinError::RequestKeyNotAllowed("arn:aws:kms:x".into());
        assert_eq!(exit_code(&refused.into()), EXIT_REFUSED);
        let invalid = KeyPinError::Invalid {
            id: "x".into(),
            reason: "not an ARN",
        };
        assert_eq!(exit_code(&invalid.into()), EXIT_USAGE);
        // An answer for another key, or TLS that does not verify: data that
        // does not authenticate (a hostile parent), not a refusal to retry.
        let forged = KeyPinError::ResponseKeyNotAllowed("arn:aws:kms:y".into());
        assert_eq!(exit_code(&forged.into()), EXIT_INTERNAL);
        let tls = Error::Tls {
            reason: "invalid peer certificate".into(),
        };
        assert_eq!(exit_code(&tls), EXIT_INTERNAL);
    }
}

//! The command line's shape: [`Cli`], its subcommands and their arguments
//! (clap derive), and the parsers of argument values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keybroker_common::address::{Address, PARENT_CID};
use keybroker_common::kms::{DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm};

use super::exit;
use crate::Error;
use crate::e2e::{KmsSettings, Mode, TrustRoots};
use crate::endpoint::RunAs;

/// Keybroker enclave program.
#[derive(Parser, Debug)]
#[command(
    name = "keybroker-enclave",
    version,
    about,
    after_help = exit::HELP
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
    pub(super) fn trust_roots(&self) -> Result<TrustRoots, Error> {
        #[cfg(feature = "mock-nsm")]
        if let Some(pem) = &self.mock_kms_ca {
            return TrustRoots::mock_with_dev_ca_pem(&super::output::read_file(pem, None)?);
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
    /// Send the enclave's metrics to the proxy every MS milliseconds (the
    /// proxy serves them at its /metrics, labelled by enclave); 0: never.
    /// They hold counts only, but in e2e mode they tell the parent how many
    /// requests of each operation the apps made.
    #[arg(
        long,
        env = "KEYBROKER_METRICS_INTERVAL_MS",
        value_name = "MS",
        default_value_t = 15_000
    )]
    pub metrics_interval_ms: u64,
}

fn parse_run_as(s: &str) -> Result<RunAs, String> {
    s.parse()
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
    pub(super) fn context(&self) -> Option<BTreeMap<String, String>> {
        (!self.context.is_empty()).then(|| self.context.iter().cloned().collect())
    }

    pub(super) fn grant_tokens(&self) -> Option<Vec<String>> {
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
    pub(super) fn mock_requested(&self) -> Option<&'static str> {
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
fn kms_enum<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("unknown value {s:?}"))
}

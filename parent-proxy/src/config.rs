//! The `serve` configuration: a TOML file (`--config FILE`), overridden by
//! command-line flags, turned into the server's [`ProxyConfig`] and the KMS
//! client's [`KmsSettings`].
//!
//! Every key is optional; unknown keys are errors (a typo must not silently
//! disable a rule). See `parent-proxy/examples/proxy.toml` for a documented
//! example.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::attestation::Verifier;
use keybroker_common::kms::Operation;
use keybroker_common::protocol::MAX_FRAME_LEN;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::policy::Policy;

/// The default listening address: vsock, any CID (`VMADDR_CID_ANY`,
/// 0xFFFFFFFF, so the parent accepts from every enclave it runs), port 5000.
pub const DEFAULT_LISTEN: &str = "vsock://4294967295:5000";

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_FILE_LEN: usize = 1 << 20;

/// Largest attestation root PEM file read, in bytes.
pub const MAX_ROOT_FILE_LEN: usize = 1 << 20;

/// Resource limits of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Enclave connections served at once; one more is answered with
    /// `Error{Busy}` and closed.
    pub max_connections: usize,
    /// Requests in flight per connection; one more is answered with
    /// `Response{Err(Busy)}`.
    pub max_in_flight_per_connection: usize,
    /// Largest frame body read, in bytes (clamped to the wire's
    /// [`MAX_FRAME_LEN`]); a larger length prefix is answered with
    /// `Error{BadRequest}` and the connection closed.
    pub max_frame_len: usize,
    /// Time allowed from accept to a complete `Hello`.
    pub handshake_timeout: Duration,
    /// A connection with nothing in flight and no message for this long is
    /// sent `Goodbye` and closed.
    pub idle_timeout: Duration,
    /// Deadline of a request that names none (`timeout_ms` absent).
    pub default_request_timeout: Duration,
    /// Upper bound on a request's own `timeout_ms`.
    pub max_request_timeout: Duration,
    /// On shutdown, how long in-flight requests may still run before they
    /// are answered with `Shutdown` and the connections closed.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            max_in_flight_per_connection: 256,
            max_frame_len: MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            default_request_timeout: Duration::from_secs(10),
            max_request_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything the server needs besides its KMS backend.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where to listen: `vsock://CID:PORT`, `tcp://HOST:PORT` (port 0 picks
    /// a free one; see `Proxy::local_addr`) or `unix:///path`.
    pub listen: Address,
    /// Resource limits.
    pub limits: ServerLimits,
    /// The request policy.
    pub policy: Policy,
}

impl ProxyConfig {
    /// Default limits and the default (safe) policy, listening on `listen`.
    pub fn new(listen: Address) -> Self {
        ProxyConfig {
            listen,
            limits: ServerLimits::default(),
            policy: Policy::default(),
        }
    }
}

/// How to reach KMS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KmsSettings {
    /// Endpoint override (e.g. `http://127.0.0.1:4566` for the mock KMS);
    /// `None`: the SDK's regional endpoint.
    pub endpoint: Option<String>,
    /// Region override; `None`: the default provider chain (env, profile,
    /// IMDS).
    pub region: Option<String>,
    /// Attempts per call, first included (SDK standard retry mode: 5xx,
    /// throttling and connection errors are retried). `None`: SDK default (3).
    pub max_attempts: Option<u32>,
    /// TCP/TLS connect timeout. `None`: SDK default.
    pub connect_timeout: Option<Duration>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The TOML file, as written. All keys optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listening address (see [`ProxyConfig::listen`]).
    pub listen: Option<String>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: FileLimits,
    /// `[kms]`.
    #[serde(default)]
    pub kms: FileKms,
    /// `[policy]`.
    #[serde(default)]
    pub policy: FilePolicy,
}

/// `[limits]` (see [`ServerLimits`]; durations in milliseconds).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileLimits {
    pub max_connections: Option<usize>,
    pub max_in_flight_per_connection: Option<usize>,
    pub max_frame_len: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub default_request_timeout_ms: Option<u64>,
    pub max_request_timeout_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
}

/// `[kms]` (see [`KmsSettings`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileKms {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub max_attempts: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
}

/// `[policy]` (see [`Policy`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    /// [`Policy::dangerous_forward_without_recipient`].
    pub dangerous_forward_without_recipient: Option<bool>,
    /// [`Policy::allowed_keys`].
    pub allowed_keys: Option<Vec<String>>,
    /// [`Policy::allowed_operations`], by KMS operation name.
    pub allowed_operations: Option<Vec<String>>,
    /// [`Policy::expected_pcrs`]: `"0" = "hex"` (or `PCR0 = "hex"`).
    pub expected_pcrs: Option<BTreeMap<String, String>>,
    /// PEM (or DER) files of extra attestation roots, e.g. the mock NSM's CA.
    /// Relative paths are relative to the configuration file.
    pub attestation_roots: Option<Vec<PathBuf>>,
    /// [`Policy::max_request_len`].
    pub max_request_len: Option<usize>,
}

impl FileConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads and parses a file; relative `attestation_roots` are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_limited(path, MAX_CONFIG_FILE_LEN)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Config(format!("{}: not UTF-8", path.display())))?;
        let mut config =
            Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if let (Some(dir), Some(roots)) = (path.parent(), config.policy.attestation_roots.as_mut())
        {
            for root in roots.iter_mut() {
                if root.is_relative() {
                    *root = dir.join(&*root);
                }
            }
        }
        Ok(config)
    }

    /// The listening address (file value or [`DEFAULT_LISTEN`]).
    pub fn listen_address(&self) -> Result<Address> {
        self.listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|e: keybroker_common::Error| Error::Config(e.to_string()))
    }

    /// The server limits, defaults where absent.
    pub fn server_limits(&self) -> Result<ServerLimits> {
        let d = ServerLimits::default();
        let l = &self.limits;
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let limits = ServerLimits {
            max_connections: l.max_connections.unwrap_or(d.max_connections),
            max_in_flight_per_connection: l
                .max_in_flight_per_connection
                .unwrap_or(d.max_in_flight_per_connection),
            max_frame_len: l.max_frame_len.unwrap_or(d.max_frame_len),
            handshake_timeout: ms(l.handshake_timeout_ms, d.handshake_timeout),
            idle_timeout: ms(l.idle_timeout_ms, d.idle_timeout),
            default_request_timeout: ms(l.default_request_timeout_ms, d.default_request_timeout),
            max_request_timeout: ms(l.max_request_timeout_ms, d.max_request_timeout),
            drain_timeout: ms(l.drain_timeout_ms, d.drain_timeout),
        };
        if limits.max_connections == 0 || limits.max_in_flight_per_connection == 0 {
            return Err(Error::Config(
                "limits.max_connections and limits.max_in_flight_per_connection must be at least 1"
                    .into(),
            ));
        }
        if limits.max_frame_len == 0 || limits.max_frame_len > MAX_FRAME_LEN {
            return Err(Error::Config(format!(
                "limits.max_frame_len must be in 1..={MAX_FRAME_LEN}"
            )));
        }
        Ok(limits)
    }

    /// The KMS client settings.
    pub fn kms_settings(&self) -> KmsSettings {
        KmsSettings {
            endpoint: self.kms.endpoint.clone(),
            region: self.kms.region.clone(),
            max_attempts: self.kms.max_attempts,
            connect_timeout: self.kms.connect_timeout_ms.map(Duration::from_millis),
        }
    }

    /// Builds the policy: parses operation names and PCR values and reads
    /// the root files.
    pub fn policy(&self) -> Result<Policy> {
        let p = &self.policy;
        let mut verifier = Verifier::aws_nitro();
        for path in p.attestation_roots.iter().flatten() {
            add_roots(&mut verifier, path)?;
        }
        let allowed_operations = match &p.allowed_operations {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| parse_operation(n))
                    .collect::<Result<HashSet<_>>>()?,
            ),
        };
        let mut expected_pcrs = BTreeMap::new();
        for (index, value) in p.expected_pcrs.iter().flatten() {
            let (index, value) = parse_pcr(index, value)?;
            expected_pcrs.insert(index, value);
        }
        Ok(Policy {
            dangerous_forward_without_recipient: p
                .dangerous_forward_without_recipient
                .unwrap_or(false),
            allowed_keys: p
                .allowed_keys
                .as_ref()
                .map(|k| k.iter().cloned().collect::<BTreeSet<_>>()),
            allowed_operations,
            expected_pcrs,
            verifier,
            max_request_len: p.max_request_len,
        })
    }
}

/// Parses an operation name (`GenerateDataKey`, ...; KMS API spelling).
pub fn parse_operation(name: &str) -> Result<Operation> {
    Operation::from_name(name).ok_or_else(|| {
        let known: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        Error::Config(format!(
            "unknown operation {name:?}; the proxy relays {}",
            known.join(", ")
        ))
    })
}

/// Parses one expected PCR: index `0..=31` (optionally written `PCR0` /
/// `pcr0`) and a hex value of 32, 48 or 64 bytes (NSM PCR sizes).
pub fn parse_pcr(index: &str, value: &str) -> Result<(u8, Vec<u8>)> {
    let digits = index
        .strip_prefix("PCR")
        .or_else(|| index.strip_prefix("pcr"))
        .unwrap_or(index);
    let i: u8 = digits
        .parse()
        .ok()
        .filter(|i| *i <= 31)
        .ok_or_else(|| Error::Config(format!("PCR index {index:?} is not 0..=31")))?;
    let bytes = hex::decode(value.trim())
        .map_err(|e| Error::Config(format!("PCR{i} value is not hex: {e}")))?;
    if ![32, 48, 64].contains(&bytes.len()) {
        return Err(Error::Config(format!(
            "PCR{i} value is {} bytes; PCRs are 32, 48 or 64 bytes (SHA-384 PCRs: 48)",
            bytes.len()
        )));
    }
    Ok((i, bytes))
}

/// Parses `--pcr INDEX=HEX`.
pub fn parse_pcr_flag(s: &str) -> Result<(u8, Vec<u8>), String> {
    let (index, value) = s
        .split_once('=')
        .ok_or_else(|| "expected INDEX=HEX, e.g. 0=abcd...".to_owned())?;
    parse_pcr(index, value).map_err(|e| e.to_string())
}

/// Adds every certificate of a PEM (or DER) file to `verifier`.
pub fn add_roots(verifier: &mut Verifier, path: &Path) -> Result<()> {
    let bytes = read_limited(path, MAX_ROOT_FILE_LEN)?;
    let certs = crate::cli::parse_certificates(&bytes)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    for der in certs {
        verifier
            .add_trusted_root(&der)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_err)?;
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut buf).map_err(file_err)?;
    if buf.len() > max {
        return Err(Error::Config(format!(
            "{}: larger than {max} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = FileConfig::parse("").unwrap();
        assert_eq!(
            c.listen_address().unwrap(),
            Address::Vsock {
                cid: u32::MAX,
                port: 5000
            }
        );
        assert_eq!(c.server_limits().unwrap(), ServerLimits::default());
        let p = c.policy().unwrap();
        assert!(!p.dangerous_forward_without_recipient);
        assert!(p.allowed_keys.is_none() && p.allowed_operations.is_none());
        assert!(p.expected_pcrs.is_empty());
        assert_eq!(c.kms_settings(), KmsSettings::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(FileConfig::parse("[policy]\nrequire_recipent = false\n").is_err());
        assert!(FileConfig::parse("lisen = \"tcp://x:1\"\n").is_err());
        let c = FileConfig::parse("[policy]\nallowed_operations = [\"Encrypt\"]\n").unwrap();
        assert!(c.policy().unwrap_err().to_string().contains("Encrypt"));
        let c = FileConfig::parse("[policy.expected_pcrs]\n0 = \"abcd\"\n").unwrap();
        assert!(c.policy().is_err());
        let c = FileConfig::parse("[policy.expected_pcrs]\n32 = \"\"\n").unwrap();
        assert!(c.policy().is_err());
        let c = FileConfig::parse("[limits]\nmax_connections = 0\n").unwrap();
        assert!(c.server_limits().is_err());
        let c = FileConfig::parse("[limits]\nmax_frame_len = 99999999\n").unwrap();
        assert!(c.server_limits().is_err());
        let c =
            FileConfig::parse("[policy]\nattestation_roots = [\"/nonexistent.pem\"]\n").unwrap();
        assert!(matches!(c.policy(), Err(Error::File { .. })));
        let c = FileConfig::parse("listen = \"http://x:1\"\n").unwrap();
        assert!(c.listen_address().is_err());
    }

    #[test]
    fn pcr_values_parse() {
        let hex48 = "ab".repeat(48);
        assert_eq!(parse_pcr("0", &hex48).unwrap(), (0, vec![0xab; 48]));
        assert_eq!(parse_pcr("PCR8", &hex48).unwrap().0, 8);
        assert_eq!(parse_pcr_flag(&format!("2={hex48}")).unwrap().0, 2);
        assert!(parse_pcr_flag(&hex48).is_err());
        assert!(parse_pcr("x", &hex48).is_err());
    }

    /// The shipped example configuration parses and builds (so it never
    /// rots), except for its root file, which only exists on a dev machine.
    #[test]
    fn example_config_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy.toml"));
        let mut c = FileConfig::load(path).unwrap();
        assert_eq!(
            c.listen_address().unwrap(),
            "vsock://4294967295:5000".parse().unwrap()
        );
        let limits = c.server_limits().unwrap();
        assert_eq!(limits.max_in_flight_per_connection, 128);
        let kms = c.kms_settings();
        assert_eq!(kms.region.as_deref(), Some("us-east-1"));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        let roots = c.policy.attestation_roots.take().unwrap();
        assert_eq!(roots.len(), 1);
        assert!(roots[0].starts_with(path.parent().unwrap()), "{roots:?}");
        let p = c.policy().unwrap();
        assert_eq!(p.expected_pcrs.len(), 1);
        assert_eq!(p.expected_pcrs[&0].len(), 48);
        assert!(
            p.allowed_operations
                .unwrap()
                .contains(&Operation::GenerateDataKey)
        );
        assert!(p.allowed_keys.unwrap().contains("alias/keybroker-demo"));
        assert_eq!(p.max_request_len, Some(65536));
        assert!(!p.dangerous_forward_without_recipient);
    }
}

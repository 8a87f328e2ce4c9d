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
use crate::key_policy::{ImageMeasurements, MAX_NITRO_CLI_JSON_LEN};
use crate::policy::{AllowedImage, DEFAULT_MAX_DOCUMENT_AGE, Policy, check_pcr_value};
pub use crate::tunnel::{TunnelSettings, TunnelTarget};

/// The default listening address: vsock, any CID (`VMADDR_CID_ANY`,
/// 0xFFFFFFFF, so the parent accepts from every enclave it runs), port 5000.
pub const DEFAULT_LISTEN: &str = "vsock://4294967295:5000";

/// The default of [`ServerLimits::max_kms_in_flight`]: above what one
/// parent's enclaves need (a KMS call takes milliseconds, so this is tens of
/// thousands of calls per second, more than KMS's per-account request
/// quotas), and it bounds the memory held by requests waiting on KMS
/// (each at most a frame).
pub const DEFAULT_MAX_KMS_IN_FLIGHT: usize = 512;

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
    /// KMS calls in flight across all connections (requests the policy
    /// allowed, from the call to KMS's answer or the deadline); one more is
    /// answered with `Response{Err(Busy)}` at once (retryable, forwarded
    /// nowhere), so KMS and the proxy see at most this many whatever the
    /// number of connections. (In end-to-end mode the enclaves call KMS
    /// through tunnels, bounded by [`TunnelSettings::max_tunnels`].)
    pub max_kms_in_flight: usize,
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
            max_kms_in_flight: DEFAULT_MAX_KMS_IN_FLIGHT,
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
    /// Whether a `tcp://` address may be other than loopback (every address
    /// the host name resolves to must be loopback otherwise, or binding
    /// fails with [`Error::Config`]). Whoever can connect gets the proxy's
    /// KMS access and, with protocol version 2, its AWS credentials, so the
    /// listener must not be reachable from the network by accident. vsock
    /// and Unix sockets are not affected.
    pub allow_non_loopback: bool,
    /// Resource limits.
    pub limits: ServerLimits,
    /// The request policy.
    pub policy: Policy,
    /// Tunnels (protocol version 2): the allowed targets and their limits.
    /// The default allows none; `serve` adds the region's KMS endpoint.
    pub tunnels: TunnelSettings,
}

impl ProxyConfig {
    /// Default limits and the default (safe) policy, listening on `listen`.
    pub fn new(listen: Address) -> Self {
        ProxyConfig {
            listen,
            allow_non_loopback: false,
            limits: ServerLimits::default(),
            policy: Policy::default(),
            tunnels: TunnelSettings::default(),
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
    /// [`ProxyConfig::allow_non_loopback`] (default `false`).
    pub allow_non_loopback: Option<bool>,
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
    /// `[tunnel]`.
    #[serde(default)]
    pub tunnel: FileTunnel,
    /// `[credentials]`.
    #[serde(default)]
    pub credentials: FileCredentials,
}

/// `[tunnel]` (see [`TunnelSettings`]; durations in milliseconds).
/// `allowed` adds `HOST:PORT` targets to the region's KMS endpoint.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileTunnel {
    pub allowed: Option<Vec<String>>,
    pub max_tunnels: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
}

/// `[credentials]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentials {
    /// Whether the proxy answers `GetCredentials` with the credentials of
    /// aws-config's default chain (default `true`; `false`, like
    /// `--no-credentials`, answers `PolicyDenied`).
    pub enabled: Option<bool>,
}

/// `[limits]` (see [`ServerLimits`]; durations in milliseconds).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileLimits {
    pub max_connections: Option<usize>,
    pub max_in_flight_per_connection: Option<usize>,
    pub max_kms_in_flight: Option<usize>,
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
    /// One admitted image (the original form): `[policy.expected_pcrs]`
    /// with `"0" = "hex"` (or `PCR0 = "hex"`) per required PCR. Cannot be
    /// combined with `allowed_images`.
    pub expected_pcrs: Option<BTreeMap<String, String>>,
    /// [`Policy::allowed_images`]: `[[policy.allowed_images]]` tables, each
    /// with `pcr0 = "hex"` (required), optionally other `pcrN = "hex"`
    /// (e.g. `pcr1`, `pcr2`, `pcr8`) and `name = "v1.2"` (for messages).
    /// See [`parse_image_table`].
    pub allowed_images: Option<Vec<BTreeMap<String, String>>>,
    /// PEM (or DER) files of extra attestation roots, e.g. the mock NSM's CA.
    /// Relative paths are relative to the configuration file.
    pub attestation_roots: Option<Vec<PathBuf>>,
    /// [`Policy::max_request_len`].
    pub max_request_len: Option<usize>,
    /// [`Policy::max_document_age`], in milliseconds (at least 1; default
    /// [`DEFAULT_MAX_DOCUMENT_AGE`]).
    pub max_document_age_ms: Option<u64>,
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
            max_kms_in_flight: l.max_kms_in_flight.unwrap_or(d.max_kms_in_flight),
            max_frame_len: l.max_frame_len.unwrap_or(d.max_frame_len),
            handshake_timeout: ms(l.handshake_timeout_ms, d.handshake_timeout),
            idle_timeout: ms(l.idle_timeout_ms, d.idle_timeout),
            default_request_timeout: ms(l.default_request_timeout_ms, d.default_request_timeout),
            max_request_timeout: ms(l.max_request_timeout_ms, d.max_request_timeout),
            drain_timeout: ms(l.drain_timeout_ms, d.drain_timeout),
        };
        if limits.max_connections == 0
            || limits.max_in_flight_per_connection == 0
            || limits.max_kms_in_flight == 0
        {
            return Err(Error::Config(
                "limits.max_connections, limits.max_in_flight_per_connection and \
                 limits.max_kms_in_flight must be at least 1"
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

    /// The tunnel settings, defaults where absent. The region's KMS
    /// endpoint is not added here (the region may come from the AWS chain);
    /// `serve` adds it.
    pub fn tunnel_settings(&self) -> Result<TunnelSettings> {
        let d = TunnelSettings::default();
        let t = &self.tunnel;
        let mut allowed = std::collections::BTreeSet::new();
        for entry in t.allowed.iter().flatten() {
            let target: TunnelTarget = entry
                .parse()
                .map_err(|e| Error::Config(format!("tunnel.allowed: {e}")))?;
            allowed.insert(target);
        }
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let settings = TunnelSettings {
            allowed,
            max_tunnels: t.max_tunnels.unwrap_or(d.max_tunnels),
            idle_timeout: ms(t.idle_timeout_ms, d.idle_timeout),
            connect_timeout: ms(t.connect_timeout_ms, d.connect_timeout),
        };
        if settings.max_tunnels == 0 {
            return Err(Error::Config(
                "tunnel.max_tunnels must be at least 1".into(),
            ));
        }
        if settings.idle_timeout.is_zero() || settings.connect_timeout.is_zero() {
            return Err(Error::Config(
                "tunnel.idle_timeout_ms and tunnel.connect_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(settings)
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

    /// The PCRs of `[policy.expected_pcrs]` (the single-image form), by
    /// index; empty without the table. An index given twice (`0` and
    /// `PCR0`) is an error.
    pub fn single_image_pcrs(&self) -> Result<BTreeMap<u8, Vec<u8>>> {
        let mut pcrs = BTreeMap::new();
        for (index, value) in self.policy.expected_pcrs.iter().flatten() {
            let (index, value) = parse_pcr(index, value)?;
            if pcrs.insert(index, value).is_some() {
                return Err(Error::Config(format!(
                    "[policy.expected_pcrs] gives PCR{index} twice"
                )));
            }
        }
        Ok(pcrs)
    }

    /// The admitted images: those of `[[policy.allowed_images]]`, or the
    /// one image of `[policy.expected_pcrs]` (none if that table is absent
    /// or empty). Both forms at once are an error: the old table left
    /// beside the new list would silently keep admitting its image.
    pub fn allowed_images(&self) -> Result<Vec<AllowedImage>> {
        let images = match (&self.policy.expected_pcrs, &self.policy.allowed_images) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "use either [policy.expected_pcrs] (one image) or [[policy.allowed_images]], \
                     not both: move the expected PCRs into an allowed_images entry"
                        .into(),
                ));
            }
            (None, Some(tables)) => tables
                .iter()
                .enumerate()
                .map(|(i, table)| {
                    parse_image_table(table).map_err(|e| {
                        Error::Config(format!("policy.allowed_images[{i}]: {}", config_message(e)))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            (Some(_), None) => {
                let pcrs = self.single_image_pcrs()?;
                if pcrs.is_empty() {
                    Vec::new()
                } else {
                    vec![AllowedImage::new(pcrs)?]
                }
            }
            (None, None) => Vec::new(),
        };
        check_images(&images)?;
        Ok(images)
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
        let allowed_images = self.allowed_images()?;
        let max_document_age = match p.max_document_age_ms {
            None => DEFAULT_MAX_DOCUMENT_AGE,
            Some(0) => {
                return Err(Error::Config(
                    "policy.max_document_age_ms must be at least 1".into(),
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        Ok(Policy {
            dangerous_forward_without_recipient: p
                .dangerous_forward_without_recipient
                .unwrap_or(false),
            allowed_keys: p
                .allowed_keys
                .as_ref()
                .map(|k| k.iter().cloned().collect::<BTreeSet<_>>()),
            allowed_operations,
            allowed_images,
            verifier,
            max_request_len: p.max_request_len,
            max_document_age,
            ..Policy::default()
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
/// `pcr0`) and a hex value of 32, 48 or 64 bytes (NSM PCR sizes), not all
/// zero (see [`check_pcr_value`]).
pub fn parse_pcr(index: &str, value: &str) -> Result<(u8, Vec<u8>)> {
    let i = parse_pcr_index(index)
        .ok_or_else(|| Error::Config(format!("PCR index {index:?} is not 0..=31")))?;
    let bytes = hex::decode(value.trim())
        .map_err(|e| Error::Config(format!("PCR{i} value is not hex: {e}")))?;
    check_pcr_value(i, &bytes)?;
    Ok((i, bytes))
}

/// `0`, `PCR0` or `pcr0` to 0 (up to 31).
fn parse_pcr_index(index: &str) -> Option<u8> {
    let digits = index
        .strip_prefix("PCR")
        .or_else(|| index.strip_prefix("pcr"))
        .unwrap_or(index);
    digits
        .parse()
        .ok()
        .filter(|i| *i <= crate::policy::MAX_PCR_INDEX)
}

/// Parses `--pcr INDEX=HEX`.
pub fn parse_pcr_flag(s: &str) -> Result<(u8, Vec<u8>), String> {
    let (index, value) = s
        .split_once('=')
        .ok_or_else(|| "expected INDEX=HEX, e.g. 0=abcd...".to_owned())?;
    parse_pcr(index, value).map_err(config_message)
}

/// Parses one allowed image, as written in a `[[policy.allowed_images]]`
/// table or an `--allow-image` flag: `pcr0` (required: the image file's
/// SHA-384, as in the KMS key policy), optionally more `pcrN` (also
/// `PCRN`; e.g. `pcr1`, `pcr2`, `pcr8`) and `name`. Every PCR given must
/// match; any other key is an error.
pub fn parse_image_table(table: &BTreeMap<String, String>) -> Result<AllowedImage> {
    let mut pcrs = BTreeMap::new();
    let mut name = None;
    for (key, value) in table {
        if key == "name" {
            name = Some(value.as_str());
            continue;
        }
        if !(key.starts_with("pcr") || key.starts_with("PCR")) {
            return Err(Error::Config(format!(
                "unknown key {:?}: expected name, pcr0, pcr1, pcr2, pcr8, ... (pcrN)",
                crate::policy::short(key)
            )));
        }
        let (index, value) = parse_pcr(key, value)?;
        if pcrs.insert(index, value).is_some() {
            return Err(Error::Config(format!("PCR{index} is given twice")));
        }
    }
    if !pcrs.contains_key(&0) {
        return Err(Error::Config(
            "pcr0 is required (the image's SHA-384, what the KMS key policy names)".into(),
        ));
    }
    let image = AllowedImage::new(pcrs)?;
    match name {
        Some(name) => image.with_name(name),
        None => Ok(image),
    }
}

/// Parses `--allow-image pcr0=HEX[,pcr1=HEX,pcr2=HEX,pcr8=HEX][,name=NAME]`
/// (see [`parse_image_table`]).
pub fn parse_image_flag(s: &str) -> Result<AllowedImage, String> {
    let mut table = BTreeMap::new();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected KEY=VALUE, e.g. pcr0=abcd...,name=v1.2"))?;
        if table
            .insert(key.trim().to_owned(), value.trim().to_owned())
            .is_some()
        {
            return Err(format!("{} is given twice", key.trim()));
        }
    }
    parse_image_table(&table).map_err(config_message)
}

/// Reads an allowed image from the JSON `nitro-cli build-enclave` or
/// `nitro-cli describe-eif` prints (the file `keybroker-proxy policy
/// --pcrs-json` reads, with the same parser and checks): every PCR in it
/// must match. The image is named after the file.
pub fn load_image_json(path: &Path) -> Result<AllowedImage> {
    let in_file = |e: Error| Error::Config(format!("{}: {}", path.display(), config_message(e)));
    let bytes = read_limited(path, MAX_NITRO_CLI_JSON_LEN)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Config(format!("{}: not UTF-8 text", path.display())))?;
    let measurements = ImageMeasurements::from_nitro_cli_json(&text).map_err(in_file)?;
    let image = AllowedImage::from_measurements(&measurements).map_err(in_file)?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    image.with_name(&name).map_err(in_file)
}

/// Checks a complete image list: names are unique (they identify images
/// in messages).
pub fn check_images(images: &[AllowedImage]) -> Result<()> {
    let mut names = BTreeSet::new();
    for name in images.iter().filter_map(AllowedImage::name) {
        if !names.insert(name) {
            return Err(Error::Config(format!(
                "two allowed images are named {name:?}"
            )));
        }
    }
    Ok(())
}

/// The message of a configuration or key-policy error, without its
/// `configuration: ` / `key policy: ` prefix (to nest it in another).
fn config_message(e: Error) -> String {
    match e {
        Error::Config(m) | Error::KeyPolicy(m) => m,
        other => other.to_string(),
    }
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
        assert!(p.allowed_images.is_empty());
        assert!(!p.verifies_attestation());
        assert_eq!(c.kms_settings(), KmsSettings::default());
        assert_eq!(c.tunnel_settings().unwrap(), TunnelSettings::default());
        assert!(c.tunnel_settings().unwrap().allowed.is_empty());
        assert_eq!(c.credentials.enabled, None);
    }

    #[test]
    fn listen_and_limit_keys_parse() {
        let c = FileConfig::parse(
            "listen = \"tcp://0.0.0.0:5000\"\nallow_non_loopback = true\n\
             [limits]\nmax_kms_in_flight = 9\n",
        )
        .unwrap();
        assert_eq!(c.allow_non_loopback, Some(true));
        assert_eq!(c.server_limits().unwrap().max_kms_in_flight, 9);
        assert_eq!(
            ServerLimits::default().max_kms_in_flight,
            DEFAULT_MAX_KMS_IN_FLIGHT
        );
        let c = FileConfig::parse("[limits]\nmax_kms_in_flight = 0\n").unwrap();
        assert!(c.server_limits().is_err());
        assert!(FileConfig::parse("allow_non_loopback = \"yes\"\n").is_err());
    }

    #[test]
    fn tunnel_section_parses() {
        let c = FileConfig::parse(
            "[tunnel]\nallowed = [\"kms-fips.us-east-1.amazonaws.com:443\", \"LOCALHOST:4566\"]\n\
             max_tunnels = 8\nidle_timeout_ms = 1500\nconnect_timeout_ms = 250\n\
             [credentials]\nenabled = false\n",
        )
        .unwrap();
        let t = c.tunnel_settings().unwrap();
        assert!(t.allows("kms-fips.us-east-1.amazonaws.com", 443));
        assert!(t.allows("localhost", 4566));
        assert!(!t.allows("localhost", 443));
        assert_eq!(t.max_tunnels, 8);
        assert_eq!(t.idle_timeout, Duration::from_millis(1500));
        assert_eq!(t.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.credentials.enabled, Some(false));
        for bad in [
            "[tunnel]\nallowed = [\"no-port\"]\n",
            "[tunnel]\nallowed = [\"bad_host:443\"]\n",
            "[tunnel]\nmax_tunnels = 0\n",
            "[tunnel]\nidle_timeout_ms = 0\n",
        ] {
            assert!(
                FileConfig::parse(bad).unwrap().tunnel_settings().is_err(),
                "{bad}"
            );
        }
        assert!(FileConfig::parse("[tunnel]\nallow = []\n").is_err());
        assert!(FileConfig::parse("[credentials]\nenable = true\n").is_err());
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
        assert_eq!(parse_pcr("pcr31", &hex48).unwrap().0, 31);
        assert_eq!(parse_pcr_flag(&format!("2={hex48}")).unwrap().0, 2);
        assert!(parse_pcr_flag(&hex48).is_err());
        assert!(parse_pcr("x", &hex48).is_err());
        assert!(parse_pcr("32", &hex48).is_err());
        // A debug-mode enclave's value is refused, in the file and the flag.
        let zeros = "00".repeat(48);
        assert!(parse_pcr("0", &zeros).is_err());
        let err = parse_pcr_flag(&format!("0={zeros}")).unwrap_err();
        assert!(err.contains("debug-mode"), "{err}");
    }

    const A0: &str = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
    const A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
    const B0: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

    fn images_of(toml: &str) -> Result<Vec<AllowedImage>> {
        FileConfig::parse(toml)?.policy().map(|p| p.allowed_images)
    }

    /// The original single-image table still works (any PCR index, `0` or
    /// `PCR0` spelling): one image with exactly those PCRs.
    #[test]
    fn single_image_table_is_one_image() {
        let images = images_of(&format!(
            "[policy.expected_pcrs]\n0 = \"{A0}\"\nPCR2 = \"{A2}\"\n"
        ))
        .unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name(), None);
        assert_eq!(
            images[0].pcrs(),
            &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
        );
        // An empty table checks nothing, as before.
        assert!(images_of("[policy.expected_pcrs]\n").unwrap().is_empty());
        // The same index twice.
        let err = images_of(&format!(
            "[policy.expected_pcrs]\n0 = \"{A0}\"\nPCR0 = \"{B0}\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("PCR0 twice"), "{err}");
    }

    #[test]
    fn allowed_images_tables_parse() {
        let images = images_of(&format!(
            "[[policy.allowed_images]]\nname = \"v1\"\npcr0 = \"{A0}\"\npcr2 = \"{A2}\"\n\
             [[policy.allowed_images]]\nPCR0 = \"{B0}\"\n"
        ))
        .unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].name(), Some("v1"));
        assert_eq!(
            images[0].pcrs(),
            &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
        );
        assert_eq!(images[1].name(), None);
        assert_eq!(images[1].pcrs(), &[(0, vec![0xb0; 48])].into());
        assert_eq!(images[1].label(), "PCR0 b0b0b0b0b0b0b0b0…");
    }

    #[test]
    fn bad_allowed_images_are_errors() {
        let zeros = "00".repeat(48);
        for (toml, expect) in [
            // PCR0 is required (the key policy names it).
            (format!("pcr2 = \"{A2}\""), "pcr0 is required"),
            ("name = \"x\"".to_owned(), "pcr0 is required"),
            // Debug-mode values, in PCR0 or another PCR.
            (format!("pcr0 = \"{zeros}\""), "debug-mode"),
            (format!("pcr0 = \"{A0}\"\npcr8 = \"{zeros}\""), "debug-mode"),
            // Typos are not ignored.
            (
                format!("pcr0 = \"{A0}\"\nnmae = \"x\""),
                "unknown key \"nmae\"",
            ),
            (format!("pcr0 = \"{A0}\"\npcr = \"{A2}\""), "not 0..=31"),
            (format!("pcr0 = \"{A0}\"\npcr32 = \"{A2}\""), "not 0..=31"),
            (
                format!("pcr0 = \"{A0}\"\nPCR0 = \"{B0}\""),
                "PCR0 is given twice",
            ),
            ("pcr0 = \"abcd\"".to_owned(), "2 bytes"),
            (format!("pcr0 = \"{A0}\"\nname = \"\""), "image name"),
        ] {
            let err = images_of(&format!("[[policy.allowed_images]]\n{toml}\n")).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("policy.allowed_images[0]: "), "{err}");
            assert!(err.contains(expect), "{toml}: {err}");
        }
        // A non-string value.
        assert!(FileConfig::parse("[[policy.allowed_images]]\npcr0 = 1\n").is_err());
        // Two images with one name.
        let err = images_of(&format!(
            "[[policy.allowed_images]]\nname = \"v\"\npcr0 = \"{A0}\"\n\
             [[policy.allowed_images]]\nname = \"v\"\npcr0 = \"{B0}\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("named \"v\""), "{err}");
        // Both forms at once.
        let err = images_of(&format!(
            "[policy.expected_pcrs]\n0 = \"{A0}\"\n[[policy.allowed_images]]\npcr0 = \"{B0}\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn allow_image_flag_parses() {
        let image = parse_image_flag(&format!("pcr0={A0}, pcr2={A2},name=v1.2")).unwrap();
        assert_eq!(image.name(), Some("v1.2"));
        assert_eq!(
            image.pcrs(),
            &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
        );
        assert_eq!(
            parse_image_flag(&format!("PCR0={B0}")).unwrap().name(),
            None
        );
        assert!(
            parse_image_flag(&format!("pcr2={A2}"))
                .unwrap_err()
                .contains("pcr0")
        );
        assert!(parse_image_flag(A0).unwrap_err().contains("KEY=VALUE"));
        assert!(
            parse_image_flag(&format!("pcr0={A0},pcr0={B0}"))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse_image_flag(&format!("pcr0={}", "00".repeat(48)))
                .unwrap_err()
                .contains("debug-mode")
        );
    }

    #[test]
    fn allow_image_json_reads_nitro_cli_output() {
        let dir = std::env::temp_dir().join(format!("keybroker-image-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("new-pcrs.json");
        std::fs::write(
            &good,
            format!(
                "Start building the Enclave Image...\n{{\"Measurements\": {{\"HashAlgorithm\": \
                 \"Sha384 {{ ... }}\", \"PCR0\": \"{A0}\", \"PCR2\": \"{A2}\"}}}}\n"
            ),
        )
        .unwrap();
        let debug = dir.join("debug.json");
        std::fs::write(
            &debug,
            format!(
                "{{\"Measurements\": {{\"PCR0\": \"{}\"}}}}",
                "00".repeat(48)
            ),
        )
        .unwrap();
        let image = load_image_json(&good);
        let refused = load_image_json(&debug);
        let missing = load_image_json(&dir.join("absent.json"));
        let _ = std::fs::remove_dir_all(&dir);
        let image = image.unwrap();
        assert_eq!(image.name(), Some("new-pcrs.json"));
        assert_eq!(
            image.pcrs(),
            &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
        );
        let err = refused.unwrap_err().to_string();
        assert!(err.contains("debug.json: PCR0 is all zeros"), "{err}");
        assert!(matches!(missing, Err(Error::File { .. })));
    }

    /// Relative `attestation_roots` are relative to the configuration file
    /// (the shipped example names none any more, so this is tested here).
    #[test]
    fn relative_roots_resolve_against_the_file() {
        let dir = std::env::temp_dir().join(format!("keybroker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(
            &path,
            "[policy]\nattestation_roots = [\"dev-root.pem\", \"/abs/root.pem\"]\n",
        )
        .unwrap();
        let c = FileConfig::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            c.policy.attestation_roots.unwrap(),
            [dir.join("dev-root.pem"), PathBuf::from("/abs/root.pem")]
        );
    }

    /// The shipped example configuration parses and builds (so it never
    /// rots), and is fit for production: no development attestation root,
    /// no debug-mode (all-zero) PCR.
    #[test]
    fn example_config_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy.toml"));
        let c = FileConfig::load(path).unwrap();
        assert_eq!(
            c.listen_address().unwrap(),
            "vsock://4294967295:5000".parse().unwrap()
        );
        let limits = c.server_limits().unwrap();
        assert_eq!(limits.max_in_flight_per_connection, 128);
        assert_eq!(limits.max_kms_in_flight, 512);
        assert_eq!(c.allow_non_loopback, None);
        let kms = c.kms_settings();
        assert_eq!(kms.region.as_deref(), Some("us-east-1"));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(c.policy.attestation_roots, None);
        let p = c.policy().unwrap();
        assert_eq!(p.allowed_images.len(), 1);
        let image = &p.allowed_images[0];
        assert_eq!(image.name(), Some("keybroker 0.1.0"));
        assert_eq!(image.pcrs().keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(image.pcrs()[&0].len(), 48);
        assert!(image.pcrs()[&0].iter().any(|b| *b != 0));
        assert!(
            p.allowed_operations
                .unwrap()
                .contains(&Operation::GenerateDataKey)
        );
        assert!(p.allowed_keys.unwrap().contains("alias/keybroker-demo"));
        assert_eq!(p.max_request_len, Some(65536));
        assert_eq!(p.max_document_age, crate::policy::DEFAULT_MAX_DOCUMENT_AGE);
        assert!(!p.dangerous_forward_without_recipient);
        let t = c.tunnel_settings().unwrap();
        assert_eq!(t.max_tunnels, 64);
        assert!(t.allows("kms-fips.us-east-1.amazonaws.com", 443));
        assert_eq!(c.credentials.enabled, Some(true));
    }
}

//! The TOML file (`--config FILE`) as written ([`FileConfig`]), and its
//! conversion to typed settings, with the checks every value gets.
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

use super::{DEFAULT_LISTEN, KmsSettings, MAX_CONFIG_FILE_LEN, ServerLimits};
use crate::admission::{AdmissionPolicy, DEFAULT_MAX_DOCUMENT_AGE};
use crate::audit::LogFormat;
use crate::error::{Error, Result};
use crate::files::{add_roots, read_file};
use crate::key_policy::{ImageMeasurements, MAX_NITRO_CLI_JSON_LEN};
use crate::measurements::{AllowedImage, parse_image_table, parse_pcr};
use crate::tunnel::{TunnelSettings, TunnelTarget};

/// The TOML file, as written. All keys optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listening address (see [`ProxyConfig::listen`](super::ProxyConfig::listen)).
    pub listen: Option<String>,
    /// [`ProxyConfig::allow_non_loopback`](super::ProxyConfig::allow_non_loopback) (default `false`).
    pub allow_non_loopback: Option<bool>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// The metrics listener (`/metrics`, `/healthz`, `/readyz`): a port
    /// (`9464`, on 127.0.0.1) or `IP:PORT`; absent: none. See
    /// [`parse_metrics_listen`](super::parse_metrics_listen).
    pub metrics_listen: Option<String>,
    /// `/readyz` also requires an open enclave connection (default `false`).
    pub ready_requires_enclave: Option<bool>,
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

/// `[policy]` (see [`AdmissionPolicy`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    /// [`AdmissionPolicy::dangerous_forward_without_recipient`].
    pub dangerous_forward_without_recipient: Option<bool>,
    /// [`AdmissionPolicy::allowed_keys`].
    pub allowed_keys: Option<Vec<String>>,
    /// [`AdmissionPolicy::allowed_operations`], by KMS operation name.
    pub allowed_operations: Option<Vec<String>>,
    /// One admitted image (the original form): `[policy.expected_pcrs]`
    /// with `"0" = "hex"` (or `PCR0 = "hex"`) per required PCR. Cannot be
    /// combined with `allowed_images`.
    pub expected_pcrs: Option<BTreeMap<String, String>>,
    /// [`AdmissionPolicy::allowed_images`]: `[[policy.allowed_images]]` tables, each
    /// with `pcr0 = "hex"` (required), optionally other `pcrN = "hex"`
    /// (e.g. `pcr1`, `pcr2`, `pcr8`) and `name = "v1.2"` (for messages).
    /// See [`parse_image_table`].
    pub allowed_images: Option<Vec<BTreeMap<String, String>>>,
    /// PEM (or DER) files of extra attestation roots, e.g. the mock NSM's CA.
    /// Relative paths are relative to the configuration file.
    pub attestation_roots: Option<Vec<PathBuf>>,
    /// [`AdmissionPolicy::max_request_len`].
    pub max_request_len: Option<usize>,
    /// [`AdmissionPolicy::max_document_age`], in milliseconds (at least 1; default
    /// [`DEFAULT_MAX_DOCUMENT_AGE`]).
    pub max_document_age_ms: Option<u64>,
}

impl FileConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::config(e.to_string()))
    }

    /// Reads and parses a file; relative `attestation_roots` are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_file(path, MAX_CONFIG_FILE_LEN)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::config(format!("{}: not UTF-8", path.display())))?;
        let mut config = Self::parse(&text).map_err(|e| e.within(path.display().to_string()))?;
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
            .map_err(|e: keybroker_common::Error| Error::config(e.to_string()))
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
            return Err(Error::config(
                "limits.max_connections, limits.max_in_flight_per_connection and \
                 limits.max_kms_in_flight must be at least 1",
            ));
        }
        if limits.max_frame_len == 0 || limits.max_frame_len > MAX_FRAME_LEN {
            return Err(Error::config(format!(
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
                .map_err(|e| Error::config(format!("tunnel.allowed: {e}")))?;
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
            return Err(Error::config("tunnel.max_tunnels must be at least 1"));
        }
        if settings.idle_timeout.is_zero() || settings.connect_timeout.is_zero() {
            return Err(Error::config(
                "tunnel.idle_timeout_ms and tunnel.connect_timeout_ms must be at least 1",
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
                return Err(Error::config(format!(
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
                return Err(Error::config(
                    "use either [policy.expected_pcrs] (one image) or [[policy.allowed_images]], \
                     not both: move the expected PCRs into an allowed_images entry",
                ));
            }
            (None, Some(tables)) => tables
                .iter()
                .enumerate()
                .map(|(i, table)| {
                    parse_image_table(table)
                        .map_err(|e| e.within(format!("policy.allowed_images[{i}]")))
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

    /// Builds the admission policy: parses operation names and PCR values and reads
    /// the root files.
    pub fn admission(&self) -> Result<AdmissionPolicy> {
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
                return Err(Error::config(
                    "policy.max_document_age_ms must be at least 1",
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        Ok(AdmissionPolicy {
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
            ..AdmissionPolicy::default()
        })
    }
}

/// Parses an operation name (`GenerateDataKey`, ...; KMS API spelling).
pub fn parse_operation(name: &str) -> Result<Operation> {
    Operation::from_name(name).ok_or_else(|| {
        let known: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        Error::config(format!(
            "unknown operation {name:?}; the proxy relays {}",
            known.join(", ")
        ))
    })
}

/// Reads an allowed image from the JSON `nitro-cli build-enclave` or
/// `nitro-cli describe-eif` prints (the file `keybroker-proxy policy
/// --pcrs-json` reads, with the same parser and checks): every PCR in it
/// must match. The image is named after the file.
pub fn load_image_json(path: &Path) -> Result<AllowedImage> {
    let in_file = |e: Error| e.within(path.display().to_string());
    let bytes = read_file(path, MAX_NITRO_CLI_JSON_LEN)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::config(format!("{}: not UTF-8 text", path.display())))?;
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
            return Err(Error::config(format!(
                "two allowed images are named {name:?}"
            )));
        }
    }
    Ok(())
}

//! Settings: the `serve` configuration, from the TOML file
//! ([`FileConfig`], `--config FILE`) and the command line's overrides
//! ([`Overrides`]), to the typed settings the server ([`ProxyConfig`]) and
//! the KMS client ([`KmsSettings`]) take. No command-line parsing here: the
//! CLI fills [`Overrides`].
//!
//! - [`file`](mod@file): the TOML file as written and its checks;
//! - this module: the typed settings and [`ServeSettings::resolve`], which
//!   merges the file and the overrides.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::protocol::MAX_FRAME_LEN;

use crate::admission::AdmissionPolicy;
use crate::audit::LogFormat;
use crate::error::{Error, Result};
use crate::files::add_roots;
use crate::measurements::AllowedImage;
use crate::tunnel::{TunnelSettings, TunnelTarget};

pub mod file;
#[cfg(test)]
mod tests;

pub use file::{FileConfig, check_images, load_image_json, parse_operation};

/// The default listening address: vsock, any CID (`VMADDR_CID_ANY`,
/// 0xFFFFFFFF, so the parent accepts from every enclave it runs), port 5000.
pub const DEFAULT_LISTEN: &str = "vsock://4294967295:5000";

/// The default of [`ServerLimits::max_kms_in_flight`]: above what one
/// parent's enclaves need (a KMS call takes milliseconds, so this is tens of
/// thousands of calls per second, more than KMS's per-account request
/// quotas), and it bounds the memory held by requests waiting on KMS
/// (each at most a frame).
pub const DEFAULT_MAX_KMS_IN_FLIGHT: usize = 512;

/// Parses a metrics listen address (`--metrics-listen`, `metrics_listen`):
/// a bare port (`9464`) binds 127.0.0.1, so metrics stay on loopback unless
/// an address is written out; `IP:PORT` (`0.0.0.0:9464`, `[::1]:9464`)
/// binds as given. Port 0 picks a free port.
pub fn parse_metrics_listen(value: &str) -> Result<SocketAddr> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = value.parse().map_err(|_| {
            Error::config(format!("metrics_listen {value:?}: not a port (0 to 65535)"))
        })?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value.parse().map_err(|_| {
        Error::config(format!(
            "metrics_listen {value:?}: expected PORT (on 127.0.0.1) or IP:PORT, e.g. 9464 or \
             127.0.0.1:9464"
        ))
    })
}

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_FILE_LEN: usize = 1 << 20;

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
    /// The admission policy: which requests are forwarded.
    pub admission: AdmissionPolicy,
    /// Tunnels (protocol version 2): the allowed targets and their limits.
    /// The default allows none; `serve` adds the region's KMS endpoint.
    pub tunnels: TunnelSettings,
}

impl ProxyConfig {
    /// Default limits and the default (safe) admission policy, listening on `listen`.
    pub fn new(listen: Address) -> Self {
        ProxyConfig {
            listen,
            allow_non_loopback: false,
            limits: ServerLimits::default(),
            admission: AdmissionPolicy::default(),
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

/// What the command line sets on top of the file (`serve`'s flags, parsed):
/// `None` and empty lists leave the file's value. List overrides add to the
/// file's lists; [`Overrides::pcrs`] sets PCRs of the file's single
/// `[policy.expected_pcrs]` image.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// The TOML file to start from.
    pub config: Option<PathBuf>,
    /// Listening address.
    pub listen: Option<String>,
    /// [`ProxyConfig::allow_non_loopback`] (`true` wins over the file).
    pub allow_non_loopback: bool,
    /// [`KmsSettings::endpoint`].
    pub kms_endpoint: Option<String>,
    /// [`KmsSettings::region`].
    pub region: Option<String>,
    /// [`KmsSettings::max_attempts`].
    pub kms_max_attempts: Option<u32>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// [`ServeSettings::metrics_listen`], unparsed
    /// ([`parse_metrics_listen`]).
    pub metrics_listen: Option<String>,
    /// [`ServeSettings::ready_requires_enclave`] (`true` wins over the
    /// file).
    pub ready_requires_enclave: bool,
    /// Added to [`AdmissionPolicy::allowed_keys`].
    pub allow_keys: Vec<String>,
    /// Added to [`AdmissionPolicy::allowed_operations`], by KMS name.
    pub allow_operations: Vec<String>,
    /// PCRs of the single `[policy.expected_pcrs]` image (index, value).
    pub pcrs: Vec<(u8, Vec<u8>)>,
    /// Added to [`AdmissionPolicy::allowed_images`].
    pub allow_images: Vec<AllowedImage>,
    /// nitro-cli JSON files whose images are added.
    pub allow_image_json: Vec<PathBuf>,
    /// Extra attestation root files (PEM or DER).
    pub attestation_roots: Vec<PathBuf>,
    /// [`AdmissionPolicy::max_request_len`].
    pub max_request_len: Option<usize>,
    /// [`AdmissionPolicy::max_document_age`], in milliseconds.
    pub max_document_age_ms: Option<u64>,
    /// [`ServerLimits::max_connections`].
    pub max_connections: Option<usize>,
    /// [`ServerLimits::max_in_flight_per_connection`].
    pub max_in_flight: Option<usize>,
    /// [`ServerLimits::max_kms_in_flight`].
    pub max_kms_in_flight: Option<usize>,
    /// [`ServerLimits::drain_timeout`], in milliseconds.
    pub drain_timeout_ms: Option<u64>,
    /// [`AdmissionPolicy::dangerous_forward_without_recipient`] (`true`
    /// wins over the file).
    pub dangerous_forward_without_recipient: bool,
    /// Added to [`TunnelSettings::allowed`].
    pub tunnels: Vec<TunnelTarget>,
    /// [`TunnelSettings::max_tunnels`].
    pub max_tunnels: Option<usize>,
    /// Hand out no AWS credentials (`true` wins over the file).
    pub no_credentials: bool,
}

/// Everything `serve` needs, from the file and the overrides.
#[derive(Debug)]
pub struct ServeSettings {
    /// The server configuration.
    pub proxy: ProxyConfig,
    /// How to reach KMS.
    pub kms: KmsSettings,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether `GetCredentials` is answered with the AWS chain's credentials.
    pub credentials: bool,
    /// Where the metrics listener (`/metrics`, `/healthz`, `/readyz`)
    /// binds; `None`: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `/readyz` also requires an open enclave connection.
    pub ready_requires_enclave: bool,
}

impl ServeSettings {
    /// Reads the file named by `o.config` (if any) and applies `o` on top.
    pub fn resolve(o: &Overrides) -> Result<ServeSettings> {
        let mut file = match &o.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        if let Some(listen) = &o.listen {
            file.listen = Some(listen.clone());
        }
        let metrics_listen = o
            .metrics_listen
            .as_deref()
            .or(file.metrics_listen.as_deref())
            .map(parse_metrics_listen)
            .transpose()?;
        let l = &mut file.limits;
        l.max_connections = o.max_connections.or(l.max_connections);
        l.max_in_flight_per_connection = o.max_in_flight.or(l.max_in_flight_per_connection);
        l.max_kms_in_flight = o.max_kms_in_flight.or(l.max_kms_in_flight);
        l.drain_timeout_ms = o.drain_timeout_ms.or(l.drain_timeout_ms);
        let k = &mut file.kms;
        k.endpoint = o.kms_endpoint.clone().or(k.endpoint.take());
        k.region = o.region.clone().or(k.region.take());
        k.max_attempts = o.kms_max_attempts.or(k.max_attempts);
        file.tunnel.max_tunnels = o.max_tunnels.or(file.tunnel.max_tunnels);
        let mut tunnels = file.tunnel_settings()?;
        tunnels.allowed.extend(o.tunnels.iter().cloned());

        file.policy.max_document_age_ms = o.max_document_age_ms.or(file.policy.max_document_age_ms);
        let mut admission = file.admission()?;
        if o.dangerous_forward_without_recipient {
            admission.dangerous_forward_without_recipient = true;
        }
        if !o.allow_keys.is_empty() {
            admission
                .allowed_keys
                .get_or_insert_with(Default::default)
                .extend(o.allow_keys.iter().cloned());
        }
        for name in &o.allow_operations {
            let op = parse_operation(name)?;
            admission
                .allowed_operations
                .get_or_insert_with(Default::default)
                .insert(op);
        }
        if !o.pcrs.is_empty() {
            // `--pcr` edits the single image of `[policy.expected_pcrs]`, as
            // it always did (same index: the flag wins).
            if file.policy.allowed_images.is_some() {
                return Err(Error::config(
                    "--pcr sets the PCRs of the single image ([policy.expected_pcrs]), but the \
                     configuration file lists [[policy.allowed_images]]: use --allow-image",
                ));
            }
            let mut pcrs: BTreeMap<u8, Vec<u8>> = file.single_image_pcrs()?;
            pcrs.extend(o.pcrs.iter().cloned());
            admission.allowed_images = vec![AllowedImage::new(pcrs)?];
        }
        admission
            .allowed_images
            .extend(o.allow_images.iter().cloned());
        for path in &o.allow_image_json {
            admission.allowed_images.push(load_image_json(path)?);
        }
        check_images(&admission.allowed_images)?;
        for path in &o.attestation_roots {
            add_roots(&mut admission.verifier, path)?;
        }
        if o.max_request_len.is_some() {
            admission.max_request_len = o.max_request_len;
        }
        Ok(ServeSettings {
            proxy: ProxyConfig {
                listen: file.listen_address()?,
                allow_non_loopback: o.allow_non_loopback
                    || file.allow_non_loopback.unwrap_or(false),
                limits: file.server_limits()?,
                admission,
                tunnels,
            },
            kms: file.kms_settings(),
            log_format: o.log_format.or(file.log_format).unwrap_or_default(),
            credentials: !o.no_credentials && file.credentials.enabled.unwrap_or(true),
            metrics_listen,
            ready_requires_enclave: o.ready_requires_enclave
                || file.ready_requires_enclave.unwrap_or(false),
        })
    }
}

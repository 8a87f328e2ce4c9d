//! Readiness (`GET /readyz`): whether the proxy can do its job now.
//!
//! Ready means:
//!
//! 1. the proxy is not shutting down ([`Metrics::set_draining`]);
//! 2. at least one upstream ([`Upstream`]: the KMS endpoint that broker
//!    mode calls, and the tunnel targets of end-to-end mode) accepts a TCP
//!    connection within [`ReadinessConfig::connect_timeout`] (each upstream
//!    is resolved and tried on demand, all at once; the answer is kept for
//!    [`ReadinessConfig::cache_for`], so frequent probes do not each open
//!    connections); and,
//! 3. with [`ReadinessConfig::requires_enclave`] (`ready_requires_enclave`),
//!    at least one enclave connection is open.
//!
//! Otherwise the answer is the reason, one short line naming the upstreams
//! tried (addresses from the proxy's own configuration, never a peer's
//! text).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Metrics;

/// The default [`ReadinessConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default [`ReadinessConfig::cache_for`].
pub const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(1);

/// A `host:port` the proxy connects to on the enclaves' behalf.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upstream {
    host: String,
    port: u16,
}

impl Upstream {
    /// `host` (a name or an IP literal, without brackets) and `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Upstream {
            host: host.into(),
            port,
        }
    }

    /// The host and port of an `http://` or `https://` URL (the
    /// `--kms-endpoint` form), with the scheme's default port when none is
    /// given; `None` for anything else.
    pub fn from_url(url: &str) -> Option<Self> {
        let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, 443)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, 80)
        } else {
            return None;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        // user:password@ is not part of a KMS endpoint; refuse it rather
        // than keep (and print) a password.
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            match after.strip_prefix(':') {
                Some(port) => (host, port.parse().ok()?),
                None if after.is_empty() => (host, default_port),
                None => return None,
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, default_port),
            }
        };
        (!host.is_empty() && port != 0).then(|| Upstream::new(host, port))
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// `HOST:PORT`, `[IPV6]:PORT`.
impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What `/readyz` checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadinessConfig {
    /// The upstreams; ready needs one of them reachable (none configured:
    /// never ready).
    pub upstreams: Vec<Upstream>,
    /// Time allowed to resolve and connect to one upstream.
    pub connect_timeout: Duration,
    /// How long an upstream check's answer is reused.
    pub cache_for: Duration,
    /// Ready needs at least one open enclave connection.
    pub requires_enclave: bool,
}

impl ReadinessConfig {
    /// The defaults ([`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_CACHE_FOR`], no
    /// enclave required) for `upstreams`.
    pub fn new(upstreams: Vec<Upstream>) -> Self {
        ReadinessConfig {
            upstreams,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            cache_for: DEFAULT_CACHE_FOR,
            requires_enclave: false,
        }
    }
}

/// The readiness check of one proxy.
pub struct Readiness {
    config: ReadinessConfig,
    /// The upstreams checked now: `config.upstreams` until
    /// [`Readiness::set_upstreams`] (a configuration reload) replaces them.
    upstreams: std::sync::RwLock<Vec<Upstream>>,
    metrics: Arc<Metrics>,
    /// The last upstream check: when, and its answer. Locked while a check
    /// runs, so concurrent probes share one.
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Checks `config`, reading open connections from `metrics` (the
    /// proxy's).
    pub fn new(config: ReadinessConfig, metrics: Arc<Metrics>) -> Self {
        Readiness {
            upstreams: std::sync::RwLock::new(config.upstreams.clone()),
            config,
            metrics,
            last: Mutex::new(None),
        }
    }

    /// What is checked (the upstreams as at start).
    pub fn config(&self) -> &ReadinessConfig {
        &self.config
    }

    /// Checks `upstreams` from now on (after a reload changed the tunnel
    /// targets); a cached answer about the old ones is dropped.
    pub async fn set_upstreams(&self, upstreams: Vec<Upstream>) {
        let mut last = self.last.lock().await;
        *self
            .upstreams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = upstreams;
        *last = None;
    }

    /// `Ok` when ready, else why not (one short line).
    pub async fn check(&self) -> Result<(), String> {
        if self.metrics.is_draining() {
            return Err("shutting down".to_owned());
        }
        if self.config.requires_enclave && self.metrics.open_connections() < 1 {
            return Err("no enclave connected".to_owned());
        }
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < self.config.cache_for
        {
            return answer.clone();
        }
        let answer = self.check_upstreams().await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// Tries every upstream at once; `Ok` as soon as one connects.
    async fn check_upstreams(&self) -> Result<(), String> {
        let upstreams = self
            .upstreams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if upstreams.is_empty() {
            return Err("no upstream configured (no KMS endpoint, region or tunnel)".to_owned());
        }
        let timeout = self.config.connect_timeout;
        let mut attempts = JoinSet::new();
        for upstream in &upstreams {
            let upstream = upstream.clone();
            attempts.spawn(async move {
                let target = (upstream.host.clone(), upstream.port);
                let result = tokio::time::timeout(timeout, TcpStream::connect(target)).await;
                (upstream, result.map(|r| r.map(drop)))
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = attempts.join_next().await {
            match done {
                Ok((_, Ok(Ok(())))) => return Ok(()),
                Ok((upstream, Ok(Err(e)))) => failed.push(format!("{upstream}: {e}")),
                Ok((upstream, Err(_))) => failed.push(format!(
                    "{upstream}: no connection within {} ms",
                    timeout.as_millis()
                )),
                Err(e) => failed.push(format!("check failed: {e}")),
            }
        }
        failed.sort();
        Err(format!("upstream unreachable ({})", failed.join(", ")))
    }
}

//! Byte tunnels for end-to-end mode (protocol version 2, issue 10): the
//! enclave speaks TLS to KMS itself and the proxy relays the TLS records
//! without parsing them.
//!
//! A connection whose first message after the handshake is
//! `OpenTunnel{host, port}` becomes a tunnel:
//!
//! 1. the target must be in [`TunnelSettings::allowed`] (exact `host:port`,
//!    host compared case-insensitively); by default that is only the
//!    region's KMS endpoint, `kms.<region>.amazonaws.com:443`
//!    ([`TunnelTarget::region_kms`]);
//! 2. at most [`TunnelSettings::max_tunnels`] tunnels at once (one more is
//!    answered `Busy`);
//! 3. the proxy resolves `host` (DNS on the parent, for each tunnel) and
//!    connects within [`TunnelSettings::connect_timeout`];
//! 4. it answers `TunnelOpened` and copies bytes both ways until either side
//!    closes, nothing moves for [`TunnelSettings::idle_timeout`], or the
//!    proxy shuts down (tunnels then close at the drain deadline).
//!
//! A refusal (not allowed, limit, DNS or connect failure, shutdown) is
//! answered `Error{..}` and the connection closed. Every tunnel, refused or
//! not, ends with one audit line ([`crate::audit::TunnelRecord`]).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use keybroker_common::protocol::{
    Message, ProtocolError, WireError, check_tunnel_host, check_tunnel_port, encode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::audit::{TunnelOutcome, TunnelRecord, peer};
use crate::listener::Io;
use crate::metrics::Metrics;
use crate::refusal::Refusal;

/// An allowed tunnel target: a host name (stored lower-case) or IP literal,
/// and a port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelTarget {
    host: String,
    port: u16,
}

impl TunnelTarget {
    /// A target, checked like the wire's `OpenTunnel`
    /// ([`check_tunnel_host`], port not 0). The host is lower-cased.
    pub fn new(host: &str, port: u16) -> Result<Self, ProtocolError> {
        check_tunnel_host(host)?;
        check_tunnel_port(port)?;
        Ok(TunnelTarget {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The KMS endpoint of `region` on port 443: `kms.<region>.amazonaws.com`
    /// (`.amazonaws.com.cn` for the `cn-` regions), as in the AWS General
    /// Reference, "AWS Key Management Service endpoints and quotas". `None`
    /// if `region` is not a plausible region name.
    pub fn region_kms(region: &str) -> Option<Self> {
        let plausible = !region.is_empty()
            && region.len() <= 32
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !plausible {
            return None;
        }
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Self::new(&format!("kms.{region}.{suffix}"), 443).ok()
    }

    /// The host (lower-case).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether `host:port` as the enclave sent it names this target.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host.eq_ignore_ascii_case(host)
    }
}

/// `HOST:PORT`, `[IPV6]:PORT`.
impl fmt::Display for TunnelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `HOST:PORT` or `[IPV6]:PORT` (the `--tunnel` flag and the
/// `[tunnel] allowed` list).
impl FromStr for TunnelTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("{s:?}: expected HOST:PORT, e.g. kms.us-east-1.amazonaws.com:443");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(usage)?;
            (host, port)
        } else {
            s.rsplit_once(':').ok_or_else(usage)?
        };
        let port: u16 = port.parse().map_err(|_| usage())?;
        TunnelTarget::new(host, port).map_err(|e| format!("{s:?}: {e}"))
    }
}

/// Tunnel limits and the allowlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelSettings {
    /// The targets an enclave may open a tunnel to; empty: none.
    pub allowed: std::collections::BTreeSet<TunnelTarget>,
    /// Tunnels open at once; one more is answered `Error{Busy}`.
    pub max_tunnels: usize,
    /// A tunnel that carries no byte in either direction for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Time allowed for DNS resolution plus the TCP connection to the
    /// target.
    pub connect_timeout: Duration,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        TunnelSettings {
            allowed: Default::default(),
            max_tunnels: 128,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl TunnelSettings {
    /// Whether `host:port` (as sent by the enclave) is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|t| t.matches(host, port))
    }
}

/// What a tunnel needs from the server.
pub(crate) struct TunnelContext {
    pub(crate) connection: u64,
    pub(crate) settings: TunnelSettings,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) drain_timeout: Duration,
}

/// Runs one tunnel on `io` (the enclave connection, just after its
/// `OpenTunnel`); `early` holds bytes the enclave sent after that frame,
/// which belong to the tunnel.
pub(crate) async fn serve(
    mut ctx: TunnelContext,
    mut io: Box<dyn Io>,
    early: Vec<u8>,
    host: String,
    port: u16,
) {
    let started = Instant::now();
    let conn = ctx.connection;
    let mut record = TunnelRecord {
        connection: conn,
        host: &host,
        port,
        to_target: 0,
        from_target: 0,
        duration: Duration::ZERO,
        outcome: TunnelOutcome::Closed,
    };
    let opened = if *ctx.stop.borrow() {
        Err(Refusal::Draining)
    } else if !ctx.settings.allows(&host, port) {
        tracing::info!(conn, host = peer(&host), port, "tunnel target not allowed");
        Err(Refusal::TunnelNotAllowed)
    } else {
        match ctx.slots.clone().try_acquire_owned() {
            Err(_) => Err(Refusal::TunnelLimit {
                max: ctx.settings.max_tunnels,
            }),
            Ok(permit) => match connect(&host, port, ctx.settings.connect_timeout).await {
                Ok(target) => Ok((permit, target)),
                Err(message) => {
                    tracing::info!(
                        conn,
                        host = peer(&host),
                        port,
                        error = peer(&message),
                        "tunnel connect failed"
                    );
                    Err(Refusal::TunnelUnreachable { reason: message })
                }
            },
        }
    };
    let (permit, target) = match opened {
        Ok(pair) => pair,
        Err(refusal) => {
            ctx.metrics.refused(&refusal);
            let error = WireError::from(refusal);
            let code = error.code();
            send_and_close(&mut io, &Message::Error { error }).await;
            record.outcome = TunnelOutcome::Refused(code);
            record.duration = started.elapsed();
            record.emit();
            return;
        }
    };

    let open = ctx.metrics.tunnel_opened();
    let to_target = Arc::new(AtomicU64::new(0));
    let from_target = Arc::new(AtomicU64::new(0));
    let outcome = relay(
        &mut ctx,
        io,
        target,
        early,
        started,
        to_target.clone(),
        from_target.clone(),
    )
    .await;
    drop(open);
    drop(permit);
    record.to_target = to_target.load(Ordering::Relaxed);
    record.from_target = from_target.load(Ordering::Relaxed);
    record.outcome = outcome;
    record.duration = started.elapsed();
    record.emit();
}

/// Resolves `host` (on the parent, now) and connects to the first address
/// that answers, all within `timeout`. The error is for the enclave and the
/// log: it names no peer-supplied text.
async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let attempt = async {
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve the tunnel host: {e}"))?
            .collect();
        let mut last = String::from("the tunnel host resolves to no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the tunnel target did not answer within {} ms",
                timeout.as_millis()
            ))
        })
}

/// Writes one frame and closes, giving up after a second (a peer that does
/// not read).
async fn send_and_close(io: &mut Box<dyn Io>, msg: &Message) {
    if let Ok(frame) = encode(msg) {
        let write = async {
            let _ = io.write_all(&frame).await;
            let _ = io.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// Answers `TunnelOpened`, then copies bytes both ways until the tunnel
/// ends, and says how.
async fn relay(
    ctx: &mut TunnelContext,
    mut io: Box<dyn Io>,
    mut target: TcpStream,
    early: Vec<u8>,
    started: Instant,
    to_target: Arc<AtomicU64>,
    from_target: Arc<AtomicU64>,
) -> TunnelOutcome {
    let opened = match encode(&Message::TunnelOpened) {
        Ok(f) => f,
        Err(_) => return TunnelOutcome::Failed,
    };
    if io.write_all(&opened).await.is_err() || io.flush().await.is_err() {
        return TunnelOutcome::Failed;
    }
    let (to_target_total, from_target_total) = ctx.metrics.tunnel_byte_counters();
    if !early.is_empty() {
        if target.write_all(&early).await.is_err() {
            return TunnelOutcome::Failed;
        }
        let n = u64::try_from(early.len()).unwrap_or(u64::MAX);
        to_target.fetch_add(n, Ordering::Relaxed);
        to_target_total.inc_by(n);
    }
    // Milliseconds since `started` of the last byte read on either side.
    let activity = Arc::new(AtomicU64::new(millis(started.elapsed())));
    let mut enclave = Metered {
        inner: io,
        count: to_target,
        total: to_target_total,
        activity: activity.clone(),
        started,
    };
    let mut target = Metered {
        inner: target,
        count: from_target,
        total: from_target_total,
        activity: activity.clone(),
        started,
    };
    let idle = ctx.settings.idle_timeout;
    let copy = tokio::io::copy_bidirectional(&mut enclave, &mut target);
    tokio::pin!(copy);
    let mut drain_deadline: Option<Instant> = None;
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        tokio::select! {
            done = &mut copy => {
                return match done {
                    Ok(_) => TunnelOutcome::Closed,
                    Err(_) => TunnelOutcome::Failed,
                };
            }
            () = tokio::time::sleep_until(last + idle) => {
                // Traffic may have moved the deadline since it was read.
                let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    return TunnelOutcome::Idle;
                }
            }
            () = stopped(&mut ctx.stop), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + ctx.drain_timeout);
            }
            () = tokio::time::sleep_until(drain_deadline.unwrap_or(far_future)), if drain_deadline.is_some() => {
                return TunnelOutcome::Shutdown;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Completes once the server is stopping (or gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A stream that counts the bytes read from it (for the tunnel's audit line
/// and in the proxy's metrics) and records when the last read happened (for
/// the idle timeout). Writes pass through.
struct Metered<S> {
    inner: S,
    count: Arc<AtomicU64>,
    total: prometheus_client::metrics::counter::Counter,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            let n = u64::try_from(n).unwrap_or(u64::MAX);
            self.count.fetch_add(n, Ordering::Relaxed);
            self.total.inc_by(n);
            self.activity
                .store(millis(self.started.elapsed()), Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_match_case_insensitively() {
        let t: TunnelTarget = "KMS.us-east-1.amazonaws.com:443".parse().unwrap();
        assert_eq!(t.host(), "kms.us-east-1.amazonaws.com");
        assert_eq!(t.to_string(), "kms.us-east-1.amazonaws.com:443");
        assert!(t.matches("kms.US-EAST-1.amazonaws.com", 443));
        assert!(!t.matches("kms.us-east-1.amazonaws.com", 444));
        assert!(!t.matches("kms.us-east-1.amazonaws.com.evil", 443));
        let v6: TunnelTarget = "[::1]:8443".parse().unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 8443));
        assert_eq!(v6.to_string(), "[::1]:8443");
        for bad in [
            "kms.us-east-1.amazonaws.com",
            "kms:0",
            "kms:65536",
            "kms:https",
            ":443",
            "bad host:443",
            "[::1]443",
        ] {
            assert!(bad.parse::<TunnelTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_region_names_its_kms_endpoint() {
        assert_eq!(
            TunnelTarget::region_kms("eu-west-1").unwrap().to_string(),
            "kms.eu-west-1.amazonaws.com:443"
        );
        assert_eq!(
            TunnelTarget::region_kms("cn-north-1").unwrap().to_string(),
            "kms.cn-north-1.amazonaws.com.cn:443"
        );
        assert_eq!(TunnelTarget::region_kms(""), None);
        assert_eq!(TunnelTarget::region_kms("us-east-1.evil.com"), None);
        assert_eq!(TunnelTarget::region_kms("US-EAST-1"), None);
    }

    #[test]
    fn only_listed_targets_are_allowed() {
        let mut s = TunnelSettings::default();
        assert!(!s.allows("kms.us-east-1.amazonaws.com", 443));
        s.allowed
            .insert(TunnelTarget::region_kms("us-east-1").unwrap());
        assert!(s.allows("kms.us-east-1.amazonaws.com", 443));
        assert!(!s.allows("kms.us-east-2.amazonaws.com", 443));
        assert!(!s.allows("kms.us-east-1.amazonaws.com", 80));
    }
}

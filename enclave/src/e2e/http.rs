//! HTTP/1.1 over TLS over parent tunnels, with a keep-alive connection pool.
//!
//! Each connection is a tunnel from [`ParentLink::open_tunnel`], a rustls
//! client session verified against [`super::TrustRoots`] for the endpoint's
//! host name, and a hyper HTTP/1.1 connection. A connection serves one
//! request at a time and goes back to the pool once its response body has
//! been read; callers that find no idle connection open one, so `N`
//! concurrent callers settle on `N` connections and then reuse them (no TLS
//! handshake per request). Idle connections older than the idle timeout, and
//! connections the server closed, are dropped.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::time::Instant;

use super::link::ParentLink;
use crate::Error;

/// Where KMS is: an `https://HOST[:PORT]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsUrl {
    host: String,
    port: u16,
}

impl KmsUrl {
    /// The regional endpoint `https://kms.REGION.amazonaws.com`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a region that is not a DNS label.
    pub fn regional(region: &str) -> Result<Self, Error> {
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::InvalidArgument(format!("invalid region {region:?}")));
        }
        Self::parse(&format!("https://kms.{region}.amazonaws.com"))
    }

    /// Parses `https://HOST[:PORT][/]`: no user info, path, query or
    /// fragment; the host is verified against the server's certificate.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`].
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidArgument(format!("KMS endpoint {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("must be https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() || url.contains('#') {
            return Err(bad("only https://HOST[:PORT] is allowed"));
        }
        let host = authority.host().to_ascii_lowercase();
        ServerName::try_from(host.clone()).map_err(|_| bad("invalid host name"))?;
        Ok(Self {
            host,
            port: authority.port_u16().unwrap_or(443),
        })
    }

    /// The host name (what the certificate must name).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header value.
    pub(crate) fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The region of an AWS KMS endpoint name (`kms.R.amazonaws.com`,
    /// `kms-fips.R.amazonaws.com`, with `.com.cn` too), if it is one.
    pub fn aws_region(&self) -> Option<&str> {
        let rest = self
            .host
            .strip_prefix("kms.")
            .or_else(|| self.host.strip_prefix("kms-fips."))?;
        let region = rest
            .strip_suffix(".amazonaws.com")
            .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
        (!region.is_empty() && !region.contains('.')).then_some(region)
    }
}

impl core::fmt::Display for KmsUrl {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

/// How a request failed to produce a response.
pub(crate) enum SendFailure {
    /// Nothing was sent (no connection could be made, or a pooled one had
    /// closed): sending again cannot repeat an effect.
    NotSent(Error),
    /// A refusal that retrying cannot cure: the server's certificate does
    /// not verify.
    Fatal(Error),
    /// The response body is over the size limit.
    TooLarge,
    /// The connection failed with the request possibly delivered.
    Lost(Error),
}

/// A response read in full.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// The `Date` header (RFC 7231).
    pub(crate) date: Option<SystemTime>,
    pub(crate) body: Bytes,
}

type Sender = SendRequest<Full<Bytes>>;

/// The connection pool of one endpoint.
pub(crate) struct Pool {
    url: KmsUrl,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<Vec<(Sender, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    max_body: usize,
    handshakes: AtomicU64,
}

impl Pool {
    pub(crate) fn new(
        url: KmsUrl,
        tls: std::sync::Arc<rustls::ClientConfig>,
        max_idle: usize,
        idle_timeout: Duration,
        max_body: usize,
    ) -> Result<Self, Error> {
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|_| Error::InvalidArgument(format!("invalid host name {:?}", url.host)))?;
        Ok(Self {
            url,
            server_name,
            tls: tokio_rustls::TlsConnector::from(tls),
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            max_body,
            handshakes: AtomicU64::new(0),
        })
    }

    pub(crate) fn url(&self) -> &KmsUrl {
        &self.url
    }

    /// TLS handshakes completed so far.
    pub(crate) fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(s);
            }
        }
        None
    }

    fn put_back(&self, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < self.idle_timeout);
        if idle.len() < self.max_idle {
            idle.push((s, Instant::now()));
        }
    }

    /// Opens one connection ahead of the first request and keeps it idle
    /// in the pool. A failure is only logged: the first request connects
    /// again and reports it.
    pub(crate) async fn warm_up(&self, link: &dyn ParentLink, timeout: Duration) {
        match self.connect(link, timeout).await {
            Ok(sender) => self.put_back(sender),
            Err(SendFailure::NotSent(e) | SendFailure::Fatal(e) | SendFailure::Lost(e)) => {
                tracing::debug!(error = %e, "KMS connection warm-up failed");
            }
            Err(SendFailure::TooLarge) => {}
        }
    }

    /// A new connection: tunnel, TLS handshake (verified), HTTP/1.1.
    async fn connect(
        &self,
        link: &dyn ParentLink,
        timeout: Duration,
    ) -> Result<Sender, SendFailure> {
        let host = self.url.host.as_str();
        let stream = link
            .open_tunnel(host, self.url.port, timeout)
            .await
            .map_err(SendFailure::NotSent)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => SendFailure::Fatal(Error::Tls {
                        reason: format!("TLS handshake with {host}: {tls}"),
                    }),
                    None => {
                        SendFailure::NotSent(Error::io(format!("TLS handshake with {host}"), e))
                    }
                },
            )?;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| SendFailure::NotSent(http_error("HTTP/1.1 handshake", &e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "KMS connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `request` on a pooled connection (or a new one) and reads the
    /// response within the size limit. The caller bounds the time.
    pub(crate) async fn send(
        &self,
        link: &dyn ParentLink,
        mut request: http::Request<Full<Bytes>>,
        connect_timeout: Duration,
    ) -> Result<HttpResponse, SendFailure> {
        loop {
            let (mut sender, fresh) = match self.take_idle() {
                Some(s) => (s, false),
                None => (self.connect(link, connect_timeout).await?, true),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(SendFailure::NotSent(Error::Unavailable {
                        reason: "KMS connection closed before the request".into(),
                    }));
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return self.read(sender, response).await,
                Err(mut e) => match e.take_message() {
                    // Never written: try another connection.
                    Some(r) if !fresh => request = r,
                    Some(_) => {
                        return Err(SendFailure::NotSent(http_error("send", e.error())));
                    }
                    None => return Err(SendFailure::Lost(http_error("send", e.error()))),
                },
            }
        }
    }

    async fn read(
        &self,
        sender: Sender,
        response: http::Response<hyper::body::Incoming>,
    ) -> Result<HttpResponse, SendFailure> {
        let status = response.status().as_u16();
        let date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(SendFailure::TooLarge);
        }
        let body = match Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(SendFailure::TooLarge);
            }
            Err(e) => {
                return Err(SendFailure::Lost(Error::Unavailable {
                    reason: format!("reading the KMS response: {e}"),
                }));
            }
        };
        self.put_back(sender);
        Ok(HttpResponse { status, date, body })
    }
}

fn http_error(what: &str, e: &hyper::Error) -> Error {
    Error::Unavailable {
        reason: format!("KMS connection, {what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let u = KmsUrl::regional("us-east-1").unwrap();
        assert_eq!(u.to_string(), "https://kms.us-east-1.amazonaws.com");
        assert_eq!((u.host(), u.port()), ("kms.us-east-1.amazonaws.com", 443));
        assert_eq!(u.aws_region(), Some("us-east-1"));
        let f = KmsUrl::parse("https://kms-fips.us-gov-west-1.amazonaws.com/").unwrap();
        assert_eq!(f.aws_region(), Some("us-gov-west-1"));
        let v = KmsUrl::parse("https://vpce-0abc-1234.kms.eu-west-1.vpce.amazonaws.com").unwrap();
        assert_eq!(v.aws_region(), None);
        let l = KmsUrl::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(l.authority(), "127.0.0.1:8443");
        for bad in [
            "http://kms.us-east-1.amazonaws.com",
            "https://user@kms.us-east-1.amazonaws.com",
            "https://kms.us-east-1.amazonaws.com/path",
            "https://kms.us-east-1.amazonaws.com/?q=1",
            "kms.us-east-1.amazonaws.com",
            "https://",
        ] {
            assert!(KmsUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(KmsUrl::regional("US_EAST").is_err());
    }
}

//! The metrics listener (`serve --metrics-listen ADDR`): plain HTTP/1.1
//! over hyper, on loopback by default.
//!
//! - `GET /metrics`: every series of [`Metrics`], Prometheus text format;
//! - `GET /healthz`: `200` with `ok` while the process serves;
//! - `GET /readyz`: `200` with `ready`, or `503` with `not ready: REASON`
//!   ([`Readiness::check`]);
//! - any other path: `404`; another method: `405`.
//!
//! No TLS and no authentication: the listener shows only counts and names
//! (see the [metrics module](super)), and should stay on loopback or on a
//! network only the monitoring system reaches.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Metrics;
use super::ready::Readiness;
use crate::error::{Error, Result};

/// HTTP connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// Time allowed for a request's head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound metrics listener. [`MetricsServer::bind`], then
/// [`MetricsServer::run`] (or spawn it).
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

struct State {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free one). A non-loopback address is
    /// allowed, with a warning in the log.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Result<MetricsServer> {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                address = %addr,
                "the metrics listener is not on loopback: whoever reaches it reads the proxy's \
                 metrics and health"
            );
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                address: addr.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr()?;
        Ok(MetricsServer {
            listener,
            local_addr,
            state: Arc::new(State { metrics, readiness }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the task is dropped (with the runtime, when the proxy
    /// stops).
    pub async fn run(self) {
        tracing::info!(address = %self.local_addr, "metrics listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            // Closed only if the semaphore is, which it never is.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, &request).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics connection failed");
                }
                drop(permit);
            });
        }
    }
}

/// The answer to one request.
async fn answer(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET".to_owned());
    }
    match request.uri().path() {
        "/metrics" => match state.metrics.encode() {
            Ok(body) => {
                let mut response = text(StatusCode::OK, body);
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics".to_owned(),
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok".to_owned()),
        "/readyz" => match state.readiness.check().await {
            Ok(()) => text(StatusCode::OK, "ready".to_owned()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found".to_owned()),
    }
}

/// A `text/plain` response.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

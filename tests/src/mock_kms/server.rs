//! The HTTP side: AWS JSON 1.1 as KMS speaks it.
//!
//! - `POST /` with `X-Amz-Target: TrentService.<Operation>` and
//!   `Content-Type: application/x-amz-json-1.1` (plain `application/json`
//!   is accepted too);
//! - a SigV4 `Authorization` header must be present (as the SDKs always
//!   send one) unless `allow_unsigned` is set; without configured
//!   credentials **the signature is not verified**: any credentials are
//!   accepted; with them ([`super::MockKmsConfig::credentials`]) it is
//!   verified as KMS does ([`super::sigv4`]);
//! - bodies larger than the configured limit (default 1 MiB) are refused
//!   with a `ValidationException` before parsing;
//! - responses are `application/x-amz-json-1.1` with an
//!   `x-amzn-RequestId`; errors are `{"__type": ..., "message": ...}` with
//!   the status KMS uses ([`KmsErrorCode::http_status`]). An unknown or missing target is
//!   `UnknownOperationException` (400, as AWS JSON services answer);
//! - every response carries an RFC 7231 `Date` from the mock's clock (the
//!   system clock shifted by `clock_offset_secs`), from which clients
//!   correct their SigV4 clock skew, as against AWS.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keybroker_common::kms::{KmsError, KmsErrorCode, aws_json};
use serde_json::Value;

use super::ops::Engine;
use super::sigv4::{self, MockKmsCredentials};

/// What the HTTP layer needs.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) engine: Engine,
    pub(crate) max_body_bytes: usize,
    pub(crate) allow_unsigned: bool,
    pub(crate) request_counter: std::sync::atomic::AtomicU64,
    /// Verify SigV4 signatures against these.
    pub(crate) credentials: Option<MockKmsCredentials>,
    /// The region a credential scope must name.
    pub(crate) region: String,
    /// Seconds added to the system clock (negative: behind).
    pub(crate) clock_offset_secs: i64,
}

impl ServerState {
    /// The mock's notion of now: the system clock shifted by
    /// `clock_offset_secs`.
    pub(crate) fn now(&self) -> SystemTime {
        shifted_now(self.clock_offset_secs)
    }
}

/// The system clock shifted by `offset_secs` (saturating at the epoch and
/// far future).
pub(crate) fn shifted_now(offset_secs: i64) -> SystemTime {
    let now = SystemTime::now();
    let by = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        now.checked_add(by).unwrap_or(now)
    } else {
        now.checked_sub(by).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

fn request_id(state: &ServerState) -> String {
    aws_json::request_id(
        state
            .request_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    )
}

fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response {
    text_response(status, body.to_string(), request_id)
}

fn text_response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(aws_json::CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(aws_json::REQUEST_ID_HEADER, v);
    }
    resp
}

fn error_response(e: &KmsError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    text_response(status, aws_json::error_body(e), request_id)
}

/// The single route: every KMS call.
pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = request_id(&state);
    let result = dispatch(&state, &method, &uri, &headers, body).await;
    let mut resp = match result {
        Ok((op, v)) => {
            tracing::info!(request_id = %rid, op, "200");
            json_response(StatusCode::OK, &v, &rid)
        }
        Err((op, e)) => {
            tracing::info!(request_id = %rid, op, status = e.status, code = %e.code, "{}", e.message);
            error_response(&e, &rid)
        }
    };
    // hyper would add a Date from the system clock; this one is the
    // mock's (possibly shifted) clock.
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(state.now())) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

async fn dispatch(
    state: &Arc<ServerState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Value), (String, KmsError)> {
    let unknown = |msg: String| {
        (
            String::new(),
            KmsError::new(KmsErrorCode::UnknownOperation, msg),
        )
    };
    if method != Method::POST || uri.path() != "/" {
        return Err(unknown(format!(
            "keybroker-mock-kms serves only POST / (got {method} {})",
            uri.path()
        )));
    }
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    let op = aws_json::operation_name(target)
        .map_err(|e| (String::new(), e))?
        .to_owned();
    let fail = |e: KmsError| (op.clone(), e);
    // With credentials: everything but the signature now, the signature
    // once the (size-limited) body is read.
    let pending = match &state.credentials {
        Some(creds) => Some(
            sigv4::check_headers(creds, &state.region, method, uri, headers, state.now())
                .map_err(fail)?,
        ),
        None => None,
    };
    if pending.is_none() && !state.allow_unsigned {
        let signed = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "));
        if !signed {
            return Err(fail(sigv4::missing_authentication()));
        }
    }
    let bytes = to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        fail(KmsError::new(
            KmsErrorCode::Validation,
            format!(
                "The request body is larger than keybroker-mock-kms's limit of {} bytes.",
                state.max_body_bytes
            ),
        ))
    })?;
    if let Some(p) = &pending {
        p.verify_body(&bytes).map_err(fail)?;
    }
    let st = Arc::clone(state);
    let op2 = op.clone();
    // Key pair generation (RSA-4096) can take a while: keep it off the
    // async workers.
    let result = tokio::task::spawn_blocking(move || st.engine.handle(&op2, &bytes))
        .await
        .map_err(|_| {
            fail(KmsError::new(
                KmsErrorCode::KmsInternal,
                "the request handler failed",
            ))
        })?;
    result.map(|v| (op.clone(), v)).map_err(fail)
}

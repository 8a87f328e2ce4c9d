//! The HTTP side: AWS JSON 1.1 as KMS speaks it.
//!
//! - `POST /` with `X-Amz-Target: TrentService.<Operation>` and
//!   `Content-Type: application/x-amz-json-1.1` (plain `application/json`
//!   is accepted too);
//! - a SigV4 `Authorization` header must be present (as the SDKs always
//!   send one) unless `allow_unsigned` is set; **the signature is not
//!   verified**: any credentials are accepted;
//! - bodies larger than the configured limit (default 1 MiB) are refused
//!   with a `ValidationException` before parsing;
//! - responses are `application/x-amz-json-1.1` with an
//!   `x-amzn-RequestId`; errors are `{"__type": ..., "message": ...}` with
//!   the status KMS uses ([`KmsError::new`]). An unknown or missing target is
//!   `UnknownOperationException` (400, as AWS JSON services answer).

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keybroker_common::kms::{KmsError, aws_json};
use serde_json::Value;

use super::ops::Engine;

/// What the HTTP layer needs.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) engine: Engine,
    pub(crate) max_body_bytes: usize,
    pub(crate) allow_unsigned: bool,
    pub(crate) request_counter: std::sync::atomic::AtomicU64,
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
    match result {
        Ok((op, v)) => {
            tracing::info!(request_id = %rid, op, "200");
            json_response(StatusCode::OK, &v, &rid)
        }
        Err((op, e)) => {
            tracing::info!(request_id = %rid, op, status = e.status, code = %e.code, "{}", e.message);
            error_response(&e, &rid)
        }
    }
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
            KmsError::new("UnknownOperationException", msg),
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
    if !state.allow_unsigned {
        let signed = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "));
        if !signed {
            return Err(fail(KmsError::new(
                "MissingAuthenticationTokenException",
                "Request is missing Authentication Token",
            )));
        }
    }
    let bytes = to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        fail(KmsError::new(
            "ValidationException",
            format!(
                "The request body is larger than keybroker-mock-kms's limit of {} bytes.",
                state.max_body_bytes
            ),
        ))
    })?;
    let st = Arc::clone(state);
    let op2 = op.clone();
    // Key pair generation (RSA-4096) can take a while: keep it off the
    // async workers.
    let result = tokio::task::spawn_blocking(move || st.engine.handle(&op2, &bytes))
        .await
        .map_err(|_| {
            fail(KmsError::new(
                "KMSInternalException",
                "the request handler failed",
            ))
        })?;
    result.map(|v| (op.clone(), v)).map_err(fail)
}

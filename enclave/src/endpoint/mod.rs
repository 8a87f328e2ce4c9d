//! A KMS-compatible HTTP endpoint inside the enclave, so that unmodified
//! AWS SDKs (Rust `aws-sdk-kms`, Python `boto3`, the AWS CLI) get attested
//! KMS by pointing their endpoint URL at it.
//!
//! It speaks the AWS JSON 1.1 protocol of KMS (`POST /`,
//! `X-Amz-Target: TrentService.<Operation>`, [`aws_json`]) and answers each
//! operation as KMS would:
//!
//! - `GenerateDataKey`, `Decrypt`, `GenerateDataKeyPair`, `GenerateRandom`,
//!   `DeriveSharedSecret`: the endpoint attaches the enclave's attested `Recipient` itself, sends
//!   the call through the [`Client`] and the parent proxy, decrypts the
//!   `CiphertextForRecipient` inside the enclave and answers with
//!   `Plaintext` / `PrivateKeyPlaintext` / `SharedSecret`, exactly the response KMS gives a
//!   call without `Recipient`. A request that already carries a `Recipient`
//!   (an app doing its own attestation) is relayed unchanged.
//! - `GenerateDataKeyWithoutPlaintext`,
//!   `GenerateDataKeyPairWithoutPlaintext`, `DescribeKey`: relayed as is.
//! - Every other operation is refused with `UnsupportedOperationException`
//!   and a message that says why (`Encrypt` would send plaintext through
//!   the untrusted parent instance).
//!
//! Errors reach the SDK with KMS's `__type`, message and HTTP status
//! ([`Error::to_kms_error`]): a relayed KMS error is the original one, so
//! SDK retries and error handling behave as against KMS.
//!
//! Requests need not be signed: the enclave is the trust boundary and the
//! credentials live with the parent proxy. SDK requests are signed anyway
//! (SigV4 `Authorization` header); the signature is ignored.
//!
//! The endpoint listens on loopback TCP (a non-loopback address is refused
//! unless explicitly allowed, [`bind_tcp`]) or on a Unix socket
//! ([`bind_unix`]). Inside a Nitro Enclave the loopback interface starts
//! down; bring it up (`ip link set lo up`, or [`ServerBuilder::loopback_up`])
//! or use the Unix socket. [`KmsEndpoint::server`] builds a server with
//! both, run as another user ([`RunAs`]) until a shutdown signal
//! ([`server`]).
//!
//! Response bodies that carry plaintext are built in zeroizing buffers
//! allocated once at their final size (their base64 fields too), and wiped
//! when the HTTP stack drops them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keybroker_common::kms::{
    DecryptResponse, DeriveSharedSecretResponse, GenerateDataKeyPairResponse,
    GenerateDataKeyResponse, KmsError, KmsErrorCode, KmsRequest, Operation, aws_json,
};
use serde::Serialize;
use tokio::net::{TcpListener, UnixListener};
use zeroize::Zeroizing;

use crate::{Client, Error};

pub mod privileges;
pub mod server;

pub use privileges::RunAs;
pub use server::{BoundServer, ServerBuilder};

use crate::telemetry::EndpointStats;

/// Default limit on a request body. The largest legitimate KMS request the
/// endpoint relays is one carrying an app's own `Recipient` (an attestation
/// document of up to 256 KiB, base64-encoded).
pub const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;

/// The endpoint: a [`Client`] behind the KMS protocol. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KmsEndpoint {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    max_body_bytes: usize,
    requests: AtomicU64,
    stats: Arc<EndpointStats>,
}

/// One answer of the endpoint: HTTP status and JSON body. The body may hold
/// plaintext key material and is zeroized on drop.
pub struct EndpointResponse {
    /// HTTP status (200, or the status of the KMS error).
    pub status: u16,
    body: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for EndpointResponse {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "EndpointResponse {{ status: {}, body: [{} bytes] }}",
            self.status,
            self.body.len()
        )
    }
}

impl EndpointResponse {
    /// The JSON body (a KMS response, or `{"__type", "message"}`).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn error(e: &KmsError) -> Self {
        Self {
            status: e.status,
            body: Zeroizing::new(aws_json::error_body(e).into_bytes()),
        }
    }
}

impl KmsEndpoint {
    /// An endpoint answering through `client`, with the default body limit.
    pub fn new(client: Client) -> Self {
        Self::with_max_body_bytes(client, DEFAULT_MAX_BODY_BYTES)
    }

    /// An endpoint refusing request bodies over `max_body_bytes`.
    pub fn with_max_body_bytes(client: Client, max_body_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                max_body_bytes,
                requests: AtomicU64::new(0),
                stats: Arc::default(),
            }),
        }
    }

    /// Answers one KMS call given its `X-Amz-Target` value and JSON body:
    /// the protocol-independent core of the HTTP handler.
    pub async fn call(&self, target: Option<&str>, body: &[u8]) -> EndpointResponse {
        let reply = match self.dispatch(target, body).await {
            Ok(body) => EndpointResponse { status: 200, body },
            Err(e) => EndpointResponse::error(&e),
        };
        self.inner.stats.record(target, reply.status);
        reply
    }

    /// The requests answered so far, by operation and outcome (for the
    /// enclave's metrics report, [`crate::telemetry::Reporter::endpoint`]).
    pub fn stats(&self) -> Arc<EndpointStats> {
        self.inner.stats.clone()
    }

    async fn dispatch(
        &self,
        target: Option<&str>,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let name = aws_json::operation_name(target)?;
        let op = Operation::from_name(name).ok_or_else(|| unsupported(name))?;
        let request = KmsRequest::from_json(op, body).map_err(|e| {
            KmsError::new(
                KmsErrorCode::Serialization,
                format!("cannot parse the request body: {e}"),
            )
        })?;
        // Operations without plaintext, and requests that carry an app's own
        // Recipient (the app decrypts CiphertextForRecipient), go as they are.
        if !op.returns_plaintext() || request.recipient().is_some() {
            return self.relay(request).await;
        }
        let client = &self.inner.client;
        let kms = |e: Error| e.to_kms_error();
        match request {
            KmsRequest::GenerateDataKey(req) => {
                let k = client.generate_data_key(req).await.map_err(kms)?;
                to_json(&GenerateDataKeyResponse::from(k))
            }
            KmsRequest::Decrypt(req) => {
                let d = client.decrypt(req).await.map_err(kms)?;
                to_json(&DecryptResponse::from(d))
            }
            KmsRequest::GenerateDataKeyPair(req) => {
                let p = client.generate_data_key_pair(req).await.map_err(kms)?;
                to_json(&GenerateDataKeyPairResponse::from(p))
            }
            KmsRequest::GenerateRandom(req) => {
                let bytes = client.generate_random(req).await.map_err(kms)?;
                to_json(&crate::client::random_response(bytes))
            }
            KmsRequest::DeriveSharedSecret(req) => {
                let d = client.derive_shared_secret(req).await.map_err(kms)?;
                to_json(&DeriveSharedSecretResponse::from(d))
            }
            // `returns_plaintext` holds for exactly the five above.
            other => self.relay(other).await,
        }
    }

    /// Sends `request` unchanged and answers with KMS's response.
    async fn relay(&self, request: KmsRequest) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let response = self
            .inner
            .client
            .send_raw(request)
            .await
            .map_err(|e| e.to_kms_error())?;
        response.to_json().map_err(|_| serialize_error())
    }

    /// A server for this endpoint: listeners, user, shutdown ([`server`]).
    pub fn server(&self) -> ServerBuilder {
        ServerBuilder::new(self.clone())
    }

    /// The axum router: every path and method goes to one handler, which
    /// answers anything but `POST /` with `UnknownOperationException`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handle_http)
            .with_state(self.clone())
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then finishes
    /// the requests in flight.
    ///
    /// # Errors
    /// [`Error::Io`] if the listener fails.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.serve_on(listener, shutdown).await
    }

    /// [`KmsEndpoint::serve_tcp`] on a Unix socket.
    ///
    /// # Errors
    /// [`Error::Io`] if the listener fails.
    pub async fn serve_unix(
        &self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.serve_on(listener, shutdown).await
    }

    async fn serve_on<L>(
        &self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error>
    where
        L: axum::serve::Listener,
        L::Addr: core::fmt::Debug,
    {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::io("serve the KMS endpoint", e))
    }
}

/// Binds the endpoint's TCP listener. Only loopback addresses unless
/// `allow_non_loopback`: the endpoint hands out plaintext keys to whoever
/// can reach it, so it must not be reachable from outside the enclave.
///
/// # Errors
/// [`Error::InvalidArgument`] for a non-loopback address that is not
/// allowed; [`Error::Io`] if binding fails.
pub async fn bind_tcp(addr: SocketAddr, allow_non_loopback: bool) -> Result<TcpListener, Error> {
    if !addr.ip().is_loopback() && !allow_non_loopback {
        return Err(Error::InvalidArgument(format!(
            "refusing to serve plaintext keys on non-loopback address {addr} \
             (pass --allow-non-loopback if the enclave's network really is private)"
        )));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("bind {addr}"), e))
}

/// Binds the endpoint's Unix socket at `path`, replacing a stale socket left
/// by an earlier run (but never another kind of file).
///
/// # Errors
/// [`Error::InvalidArgument`] if `path` exists and is not a socket;
/// [`Error::Io`] if binding fails.
pub fn bind_unix(path: &Path) -> Result<UnixListener, Error> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove stale socket {}", path.display()), e))?;
    }
    UnixListener::bind(path).map_err(|e| Error::io(format!("bind {}", path.display()), e))
}

/// The reason an operation is not available inside the enclave.
fn unsupported(name: &str) -> KmsError {
    let why = match name {
        "Encrypt" => {
            "Encrypt would send the plaintext through the untrusted parent instance. \
             Generate a data key (GenerateDataKey) and encrypt inside the enclave \
             (keybroker_enclave::envelope does this)"
        }
        "ReEncrypt" | "DeriveSharedSecret" => {
            "it is not brokered by Keybroker; call it from outside the enclave"
        }
        _ => {
            "Keybroker brokers only GenerateDataKey, GenerateDataKeyWithoutPlaintext, \
             Decrypt, GenerateDataKeyPair, GenerateDataKeyPairWithoutPlaintext, \
             GenerateRandom and DescribeKey; manage keys from outside the enclave"
        }
    };
    KmsError::new(
        KmsErrorCode::UnsupportedOperation,
        format!("{name} is not available through the Keybroker enclave endpoint: {why}."),
    )
}

/// Serializes a response into a zeroizing buffer allocated once at its
/// final size (a growing buffer would leave copies of a plaintext, say an
/// RSA-4096 private key, in freed memory); the base64 of plaintext fields is
/// built in zeroizing buffers too (`SecretBytes`'s `Serialize`).
fn to_json<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    keybroker_common::secret::to_json_zeroizing(value, false).map_err(|_| serialize_error())
}

fn serialize_error() -> KmsError {
    KmsError::new(
        KmsErrorCode::KmsInternal,
        "keybroker enclave: cannot serialize the response",
    )
}

/// The single HTTP route.
async fn handle_http(
    State(endpoint): State<KmsEndpoint>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = aws_json::request_id(endpoint.inner.requests.fetch_add(1, Ordering::Relaxed));
    let reply = if method != Method::POST || uri.path() != "/" {
        EndpointResponse::error(&KmsError::new(
            KmsErrorCode::UnknownOperation,
            format!(
                "the Keybroker enclave endpoint serves only POST / (got {method} {})",
                uri.path()
            ),
        ))
    } else {
        match to_bytes(body, endpoint.inner.max_body_bytes).await {
            Ok(bytes) => {
                let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
                endpoint.call(target, &bytes).await
            }
            Err(_) => EndpointResponse::error(&KmsError::new(
                KmsErrorCode::Validation,
                format!(
                    "the request body is larger than the endpoint's limit of {} bytes",
                    endpoint.inner.max_body_bytes
                ),
            )),
        }
    };
    tracing::debug!(%request_id, status = reply.status, "KMS endpoint request");
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The body is wiped when hyper drops the last reference to it.
    let body = Body::from(bytes::Bytes::from_owner(reply.body));
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(aws_json::CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(aws_json::REQUEST_ID_HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_is_refused_with_a_reason() {
        let e = unsupported("Encrypt");
        assert_eq!(e.code, "UnsupportedOperationException");
        assert_eq!(e.status, 400);
        assert!(e.message.contains("untrusted parent"), "{}", e.message);
        assert!(unsupported("CreateKey").message.contains("GenerateDataKey"));
    }
}

//! End-to-end mode with AWS's stock `vsock-proxy` on the parent instead of
//! `keybroker-proxy`.
//!
//! `vsock-proxy` (from aws-nitro-enclaves-cli) listens on one vsock port and
//! relays every connection to one fixed `host:port` it was started with; it
//! knows no framing. So this link needs two of them:
//!
//! - one to the KMS endpoint (`vsock-proxy 8000 kms.REGION.amazonaws.com 443`):
//!   [`ParentLink::open_tunnel`] connects to it, whatever host it is asked
//!   for. The TLS session still verifies the configured endpoint's name, so
//!   a `vsock-proxy` pointed elsewhere fails the handshake ([`Error::Tls`]);
//! - one to the instance metadata service (`vsock-proxy 8002 169.254.169.254
//!   80`, with that address in `vsock-proxy.yaml`'s allowlist): the enclave
//!   fetches the instance role's credentials itself with IMDSv2 (a `PUT` for
//!   a session token, then the role name, then its credentials), over plain
//!   HTTP as every EC2 SDK does.
//!
//! Trust: the same as with `keybroker-proxy` in e2e mode. The parent relays
//! TLS it cannot read, and IMDS answers come from the parent too: like the
//! credentials `keybroker-proxy` hands over, they only decide whose account
//! signs, and key pinning makes another account's keys useless. IMDS answers
//! are bounded ([`imds::MAX_RESPONSE_LEN`]) and decoded by
//! [`keybroker_common::imds`]; the credentials are zeroized and never logged.
//!
//! What this gives up against `keybroker-proxy`: no tunnel audit lines or
//! limits on the parent, no broker mode for a migrating fleet, and the
//! parent's DNS answer is fixed when `vsock-proxy` resolves the name.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use keybroker_common::address::Address;
use keybroker_common::imds;
use keybroker_common::secret::SecretString;
use zeroize::Zeroizing;

use super::credentials::AwsCredentials;
use super::link::{BoxFuture, ParentLink};
use crate::Error;
use crate::parent::within;
use crate::transport::{self, BoxStream};

/// Lifetime asked for the IMDSv2 session token. One token serves one fetch.
const IMDS_TOKEN_TTL_SECS: &str = "60";

/// A [`ParentLink`] over two stock `vsock-proxy` relays on the parent: one to
/// the KMS endpoint and one to IMDS (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct VsockProxyLink {
    kms: Address,
    imds: Address,
}

impl VsockProxyLink {
    /// The link whose tunnels go to the relay at `kms` and whose credentials
    /// come from IMDS through the relay at `imds`.
    pub fn new(kms: Address, imds: Address) -> Self {
        Self { kms, imds }
    }
}

impl ParentLink for VsockProxyLink {
    fn open_tunnel<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<BoxStream, Error>> {
        // The relay's target was fixed when it started; TLS checks that it
        // is the configured endpoint.
        let what = format!("the KMS vsock-proxy at {}", self.kms);
        Box::pin(within(timeout, what, async {
            transport::connect(&self.kms)
                .await
                .map_err(|e| Error::Unavailable {
                    reason: e.to_string(),
                })
        }))
    }

    fn credentials(&self, timeout: Duration) -> BoxFuture<'_, Result<AwsCredentials, Error>> {
        let what = format!("IMDS through {}", self.imds);
        Box::pin(within(timeout, what, imds_credentials(&self.imds)))
    }
}

/// An IMDS answer that is not what IMDS sends.
fn bad_imds(why: impl core::fmt::Display) -> Error {
    Error::Unavailable {
        reason: format!("IMDS: {why}"),
    }
}

/// The instance role's credentials by IMDSv2, on one keep-alive connection
/// through the relay at `imds`.
async fn imds_credentials(imds: &Address) -> Result<AwsCredentials, Error> {
    let stream = transport::connect(imds)
        .await
        .map_err(|e| Error::Unavailable {
            reason: e.to_string(),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bad_imds)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let token = imds_get(
            &mut sender,
            http::Method::PUT,
            imds::TOKEN_PATH,
            (imds::TOKEN_TTL_HEADER, IMDS_TOKEN_TTL_SECS),
        )
        .await?;
        let token = SecretString::new(
            String::from_utf8(token.to_vec()).map_err(|_| bad_imds("token is not text"))?,
        );
        let auth = (imds::TOKEN_HEADER, token.expose());
        let roles = imds_get(&mut sender, http::Method::GET, imds::CREDENTIALS_PATH, auth).await?;
        let role = imds::role_name(&roles).map_err(bad_imds)?;
        let path = format!("{}{role}", imds::CREDENTIALS_PATH);
        let document = imds_get(&mut sender, http::Method::GET, &path, auth).await?;
        imds::parse_credentials(&document)
            .map(AwsCredentials::from)
            .map_err(bad_imds)
    }
    .await;
    driver.abort();
    result
}

/// One IMDS request; the body of a 200 answer (zeroized when dropped: it may
/// hold the token or the credentials).
async fn imds_get(
    sender: &mut SendRequest<Empty<Bytes>>,
    method: http::Method,
    path: &str,
    header: (&str, &str),
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, imds::HOST)
        .header(header.0, header.1)
        .body(Empty::new())
        .map_err(bad_imds)?;
    sender.ready().await.map_err(bad_imds)?;
    let response = sender.send_request(request).await.map_err(bad_imds)?;
    let status = response.status();
    // Collected into one zeroizing buffer sized for the largest answer, so
    // that growing it leaves no copies behind (hyper's own read buffers are
    // beyond reach).
    let mut body = Limited::new(response.into_body(), imds::MAX_RESPONSE_LEN);
    let mut out = Zeroizing::new(Vec::with_capacity(imds::MAX_RESPONSE_LEN));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| bad_imds(format!("{path}: {e}")))?;
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
        }
    }
    if status != http::StatusCode::OK {
        return Err(bad_imds(format!("{path}: HTTP {}", status.as_u16())));
    }
    Ok(out)
}

impl From<imds::RoleCredentials> for AwsCredentials {
    fn from(c: imds::RoleCredentials) -> Self {
        AwsCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.token,
            expiration: c.expiration,
        }
    }
}

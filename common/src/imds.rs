//! The EC2 instance metadata service (IMDSv2) answers that carry an
//! instance role's credentials: what an enclave reads when it fetches them
//! itself through a stock `vsock-proxy` relay to IMDS (the enclave's
//! `e2e::vsock_proxy`, which does the HTTP).
//!
//! The exchange, as the AWS SDKs make it (EC2 User Guide, "Use the Instance
//! Metadata Service to access instance metadata" and "Retrieve security
//! credentials from instance metadata"):
//! 1. `PUT` [`TOKEN_PATH`] with [`TOKEN_TTL_HEADER`]: a session token (text);
//! 2. `GET` [`CREDENTIALS_PATH`] with [`TOKEN_HEADER`]: the role's name
//!    ([`role_name`]);
//! 3. `GET` [`CREDENTIALS_PATH`]`ROLE`: a JSON document with `Code`,
//!    `AccessKeyId`, `SecretAccessKey`, `Token` and `Expiration` (RFC 3339)
//!    ([`parse_credentials`]).
//!
//! The answers come from the parent instance and are untrusted: they are
//! bounded ([`MAX_RESPONSE_LEN`]) and only decide whose account signs (the
//! enclave's key pinning makes another account's keys useless).

use std::time::SystemTime;

use crate::secret::SecretString;

/// Largest IMDS answer read (a credentials document is about 1.5 KiB).
pub const MAX_RESPONSE_LEN: usize = 16 * 1024;
/// Where the session token is issued (`PUT`).
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The header that asks for a token lifetime, in seconds.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header that carries the token on the other requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The listing of the instance role; the role's credentials are below it.
pub const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// The `Host` of IMDS requests.
pub const HOST: &str = "169.254.169.254";

/// An IMDS answer that is not what IMDS sends.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    /// The role listing names no role, or not one path segment.
    #[error("no instance role (or an invalid role name); attach an instance profile")]
    NoRole,
    /// The credentials document does not parse.
    #[error("malformed credentials document: {0}")]
    Malformed(&'static str),
    /// The document's `Code` is not `Success`.
    #[error("the credentials document is not a Success")]
    NotSuccess,
}

/// The instance role's credentials (secrets zeroized on drop, redacted in
/// `Debug`).
#[derive(Debug)]
pub struct RoleCredentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: SecretString,
    /// `Token`: the session token.
    pub token: Option<SecretString>,
    /// `Expiration`.
    pub expiration: Option<SystemTime>,
}

/// The role named by the listing at [`CREDENTIALS_PATH`]: its first line,
/// which must be one path segment of IAM name characters and not `.` or
/// `..` (so it cannot point the next request elsewhere).
///
/// # Errors
/// [`ImdsError::NoRole`].
pub fn role_name(listing: &[u8]) -> Result<&str, ImdsError> {
    let text = std::str::from_utf8(listing).map_err(|_| ImdsError::NoRole)?;
    let role = text.lines().next().unwrap_or_default().trim();
    // IAM's role-name characters, and not `.` or `..` (a path step).
    let valid = !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        && !role.bytes().all(|b| b == b'.');
    if valid {
        Ok(role)
    } else {
        Err(ImdsError::NoRole)
    }
}

/// Parses the credentials document of [`CREDENTIALS_PATH`]`ROLE`.
///
/// # Errors
/// [`ImdsError::Malformed`] (not JSON, a field missing, an `Expiration`
/// that is not RFC 3339), [`ImdsError::NotSuccess`].
pub fn parse_credentials(document: &[u8]) -> Result<RoleCredentials, ImdsError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Document {
        code: Option<String>,
        access_key_id: String,
        secret_access_key: SecretString,
        token: Option<SecretString>,
        expiration: Option<String>,
    }
    if document.len() > MAX_RESPONSE_LEN {
        return Err(ImdsError::Malformed("over the size limit"));
    }
    let d: Document =
        serde_json::from_slice(document).map_err(|_| ImdsError::Malformed("not the JSON shape"))?;
    if d.code.as_deref().is_some_and(|c| c != "Success") {
        return Err(ImdsError::NotSuccess);
    }
    let expiration = d
        .expiration
        .as_deref()
        .map(|e| {
            time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|_| ImdsError::Malformed("Expiration is not RFC 3339"))
        })
        .transpose()?;
    Ok(RoleCredentials {
        access_key_id: d.access_key_id,
        secret_access_key: d.secret_access_key,
        token: d.token,
        expiration,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn credentials_documents_parse_as_imds_writes_them() {
        // The shape of the EC2 User Guide's example document.
        let c = parse_credentials(
            br#"{"Code":"Success","LastUpdated":"2026-12-01T10:00:00Z","Type":"AWS-HMAC",
                "AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s3cr3t","Token":"tok",
                "Expiration":"2026-12-01T16:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.secret_access_key.expose(), "s3cr3t");
        assert_eq!(c.token.as_ref().map(SecretString::expose), Some("tok"));
        // 2026-12-01T16:00:00Z
        let want = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_140_800);
        assert_eq!(c.expiration, Some(want));
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let cases: [(&[u8], ImdsError); 4] = [
            (
                br#"{"Code":"Failure","AccessKeyId":"a","SecretAccessKey":"s"}"#,
                ImdsError::NotSuccess,
            ),
            (
                br#"{"AccessKeyId":"a","SecretAccessKey":"s","Expiration":"soon"}"#,
                ImdsError::Malformed("Expiration is not RFC 3339"),
            ),
            (
                br#"{"Code":"Success","AccessKeyId":"a"}"#,
                ImdsError::Malformed("not the JSON shape"),
            ),
            (b"<html>", ImdsError::Malformed("not the JSON shape")),
        ];
        for (bad, want) in cases {
            assert_eq!(parse_credentials(bad).unwrap_err(), want);
        }
        let big = vec![b' '; MAX_RESPONSE_LEN + 1];
        assert!(parse_credentials(&big).is_err());
    }

    #[test]
    fn the_role_is_the_first_line_and_one_path_segment() {
        assert_eq!(role_name(b"app-role\n").unwrap(), "app-role");
        assert_eq!(
            role_name(b"a.b@c_d+e=f,g\nsecond").unwrap(),
            "a.b@c_d+e=f,g"
        );
        for bad in [
            &b""[..],
            b"\n",
            b"../../latest/user-data",
            b"a/b",
            b"a?x=1",
            b"..",
            b".",
        ] {
            assert_eq!(role_name(bad), Err(ImdsError::NoRole), "{bad:?}");
        }
    }
}

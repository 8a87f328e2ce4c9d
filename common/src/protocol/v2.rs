//! Payloads and checks of protocol version 2: credentials and tunnels.
//!
//! Version 2 lets the enclave speak TLS to KMS itself (end-to-end mode,
//! issue 10): it asks the parent proxy for AWS credentials
//! ([`super::Message::GetCredentials`]) and opens byte tunnels to allowed
//! `host:port` targets ([`super::Message::OpenTunnel`]). Everything here is
//! checked on encode and decode alike, so a peer can neither send nor be
//! sent a host name that could forge a log line or a credential that could
//! inject an HTTP header.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::ProtocolError;
use crate::secret::SecretString;

/// Longest tunnel host name, in bytes: the DNS limit on a name in text form
/// without the trailing dot (RFC 1035 section 2.3.4, RFC 2181 section 11).
pub const MAX_HOST_LEN: usize = 253;

/// Longest DNS label, in bytes (RFC 1035 section 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Longest access key id, in bytes (IAM `AccessKeyIdType`: 16..=128).
pub const MAX_ACCESS_KEY_ID_LEN: usize = 128;

/// Shortest access key id, in bytes (IAM `AccessKeyIdType`).
pub const MIN_ACCESS_KEY_ID_LEN: usize = 16;

/// Longest secret access key, in bytes (AWS issues 40; the margin is for
/// other issuers such as a mock KMS).
pub const MAX_SECRET_ACCESS_KEY_LEN: usize = 256;

/// Longest session token, in bytes. STS does not bound its tokens; real ones
/// are about 1 to 3 KiB, so 16 KiB leaves ample room while bounding what a
/// proxy can make the enclave hold.
pub const MAX_SESSION_TOKEN_LEN: usize = 16 * 1024;

/// AWS credentials as the parent proxy hands them to the enclave
/// ([`super::Message::Credentials`]).
///
/// The parent is untrusted: these only decide whose account signs the
/// enclave's KMS requests (key pinning in the enclave makes another
/// account's keys useless). The secret parts are [`SecretString`]s; `Debug`
/// shows only the access key id.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsCredentialsWire {
    /// The access key id (`AKIA...`, `ASIA...`); not secret.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// The session token of temporary credentials (an instance role's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<SecretString>,
    /// When the credentials expire, in milliseconds since the Unix epoch
    /// (parent clock); `None` for long-term keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_ms: Option<u64>,
}

impl fmt::Debug for AwsCredentialsWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentialsWire")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("expiration_ms", &self.expiration_ms)
            .finish()
    }
}

impl AwsCredentialsWire {
    /// Checks the limits: an access key id of 16..=128 ASCII letters and
    /// digits, and a secret and token of visible ASCII within
    /// [`MAX_SECRET_ACCESS_KEY_LEN`] and [`MAX_SESSION_TOKEN_LEN`] (they end
    /// up in HTTP headers and the SigV4 string to sign, so a control
    /// character or a line break is refused here rather than there).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let id = &self.access_key_id;
        if !(MIN_ACCESS_KEY_ID_LEN..=MAX_ACCESS_KEY_ID_LEN).contains(&id.len()) {
            return Err(invalid("access_key_id", "length is not 16..=128 bytes"));
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid("access_key_id", "not ASCII letters and digits"));
        }
        check_token(
            "secret_access_key",
            self.secret_access_key.expose(),
            MAX_SECRET_ACCESS_KEY_LEN,
        )?;
        if let Some(token) = &self.session_token {
            check_token("session_token", token.expose(), MAX_SESSION_TOKEN_LEN)?;
        }
        Ok(())
    }
}

/// Non-empty visible ASCII of at most `max` bytes. The error never quotes
/// the value.
fn check_token(field: &'static str, value: &str, max: usize) -> Result<(), ProtocolError> {
    if value.is_empty() {
        return Err(invalid(field, "empty"));
    }
    if value.len() > max {
        return Err(invalid(field, "too long"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, "not visible ASCII"));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::InvalidField { field, reason }
}

/// Checks the host of an [`super::Message::OpenTunnel`]: an IPv4 or IPv6
/// literal (`192.0.2.1`, `2001:db8::1`, no brackets), or a DNS name of at
/// most [`MAX_HOST_LEN`] bytes whose labels are 1..=63 letters, digits and
/// inner hyphens (RFC 1123 section 2.1) and whose last label is not all
/// digits (RFC 3696 section 2, so `127.1` or `2130706433` cannot pass as a
/// name and be read as an address by the resolver). No trailing dot, no
/// underscore, nothing else: a name that passes cannot carry a line break,
/// a space or a quote into a log line.
pub fn check_tunnel_host(host: &str) -> Result<(), ProtocolError> {
    if host.is_empty() {
        return Err(invalid("host", "empty"));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(invalid("host", "longer than 253 bytes"));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let mut last = "";
    for label in host.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(invalid(
                "host",
                "a DNS label is empty or longer than 63 bytes",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid(
                "host",
                "not a DNS name (letters, digits, hyphens and dots) or an IP address",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("host", "a DNS label starts or ends with a hyphen"));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("host", "the last DNS label is all digits"));
    }
    Ok(())
}

/// Checks the port of an [`super::Message::OpenTunnel`]: not 0.
pub fn check_tunnel_port(port: u16) -> Result<(), ProtocolError> {
    if port == 0 {
        return Err(invalid("port", "port 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_literals_are_accepted() {
        for host in [
            "kms.us-east-1.amazonaws.com",
            "KMS-FIPS.us-east-1.AmazonAWS.com",
            "localhost",
            "a",
            "127.0.0.1",
            "::1",
            "2001:db8::1",
            "vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com",
            "1a.example",
        ] {
            assert_eq!(check_tunnel_host(host), Ok(()), "{host}");
        }
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), MAX_HOST_LEN);
        assert_eq!(check_tunnel_host(&longest), Ok(()));
    }

    #[test]
    fn bad_hosts_are_refused() {
        let too_long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        for host in [
            "",
            too_long.as_str(),
            &"a".repeat(64),
            "kms.amazonaws.com.",
            ".kms",
            "a..b",
            "kms\n2026-01-01 INFO forged audit line",
            "kms amazonaws com",
            "kms\"x",
            "under_score.example",
            "-lead.example",
            "trail-.example",
            "[::1]",
            "127.1",
            "2130706433",
            "0x7f.0.0.1",
            "k\u{e9}ms.example",
            "host:443",
        ] {
            let e = check_tunnel_host(host).unwrap_err();
            assert!(
                matches!(e, ProtocolError::InvalidField { field: "host", .. }),
                "{host:?}: {e}"
            );
        }
        assert!(check_tunnel_port(0).is_err());
        assert_eq!(check_tunnel_port(443), Ok(()));
    }

    fn creds() -> AwsCredentialsWire {
        AwsCredentialsWire {
            access_key_id: "ASIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: SecretString::from_str_copy(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            session_token: Some(SecretString::from_str_copy("IQoJb3JpZ2luX2VjE+/=")),
            expiration_ms: Some(1_800_000_000_000),
        }
    }

    #[test]
    fn credentials_are_checked_and_redacted() {
        let c = creds();
        assert_eq!(c.validate(), Ok(()));
        let shown = format!("{c:?}");
        assert!(shown.contains("ASIAIOSFODNN7EXAMPLE"), "{shown}");
        assert!(
            !shown.contains("wJalr") && !shown.contains("IQoJ"),
            "{shown}"
        );

        let mut bad = creds();
        bad.access_key_id = "short".into();
        assert!(bad.validate().is_err());
        let mut bad = creds();
        bad.access_key_id = "ASIA/OSFODNN7EXAMPLE".into();
        assert!(bad.validate().is_err());
        let mut bad = creds();
        bad.secret_access_key = SecretString::from_str_copy("line\r\nX-Injected: 1");
        let e = bad.validate().unwrap_err();
        assert!(!e.to_string().contains("Injected"), "{e}");
        let mut bad = creds();
        bad.secret_access_key = SecretString::default();
        assert!(bad.validate().is_err());
        let mut bad = creds();
        bad.session_token = Some(SecretString::new("t".repeat(MAX_SESSION_TOKEN_LEN + 1)));
        assert!(bad.validate().is_err());
        let mut ok = creds();
        ok.session_token = Some(SecretString::new("t".repeat(MAX_SESSION_TOKEN_LEN)));
        ok.expiration_ms = None;
        assert_eq!(ok.validate(), Ok(()));
    }
}

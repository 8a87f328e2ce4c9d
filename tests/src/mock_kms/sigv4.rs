//! SigV4 verification of requests, as KMS does it, for a mock configured
//! with [`MockKmsCredentials`].
//!
//! The algorithm is AWS Signature Version 4 ("Create a signed AWS API
//! request", AWS IAM User Guide): the canonical request (method, canonical
//! URI, canonical query string, the headers named in `SignedHeaders` with
//! trimmed values, `SignedHeaders`, hex SHA-256 of the body), the string to
//! sign (`AWS4-HMAC-SHA256`, `X-Amz-Date`, the credential scope, the hash of
//! the canonical request), and HMAC-SHA256 under the key derived from the
//! secret, the scope date, region, service (`kms`) and `aws4_request`.
//!
//! **Why it is implemented here (aws-lc-rs HMAC) and not with `aws-sigv4`:**
//! `aws-sigv4` signs; it decides itself which headers to sign (all but a
//! deny list) and adds `X-Amz-Date` and `X-Amz-Security-Token` itself. A
//! verifier must instead rebuild the canonical request from exactly the
//! headers the *client* listed in `SignedHeaders` (boto3, the Rust SDK and
//! curl list different sets), in the order listed. That is a few dozen
//! lines of string building; the cryptography is aws-lc-rs's HMAC, whose
//! [`hmac::verify`] compares the signature in constant time. The tests
//! cross-check against `aws-sigv4`, `aws-sdk-kms`, boto3 and the example of
//! the AWS documentation.
//!
//! Refusals use KMS's codes and wording (HTTP 400):
//! `MissingAuthenticationTokenException` (no `Authorization` header),
//! `IncompleteSignatureException` (no `Credential`, `SignedHeaders` or
//! `Signature`, or no / a malformed `X-Amz-Date`),
//! `UnrecognizedClientException` (unknown access key id, or a missing or
//! wrong session token), `InvalidSignatureException` (bad scope, a date more
//! than 5 minutes from the mock's clock — "Signature expired" /
//! "Signature not yet current" — or a signature that does not match).
//! Presigned (query-string) requests are not supported: KMS clients do not
//! send them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use axum::http::{HeaderMap, Method, Uri, header};
use keybroker_common::kms::{KmsError, KmsErrorCode};
use zeroize::Zeroizing;

/// The only algorithm KMS accepts.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name in the credential scope.
pub const SERVICE: &str = "kms";
/// How far `X-Amz-Date` may be from the server's clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The one identity a verifying mock knows. Debug redacts the secret and
/// the session token; both are zeroized on drop.
#[derive(Clone)]
pub struct MockKmsCredentials {
    /// Access key id (`AKIA...` / `ASIA...`).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// Session token: when set, requests must carry it in
    /// `X-Amz-Security-Token`; when unset, requests must not carry one.
    pub session_token: Option<Zeroizing<String>>,
}

impl MockKmsCredentials {
    /// Credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }
}

impl std::fmt::Debug for MockKmsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKmsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn incomplete(msg: impl Into<String>) -> KmsError {
    KmsError::new(KmsErrorCode::IncompleteSignature, msg)
}

fn invalid(msg: impl Into<String>) -> KmsError {
    KmsError::new(KmsErrorCode::InvalidSignature, msg)
}

fn unrecognized() -> KmsError {
    KmsError::new(
        KmsErrorCode::UnrecognizedClient,
        "The security token included in the request is invalid.",
    )
}

/// KMS's message for a signature that does not match.
const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// `MissingAuthenticationTokenException`, as for a request without
/// `Authorization`.
pub(crate) fn missing_authentication() -> KmsError {
    KmsError::new(
        KmsErrorCode::MissingAuthenticationToken,
        "Request is missing Authentication Token",
    )
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
struct AuthorizationHeader<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<AuthorizationHeader<'_>, KmsError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            incomplete(format!(
                "Unsupported authorization type: only {ALGORITHM} is accepted."
            ))
        })?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed_headers = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    for (name, v) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed_headers),
    ] {
        if v.is_none_or(str::is_empty) {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) if missing.is_empty() => {
            Ok(AuthorizationHeader {
                credential,
                signed_headers,
                signature,
            })
        }
        _ => Err(incomplete(missing.join(" "))),
    }
}

/// `YYYYMMDDTHHMMSSZ` (ISO 8601 basic format, UTC) as Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Unix seconds as `YYYYMMDDTHHMMSSZ`.
pub(crate) fn format_amz_date(unix_secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_secs) {
        Ok(t) => format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix_secs.to_string(),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters kept,
/// everything else `%XX` (upper case); `/` kept only if `keep_slash`.
fn uri_encode(input: &[u8], keep_slash: bool, out: &mut String) {
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn percent_decode(input: &str) -> Vec<u8> {
    let b = input.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The canonical URI of a non-S3 service: the path as received (already
/// encoded once by the client), encoded once more.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len());
    uri_encode(path.as_bytes(), true, &mut out);
    out
}

/// Parameters decoded, re-encoded strictly, sorted by name then value.
fn canonical_query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut ke, mut ve) = (String::new(), String::new());
            uri_encode(&percent_decode(k), false, &mut ke);
            uri_encode(&percent_decode(v), false, &mut ve);
            (ke, ve)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header's values for the canonical request: each trimmed, runs of
/// spaces collapsed to one, joined with `,`.
fn canonical_header_value(headers: &HeaderMap, name: &str) -> String {
    let mut values = Vec::new();
    for v in headers.get_all(name) {
        let text = String::from_utf8_lossy(v.as_bytes());
        values.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    values.join(",")
}

/// A request whose headers passed: the signature is checked once the body
/// has been read ([`Pending::verify_body`]).
pub(crate) struct Pending {
    /// The canonical request without its last line (the payload hash).
    canonical_head: String,
    amz_date: String,
    scope: String,
    signing_key: hmac::Key,
    signature: Vec<u8>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Checks everything but the signature itself, which needs the body:
/// the `Authorization` header, the access key id and session token, the
/// credential scope (`DATE/REGION/kms/aws4_request`, `REGION` = `region`),
/// and `X-Amz-Date` against `now` (within [`MAX_CLOCK_SKEW`]).
pub(crate) fn check_headers(
    credentials: &MockKmsCredentials,
    region: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Pending, KmsError> {
    check_headers_for(SERVICE, credentials, region, method, uri, headers, now)
}

/// [`check_headers`] for any service name (the unit tests sign for
/// `service`).
fn check_headers_for(
    service: &str,
    credentials: &MockKmsCredentials,
    region: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Pending, KmsError> {
    let mut auth_values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(auth) = auth_values.next() else {
        return Err(missing_authentication());
    };
    if auth_values.next().is_some() {
        return Err(incomplete("Only one Authorization header is allowed."));
    }
    let auth = auth
        .to_str()
        .map_err(|_| incomplete("The Authorization header is not ASCII."))?;
    let auth = parse_authorization(auth)?;

    let scope_parts: Vec<&str> = auth.credential.split('/').collect();
    let [key_id, scope_date, scope_region, scope_service, terminator] = scope_parts[..] else {
        return Err(incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{}'",
            auth.credential
        )));
    };
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        })?;
    let request_secs = parse_amz_date(amz_date).ok_or_else(|| {
        incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
        ))
    })?;

    if key_id != credentials.access_key_id {
        return Err(unrecognized());
    }
    let sent_token = headers.get("x-amz-security-token").map(|v| v.as_bytes());
    match (&credentials.session_token, sent_token) {
        (None, None) => {}
        (Some(want), Some(got))
            if aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), got).is_ok() => {}
        _ => return Err(unrecognized()),
    }

    if terminator != "aws4_request" {
        return Err(invalid(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    if scope_service != service {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{service}'. "
        )));
    }
    if scope_region != region {
        return Err(invalid("Credential should be scoped to a valid region. "));
    }
    let http_day = amz_date.get(..8).unwrap_or_default();
    if scope_date != http_day {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope_date}' != '{http_day}', from '{amz_date}'."
        )));
    }

    let now_secs = unix_secs(now);
    let skew = i64::try_from(MAX_CLOCK_SKEW.as_secs()).unwrap_or(i64::MAX);
    if request_secs < now_secs.saturating_sub(skew) {
        return Err(invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format_amz_date(now_secs.saturating_sub(skew)),
            format_amz_date(now_secs)
        )));
    }
    if request_secs > now_secs.saturating_add(skew) {
        return Err(invalid(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            format_amz_date(now_secs.saturating_add(skew)),
            format_amz_date(now_secs)
        )));
    }

    let names: Vec<&str> = auth.signed_headers.split(';').collect();
    if !names.iter().any(|n| n.eq_ignore_ascii_case("host")) {
        return Err(invalid(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let mut canonical_head = format!(
        "{method}\n{}\n{}\n",
        canonical_uri(uri.path()),
        canonical_query(uri.query())
    );
    for name in &names {
        canonical_head.push_str(name);
        canonical_head.push(':');
        canonical_head.push_str(&canonical_header_value(headers, name));
        canonical_head.push('\n');
    }
    canonical_head.push('\n');
    canonical_head.push_str(auth.signed_headers);
    canonical_head.push('\n');

    let signature = hex::decode(auth.signature).map_err(|_| invalid(MISMATCH))?;
    let k_secret = Zeroizing::new(format!("AWS4{}", credentials.secret_access_key.as_str()));
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, k_secret.as_bytes());
    for part in [scope_date, scope_region, scope_service, terminator] {
        let tag = hmac::sign(&key, part.as_bytes());
        key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    Ok(Pending {
        canonical_head,
        amz_date: amz_date.to_owned(),
        scope: format!("{scope_date}/{scope_region}/{scope_service}/{terminator}"),
        signing_key: key,
        signature,
    })
}

impl Pending {
    /// Checks the signature over the canonical request with `body`'s hash,
    /// in constant time.
    pub(crate) fn verify_body(&self, body: &[u8]) -> Result<(), KmsError> {
        let canonical = format!(
            "{}{}",
            self.canonical_head,
            hex::encode(digest::digest(&digest::SHA256, body))
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        hmac::verify(
            &self.signing_key,
            string_to_sign.as_bytes(),
            &self.signature,
        )
        .map_err(|_| {
            // The canonical request may hold the session token: no secret
            // goes to the log, only what a developer needs to compare.
            tracing::debug!(
                canonical_request = %redact_token(&canonical),
                string_to_sign = %string_to_sign,
                "SigV4 signature mismatch"
            );
            invalid(MISMATCH)
        })
    }
}

fn redact_token(canonical: &str) -> String {
    canonical
        .lines()
        .map(|l| {
            if l.starts_with("x-amz-security-token:") {
                "x-amz-security-token:<redacted>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn at(amz_date: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(parse_amz_date(amz_date).unwrap()).unwrap())
    }

    /// Request shapes that exercise the canonical request (path, query
    /// order and unreserved characters, header-value trimming, a body, a
    /// session token), each signed at 2015-08-30T12:36:00Z for service
    /// `service` in `us-east-1` by an independent signer, the `aws-sigv4`
    /// crate (what the AWS SDKs use), with the AWS documentation's example
    /// credentials `AKIDEXAMPLE`.
    const SUITE: &[(&str, &str)] = &[
        (
            "get-vanilla",
            "GET / HTTP/1.1\nHost:example.amazonaws.com\n\n",
        ),
        (
            "get-query-order-and-key-case",
            "GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\n\n",
        ),
        (
            "get-query-unreserved",
            "GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com\n\n",
        ),
        (
            "get-header-value-trim",
            "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"\n\n",
        ),
        (
            "post-form-body",
            "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\n\nParam1=value1",
        ),
        (
            "get-with-session-token",
            "GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Security-Token:session-token-of-the-example\n\n",
        ),
    ];

    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// Parses a request shape and signs it with `aws-sigv4`.
    fn suite_request(text: &str) -> (Method, Uri, HeaderMap, Vec<u8>) {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let (head, body) = text.split_once("\n\n").unwrap();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap().split(' ');
        let method: Method = first.next().unwrap().parse().unwrap();
        let uri: Uri = first.next().unwrap().parse().unwrap();
        let mut pairs: Vec<(String, String)> = lines
            .map(|l| l.split_once(':').unwrap())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let token = pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-security-token"))
            .map(|(_, v)| v.clone());
        // The token is signed from the identity, as the SDKs send it.
        pairs.retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-security-token"));
        let identity = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            EXAMPLE_SECRET,
            token,
            None,
            "test",
        )
        .into();
        let full_uri = format!("https://example.amazonaws.com{uri}");
        let signable = SignableRequest::new(
            method.as_str(),
            &full_uri,
            pairs.iter().map(|(k, v)| (k.as_str(), v.trim_start())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .unwrap();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("service")
            .time(at("20150830T123600Z"))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut all: Vec<(String, String)> = pairs;
        for (name, value) in instructions.headers() {
            all.push((name.to_owned(), value.to_owned()));
        }
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        (method, uri, headers(&refs), body.as_bytes().to_vec())
    }

    fn suite_credentials(headers: &HeaderMap) -> MockKmsCredentials {
        MockKmsCredentials::new(
            "AKIDEXAMPLE",
            EXAMPLE_SECRET,
            headers
                .get("x-amz-security-token")
                .map(|t| t.to_str().unwrap().to_owned()),
        )
    }

    #[test]
    fn requests_signed_by_aws_sigv4_verify_and_tampered_ones_do_not() {
        let now = at("20150830T123600Z");
        for (name, text) in SUITE {
            let (method, uri, h, body) = suite_request(text);
            let creds = suite_credentials(&h);
            let pending = check_headers_for("service", &creds, "us-east-1", &method, &uri, &h, now)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            pending
                .verify_body(&body)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let mut tampered = body.clone();
            tampered.push(b' ');
            assert_eq!(
                pending.verify_body(&tampered).unwrap_err().code,
                "InvalidSignatureException",
                "{name}"
            );
            // Another secret: the signature no longer matches.
            let wrong = MockKmsCredentials {
                secret_access_key: Zeroizing::new("wrong".into()),
                ..creds.clone()
            };
            let e = check_headers_for("service", &wrong, "us-east-1", &method, &uri, &h, now)
                .unwrap()
                .verify_body(&body)
                .unwrap_err();
            assert_eq!(e.code, "InvalidSignatureException", "{name}");
            assert_eq!(e.message, MISMATCH);
            // The mock itself is KMS: a `service` scope is refused.
            let e = check_headers(&creds, "us-east-1", &method, &uri, &h, now).unwrap_err();
            assert!(
                e.message.contains("correct service: 'kms'"),
                "{name}: {e:?}"
            );
        }
    }

    #[test]
    fn identity_scope_and_time_are_checked_before_the_signature() {
        let (method, uri, h, _) = suite_request(SUITE[0].1);
        let creds = suite_credentials(&h);
        let now = at("20150830T123600Z");
        let check = |c: &MockKmsCredentials, region: &str, h: &HeaderMap, now: SystemTime| {
            check_headers_for("service", c, region, &method, &uri, h, now).map(|_| ())
        };
        let code = |r: Result<(), KmsError>| r.unwrap_err().code;

        let other_key = MockKmsCredentials {
            access_key_id: "AKIDOTHER".into(),
            ..creds.clone()
        };
        assert_eq!(
            code(check(&other_key, "us-east-1", &h, now)),
            "UnrecognizedClientException"
        );
        // A token is configured but not sent; or sent but not configured.
        let with_token = MockKmsCredentials::new("AKIDEXAMPLE", "x", Some("tok".into()));
        assert_eq!(
            code(check(&with_token, "us-east-1", &h, now)),
            "UnrecognizedClientException"
        );
        let (m2, u2, h2, _) = suite_request(SUITE[5].1);
        let no_token = MockKmsCredentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        );
        let e =
            check_headers_for("service", &no_token, "us-east-1", &m2, &u2, &h2, now).unwrap_err();
        assert_eq!(e.code, "UnrecognizedClientException");
        let wrong_token = MockKmsCredentials::new("AKIDEXAMPLE", "x", Some("6e86".into()));
        let e = check_headers_for("service", &wrong_token, "us-east-1", &m2, &u2, &h2, now)
            .unwrap_err();
        assert_eq!(e.code, "UnrecognizedClientException");

        let e = check(&creds, "eu-west-1", &h, now).unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        assert!(e.message.contains("valid region"), "{}", e.message);

        // Five minutes either way is fine; a second more is not.
        check(&creds, "us-east-1", &h, now + MAX_CLOCK_SKEW).unwrap();
        check(&creds, "us-east-1", &h, now - MAX_CLOCK_SKEW).unwrap();
        let e = check(
            &creds,
            "us-east-1",
            &h,
            now + MAX_CLOCK_SKEW + Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        assert_eq!(
            e.message,
            "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z (20150830T124101Z - 5 min.)"
        );
        let e = check(
            &creds,
            "us-east-1",
            &h,
            now - MAX_CLOCK_SKEW - Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        assert!(
            e.message.starts_with("Signature not yet current: "),
            "{}",
            e.message
        );

        let mut no_date = h.clone();
        no_date.remove("x-amz-date");
        assert_eq!(
            code(check(&creds, "us-east-1", &no_date, now)),
            "IncompleteSignatureException"
        );
        let mut other_day = h.clone();
        other_day.insert("x-amz-date", "20150831T000000Z".parse().unwrap());
        let e = check(&creds, "us-east-1", &other_day, at("20150831T000000Z")).unwrap_err();
        assert!(
            e.message.contains("Date in Credential scope"),
            "{}",
            e.message
        );
        let mut no_auth = h.clone();
        no_auth.remove("authorization");
        assert_eq!(
            code(check(&creds, "us-east-1", &no_auth, now)),
            "MissingAuthenticationTokenException"
        );
        let mut host_unsigned = h.clone();
        host_unsigned.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            code(check(&creds, "us-east-1", &host_unsigned, now)),
            "InvalidSignatureException"
        );
        let mut four_parts = h.clone();
        four_parts.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aws4_request, SignedHeaders=host, Signature=00"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            code(check(&creds, "us-east-1", &four_parts, now)),
            "IncompleteSignatureException"
        );
    }

    #[test]
    fn authorization_parts_are_required() {
        let e = parse_authorization("AWS4-HMAC-SHA256 Credential=a/b/c/d/e").unwrap_err();
        assert_eq!(e.code, "IncompleteSignatureException");
        assert!(e.message.contains("'Signature'"), "{}", e.message);
        assert!(e.message.contains("'SignedHeaders'"), "{}", e.message);
        assert!(!e.message.contains("'Credential'"), "{}", e.message);
        assert_eq!(
            parse_authorization("Bearer x").unwrap_err().code,
            "IncompleteSignatureException"
        );
        assert_eq!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=k/d/r/s/t, SignedHeaders=host, Signature=00"
            )
            .unwrap(),
            AuthorizationHeader {
                credential: "k/d/r/s/t",
                signed_headers: "host",
                signature: "00"
            }
        );
    }

    #[test]
    fn amz_dates_round_trip_and_bad_ones_are_refused() {
        let s = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(s, 1_440_938_160);
        assert_eq!(format_amz_date(s), "20150830T123600Z");
        for bad in [
            "20150830T123600",
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "2015083OT123600Z",
            "+0150830T123600Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn canonical_uri_and_query_follow_sigv4() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a b/%41"), "/a%20b/%2541");
        assert_eq!(canonical_query(None), "");
        assert_eq!(canonical_query(Some("b=2&a=%7e&a=1&c")), "a=1&a=~&b=2&c=");
    }

    #[test]
    fn header_values_are_trimmed_and_joined() {
        let h = headers(&[("x-a", "  one   two "), ("x-a", "three")]);
        assert_eq!(canonical_header_value(&h, "x-a"), "one two,three");
        assert_eq!(canonical_header_value(&h, "x-missing"), "");
        // A SignedHeaders entry that is no header name is just absent.
        assert_eq!(canonical_header_value(&h, "bad name\n"), "");
    }

    #[test]
    fn debug_redacts_the_secrets() {
        let c = MockKmsCredentials::new("AKID", "very-secret", Some("token-secret".into()));
        let d = format!("{c:?}");
        assert!(d.contains("AKID"));
        assert!(
            !d.contains("very-secret") && !d.contains("token-secret"),
            "{d}"
        );
    }
}

//! The mock KMS's end-to-end-mode features: HTTPS under its test CA, SigV4
//! verification with KMS's error codes, and a clock that can run off, shown
//! in the `Date` header of every response.
//!
//! The clients are the real ones: `aws-sdk-kms` (over HTTPS trusting the test
//! CA through `aws-smithy-http-client`'s trust store), requests signed by
//! `aws-sigv4` and sent raw (to sign at another time or tamper after
//! signing), tokio-rustls for the handshake itself, and boto3.
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kms::config::Credentials;
use aws_sdk_kms::error::{ProvideErrorMetadata as _, SdkError};
use aws_sdk_kms::types::DataKeySpec;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use keybroker_harness::mock_kms::{
    MockKms, MockKmsConfig, MockKmsCredentials, MockKmsTls, RunningMockKms,
};
use keybroker_test_support::sdk::{config as sdk_config, credentials, error_of as code};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEY_ID: &str = "AKIAMOCKKMSAUTHTEST0";
const SECRET: &str = "mock-kms-auth-test-secret";

fn creds() -> MockKmsCredentials {
    MockKmsCredentials::new(KEY_ID, SECRET, None)
}

fn tls_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

async fn start(config: MockKmsConfig) -> RunningMockKms {
    support::spawn(config).await
}

/// A verifying mock, over HTTPS if `tls` is given.
async fn verifying(
    tls: Option<MockKmsTls>,
    credentials: MockKmsCredentials,
    clock_offset_secs: i64,
) -> RunningMockKms {
    start(MockKmsConfig {
        tls,
        credentials: Some(credentials),
        clock_offset_secs,
        ..MockKmsConfig::default()
    })
    .await
}

/// An `aws-sdk-kms` client (no retries) for `endpoint`, trusting only the
/// PEM `ca` if given.
fn sdk(
    endpoint: &str,
    ca: Option<&str>,
    key_id: &str,
    secret: &str,
    token: Option<&str>,
) -> aws_sdk_kms::Client {
    let creds = credentials(key_id, secret, token, "mock-kms-auth-test");
    let mut conf = sdk_config(endpoint, creds)
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled());
    if let Some(ca) = ca {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(
                TlsContext::builder()
                    .with_trust_store(TrustStore::empty().with_pem_certificate(ca.as_bytes()))
                    .build()
                    .unwrap(),
            )
            .build_https();
        conf = conf.http_client(http);
    }
    aws_sdk_kms::Client::from_conf(conf.build())
}

/// A KMS request signed by `aws-sigv4` at `time` for `addr`: the request
/// head (without Host, Content-Length, Connection, which
/// [`raw_exchange`] adds) and the body.
fn signed_request(
    addr: SocketAddr,
    op: &str,
    body: &str,
    key_id: &str,
    secret: &str,
    time: SystemTime,
) -> String {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = Credentials::new(key_id, secret, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kms")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let target = format!("TrentService.{op}");
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", target.as_str()),
    ];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{addr}/"),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
    let mut head = String::from("POST / HTTP/1.1");
    for (k, v) in headers.iter().copied().chain(instructions.headers()) {
        head.push_str(&format!("\r\n{k}: {v}"));
    }
    head
}

/// A raw HTTP/1.1 exchange: (status, lower-cased headers, body).
async fn raw_exchange(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (resp_head, resp_body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = resp_head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let json = serde_json::from_str(resp_body).unwrap_or_else(|e| panic!("{e}: {resp_body}"));
    (status, headers, json)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

/// Seconds between an HTTP `Date` and `now` shifted by `offset_secs`.
fn date_error_secs(date: &str, offset_secs: i64) -> i64 {
    let got = httpdate::parse_http_date(date).unwrap();
    let got = i64::try_from(
        got.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    (got - (now + offset_secs)).abs()
}

#[tokio::test]
async fn sdk_over_https_trusting_the_test_ca_with_the_right_credentials_gets_data_keys() {
    let dir = tls_dir();
    let tls =
        MockKmsTls::load_or_create(dir.path(), &["kms.us-east-1.amazonaws.com".into()]).unwrap();
    let ca = tls.ca_pem().to_owned();
    let kms = verifying(Some(tls), creds(), 0).await;
    assert!(
        kms.endpoint().starts_with("https://127.0.0.1:"),
        "{}",
        kms.endpoint()
    );
    assert_eq!(kms.ca_pem_path(), Some(dir.path().join("ca.pem").as_path()));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        ca
    );

    let c = sdk(&kms.endpoint(), Some(&ca), KEY_ID, SECRET, None);
    let key = support::created(c.create_key()).await.key_id;
    let r = c
        .generate_data_key()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    assert_eq!(r.plaintext().unwrap().as_ref().len(), 32);
    let d = c
        .decrypt()
        .ciphertext_blob(r.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext(), r.plaintext());
    kms.shutdown().await;
}

#[tokio::test]
async fn sdk_trusting_another_ca_fails_the_tls_handshake() {
    let (dir, other) = (tls_dir(), tls_dir());
    let tls = MockKmsTls::load_or_create(dir.path(), &[]).unwrap();
    let other_ca = MockKmsTls::load_or_create(other.path(), &[]).unwrap();
    assert_ne!(tls.ca_pem(), other_ca.ca_pem());
    let kms = verifying(Some(tls), creds(), 0).await;
    let c = sdk(
        &kms.endpoint(),
        Some(other_ca.ca_pem()),
        KEY_ID,
        SECRET,
        None,
    );
    let e = c.list_keys().send().await.unwrap_err();
    assert!(matches!(e, SdkError::DispatchFailure(_)), "{e:?}");
    let chain = format!("{:?}", e);
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    kms.shutdown().await;
}

/// A rustls client handshake to `addr` under `sni`, trusting `ca_pem`.
async fn handshake(addr: SocketAddr, ca_pem: &str, sni: &str) -> Result<(), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.shutdown().await
}

#[tokio::test]
async fn the_server_certificate_names_localhost_loopback_and_the_extra_names_only() {
    let dir = tls_dir();
    let names = [
        "kms.us-east-1.amazonaws.com".to_owned(),
        "kms.local".to_owned(),
    ];
    let tls = MockKmsTls::load_or_create(dir.path(), &names).unwrap();
    assert_eq!(
        tls.server_names(),
        [
            "localhost",
            "127.0.0.1",
            "kms.us-east-1.amazonaws.com",
            "kms.local"
        ]
    );
    let ca = tls.ca_pem().to_owned();
    let kms = start(MockKmsConfig {
        tls: Some(tls),
        ..MockKmsConfig::default()
    })
    .await;
    for sni in [
        "localhost",
        "127.0.0.1",
        "kms.us-east-1.amazonaws.com",
        "kms.local",
    ] {
        handshake(kms.addr(), &ca, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
    }
    let e = handshake(kms.addr(), &ca, "kms.eu-west-1.amazonaws.com")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not valid for name"), "{e}");
    kms.shutdown().await;
}

#[tokio::test]
async fn the_test_ca_is_reused_across_restarts_and_replaced_when_broken() {
    let dir = tls_dir();
    let first = MockKmsTls::load_or_create(dir.path(), &[]).unwrap();
    let pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let key_mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(key_mode, 0o600);
    // The CA's subject says what it is.
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert!(
        der.windows(b"Keybroker mock KMS test CA".len())
            .any(|w| w == b"Keybroker mock KMS test CA")
    );

    // A restart with other names keeps the CA (clients keep trusting it)
    // and issues a server certificate for the new names under it.
    let second =
        MockKmsTls::load_or_create(dir.path(), &["kms.us-east-1.amazonaws.com".into()]).unwrap();
    assert_eq!(second.ca_pem(), first.ca_pem());
    let kms = start(MockKmsConfig {
        tls: Some(second),
        ..MockKmsConfig::default()
    })
    .await;
    handshake(kms.addr(), first.ca_pem(), "kms.us-east-1.amazonaws.com")
        .await
        .unwrap();
    kms.shutdown().await;

    // A bad name is refused, and leaves the CA alone.
    for bad in ["not a name", "", "kms..example"] {
        let e = MockKmsTls::load_or_create(dir.path(), &[bad.into()]).unwrap_err();
        assert!(
            matches!(e, keybroker_harness::Error::Config(_)),
            "{bad}: {e}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        first.ca_pem()
    );

    // A key that does not match the certificate: a new CA.
    let other = tls_dir();
    MockKmsTls::load_or_create(other.path(), &[]).unwrap();
    std::fs::copy(
        other.path().join("ca-key.pem"),
        dir.path().join("ca-key.pem"),
    )
    .unwrap();
    let third = MockKmsTls::load_or_create(dir.path(), &[]).unwrap();
    assert_ne!(third.ca_pem(), first.ca_pem());
    // Garbage: a new CA too.
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let fourth = MockKmsTls::load_or_create(dir.path(), &[]).unwrap();
    assert_ne!(fourth.ca_pem(), third.ca_pem());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        fourth.ca_pem()
    );
    // A valid CA of someone else's making (another subject): replaced.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else's CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), foreign.pem()).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).unwrap();
    let fifth = MockKmsTls::load_or_create(dir.path(), &[]).unwrap();
    let der = CertificateDer::from_pem_slice(fifth.ca_pem().as_bytes()).unwrap();
    assert!(
        der.windows(b"Keybroker mock KMS test CA".len())
            .any(|w| w == b"Keybroker mock KMS test CA")
    );
}

#[tokio::test]
async fn wrong_secret_is_invalid_signature_and_unknown_key_is_unrecognized_client() {
    let kms = verifying(None, creds(), 0).await;
    let (c, m) = code(
        sdk(&kms.endpoint(), None, KEY_ID, "not-the-secret", None)
            .list_keys()
            .send()
            .await,
    );
    assert_eq!(c, "InvalidSignatureException");
    assert!(m.contains("signature we calculated does not match"), "{m}");
    let (c, m) = code(
        sdk(&kms.endpoint(), None, "AKIAUNKNOWNKEY000000", SECRET, None)
            .list_keys()
            .send()
            .await,
    );
    assert_eq!(c, "UnrecognizedClientException");
    assert_eq!(m, "The security token included in the request is invalid.");
    // The right ones pass.
    sdk(&kms.endpoint(), None, KEY_ID, SECRET, None)
        .list_keys()
        .send()
        .await
        .unwrap();
    kms.shutdown().await;
}

#[tokio::test]
async fn a_configured_session_token_must_be_sent_and_match() {
    let kms = verifying(
        None,
        MockKmsCredentials::new(KEY_ID, SECRET, Some("the-session-token".into())),
        0,
    )
    .await;
    let ep = kms.endpoint();
    sdk(&ep, None, KEY_ID, SECRET, Some("the-session-token"))
        .list_keys()
        .send()
        .await
        .unwrap();
    for token in [None, Some("another-token")] {
        let (c, _) = code(
            sdk(&ep, None, KEY_ID, SECRET, token)
                .list_keys()
                .send()
                .await,
        );
        assert_eq!(c, "UnrecognizedClientException", "token {token:?}");
    }
    kms.shutdown().await;
}

#[tokio::test]
async fn unsigned_and_malformed_requests_are_refused_with_kms_codes() {
    let kms = verifying(None, creds(), 0).await;
    let head = "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.ListKeys";
    let (status, headers, v) = raw_exchange(kms.addr(), head, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "MissingAuthenticationTokenException");
    assert!(v["message"].is_string());
    assert!(date_error_secs(header(&headers, "date"), 0) <= 5);

    // support::kms_head's header has all three parts but a bogus identity.
    let (status, _, v) = raw_exchange(kms.addr(), &support::kms_head("ListKeys"), b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "IncompleteSignatureException", "{v}"); // no X-Amz-Date

    let partial = format!(
        "{head}\r\nX-Amz-Date: 20260101T000000Z\r\nAuthorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20260101/us-east-1/kms/aws4_request"
    );
    let (status, _, v) = raw_exchange(kms.addr(), &partial, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "IncompleteSignatureException");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("'Signature'") && m.contains("'SignedHeaders'"),
        "{m}"
    );
    kms.shutdown().await;
}

#[tokio::test]
async fn signatures_ten_minutes_off_are_expired_or_not_yet_current() {
    let kms = verifying(None, creds(), 0).await;
    let now = SystemTime::now();
    let ten = Duration::from_secs(600);
    // Signed now: accepted (so the refusals below are about the time).
    let head = signed_request(kms.addr(), "ListKeys", "{}", KEY_ID, SECRET, now);
    let (status, _, v) = raw_exchange(kms.addr(), &head, b"{}").await;
    assert_eq!(status, 200, "{v}");

    let head = signed_request(kms.addr(), "ListKeys", "{}", KEY_ID, SECRET, now - ten);
    let (status, _, v) = raw_exchange(kms.addr(), &head, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "InvalidSignatureException");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Signature expired: "),
        "{v}"
    );

    let head = signed_request(kms.addr(), "ListKeys", "{}", KEY_ID, SECRET, now + ten);
    let (status, _, v) = raw_exchange(kms.addr(), &head, b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "InvalidSignatureException");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Signature not yet current: "),
        "{v}"
    );
    kms.shutdown().await;
}

#[tokio::test]
async fn a_mock_clock_ten_minutes_ahead_expires_a_correct_client_and_says_so_in_date() {
    let kms = verifying(None, creds(), 600).await;
    let r = sdk(&kms.endpoint(), None, KEY_ID, SECRET, None)
        .list_keys()
        .send()
        .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some("InvalidSignatureException"), "{e:?}");
    assert!(
        e.message().unwrap().starts_with("Signature expired: "),
        "{e:?}"
    );
    // What an SDK corrects its clock from: the Date of the response.
    let date = e
        .raw_response()
        .unwrap()
        .headers()
        .get("date")
        .unwrap()
        .to_owned();
    assert!(date_error_secs(&date, 600) <= 5, "{date}");
    assert!(date_error_secs(&date, 0) >= 590, "{date}");

    // A client that signs with the mock's clock is accepted, and success
    // responses carry the shifted Date too.
    let ahead = SystemTime::now() + Duration::from_secs(600);
    let head = signed_request(kms.addr(), "ListKeys", "{}", KEY_ID, SECRET, ahead);
    let (status, headers, _) = raw_exchange(kms.addr(), &head, b"{}").await;
    assert_eq!(status, 200);
    assert!(date_error_secs(header(&headers, "date"), 600) <= 5);
    kms.shutdown().await;
}

#[tokio::test]
async fn without_credentials_the_date_is_the_system_clock_and_signatures_are_not_checked() {
    let kms = start(MockKmsConfig::default()).await;
    let head = signed_request(
        kms.addr(),
        "ListKeys",
        "{}",
        "ANYKEY",
        "any-secret",
        SystemTime::now() - Duration::from_secs(3600),
    );
    let (status, headers, _) = raw_exchange(kms.addr(), &head, b"{}").await;
    assert_eq!(status, 200);
    assert!(date_error_secs(header(&headers, "date"), 0) <= 5);
    kms.shutdown().await;
}

#[tokio::test]
async fn a_body_changed_after_signing_is_an_invalid_signature() {
    let kms = verifying(None, creds(), 0).await;
    let body = r#"{"NumberOfBytes": 32}"#;
    let head = signed_request(
        kms.addr(),
        "GenerateRandom",
        body,
        KEY_ID,
        SECRET,
        SystemTime::now(),
    );
    let (status, _, v) = raw_exchange(kms.addr(), &head, body.as_bytes()).await;
    assert_eq!(status, 200, "{v}");
    // Same length, other content.
    let tampered = r#"{"NumberOfBytes": 64}"#;
    let (status, _, v) = raw_exchange(kms.addr(), &head, tampered.as_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "InvalidSignatureException");
    // And a header changed after signing (the operation).
    let other_op = head.replace("TrentService.GenerateRandom", "TrentService.ListKeys");
    let (status, _, v) = raw_exchange(kms.addr(), &other_op, body.as_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(v["__type"], "InvalidSignatureException");
    kms.shutdown().await;
}

#[tokio::test]
async fn allow_unsigned_and_credentials_exclude_each_other() {
    let e = MockKms::new(MockKmsConfig {
        allow_unsigned: true,
        credentials: Some(creds()),
        ..MockKmsConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("allow_unsigned"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_over_https_with_the_test_ca_and_signature_checks() {
    let dir = tls_dir();
    let tls = MockKmsTls::load_or_create(dir.path(), &[]).unwrap();
    let kms = verifying(Some(tls), creds(), 0).await;
    let ca = kms.ca_pem_path().unwrap().display().to_string();
    let Some(out) = support::run_boto3_script(
        "boto3_auth.py",
        vec![kms.endpoint(), ca, KEY_ID.into(), SECRET.into()],
    )
    .await
    else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 auth checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("4 checks passed, 0 failed"), "{stdout}");
    kms.shutdown().await;
}

/// The binary, started as a process; killed (by its own handle) on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_prints_its_test_ca_then_its_https_address_and_applies_the_flags() {
    use std::io::BufRead as _;
    let dir = tls_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker-mock-kms"))
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path())
        .args(["--tls-name", "kms.us-east-1.amazonaws.com"])
        .args(["--access-key-id", KEY_ID, "--clock-offset-secs", "-600"])
        .env("KEYBROKER_MOCK_KMS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("KEYBROKER_MOCK_KMS_SESSION_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _proc = Proc(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let ca_line = lines.next().unwrap().unwrap();
    let ca_path = ca_line
        .strip_prefix("test CA: ")
        .unwrap_or_else(|| panic!("unexpected first line: {ca_line:?}"));
    assert_eq!(std::path::Path::new(ca_path), dir.path().join("ca.pem"));
    let listen_line = lines.next().unwrap().unwrap();
    let endpoint = listen_line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected second line: {listen_line:?}"));
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");

    let ca = std::fs::read_to_string(ca_path).unwrap();
    let c = sdk(endpoint, Some(&ca), KEY_ID, SECRET, None);
    // The mock's clock is 10 minutes behind: a correct client is early.
    let e = c.list_keys().send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidSignatureException"), "{e:?}");
    assert!(
        e.message()
            .unwrap()
            .starts_with("Signature not yet current: "),
        "{e:?}"
    );
    let date = e
        .raw_response()
        .unwrap()
        .headers()
        .get("date")
        .unwrap()
        .to_owned();
    assert!(date_error_secs(&date, -600) <= 5, "{date}");
}

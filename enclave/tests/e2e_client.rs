//! The client in end-to-end mode against an in-test HTTPS fake KMS: rustls
//! with an rcgen test CA, hyper serving AWS JSON 1.1, SigV4 verified by
//! re-signing, `CiphertextForRecipient` made with
//! `keybroker_common::cms::encrypt_for_recipient` to the attested key (the
//! answers of `support::kms_answer`), a `Date` header from the server's clock.
//!
//! Covers: data keys and decryption through `Client` and `Envelope`,
//! connection reuse, certificate checks (host name, untrusted CA), key
//! pinning of requests and responses, clock-skew correction, credential
//! refresh, the response size limit and deadlines against a stalled server.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::result_large_err
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use keybroker_common::attestation::Verifier;
use keybroker_common::key_allowlist::{KeyAllowlist, KeyPinError};
use keybroker_common::kms::*;
use keybroker_common::secret::SecretString;
use keybroker_enclave::e2e::{DirectLink, E2eConfig, KmsUrl, ParentLink, TrustRoots};
use keybroker_enclave::{AwsCredentials, Client, ClientConfig, Envelope, Error, RecipientKeys};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{ARN, Seen, keys};

const REGION: &str = "us-east-1";
const HOST: &str = "kms.us-east-1.amazonaws.com";
const ACCESS_KEY: &str = "AKIDKEYBROKERTEST";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "session-token-1";
const OTHER_ACCOUNT_KEY: &str =
    "arn:aws:kms:us-east-1:999988887777:key/1234abcd-12ab-34cd-56ef-1234567890ab";

// ---------------------------------------------------------------- test CA

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

// ---------------------------------------------------------------- fake KMS

/// One request as the fake KMS saw it.
#[derive(Clone, Debug)]
struct SeenHttp {
    access_key: String,
    token: Option<String>,
    request: KmsRequest,
}

#[derive(Default)]
struct Behaviour {
    /// Answer with this `KeyId` instead of the real one.
    key_id: Mutex<Option<String>>,
    /// Never answer.
    stall: AtomicBool,
    /// Answer 200 with a body of this many bytes (no Content-Length).
    oversized: Mutex<Option<usize>>,
    /// Session tokens answered with ExpiredTokenException.
    expired_tokens: Mutex<Vec<String>>,
    /// `Decrypt` answers a `CiphertextForRecipient` with valid (`true`) or
    /// invalid padding (`support::probe_padding`).
    probe_padding: Mutex<Option<bool>>,
}

struct State {
    verifier: Verifier,
    /// The server's clock minus the real one, in seconds.
    clock_offset: i64,
    /// Access key id -> secret key.
    secrets: HashMap<String, String>,
    seen: Mutex<Vec<SeenHttp>>,
    connections: AtomicUsize,
    behaviour: Behaviour,
}

impl State {
    fn now(&self) -> SystemTime {
        let d = Duration::from_secs(self.clock_offset.unsigned_abs());
        if self.clock_offset >= 0 {
            SystemTime::now() + d
        } else {
            SystemTime::now() - d
        }
    }
}

struct FakeKms {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKms {
    async fn start(tls: Arc<rustls::ServerConfig>, verifier: Verifier, clock_offset: i64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut secrets = HashMap::new();
        secrets.insert(ACCESS_KEY.to_owned(), SECRET_KEY.to_owned());
        secrets.insert("AKIDSECOND".to_owned(), "second-secret".to_owned());
        let state = Arc::new(State {
            verifier,
            clock_offset,
            secrets,
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            behaviour: Behaviour::default(),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    st.connections.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn seen(&self) -> Vec<SeenHttp> {
        self.state.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

/// A body of `remaining` bytes in 64 KiB frames, with no size hint.
struct Chunked {
    remaining: usize,
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; n])))))
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(b: Vec<u8>) -> Body {
    http_body_util::Full::new(Bytes::from(b)).boxed()
}

fn respond(state: &State, status: u16, body: Body) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", aws_json::CONTENT_TYPE)
        .header("date", httpdate::fmt_http_date(state.now()))
        .body(body)
        .unwrap()
}

fn kms_err(state: &State, code: &str, message: &str) -> hyper::Response<Body> {
    let e = KmsError::new(code, message);
    respond(state, e.status, full(aws_json::error_body(&e).into_bytes()))
}

fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let date = time::Date::from_calendar_date(
        n(0..4)? as i32,
        time::Month::try_from(n(4..6)? as u8).ok()?,
        n(6..8)? as u8,
    )
    .ok()?;
    let t = time::Time::from_hms(n(9..11)? as u8, n(11..13)? as u8, n(13..15)? as u8).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().into())
}

/// Verifies SigV4 the way KMS does: recomputes the signature over the signed
/// headers with the secret of the access key id at the request's time.
fn verify_sigv4(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<(String, Option<String>), hyper::Response<Body>> {
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return Err(kms_err(
            state,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let bad = |m: &str| kms_err(state, "IncompleteSignatureException", m);
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| bad("algorithm"))?;
    let mut fields = HashMap::new();
    for f in rest.split(", ") {
        let (k, v) = f.split_once('=').ok_or_else(|| bad("field"))?;
        fields.insert(k, v);
    }
    let credential = fields
        .get("Credential")
        .ok_or_else(|| bad("no Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, _day, region, service, "aws4_request"] = scope[..] else {
        return Err(bad("credential scope"));
    };
    assert_eq!((region, service), (REGION, "kms"), "credential scope");
    let Some(secret) = state.secrets.get(akid) else {
        return Err(kms_err(
            state,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    let amz_date = header("x-amz-date").ok_or_else(|| bad("no X-Amz-Date"))?;
    let at = parse_amz_date(amz_date).ok_or_else(|| bad("X-Amz-Date"))?;
    let token = header("x-amz-security-token").map(str::to_owned);
    let signed = fields
        .get("SignedHeaders")
        .ok_or_else(|| bad("no SignedHeaders"))?;
    for required in ["host", "x-amz-date", "x-amz-target", "content-type"] {
        assert!(
            signed.split(';').any(|h| h == required),
            "{required} signed: {signed}"
        );
    }
    assert_eq!(
        token.is_some(),
        signed.split(';').any(|h| h == "x-amz-security-token"),
        "the session token is signed"
    );
    let headers: Vec<(&str, &str)> = signed
        .split(';')
        .filter(|h| !matches!(*h, "x-amz-date" | "x-amz-security-token"))
        .map(|h| (h, header(h).unwrap_or_default()))
        .collect();
    let host = header("host").unwrap_or_default();
    let identity =
        aws_credential_types::Credentials::new(akid, secret, token.clone(), None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("kms")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let uri = format!("https://{host}{}", parts.uri.path());
    let signable = SignableRequest::new(
        parts.method.as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (_, expected) = sign(signable, &params).unwrap().into_parts();
    if fields.get("Signature") != Some(&expected.as_str()) {
        return Err(kms_err(
            state,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    let skew = match state.now().duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > Duration::from_secs(300) {
        return Err(kms_err(
            state,
            "InvalidSignatureException",
            &format!(
                "Signature expired: {amz_date} is now earlier than the server time minus 5 min."
            ),
        ));
    }
    Ok((akid.to_owned(), token))
}

fn response_json(r: &KmsResponse) -> Vec<u8> {
    r.to_json().unwrap().to_vec()
}

fn set_key_id(r: &mut KmsResponse, key: String) {
    match r {
        KmsResponse::GenerateDataKey(r) => r.key_id = Some(key),
        KmsResponse::Decrypt(r) => r.key_id = Some(key),
        KmsResponse::GenerateDataKeyPair(r) => r.key_id = Some(key),
        _ => {}
    }
}

async fn handle(state: &State, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    assert_eq!(parts.method, http::Method::POST);
    assert_eq!(
        parts.headers.get("content-type").unwrap(),
        aws_json::CONTENT_TYPE
    );
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    let op = aws_json::operation_name(target)
        .ok()
        .and_then(Operation::from_name)
        .expect("a KMS target");
    let (access_key, token) = match verify_sigv4(state, &parts, &body) {
        Ok(v) => v,
        Err(refusal) => return refusal,
    };
    let request = KmsRequest::from_json(op, &body).expect("a KMS request body");
    state.seen.lock().unwrap().push(SeenHttp {
        access_key,
        token: token.clone(),
        request: request.clone(),
    });
    let b = &state.behaviour;
    if token
        .as_ref()
        .is_some_and(|t| b.expired_tokens.lock().unwrap().contains(t))
    {
        return kms_err(
            state,
            "ExpiredTokenException",
            "The security token included in the request is expired",
        );
    }
    if b.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if let Some(n) = *b.oversized.lock().unwrap() {
        return respond(state, 200, Chunked { remaining: n }.boxed());
    }
    let seen = Seen {
        connection: 0,
        id: 1,
        timeout_ms: None,
        request,
    };
    match support::kms_answer(&state.verifier, &seen) {
        Ok(mut r) => {
            if let Some(k) = b.key_id.lock().unwrap().clone() {
                set_key_id(&mut r, k);
            }
            if let (Some(valid), KmsResponse::Decrypt(d)) =
                (*b.probe_padding.lock().unwrap(), &mut r)
            {
                let cfr = d.ciphertext_for_recipient.as_mut().unwrap();
                cfr.0 = support::probe_padding(&cfr.0, valid);
            }
            respond(state, 200, full(response_json(&r)))
        }
        Err(e) => {
            let (code, message) = match e.kms_error() {
                Some(k) => (k.code.clone(), k.message.clone()),
                None => ("KMSInternalException".to_owned(), String::new()),
            };
            kms_err(state, &code, &message)
        }
    }
}

// ---------------------------------------------------------------- client side

fn creds(akid: &str, secret: &str, expiration: Option<SystemTime>) -> AwsCredentials {
    AwsCredentials {
        access_key_id: akid.to_owned(),
        secret_access_key: SecretString::new(secret.to_owned()),
        session_token: Some(SecretString::new(TOKEN.to_owned())),
        expiration,
    }
}

struct Setup {
    kms: FakeKms,
    ca: TestCa,
    keys: RecipientKeys,
}

/// A fake KMS whose certificate names `HOST`, with its clock `offset` s off.
async fn setup(offset: i64) -> Setup {
    let (keys, verifier) = keys().await;
    let ca = TestCa::new("keybroker test CA");
    let kms = FakeKms::start(ca.server_config(&[HOST, "localhost"]), verifier, offset).await;
    Setup { kms, ca, keys }
}

fn e2e_config(s: &Setup, allow: &[&str]) -> E2eConfig {
    E2eConfig::new(REGION, KeyAllowlist::parse(allow).unwrap())
        .unwrap()
        .with_endpoint(KmsUrl::parse(&format!("https://{HOST}:{}", s.kms.addr.port())).unwrap())
        .with_trust(TrustRoots::mock_with_dev_ca_pem(s.ca.pem.as_bytes()).unwrap())
}

fn client_config(timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::new("tcp://127.0.0.1:1".parse().unwrap());
    c.request_timeout = timeout;
    c.connect_timeout = timeout;
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c
}

fn direct(s: &Setup) -> Arc<DirectLink> {
    Arc::new(DirectLink::new(creds(ACCESS_KEY, SECRET_KEY, None)).connect_to(s.kms.addr))
}

fn client(s: &Setup, e2e: E2eConfig, link: Arc<DirectLink>) -> Client {
    let link: Arc<dyn ParentLink> = link;
    Client::new_e2e(
        client_config(Duration::from_secs(5)),
        e2e,
        link,
        s.keys.clone(),
    )
    .unwrap()
}

fn gdk(key: &str) -> GenerateDataKeyRequest {
    GenerateDataKeyRequest {
        key_id: Some(key.into()),
        key_spec: Some(DataKeySpec::Aes256),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn data_key_and_decrypt_through_e2e_return_the_plaintext() {
    let s = setup(0).await;
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
    assert_eq!(c.mode(), keybroker_enclave::Mode::E2e);
    let dk = c.generate_data_key(gdk(ARN)).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.key_id.as_deref(), Some(ARN));
    // The fake's CiphertextBlob is "FAKE" || plaintext: the enclave decrypted
    // the real CiphertextForRecipient to the same key.
    assert_eq!(&dk.ciphertext_blob.0[4..], dk.plaintext.expose());

    // Decrypt without KeyId: the one allowed key is sent.
    let d = c
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(dk.ciphertext_blob.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), dk.plaintext.expose());
    let r = c
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(24),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 24);

    let seen = s.kms.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|r| r.access_key == ACCESS_KEY && r.token.as_deref() == Some(TOKEN))
    );
    let KmsRequest::Decrypt(sent) = &seen[1].request else {
        panic!("{:?}", seen[1].request)
    };
    assert_eq!(
        sent.key_id.as_deref(),
        Some(ARN),
        "Decrypt always sends KeyId"
    );
    assert!(sent.recipient.is_some(), "Recipient attached");
}

#[tokio::test]
async fn envelope_seals_and_opens_in_e2e_mode_and_refuses_a_header_key_not_allowed() {
    let s = setup(0).await;
    let account = "arn:aws:kms:us-east-1:111122223333:*";
    let c = client(&s, e2e_config(&s, &[account]), direct(&s));
    let envelope = Envelope::new(c, "alias/app");
    let ctx = EncryptionContext::from([("tenant".to_owned(), "a".to_owned())]);
    let message = envelope.seal(b"secret data", &ctx).await.unwrap();
    assert_eq!(
        &envelope.open(&message, &ctx).await.unwrap()[..],
        b"secret data"
    );
    let KmsRequest::GenerateDataKey(sent) = &s.kms.seen()[0].request else {
        panic!()
    };
    assert_eq!(
        sent.key_id.as_deref(),
        Some("arn:aws:kms:us-east-1:111122223333:alias/app"),
        "a short alias is sent as the full alias ARN of the allowed account"
    );

    // Another enclave configuration that allows only another key: the
    // header's key is refused before anything is sent.
    let other = "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";
    let strict = client(&s, e2e_config(&s, &[other]), direct(&s));
    let before = s.kms.seen().len();
    let err = Envelope::new(strict, other)
        .open(&message, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyNotAllowed(_)), "{err}");
    assert_eq!(s.kms.seen().len(), before, "nothing sent");
}

/// E2e mode decrypts on the same path as broker mode: a
/// `CiphertextForRecipient` with valid or invalid padding (here from the
/// server, the only party that can produce one in this mode) gets the
/// implicit-rejection value, and the envelope fails the same way for both.
#[tokio::test]
async fn e2e_answers_that_do_not_decrypt_are_rejected_implicitly() {
    let s = setup(0).await;
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
    let envelope = Envelope::new(c.clone(), ARN);
    let ctx = EncryptionContext::new();
    let message = envelope.seal(b"secret data", &ctx).await.unwrap();
    let mut errors = Vec::new();
    for valid in [true, false] {
        *s.kms.state.behaviour.probe_padding.lock().unwrap() = Some(valid);
        errors.push(envelope.open(&message, &ctx).await.unwrap_err().to_string());
        let d = c
            .decrypt_expecting(
                DecryptRequest {
                    ciphertext_blob: Some(Blob([b"FAKE".as_slice(), &[9; 32]].concat())),
                    ..Default::default()
                },
                32,
            )
            .await
            .unwrap();
        assert_eq!(d.plaintext.len(), 32);
    }
    assert_eq!(errors[0], errors[1]);
    assert!(errors[0].contains("does not authenticate"), "{}", errors[0]);
    *s.kms.state.behaviour.probe_padding.lock().unwrap() = None;
    assert_eq!(
        &envelope.open(&message, &ctx).await.unwrap()[..],
        b"secret data"
    );
}

#[tokio::test]
async fn connections_are_reused_one_handshake_for_many_requests() {
    let s = setup(0).await;
    let link = direct(&s);
    let c = client(&s, e2e_config(&s, &[ARN]), link.clone());
    for _ in 0..50 {
        c.generate_data_key(gdk(ARN)).await.unwrap();
    }
    let stats = c.stats();
    assert_eq!(stats.tls_handshakes, 1, "{stats:?}");
    assert_eq!(s.kms.connections(), 1);
    assert_eq!(link.tunnels_opened(), 1);
    assert_eq!(stats.requests_sent, 50);
    assert_eq!(stats.credential_fetches, 1);

    // Concurrent callers settle on at most one connection each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    c.generate_data_key(gdk(ARN)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let hs = c.stats().tls_handshakes;
    assert!((1..=8).contains(&hs), "{hs} handshakes for 8 callers");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused() {
    let (keys, verifier) = keys().await;
    let ca = TestCa::new("keybroker test CA");
    // A valid certificate from the trusted CA, but for another name.
    let kms = FakeKms::start(
        ca.server_config(&["kms.eu-west-1.amazonaws.com"]),
        verifier,
        0,
    )
    .await;
    let s = Setup { kms, ca, keys };
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
    let err = c.generate_data_key(gdk(ARN)).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(s.kms.seen().is_empty());
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let (keys, verifier) = keys().await;
    let trusted = TestCa::new("keybroker test CA");
    let rogue = TestCa::new("rogue CA");
    let kms = FakeKms::start(rogue.server_config(&[HOST]), verifier, 0).await;
    let s = Setup {
        kms,
        ca: trusted,
        keys,
    };
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
    let started = Instant::now();
    let err = c.generate_data_key(gdk(ARN)).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not retried"
    );
    assert!(s.kms.seen().is_empty());

    // Without the development CA only the Amazon roots are trusted.
    let amazon_only = e2e_config(&s, &[ARN]).with_trust(TrustRoots::amazon().unwrap());
    let c = client(&s, amazon_only, direct(&s));
    assert!(matches!(
        c.generate_data_key(gdk(ARN)).await.unwrap_err(),
        Error::Tls { .. }
    ));
}

#[tokio::test]
async fn a_response_key_in_another_account_is_refused_with_no_plaintext() {
    let s = setup(0).await;
    *s.kms.state.behaviour.key_id.lock().unwrap() = Some(OTHER_ACCOUNT_KEY.to_owned());
    // An alias entry: the parent's credentials made it resolve in another account.
    let c = client(
        &s,
        e2e_config(&s, &["arn:aws:kms:us-east-1:111122223333:alias/app"]),
        direct(&s),
    );
    let err = c.generate_data_key(gdk("alias/app")).await.unwrap_err();
    assert!(
        matches!(err, Error::KeyNotAllowed(KeyPinError::ResponseKeyNotAllowed(ref k)) if k == OTHER_ACCOUNT_KEY),
        "{err}"
    );
    let err = c
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(b"FAKE0123456789abcdef0123456789abcdef".to_vec())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyNotAllowed(_)), "{err}");
    // The endpoint reports it as an internal failure, not as KMS's answer.
    assert_eq!(err.to_kms_error().status, 500);

    // A request for another account's key is refused before it is sent.
    let before = s.kms.seen().len();
    for key in [
        OTHER_ACCOUNT_KEY,
        "arn:aws:kms:us-east-1:999988887777:alias/app",
        "alias/other",
    ] {
        let err = c.generate_data_key(gdk(key)).await.unwrap_err();
        assert!(matches!(err, Error::KeyNotAllowed(_)), "{key}: {err}");
        assert_eq!(err.to_kms_error().code, "AccessDeniedException");
    }
    assert_eq!(s.kms.seen().len(), before, "nothing sent");
}

#[tokio::test]
async fn a_server_clock_ten_minutes_off_is_corrected_on_the_first_request() {
    for offset in [600, -600] {
        let s = setup(offset).await;
        let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
        let dk = c.generate_data_key(gdk(ARN)).await.unwrap();
        assert_eq!(dk.plaintext.len(), 32);
        let skew = c.clock_skew_ms();
        assert!(
            (skew - offset * 1000).abs() < 2_000,
            "offset {offset}s, skew {skew} ms"
        );
        assert_eq!(c.stats().retries, 1, "one retry after the correction");
        // Later requests are signed right the first time.
        c.generate_data_key(gdk(ARN)).await.unwrap();
        assert_eq!(c.stats().retries, 1);
        assert_eq!(c.stats().requests_sent, 3);
    }
}

#[tokio::test]
async fn credentials_are_refreshed_before_they_expire_and_on_expired_token() {
    let s = setup(0).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    // First credentials expire 5 min + 1.5 s from now, inside the refresh
    // margin 2 s later; the second ones do not expire.
    let first_expiry = SystemTime::now() + Duration::from_millis(301_500);
    let link = Arc::new(
        DirectLink::with_credentials_fn(move || {
            Ok(match n.fetch_add(1, Ordering::SeqCst) {
                0 => creds(ACCESS_KEY, SECRET_KEY, Some(first_expiry)),
                _ => creds("AKIDSECOND", "second-secret", None),
            })
        })
        .connect_to(s.kms.addr),
    );
    let c = client(&s, e2e_config(&s, &[ARN]), link.clone());
    c.generate_data_key(gdk(ARN)).await.unwrap();
    c.generate_data_key(gdk(ARN)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.generate_data_key(gdk(ARN)).await.unwrap();
    let keys: Vec<String> = s.kms.seen().into_iter().map(|r| r.access_key).collect();
    assert_eq!(keys, [ACCESS_KEY, ACCESS_KEY, "AKIDSECOND"]);
    assert_eq!(link.credential_fetches(), 2);

    // KMS says the token expired: fetched again and retried once.
    s.kms
        .state
        .behaviour
        .expired_tokens
        .lock()
        .unwrap()
        .push(TOKEN.to_owned());
    let err = c.generate_data_key(gdk(ARN)).await.unwrap_err();
    assert_eq!(
        err.kms_error().map(|k| k.code.as_str()),
        Some("ExpiredTokenException")
    );
    assert_eq!(
        link.credential_fetches(),
        3,
        "refetched after ExpiredTokenException"
    );
}

#[tokio::test]
async fn a_response_over_the_size_limit_is_refused() {
    let s = setup(0).await;
    *s.kms.state.behaviour.oversized.lock().unwrap() = Some(2 << 20);
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
    let err = c.generate_data_key(gdk(ARN)).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidResponse { reason, .. } if reason.contains("size limit")),
        "{err}"
    );
}

#[tokio::test]
async fn a_stalled_server_ends_at_the_deadline() {
    let s = setup(0).await;
    s.kms.state.behaviour.stall.store(true, Ordering::SeqCst);
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s)).with_timeout(Duration::from_millis(700));
    let started = Instant::now();
    let err = c.generate_data_key(gdk(ARN)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A target that accepts TCP but never speaks TLS: the same.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = Arc::new(
        DirectLink::new(creds(ACCESS_KEY, SECRET_KEY, None))
            .connect_to(silent.local_addr().unwrap()),
    );
    let c = client(&s, e2e_config(&s, &[ARN]), link).with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = c.generate_data_key(gdk(ARN)).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. } | Error::Unavailable { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

#[tokio::test]
async fn kms_errors_are_relayed_and_retryable_ones_retried() {
    let s = setup(0).await;
    let c = client(&s, e2e_config(&s, &[ARN]), direct(&s));
    // support::kms_answer refuses a blob that is not its own.
    let err = c
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(b"not ours".to_vec())),
            key_id: Some(ARN.into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.kms_error().map(|k| (k.code.as_str(), k.status)),
        Some(("InvalidCiphertextException", 400))
    );
    assert_eq!(c.stats().retries, 0, "client errors are not retried");
}

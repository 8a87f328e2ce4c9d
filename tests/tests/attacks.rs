//! The parent instance is the attacker (DESIGN.md, "Trust model"; issue 10,
//! "An attacker's test suite").
//!
//! **e2e mode.** The enclave speaks TLS to the mock KMS (HTTPS under its
//! test CA, SigV4 verified) through byte tunnels that a hostile parent
//! provides: [`AttackLink`] is the parent's side ([`ParentLink`]): it opens
//! the tunnels, hands over credentials, and tampers, replays, forges,
//! redirects, refuses or stalls. Every attack must end in a typed error with
//! no plaintext, and delays and drops must end at the request's deadline.
//!
//! **broker mode.** The parent proxy relays typed requests, so the attacker
//! is a proxy backend that rewrites KMS's answers. The tests show what broker
//! mode does *not* resist (a substituted data key is accepted) next to what
//! it does: they are the evidence for the README's table, which says broker
//! mode is only for parents trusted with integrity.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use keybroker_common::attestation::UnverifiedAttestation;
use keybroker_common::cms::encrypt_for_recipient;
use keybroker_common::key_allowlist::KeyAllowlist;
use keybroker_common::kms::{Blob, KmsRequest, KmsResponse};
use keybroker_common::secret::SecretString;
use keybroker_enclave::e2e::{
    AwsCredentials, BoxFuture, E2eConfig, KmsUrl, ParentLink, TrustRoots,
};
use keybroker_enclave::transport::BoxStream;
use keybroker_enclave::{
    Client, ClientConfig, Error, MockCa, MockNsm, MockNsmConfig, RecipientKeys, RecipientKeysConfig,
};
use keybroker_harness::local::{
    LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY, enclave_key_policy, kms_client_as,
};
use keybroker_harness::mock_kms::{
    DEFAULT_ACCOUNT_ID, MockKms, MockKmsConfig, MockKmsCredentials, MockKmsTls, RunningMockKms,
};
use keybroker_harness::testkit::{InProcessStack, PCR0, connect_enclave, gdk};
use keybroker_proxy::backend::{FnBackend, SdkKmsBackend};
use keybroker_proxy::server::{Proxy, ProxyConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const REGION: &str = "us-east-1";
const ALIAS: &str = "alias/keybroker-attacks";
const OTHER_ACCOUNT: &str = "999988887777";
const DEADLINE: Duration = Duration::from_secs(2);

// ------------------------------------------------------------- e2e set-up

/// One mock KMS "account" over HTTPS with SigV4 verified, and a key whose
/// policy admits only the enclave's PCR0.
struct Kms {
    running: RunningMockKms,
    key_arn: String,
}

async fn kms_account(
    tls: MockKmsTls,
    nsm_ca: &MockCa,
    account: &str,
    (akid, secret): (&str, &str),
) -> Kms {
    let running = MockKms::new(MockKmsConfig {
        account_id: account.to_owned(),
        caller_principal: format!("arn:aws:iam::{account}:root"),
        attestation_roots_der: vec![nsm_ca.root_der().to_vec()],
        tls: Some(tls),
        credentials: Some(MockKmsCredentials::new(akid, secret, None)),
        ..MockKmsConfig::default()
    })
    .unwrap()
    .spawn("127.0.0.1:0")
    .await
    .unwrap();
    let ca_pem = std::fs::read_to_string(running.ca_pem_path().unwrap()).unwrap();
    // Each account's administrator signs with that account's credentials.
    let sdk = kms_client_as(&running.endpoint(), Some(&ca_pem), akid, secret);
    let created = sdk
        .create_key()
        .policy(enclave_key_policy(account, &hex::encode(PCR0)).to_string())
        .send()
        .await
        .unwrap();
    let key_arn = created.key_metadata().unwrap().arn().unwrap().to_owned();
    sdk.create_alias()
        .alias_name(ALIAS)
        .target_key_id(&key_arn)
        .send()
        .await
        .unwrap();
    Kms { running, key_arn }
}

/// The victim's KMS account, the enclave's recipient keys, and the test CA
/// the enclave trusts for the KMS endpoint name `localhost`.
struct E2e {
    _dir: tempfile::TempDir,
    kms: Kms,
    tls_dir: std::path::PathBuf,
    nsm_ca: MockCa,
    ca_pem: String,
    keys: RecipientKeys,
}

async fn e2e() -> E2e {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("kms-tls");
    let nsm_ca = MockCa::generate().unwrap();
    let tls = MockKmsTls::load_or_create(&tls_dir, &[]).unwrap();
    let ca_pem = tls.ca_pem().to_owned();
    let kms = kms_account(
        tls,
        &nsm_ca,
        DEFAULT_ACCOUNT_ID,
        (LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY),
    )
    .await;
    let nsm = MockNsm::new(&nsm_ca, MockNsmConfig::default().with_pcr(0, PCR0)).unwrap();
    let keys = RecipientKeys::new(Arc::new(nsm), RecipientKeysConfig::default())
        .await
        .unwrap();
    E2e {
        _dir: dir,
        kms,
        tls_dir,
        nsm_ca,
        ca_pem,
        keys,
    }
}

impl E2e {
    /// An enclave client in e2e mode whose parent is `link`: the image pins
    /// the victim account's alias, trusts the test CA for `localhost`.
    fn client(&self, link: AttackLink) -> Client {
        let port = self.kms.running.addr().port();
        let alias_arn = format!("arn:aws:kms:{REGION}:{DEFAULT_ACCOUNT_ID}:{ALIAS}");
        let e2e = E2eConfig::new(REGION, KeyAllowlist::parse([alias_arn]).unwrap())
            .unwrap()
            .with_endpoint(KmsUrl::parse(&format!("https://localhost:{port}")).unwrap())
            .with_trust(TrustRoots::mock_with_dev_ca_pem(self.ca_pem.as_bytes()).unwrap());
        // No broker proxy exists: nothing could be downgraded to.
        let mut config = ClientConfig::new("tcp://127.0.0.1:1".parse().unwrap());
        config.request_timeout = DEADLINE;
        config.connect_timeout = DEADLINE;
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(100);
        let link: Arc<dyn ParentLink> = Arc::new(link);
        Client::new_e2e(config, e2e, link, self.keys.clone()).unwrap()
    }

    fn link(&self, attack: Attack) -> AttackLink {
        AttackLink {
            target: self.kms.running.addr(),
            credentials: credentials(LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY),
            attack,
            recorded: Arc::default(),
        }
    }
}

fn credentials(akid: &str, secret: &str) -> AwsCredentials {
    AwsCredentials {
        access_key_id: akid.to_owned(),
        secret_access_key: SecretString::new(secret.to_owned()),
        session_token: None,
        expiration: None,
    }
}

// ------------------------------------------------------------ the attacker

/// What the hostile parent does to the tunnels it relays.
#[derive(Clone, Debug)]
enum Attack {
    /// Nothing: relays honestly (the control).
    None,
    /// Flips one bit of the byte at this offset of what KMS sends.
    FlipFromKms(usize),
    /// Flips one bit in every chunk KMS sends once the enclave has written
    /// twice (ClientHello, then its Finished and the request): what follows
    /// is the answer (and any session tickets).
    FlipAnswer,
    /// Answers from a recording of an earlier, honest tunnel instead of KMS.
    Replay,
    /// Answers with its own bytes: a plain HTTP response carrying a
    /// `CiphertextForRecipient` of a key it chose, encrypted to the
    /// enclave's public key.
    Forge(Vec<u8>),
    /// Relays to another server (e.g. one with another CA's certificate).
    Redirect(SocketAddr),
    /// Refuses every tunnel (strips end-to-end mode).
    RefuseTunnels,
    /// Opens the tunnel and then relays nothing.
    Stall,
    /// Opens the tunnel and closes it at once.
    Drop,
}

#[derive(Debug)]
struct AttackLink {
    target: SocketAddr,
    credentials: AwsCredentials,
    attack: Attack,
    /// Bytes KMS sent on the tunnels so far (for `Replay`).
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl ParentLink for AttackLink {
    fn open_tunnel<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<BoxStream, Error>> {
        Box::pin(async move {
            let refused = || Error::Unavailable {
                reason: "the parent refused the tunnel".into(),
            };
            let to = match &self.attack {
                Attack::RefuseTunnels => return Err(refused()),
                Attack::Redirect(addr) => *addr,
                Attack::Replay => {
                    let recorded = self.recorded.lock().unwrap().clone();
                    return Ok(BoxStream::new(Scripted::new(recorded)));
                }
                Attack::Forge(bytes) => return Ok(BoxStream::new(Scripted::new(bytes.clone()))),
                _ => self.target,
            };
            let tcp = TcpStream::connect(to).await.map_err(|_| refused())?;
            Ok(match &self.attack {
                Attack::Stall => BoxStream::new(Scripted::stalled()),
                Attack::Drop => {
                    drop(tcp);
                    BoxStream::new(Scripted::new(Vec::new()))
                }
                Attack::FlipFromKms(at) => BoxStream::new(Tamper::new(tcp, Some(*at), None)),
                Attack::FlipAnswer => {
                    let mut t = Tamper::new(tcp, None, None);
                    t.flip_after_writes = Some(2);
                    BoxStream::new(t)
                }
                _ => BoxStream::new(Tamper::new(tcp, None, Some(self.recorded.clone()))),
            })
        })
    }

    fn credentials(&self, _timeout: Duration) -> BoxFuture<'_, Result<AwsCredentials, Error>> {
        let c = self.credentials.clone();
        Box::pin(async move { Ok(c) })
    }
}

/// A relayed TCP stream that flips one bit at an offset of what KMS sends,
/// and/or records it.
struct Tamper {
    inner: TcpStream,
    read: usize,
    writes: usize,
    flip_at: Option<usize>,
    flip_after_writes: Option<usize>,
    record: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Tamper {
    fn new(inner: TcpStream, flip_at: Option<usize>, record: Option<Arc<Mutex<Vec<u8>>>>) -> Self {
        Self {
            inner,
            read: 0,
            writes: 0,
            flip_at,
            flip_after_writes: None,
            record,
        }
    }
}

impl AsyncRead for Tamper {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let fresh = &mut buf.filled_mut()[before..];
        if let Some(at) = this.flip_at
            && (this.read..this.read + fresh.len()).contains(&at)
        {
            fresh[at - this.read] ^= 0x01;
        }
        if let Some(after) = this.flip_after_writes
            && this.writes >= after
            && let Some(last) = fresh.last_mut()
        {
            *last ^= 0x01;
        }
        if let Some(rec) = &this.record {
            rec.lock().unwrap().extend_from_slice(fresh);
        }
        this.read += fresh.len();
        r
    }
}

impl AsyncWrite for Tamper {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.writes += 1;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A "server" that ignores what the enclave writes and sends fixed bytes
/// (or nothing, ever, when stalled).
struct Scripted {
    out: std::io::Cursor<Vec<u8>>,
    stalled: bool,
}

impl Scripted {
    fn new(out: Vec<u8>) -> Self {
        Self {
            out: std::io::Cursor::new(out),
            stalled: false,
        }
    }
    fn stalled() -> Self {
        Self {
            out: std::io::Cursor::new(Vec::new()),
            stalled: true,
        }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stalled {
            return Poll::Pending;
        }
        Pin::new(&mut self.out).poll_read(cx, buf)
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs one GenerateDataKey under the pinned alias; the attack must give an
/// error (never plaintext) within the deadline.
async fn refused(client: &Client) -> Error {
    let started = Instant::now();
    let result = client.generate_data_key(gdk(ALIAS)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < DEADLINE + Duration::from_secs(1),
        "took {elapsed:?}, past the {DEADLINE:?} deadline"
    );
    match result {
        Ok(_) => panic!("the attack produced a data key"),
        Err(e) => {
            eprintln!("refused after {elapsed:?}: {e}");
            e
        }
    }
}

// ------------------------------------------------------------- e2e attacks

#[tokio::test(flavor = "multi_thread")]
async fn e2e_control_an_honest_parent_gets_the_data_key_over_tls() {
    let s = e2e().await;
    let client = s.client(s.link(Attack::None));
    let key = client.generate_data_key(gdk(ALIAS)).await.unwrap();
    assert_eq!(key.key_id.as_deref(), Some(s.kms.key_arn.as_str()));
    assert_eq!(key.plaintext.len(), 32);
    // The parent saw only TLS: the plaintext is nowhere in its bytes.
    let link = s.link(Attack::None);
    let recorded = link.recorded.clone();
    let client = s.client(link);
    let key = client.generate_data_key(gdk(ALIAS)).await.unwrap();
    let seen = recorded.lock().unwrap().clone();
    assert!(seen.len() > 1000, "nothing was relayed");
    assert!(!seen.windows(32).any(|w| w == key.plaintext.expose()));
}

/// The padding-oracle probe and key substitution by tampering: a flipped
/// bit in the handshake, or in what carries the answer, fails TLS.
#[tokio::test(flavor = "multi_thread")]
async fn e2e_flipped_bytes_in_the_handshake_or_the_answer_are_a_typed_error() {
    let s = e2e().await;
    // The server's first flight (certificate chain included) is longer than
    // 200 bytes: these land in the handshake.
    for at in [10, 200] {
        let e = refused(&s.client(s.link(Attack::FlipFromKms(at)))).await;
        assert!(!e.to_string().is_empty(), "flip at {at}: {e}");
    }
    refused(&s.client(s.link(Attack::FlipAnswer))).await;
}

/// An old, honest session replayed to a new tunnel: TLS keys differ per
/// connection, so the recording is garbage to the enclave.
#[tokio::test(flavor = "multi_thread")]
async fn e2e_a_replayed_session_is_a_typed_error() {
    let s = e2e().await;
    let link = s.link(Attack::None);
    let recorded = link.recorded.clone();
    s.client(link).generate_data_key(gdk(ALIAS)).await.unwrap();
    let mut replay = s.link(Attack::Replay);
    replay.recorded = recorded;
    refused(&s.client(replay)).await;
}

/// Key substitution: the parent writes its own answer (a data key of its
/// choosing encrypted to the enclave's public key, which is public) into the
/// tunnel. It is not TLS from the endpoint, so it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn e2e_a_forged_answer_with_a_key_of_the_parents_choosing_is_refused() {
    let s = e2e().await;
    let spki = s.keys.current().public_key_spki_der().to_vec();
    let cfr = encrypt_for_recipient(&spki, &[0x41; 32], &SystemRandom::new()).unwrap();
    let body = serde_json::json!({
        "KeyId": s.kms.key_arn,
        "CiphertextBlob": base64_encode(b"attacker blob"),
        "CiphertextForRecipient": base64_encode(&cfr),
    })
    .to_string();
    let http = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    refused(&s.client(s.link(Attack::Forge(http.into_bytes())))).await;
}

/// Redirect to a server the parent controls, with a certificate from a CA
/// the image does not trust.
#[tokio::test(flavor = "multi_thread")]
async fn e2e_a_redirect_to_a_server_with_another_certificate_is_refused() {
    let s = e2e().await;
    let other_dir = tempfile::tempdir().unwrap();
    let rogue = kms_account(
        MockKmsTls::load_or_create(other_dir.path(), &[]).unwrap(),
        &s.nsm_ca,
        DEFAULT_ACCOUNT_ID,
        (LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY),
    )
    .await;
    let e = refused(&s.client(s.link(Attack::Redirect(rogue.running.addr())))).await;
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

/// Another account's credentials: the real endpoint (same certificate), but
/// the attacker's account, where `alias/...` names the attacker's key, whose
/// CiphertextBlob the attacker can decrypt. The image pins the victim's
/// account: the request names the victim's alias ARN, and a response key in
/// another account is refused; no plaintext either way.
#[tokio::test(flavor = "multi_thread")]
async fn e2e_another_accounts_credentials_get_no_key_accepted() {
    let s = e2e().await;
    let attacker = kms_account(
        MockKmsTls::load_or_create(&s.tls_dir, &[]).unwrap(),
        &s.nsm_ca,
        OTHER_ACCOUNT,
        ("AKIDATTACKERACCOUNT", "attacker-secret"),
    )
    .await;
    let mut link = s.link(Attack::Redirect(attacker.running.addr()));
    link.credentials = credentials("AKIDATTACKERACCOUNT", "attacker-secret");
    let e = refused(&s.client(link)).await;
    let text = e.to_string();
    assert!(
        text.contains("NotFound") || text.contains("not allowed") || text.contains("pin"),
        "{text}"
    );
}

/// Stripping end-to-end mode: the parent refuses tunnels, hoping the enclave
/// falls back to typed requests it can rewrite. The mode is fixed by the
/// image: there is no fallback, only an error.
#[tokio::test(flavor = "multi_thread")]
async fn e2e_a_parent_that_refuses_tunnels_gets_no_downgrade() {
    let s = e2e().await;
    let client = s.client(s.link(Attack::RefuseTunnels));
    let e = refused(&client).await;
    assert!(e.is_retryable(), "{e}");
    assert_eq!(client.mode(), keybroker_enclave::Mode::E2e);
}

#[tokio::test(flavor = "multi_thread")]
async fn e2e_delayed_and_dropped_traffic_ends_at_the_deadline() {
    let s = e2e().await;
    refused(&s.client(s.link(Attack::Stall))).await;
    refused(&s.client(s.link(Attack::Drop))).await;
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

// ----------------------------------------------------------- broker attacks

/// An enclave client (broker mode) of a proxy whose backend is `backend`,
/// the parent's code: here, the attacker's.
async fn broker_client_behind(
    stack: &InProcessStack,
    backend: impl keybroker_proxy::backend::KmsBackend,
) -> (Client, keybroker_proxy::server::ProxyHandle) {
    let proxy = Proxy::bind(
        ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap()),
        backend,
    )
    .await
    .unwrap()
    .spawn();
    let client = connect_enclave(
        &stack.ca,
        proxy.local_addr(),
        MockNsmConfig::default().with_pcr(0, PCR0),
    )
    .await
    .unwrap();
    (client, proxy)
}

/// In broker mode the proxy answers for KMS. It can encrypt a data key of
/// its choosing to the enclave's public key (taken from the attestation
/// document in the request) and the enclave accepts it: broker mode does NOT
/// resist key substitution. This test documents the weakness that e2e mode
/// removes (see the e2e tests above).
#[tokio::test(flavor = "multi_thread")]
async fn broker_mode_accepts_a_substituted_data_key() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let chosen = [0x41u8; 32];
    let real = Arc::new(SdkKmsBackend::new(stack.sdk.clone()));
    let backend = FnBackend(move |request: KmsRequest| {
        let real = real.clone();
        async move {
            use keybroker_proxy::backend::KmsBackend as _;
            let doc = match &request {
                KmsRequest::GenerateDataKey(r) => r.recipient.clone(),
                _ => None,
            };
            let mut response = real.call(request).await?;
            if let (KmsResponse::GenerateDataKey(r), Some(doc)) = (&mut response, doc) {
                let parsed = UnverifiedAttestation::parse(&doc.attestation_document.0).unwrap();
                let spki = parsed.document().public_key.clone().unwrap();
                let forged = encrypt_for_recipient(&spki, &chosen, &SystemRandom::new()).unwrap();
                r.ciphertext_for_recipient = Some(Blob(forged));
            }
            Ok(response)
        }
    });
    let (client, _proxy) = broker_client_behind(&stack, backend).await;
    let key = client.generate_data_key(gdk(&stack.key_arn)).await.unwrap();
    assert_eq!(
        key.plaintext.expose(),
        chosen,
        "broker mode took the parent's key"
    );
}

/// The padding-oracle probe a broker can mount (issue 11): it relays KMS's
/// answers but flips the last byte of the second-to-last block of each
/// `CiphertextForRecipient`, so that the padding of the 32-byte data key
/// becomes valid (0x01) or invalid (0x00), and watches what follows. With
/// implicit rejection both decrypt (to a pseudorandom key of the requested
/// length), neither is a retryable error, and the caller's next step (an
/// envelope's open, another open) looks the same: the probe learns nothing.
#[tokio::test(flavor = "multi_thread")]
async fn broker_mode_padding_probes_cannot_be_told_apart() {
    use keybroker_enclave::envelope::Envelope;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    /// 0 honest, 1 valid padding, 2 invalid padding.
    static PROBE: AtomicU8 = AtomicU8::new(0);
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    fn probe(cfr: &mut [u8]) {
        let mask = match PROBE.load(Ordering::SeqCst) {
            1 => 0x10 ^ 0x01,
            2 => 0x10,
            _ => return,
        };
        // A 32-byte data key: 48 bytes of content, the last block all padding.
        let parts = keybroker_common::cms::parse(cfr).unwrap();
        let tail = &parts.ciphertext[parts.ciphertext.len() - 32..];
        let at = cfr.windows(32).position(|w| w == tail).unwrap() + 15;
        cfr[at] ^= mask;
    }

    let stack = InProcessStack::builder().start().await.unwrap();
    let real = Arc::new(SdkKmsBackend::new(stack.sdk.clone()));
    let backend = FnBackend(move |request: KmsRequest| {
        let real = real.clone();
        async move {
            use keybroker_proxy::backend::KmsBackend as _;
            CALLS.fetch_add(1, Ordering::SeqCst);
            let mut response = real.call(request).await?;
            match &mut response {
                KmsResponse::GenerateDataKey(r) => {
                    probe(&mut r.ciphertext_for_recipient.as_mut().unwrap().0)
                }
                KmsResponse::Decrypt(r) => {
                    probe(&mut r.ciphertext_for_recipient.as_mut().unwrap().0)
                }
                _ => {}
            }
            Ok(response)
        }
    });
    let (client, _proxy) = broker_client_behind(&stack, backend).await;
    let envelope = Envelope::new(client.clone(), stack.key_arn.clone());
    let context = keybroker_common::kms::EncryptionContext::new();
    let message = envelope.seal(b"the secret", &context).await.unwrap();
    let honest = client.generate_data_key(gdk(&stack.key_arn)).await.unwrap();

    let mut observed = Vec::new();
    for mode in [1, 2] {
        PROBE.store(mode, Ordering::SeqCst);
        let key = client.generate_data_key(gdk(&stack.key_arn)).await.unwrap();
        assert_eq!(key.plaintext.len(), 32);
        let mut opens = Vec::new();
        for _ in 0..2 {
            let before = CALLS.load(Ordering::SeqCst);
            let e = envelope.open(&message, &context).await.unwrap_err();
            opens.push((
                e.to_string(),
                e.is_retryable(),
                e.to_kms_error().code,
                CALLS.load(Ordering::SeqCst) - before,
            ));
        }
        observed.push(opens);
        assert_ne!(key.plaintext, honest.plaintext);
    }
    assert_eq!(
        observed[0], observed[1],
        "valid and invalid padding look alike"
    );
    let (text, retryable, _, calls) = &observed[0][0];
    assert!(text.contains("does not authenticate"), "{text}");
    assert!(!retryable);
    assert_eq!(*calls, 1, "one Decrypt per open: no retry");

    PROBE.store(0, Ordering::SeqCst);
    assert_eq!(
        &envelope.open(&message, &context).await.unwrap()[..],
        b"the secret"
    );
}

/// A broker that holds an answer back: the call ends at its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn broker_mode_a_delayed_answer_ends_at_the_deadline() {
    let stack = InProcessStack::builder().start().await.unwrap();
    let backend = FnBackend(|_request: KmsRequest| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Err(keybroker_common::protocol::WireError::new(
            keybroker_common::protocol::ErrorCode::Timeout,
            "unreachable",
        ))
    });
    let (client, _proxy) = broker_client_behind(&stack, backend).await;
    let client = client.with_timeout(DEADLINE);
    let started = Instant::now();
    assert!(client.generate_data_key(gdk(&stack.key_arn)).await.is_err());
    assert!(started.elapsed() < DEADLINE + Duration::from_secs(1));
}

/// The same substitution for key agreement (issue 14): a broker-mode parent
/// answers `DeriveSharedSecret` itself with a secret of its choosing,
/// encrypted to the enclave's attested public key, without asking KMS. The
/// enclave cannot tell (the README says so: choose e2e mode when that
/// matters); e2e mode refuses any answer that is not TLS from the endpoint,
/// as the data-key attacks above show.
#[tokio::test(flavor = "multi_thread")]
async fn broker_mode_accepts_a_substituted_shared_secret() {
    use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use keybroker_common::kms::{
        DeriveSharedSecretRequest, DeriveSharedSecretResponse, KeyAgreementAlgorithm,
    };

    let stack = InProcessStack::builder().start().await.unwrap();
    // The P-256 secret the parent wants the enclave to use (32 bytes, the
    // curve's length, so the enclave's length check passes).
    let chosen = [0x5au8; 32];
    let key_arn = stack.key_arn.clone();
    let answered = Arc::new(Mutex::new(0usize));
    let counter = answered.clone();
    let backend = FnBackend(move |request: KmsRequest| {
        let key_arn = key_arn.clone();
        let counter = counter.clone();
        async move {
            let KmsRequest::DeriveSharedSecret(r) = request else {
                panic!("unexpected request {request:?}");
            };
            let doc = r.recipient.expect("the enclave attaches its Recipient");
            let parsed = UnverifiedAttestation::parse(&doc.attestation_document.0).unwrap();
            let spki = parsed.document().public_key.clone().unwrap();
            let forged = encrypt_for_recipient(&spki, &chosen, &SystemRandom::new()).unwrap();
            *counter.lock().unwrap() += 1;
            Ok(KmsResponse::DeriveSharedSecret(
                DeriveSharedSecretResponse {
                    key_id: Some(key_arn),
                    shared_secret: None,
                    ciphertext_for_recipient: Some(Blob(forged)),
                    key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
                    key_origin: Some("AWS_KMS".to_owned()),
                },
            ))
        }
    });
    let (client, _proxy) = broker_client_behind(&stack, backend).await;
    let peer = PrivateKey::generate(&ECDH_P256).unwrap();
    let peer_der: PublicKeyX509Der<'_> = peer.compute_public_key().unwrap().as_der().unwrap();
    let got = client
        .derive_shared_secret(DeriveSharedSecretRequest {
            key_id: Some(stack.key_arn.clone()),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: Some(Blob(peer_der.as_ref().to_vec())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(*answered.lock().unwrap(), 1, "the parent answered, not KMS");
    assert_eq!(
        got.shared_secret.expose(),
        chosen,
        "broker mode took the parent's shared secret"
    );
}

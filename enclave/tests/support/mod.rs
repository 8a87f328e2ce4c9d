//! A fake parent proxy for the client tests: speaks the framed protocol,
//! verifies the attestation document of each request against the mock NSM's
//! root, and answers like KMS with `CiphertextForRecipient` made by
//! `keybroker_common::cms::encrypt_for_recipient` to the document's public key.
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use keybroker_common::UnixMillis;
use keybroker_common::attestation::Verifier;
use keybroker_common::cms::encrypt_for_recipient;
use keybroker_common::kms::*;
use keybroker_common::protocol::{self, FrameDecoder, Limits, Message, WireError};
use keybroker_enclave::{MockCa, MockNsm, MockNsmConfig, RecipientKeys, RecipientKeysConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

/// What the fake does with one request.
pub enum Action {
    /// Answer after `delay`.
    Reply {
        delay: Duration,
        result: Result<KmsResponse, WireError>,
    },
    /// Compute the answer after `delay` (off the connection's read loop).
    Later {
        delay: Duration,
        answer: Box<dyn FnOnce() -> Result<KmsResponse, WireError> + Send>,
    },
    /// Write these bytes as they are (e.g. a hand-made frame).
    Raw(Vec<u8>),
    /// Never answer.
    Ignore,
    /// Close the connection (with the request in flight).
    Drop,
    /// Answer `Goodbye`, then the given result.
    GoodbyeThen(Result<KmsResponse, WireError>),
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub connection: usize,
    pub id: u64,
    pub timeout_ms: Option<u32>,
    pub request: KmsRequest,
}

pub type Handler = Arc<dyn Fn(&Seen) -> Action + Send + Sync>;

pub struct FakeProxy {
    pub address: keybroker_common::address::Address,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub max_in_flight: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl FakeProxy {
    /// On 127.0.0.1:0.
    pub async fn tcp(handler: Handler) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("tcp://{}", l.local_addr().unwrap())
            .parse()
            .unwrap();
        Self::start(Listener::Tcp(l), address, handler, None)
    }

    /// On a Unix socket at `path`.
    pub async fn unix_at(path: PathBuf, handler: Handler) -> Self {
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let address = format!("unix://{}", path.display()).parse().unwrap();
        Self::start(Listener::Unix(l), address, handler, None)
    }

    fn start(
        listener: Listener,
        address: keybroker_common::address::Address,
        handler: Handler,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, m, c) = (seen.clone(), max_in_flight.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream: Box<dyn Io> = match &listener {
                    Listener::Tcp(l) => Box::new(l.accept().await.unwrap().0),
                    Listener::Unix(l) => Box::new(l.accept().await.unwrap().0),
                };
                let n = c.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(stream, n, handler.clone(), s.clone(), m.clone()));
            }
        });
        Self {
            address,
            seen,
            max_in_flight,
            connections,
            task,
            _dir: dir,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

async fn serve(
    stream: Box<dyn Io>,
    connection: usize,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_in_flight: Arc<AtomicUsize>,
) {
    let (mut r, mut w) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            match frame {
                Some(f) => {
                    if w.write_all(&f).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut buf = vec![0u8; 64 * 1024];
    let mut handshaken = false;
    let mut replies = tokio::task::JoinSet::new();
    'outer: loop {
        while let Some(msg) = decoder.next_message().unwrap() {
            match msg {
                Message::Hello { versions, .. } => {
                    assert!(!handshaken);
                    handshaken = true;
                    let version = protocol::negotiate(versions).unwrap();
                    let ack = Message::HelloAck {
                        version,
                        server: "fake-proxy".into(),
                    };
                    tx.send(Some(protocol::encode(&ack).unwrap())).unwrap();
                }
                Message::Request {
                    id,
                    timeout_ms,
                    request,
                } => {
                    assert!(handshaken);
                    let s = Seen {
                        connection,
                        id,
                        timeout_ms,
                        request,
                    };
                    seen.lock().unwrap().push(s.clone());
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    match handler(&s) {
                        Action::Reply { delay, result } => {
                            let (tx, in_flight) = (tx.clone(), in_flight.clone());
                            replies.spawn(async move {
                                tokio::time::sleep(delay).await;
                                let m = Message::Response { id, result };
                                let _ = tx.send(Some(protocol::encode(&m).unwrap()));
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                        Action::Later { delay, answer } => {
                            let (tx, in_flight) = (tx.clone(), in_flight.clone());
                            replies.spawn(async move {
                                tokio::time::sleep(delay).await;
                                let result = tokio::task::spawn_blocking(answer).await.unwrap();
                                let m = Message::Response { id, result };
                                let _ = tx.send(Some(protocol::encode(&m).unwrap()));
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                        Action::Raw(bytes) => {
                            tx.send(Some(bytes)).unwrap();
                        }
                        Action::Ignore => {}
                        Action::Drop => break 'outer,
                        Action::GoodbyeThen(result) => {
                            tx.send(Some(protocol::encode(&Message::Goodbye).unwrap()))
                                .unwrap();
                            let m = Message::Response { id, result };
                            tx.send(Some(protocol::encode(&m).unwrap())).unwrap();
                        }
                    }
                }
                other => panic!("fake proxy got {other:?}"),
            }
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
    replies.abort_all();
    let _ = tx.send(None);
    let _ = writer.await;
}

pub fn now() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

/// The SPKI of a request's verified attestation document.
pub fn recipient_spki(verifier: &Verifier, recipient: Option<&RecipientInfo>) -> Vec<u8> {
    let r = recipient.expect("request carries a Recipient");
    assert_eq!(
        r.key_encryption_algorithm,
        KeyEncryptionAlgorithm::RsaesOaepSha256
    );
    let verified = verifier
        .verify(&r.attestation_document.0, now())
        .expect("attestation verifies");
    verified.document().public_key.clone().unwrap()
}

pub fn seal(spki: &[u8], plaintext: &[u8]) -> Blob {
    Blob(encrypt_for_recipient(spki, plaintext, &SystemRandom::new()).unwrap())
}

/// What a parent mounting a padding-oracle probe does to a
/// `CiphertextForRecipient` whose plaintext is a multiple of 16 bytes long
/// (a data key of `AES_256`), so that its last block is all padding (16
/// bytes of 0x10): it flips the last byte of the block before, which flips
/// the same bit of the last plaintext byte. With `valid_padding` the last
/// byte becomes 0x01 (valid PKCS#7 padding, and a plaintext 15 bytes longer
/// with a garbled block); without, 0x00 (never valid).
pub fn probe_padding(cfr: &[u8], valid_padding: bool) -> Vec<u8> {
    let parts = keybroker_common::cms::parse(cfr).unwrap();
    let ct = &parts.ciphertext;
    assert!(ct.len() >= 32, "needs a block before the last");
    let tail = &ct[ct.len() - 32..];
    let at = cfr.windows(32).position(|w| w == tail).unwrap() + 15;
    let mut out = cfr.to_vec();
    out[at] ^= if valid_padding { 0x10 ^ 0x01 } else { 0x10 };
    out
}

/// A P-384 public key (DER SubjectPublicKeyInfo) of the caller's.
pub fn p384_spki() -> Vec<u8> {
    use aws_lc_rs::agreement::{ECDH_P384, PrivateKey};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let key = PrivateKey::generate(&ECDH_P384).unwrap();
    let der: PublicKeyX509Der<'_> = key.compute_public_key().unwrap().as_der().unwrap();
    der.as_ref().to_vec()
}

pub const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// A fake KMS: data key = 32 or N bytes of a pattern, `CiphertextBlob` =
/// `"FAKE" || plaintext` (fake, obviously), `Decrypt` strips the prefix.
pub fn kms_answer(verifier: &Verifier, s: &Seen) -> Result<KmsResponse, WireError> {
    let key = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7) ^ (s.id as u8))
            .collect()
    };
    let wrap = |p: &[u8]| Blob([b"FAKE".as_slice(), p].concat());
    Ok(match &s.request {
        KmsRequest::GenerateDataKey(r) => {
            let n = r
                .key_spec
                .map(|k| k.byte_len())
                .or(r.number_of_bytes.map(|n| n as usize))
                .unwrap();
            let p = key(n);
            KmsResponse::GenerateDataKey(GenerateDataKeyResponse {
                key_id: Some(ARN.into()),
                ciphertext_blob: Some(wrap(&p)),
                ciphertext_for_recipient: Some(seal(
                    &recipient_spki(verifier, r.recipient.as_ref()),
                    &p,
                )),
                ..Default::default()
            })
        }
        KmsRequest::Decrypt(r) => {
            let blob = &r.ciphertext_blob.as_ref().unwrap().0;
            let Some(p) = blob.strip_prefix(b"FAKE") else {
                return Err(WireError::kms(KmsError::new(
                    "InvalidCiphertextException",
                    "not ours",
                )));
            };
            KmsResponse::Decrypt(DecryptResponse {
                key_id: Some(ARN.into()),
                encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
                ciphertext_for_recipient: Some(seal(
                    &recipient_spki(verifier, r.recipient.as_ref()),
                    p,
                )),
                ..Default::default()
            })
        }
        KmsRequest::GenerateRandom(r) => {
            let p = key(r.number_of_bytes.unwrap() as usize);
            KmsResponse::GenerateRandom(GenerateRandomResponse {
                plaintext: None,
                ciphertext_for_recipient: Some(seal(
                    &recipient_spki(verifier, r.recipient.as_ref()),
                    &p,
                )),
            })
        }
        KmsRequest::GenerateDataKeyPair(r) => {
            let p = key(1200);
            KmsResponse::GenerateDataKeyPair(GenerateDataKeyPairResponse {
                private_key_ciphertext_blob: Some(wrap(&p)),
                public_key: Some(Blob(vec![0x30; 91])),
                key_id: Some(ARN.into()),
                key_pair_spec: r.key_pair_spec,
                ciphertext_for_recipient: Some(seal(
                    &recipient_spki(verifier, r.recipient.as_ref()),
                    &p,
                )),
                ..Default::default()
            })
        }
        KmsRequest::GenerateDataKeyWithoutPlaintext(_) => {
            KmsResponse::GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextResponse {
                key_id: Some(ARN.into()),
                ciphertext_blob: Some(wrap(&key(32))),
                key_material_id: None,
            })
        }
        KmsRequest::GenerateDataKeyPairWithoutPlaintext(r) => {
            KmsResponse::GenerateDataKeyPairWithoutPlaintext(
                GenerateDataKeyPairWithoutPlaintextResponse {
                    private_key_ciphertext_blob: Some(wrap(&key(100))),
                    public_key: Some(Blob(vec![0x30; 91])),
                    key_id: Some(ARN.into()),
                    key_pair_spec: r.key_pair_spec,
                    key_material_id: None,
                },
            )
        }
        KmsRequest::DeriveSharedSecret(r) => {
            let curve = EcdhCurve::of_spki(&r.public_key.as_ref().unwrap().0).unwrap();
            let p = key(curve.shared_secret_len());
            KmsResponse::DeriveSharedSecret(DeriveSharedSecretResponse {
                key_id: Some(ARN.into()),
                ciphertext_for_recipient: Some(seal(
                    &recipient_spki(verifier, r.recipient.as_ref()),
                    &p,
                )),
                key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
                key_origin: Some("AWS_KMS".into()),
                ..Default::default()
            })
        }
        KmsRequest::DescribeKey(r) => KmsResponse::DescribeKey(DescribeKeyResponse {
            key_metadata: Some(KeyMetadata {
                key_id: r.key_id.clone().unwrap(),
                arn: Some(ARN.into()),
                enabled: true,
                ..Default::default()
            }),
        }),
    })
}

/// A mock NSM, recipient keys under it, and a verifier for its root.
pub async fn keys() -> (RecipientKeys, Verifier) {
    keys_with(RecipientKeysConfig::default()).await
}

pub async fn keys_with(config: RecipientKeysConfig) -> (RecipientKeys, Verifier) {
    let ca = MockCa::generate().unwrap();
    let nsm = MockNsm::new(&ca, MockNsmConfig::default()).unwrap();
    let verifier = Verifier::from_trusted_roots([ca.root_der()]).unwrap();
    let keys = RecipientKeys::new(Arc::new(nsm), config).await.unwrap();
    (keys, verifier)
}

/// A handler answering every request like KMS after `delay`.
pub fn kms_handler(verifier: Verifier, delay: Duration) -> Handler {
    Arc::new(move |s| Action::Reply {
        delay,
        result: kms_answer(&verifier, s),
    })
}

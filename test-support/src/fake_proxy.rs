//! A fake parent proxy for tests of the enclave's client: it speaks the
//! framed protocol, records each request, and answers as a [`Handler`]
//! says; [`kms_handler`] answers like KMS, with `CiphertextForRecipient`
//! made by `keybroker_common::cms::encrypt_for_recipient` to the public key
//! of the request's verified attestation document.

// The fake KMS's patterns truncate on purpose.
#![allow(clippy::cast_possible_truncation, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use keybroker_common::attestation::Verifier;
use keybroker_common::cms::encrypt_for_recipient;
use keybroker_common::kms::*;
use keybroker_common::protocol::{self, Limits, Message, WireError};
use keybroker_framing::{FramedReader, FramedWriter, ReadError};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

pub use crate::now;

/// What the fake does with one request.
pub enum Action {
    /// Answer after `delay`.
    Reply {
        /// How long to wait before answering.
        delay: Duration,
        /// The answer.
        result: Result<KmsResponse, WireError>,
    },
    /// Compute the answer after `delay` (off the connection's read loop).
    Later {
        /// How long to wait before computing the answer.
        delay: Duration,
        /// Computes the answer (on a blocking thread).
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
    /// Which connection (0 for the first accepted).
    pub connection: usize,
    /// The request id.
    pub id: u64,
    /// The request's `timeout_ms`.
    pub timeout_ms: Option<u32>,
    /// The request.
    pub request: KmsRequest,
}

/// Decides what the fake does with each request.
pub type Handler = Arc<dyn Fn(&Seen) -> Action + Send + Sync>;

/// A running fake proxy; stops when dropped.
pub struct FakeProxy {
    /// Where it listens.
    pub address: keybroker_common::address::Address,
    /// Every request so far, in arrival order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The most requests in flight at once on one connection.
    pub max_in_flight: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
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
        Self::start(Listener::Tcp(l), address, handler)
    }

    /// On a Unix socket at `path` (a stale file there is replaced).
    pub async fn unix_at(path: PathBuf, handler: Handler) -> Self {
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let address = format!("unix://{}", path.display()).parse().unwrap();
        Self::start(Listener::Unix(l), address, handler)
    }

    fn start(
        listener: Listener,
        address: keybroker_common::address::Address,
        handler: Handler,
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
        }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A connection's byte stream.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// One connection: the handshake, then each request as the handler says.
/// Answers go through one writer task (in completion order), batched.
async fn serve(
    stream: Box<dyn Io>,
    connection: usize,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_in_flight: Arc<AtomicUsize>,
) {
    let (r, w) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut w = FramedWriter::new(w);
        // Ends when every sender is gone: the connection is over.
        if w.run_queue(&mut rx, |batch, frame| batch.push_encoded(&frame))
            .await
            .is_ok()
        {
            let _ = w.shutdown().await;
        }
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut reader = FramedReader::new(r, Limits::default());
    let mut handshaken = false;
    let mut replies = tokio::task::JoinSet::new();
    loop {
        let msg = match reader.next().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(ReadError::Truncated { .. } | ReadError::Io(_)) => break,
            Err(e) => panic!("fake proxy: bad frame: {e}"),
        };
        match msg {
            Message::Hello { versions, .. } => {
                assert!(!handshaken);
                handshaken = true;
                let version = protocol::negotiate(versions).unwrap();
                let ack = Message::HelloAck {
                    version,
                    server: "fake-proxy".into(),
                };
                tx.send(protocol::encode(&ack).unwrap()).unwrap();
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
                            let _ = tx.send(protocol::encode(&m).unwrap());
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Action::Later { delay, answer } => {
                        let (tx, in_flight) = (tx.clone(), in_flight.clone());
                        replies.spawn(async move {
                            tokio::time::sleep(delay).await;
                            let result = tokio::task::spawn_blocking(answer).await.unwrap();
                            let m = Message::Response { id, result };
                            let _ = tx.send(protocol::encode(&m).unwrap());
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Action::Raw(bytes) => {
                        tx.send(bytes).unwrap();
                    }
                    Action::Ignore => {}
                    Action::Drop => break,
                    Action::GoodbyeThen(result) => {
                        tx.send(protocol::encode(&Message::Goodbye).unwrap())
                            .unwrap();
                        let m = Message::Response { id, result };
                        tx.send(protocol::encode(&m).unwrap()).unwrap();
                    }
                }
            }
            other => panic!("fake proxy got {other:?}"),
        }
    }
    // Unanswered requests die with the connection; once their senders are
    // gone the writer flushes what is queued and closes.
    replies.shutdown().await;
    drop(tx);
    let _ = writer.await;
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

/// `plaintext` sealed to `spki` as KMS does (`CiphertextForRecipient`).
pub fn seal(spki: &[u8], plaintext: &[u8]) -> Blob {
    Blob(encrypt_for_recipient(spki, plaintext, &SystemRandom::new()).unwrap())
}

/// The key ARN the fake KMS answers with.
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
                    KmsErrorCode::InvalidCiphertext,
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

/// A handler answering every request like KMS after `delay`.
pub fn kms_handler(verifier: Verifier, delay: Duration) -> Handler {
    Arc::new(move |s| Action::Reply {
        delay,
        result: kms_answer(&verifier, s),
    })
}

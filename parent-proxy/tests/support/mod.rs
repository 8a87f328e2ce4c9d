//! A minimal protocol client for the server tests.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::attestation::{AttestationDocument, Digest, build_signed_document};
use keybroker_common::kms::*;
use keybroker_common::protocol::{FrameDecoder, Limits, Message, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A raw connection to the proxy.
pub struct Client {
    pub io: Box<dyn Stream>,
    decoder: FrameDecoder,
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Client {
    pub async fn connect(addr: &Address) -> Client {
        let io: Box<dyn Stream> = match addr {
            Address::Tcp(hp) => {
                Box::new(tokio::net::TcpStream::connect(hp.as_str()).await.unwrap())
            }
            Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.unwrap()),
            Address::Vsock { .. } => panic!("no vsock in tests"),
        };
        Client {
            io,
            decoder: FrameDecoder::new(Limits::default()),
        }
    }

    /// Connects and completes the handshake.
    pub async fn handshake(addr: &Address) -> Client {
        let mut c = Client::connect(addr).await;
        c.send(&Message::hello("test-client/1")).await;
        match c.recv().await {
            Some(Message::HelloAck { version, .. }) => {
                assert_eq!(version, keybroker_common::protocol::PROTOCOL_VERSION)
            }
            other => panic!("expected HelloAck, got {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, msg: &Message) {
        self.io.write_all(&encode(msg).unwrap()).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    pub async fn request(&mut self, id: u64, timeout_ms: Option<u32>, request: KmsRequest) {
        self.send(&Message::Request {
            id,
            timeout_ms,
            request,
        })
        .await;
    }

    /// The next message, `None` at end of stream. Panics after 10 s.
    pub async fn recv(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(m) = self.decoder.next_message().unwrap() {
                    return Some(m);
                }
                let mut buf = [0u8; 8192];
                match self.io.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.decoder.push(&buf[..n]),
                }
            }
        })
        .await
        .expect("no message within 10 s")
    }
}

/// A DescribeKey request whose key id tells the fake backend what to do.
pub fn describe(key: &str) -> KmsRequest {
    KmsRequest::DescribeKey(DescribeKeyRequest {
        key_id: Some(key.into()),
        grant_tokens: None,
    })
}

/// The DescribeKey response echoing `key`.
pub fn described(key: &str) -> KmsResponse {
    KmsResponse::DescribeKey(DescribeKeyResponse {
        key_metadata: Some(KeyMetadata {
            key_id: key.into(),
            enabled: true,
            ..Default::default()
        }),
    })
}

/// The key id a DescribeKey response echoes.
pub fn echoed(resp: &KmsResponse) -> String {
    match resp {
        KmsResponse::DescribeKey(d) => d.key_metadata.as_ref().unwrap().key_id.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Captures everything the proxy logs on this test's thread (the tests use
/// the current-thread runtime, so every proxy task runs here), in the
/// production format ([`keybroker_proxy::audit::subscriber`]), all levels,
/// without colours.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures text logs until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        self.install_format(keybroker_proxy::audit::LogFormat::Text)
    }

    /// Captures logs in `format` until the guard is dropped.
    pub fn install_format(
        &self,
        format: keybroker_proxy::audit::LogFormat,
    ) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = keybroker_proxy::audit::subscriber(
            format,
            tracing_subscriber::EnvFilter::new("trace"),
            false,
            move || LogWriter(logs.0.clone()),
        );
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The `tunnel` audit lines (text format).
    pub fn tunnel_lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("keybroker_proxy::audit") && l.contains(" tunnel "))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `n` tunnel audit lines are logged.
    pub async fn wait_tunnel_lines(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let lines = self.tunnel_lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} tunnel audit lines:\n{}", self.text());
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A mock-NSM-like P-384 chain (rcgen's default validity covers "now").
pub struct Nsm {
    pub root: Vec<u8>,
    leaf: Vec<u8>,
    signer: aws_lc_rs::signature::EcdsaKeyPair,
}

#[allow(clippy::new_without_default)]
impl Nsm {
    pub fn new() -> Nsm {
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
        use rcgen::{
            BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P384_SHA384,
        };
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let leaf = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Nsm {
            root: root.der().to_vec(),
            leaf: leaf.der().to_vec(),
            signer: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P384_SHA384_FIXED_SIGNING,
                &leaf_key.serialize_der(),
            )
            .unwrap(),
        }
    }

    /// A signed document (made now, with a public key) whose PCR0 is 48
    /// bytes of `pcr0`, PCR2 48 bytes of `pcr2` (other PCRs zero).
    pub fn document(&self, pcr0: u8, pcr2: u8) -> Vec<u8> {
        self.build(&self.payload(pcr0, pcr2))
    }

    /// The payload of [`Nsm::document`]: made now, with a public key.
    pub fn payload(&self, pcr0: u8, pcr2: u8) -> AttestationDocument {
        AttestationDocument {
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            digest: Digest::Sha384,
            timestamp: keybroker_proxy::clock::now(),
            pcrs: (0u8..16)
                .map(|i| {
                    let b = match i {
                        0 => pcr0,
                        2 => pcr2,
                        _ => 0,
                    };
                    (i, vec![b; 48])
                })
                .collect(),
            certificate: self.leaf.clone(),
            cabundle: vec![self.root.clone()],
            public_key: Some(vec![0x30; 294]),
            user_data: None,
            nonce: None,
        }
    }

    /// Signs `doc` with the leaf key.
    pub fn build(&self, doc: &AttestationDocument) -> Vec<u8> {
        build_signed_document(doc, &self.signer, &aws_lc_rs::rand::SystemRandom::new()).unwrap()
    }
}

//! Support for the proxy tests: the raw protocol client and the test PKI
//! (from `keybroker-test-support`), DescribeKey helpers, log capture.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybroker_common::attestation::AttestationDocument;
use keybroker_common::kms::*;
use keybroker_test_support::pki::{TestPki, pcrs_filled};
#[allow(unused_imports)] // each test file uses some of them
pub use keybroker_test_support::raw_client::{Client, Stream};

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

/// A `GenerateRandom` request (32 bytes) with `doc` as its `Recipient`.
pub fn random(doc: Vec<u8>) -> KmsRequest {
    KmsRequest::GenerateRandom(GenerateRandomRequest {
        number_of_bytes: Some(32),
        custom_key_store_id: None,
        recipient: Some(RecipientInfo::new(doc)),
    })
}

/// Allowed image `name`: PCR0 and PCR2 of 48 bytes each.
pub fn image(name: &str, pcr0: u8, pcr2: u8) -> keybroker_proxy::measurements::AllowedImage {
    keybroker_proxy::measurements::AllowedImage::new(
        [(0, vec![pcr0; 48]), (2, vec![pcr2; 48])].into(),
    )
    .unwrap()
    .with_name(name)
    .unwrap()
}

/// Waits until a fake backend's call counter reaches `n` (polling, up to
/// 10 s).
pub async fn wait_calls(calls: &std::sync::atomic::AtomicUsize, n: usize) {
    for _ in 0..1000 {
        if calls.load(std::sync::atomic::Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} KMS calls");
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
        let guard = tracing::subscriber::set_default(subscriber);
        // A callsite another test's thread reached first, with no
        // subscriber there, may have cached "never": ask every one again.
        tracing::callsite::rebuild_interest_cache();
        guard
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

/// A mock-NSM-like P-384 chain (root -> leaf, from the shared test PKI),
/// making documents like the NSM's.
pub struct Nsm {
    pub root: Vec<u8>,
    pki: TestPki,
}

#[allow(clippy::new_without_default)]
impl Nsm {
    pub fn new() -> Nsm {
        let pki = TestPki::without_intermediate();
        Nsm {
            root: pki.root_der.clone(),
            pki,
        }
    }

    /// A signed document (made now, with a public key) whose PCR0 is 48
    /// bytes of `pcr0`, PCR2 48 bytes of `pcr2` (other PCRs zero).
    pub fn document(&self, pcr0: u8, pcr2: u8) -> Vec<u8> {
        self.build(&self.payload(pcr0, pcr2))
    }

    /// The payload of [`Nsm::document`]: made now, with a public key.
    pub fn payload(&self, pcr0: u8, pcr2: u8) -> AttestationDocument {
        self.pki.payload(
            pcrs_filled(0, &[(0, pcr0), (2, pcr2)]),
            Some(vec![0x30; 294]),
            keybroker_proxy::clock::now(),
        )
    }

    /// Signs `doc` with the leaf key.
    pub fn build(&self, doc: &AttestationDocument) -> Vec<u8> {
        self.pki.sign(doc)
    }
}

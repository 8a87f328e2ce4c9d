//! Interoperability with OpenSSL's CMS implementation, both directions.
//!
//! - OpenSSL encrypts (`openssl cms -encrypt -stream -keyid -aes-256-cbc` with
//!   RSAES-OAEP-SHA-256, the KMS-like shape) to a key we load from PKCS#8,
//!   and `cms::decrypt` recovers the plaintext.
//! - `cms::encrypt_for_recipient` encrypts to OpenSSL's key, and
//!   `openssl cms -decrypt` recovers the plaintext.
//!
//! Needs the `openssl` binary (OpenSSL 3). Without it the tests print a note
//! and pass, except under `CI=true`, where they fail.

// A test crate: its helpers (outside #[test] fns) may panic on bad fixtures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keybroker_common::cms::{self, RecipientPrivateKey};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the openssl binary is required under CI=true"
        );
        eprintln!("note: openssl not found, skipping the OpenSSL interop test");
    }
    found
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keybroker-cms-openssl-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RSA-2048 key (PKCS#8 PEM and DER) and a self-signed certificate with a
/// subjectKeyIdentifier, in `dir`.
fn make_key_and_cert(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=keybroker cms test",
            "-days",
            "1",
            "-addext",
            "subjectKeyIdentifier=hash",
        ],
    );
    // `pkey -outform DER` writes the traditional RSAPrivateKey; PKCS#8 needs `pkcs8`.
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
        ],
    );
    openssl(
        dir,
        &[
            "pkey", "-in", "key.pem", "-pubout", "-outform", "DER", "-out", "pub.der",
        ],
    );
}

fn plaintexts() -> Vec<Vec<u8>> {
    [1usize, 16, 32, 1000, 4112]
        .iter()
        .map(|&len| {
            (0..len)
                .map(|i| u8::try_from(i % 251).unwrap() ^ 0xa5)
                .collect()
        })
        .collect()
}

#[test]
fn openssl_encrypts_we_decrypt() {
    if !openssl_available() {
        return;
    }
    let dir = TempDir::new("enc");
    make_key_and_cert(&dir.0);
    let key =
        RecipientPrivateKey::from_pkcs8_der(&std::fs::read(dir.path("key.der")).unwrap()).unwrap();
    for pt in plaintexts() {
        std::fs::write(dir.path("pt.bin"), &pt).unwrap();
        openssl(
            &dir.0,
            &[
                "cms",
                "-encrypt",
                "-stream",
                "-keyid",
                "-aes-256-cbc",
                "-recip",
                "cert.pem",
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha256",
                "-keyopt",
                "rsa_mgf1_md:sha256",
                "-binary",
                "-outform",
                "DER",
                "-in",
                "pt.bin",
                "-out",
                "ct.ber",
            ],
        );
        let ber = std::fs::read(dir.path("ct.ber")).unwrap();
        // OpenSSL's shape: BER, indefinite lengths, a 20-byte SHA-1 SKI.
        assert_eq!(&ber[..2], &[0x30, 0x80]);
        let parts = cms::parse(&ber).unwrap();
        assert_eq!(parts.subject_key_identifier.len(), 20);
        let out = cms::decrypt(&ber, &key, Some(pt.len())).unwrap();
        assert_eq!(out.expose(), pt.as_slice(), "len {}", pt.len());
    }
}

#[test]
fn we_encrypt_openssl_decrypts() {
    if !openssl_available() {
        return;
    }
    let dir = TempDir::new("dec");
    make_key_and_cert(&dir.0);
    let spki = std::fs::read(dir.path("pub.der")).unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    for pt in plaintexts() {
        let ber = cms::encrypt_for_recipient(&spki, &pt, &rng).unwrap();
        std::fs::write(dir.path("ours.ber"), &ber).unwrap();
        openssl(
            &dir.0,
            &[
                "cms", "-decrypt", "-inform", "DER", "-in", "ours.ber", "-inkey", "key.pem",
                "-binary", "-out", "out.bin",
            ],
        );
        assert_eq!(
            std::fs::read(dir.path("out.bin")).unwrap(),
            pt,
            "len {}",
            pt.len()
        );
    }
}

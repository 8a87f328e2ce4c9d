//! The `keybroker-enclave` command line against the whole stack (mock KMS,
//! parent proxy in process; the enclave CLI as its own process, re-executed
//! through `keybroker-local component enclave ...` so its mock NSM's PCR0 is
//! the SHA-384 of that binary, which the key policy requires).
//!
//! Shown: a data key written to files and recovered from them with
//! `decrypt`, JSON output with base64 blobs, every key pair spec the mock
//! supports, `generate-random`, `derive-shared-secret` against `openssl`,
//! `attestation` with a nonce (verified against the mock CA), and the
//! distinct exit codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybroker_common::UnixMillis;
use keybroker_common::attestation::Verifier;
use keybroker_enclave::mock_nsm::default_pcr0_for;
use keybroker_harness::testkit::{ALIAS, InProcessStack};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_keybroker-local");

struct Cli {
    stack: InProcessStack,
    ca_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl Cli {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let pcr0 = default_pcr0_for(Path::new(LAUNCHER)).unwrap();
        let stack = InProcessStack::builder()
            .ca_dir(&ca_dir)
            .pcr0_in_policy(pcr0)
            .start()
            .await
            .unwrap();
        Self { stack, ca_dir, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `keybroker-enclave SUBCOMMAND --proxy .. --mock-nsm-ca .. ARGS`.
    async fn run(&self, subcommand: &str, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(LAUNCHER);
        cmd.args(["component", "enclave", subcommand]);
        if subcommand != "attestation" {
            // The stack is the broker path (the e2e path's CLI is covered by
            // the launcher's tests).
            cmd.args(["--mode", "broker", "--proxy", &self.stack.addr.to_string()]);
        }
        cmd.arg("--mock-nsm-ca").arg(&self.ca_dir).args(args);
        cmd.output().await.unwrap()
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "status {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn data_key_round_trips_through_files() {
    let cli = Cli::start().await;
    let (pt, ct, pt2) = (
        cli.path("key.bin"),
        cli.path("key.enc"),
        cli.path("key2.bin"),
    );
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();

    let out = cli
        .run(
            "generate-data-key",
            &[
                "--key-id",
                ALIAS,
                "--context",
                "purpose=cli",
                "--plaintext-file",
                &s(&pt),
                "--ciphertext-file",
                &s(&ct),
            ],
        )
        .await;
    let v = json(&out);
    assert_eq!(v["KeyId"], cli.stack.key_arn.as_str());
    // Fields written to files are left out of the JSON.
    assert!(
        v.get("Plaintext").is_none() && v.get("CiphertextBlob").is_none(),
        "{v}"
    );
    let key = std::fs::read(&pt).unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(
        std::fs::metadata(&pt).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let v = json(
        &cli.run(
            "decrypt",
            &[
                "--ciphertext-file",
                &s(&ct),
                "--context",
                "purpose=cli",
                "--key-id",
                ALIAS,
                "--plaintext-file",
                &s(&pt2),
            ],
        )
        .await,
    );
    assert_eq!(v["KeyId"], cli.stack.key_arn.as_str());
    assert_eq!(v["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(std::fs::read(&pt2).unwrap(), key);

    // The same from base64, printed as JSON.
    let blob = B64.encode(std::fs::read(&ct).unwrap());
    let v = json(
        &cli.run(
            "decrypt",
            &["--ciphertext-blob", &blob, "--context", "purpose=cli"],
        )
        .await,
    );
    assert_eq!(b64(&v["Plaintext"]), key);

    // Wrong context: KMS refuses, exit code 1, KMS's error on stderr.
    let out = cli
        .run(
            "decrypt",
            &["--ciphertext-blob", &blob, "--context", "purpose=other"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidCiphertextException"), "{err}");
    assert!(out.stdout.is_empty());

    // JSON output of a data key with NumberOfBytes.
    let v = json(
        &cli.run(
            "generate-data-key",
            &["--key-id", ALIAS, "--number-of-bytes", "48"],
        )
        .await,
    );
    assert_eq!(b64(&v["Plaintext"]).len(), 48);
    assert!(!b64(&v["CiphertextBlob"]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_and_open_round_trip_a_file() {
    let cli = Cli::start().await;
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let (plain, sealed, opened) = (cli.path("in.bin"), cli.path("in.kbev"), cli.path("out.bin"));
    // Several 64 KiB frames and a partial last one.
    let data: Vec<u8> = (0..300_001u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&plain, &data).unwrap();
    let cli = &cli;
    let envelope = |cmd: &'static str, input: &PathBuf, output: &PathBuf, ctx: &'static str| {
        let (input, output) = (s(input), s(output));
        async move {
            cli.run(
                cmd,
                &[
                    "--key-id",
                    ALIAS,
                    "--context",
                    ctx,
                    "--in",
                    &input,
                    "--out",
                    &output,
                ],
            )
            .await
        }
    };

    let v = json(&envelope("seal", &plain, &sealed, "file=in.bin").await);
    assert_eq!(v["InputBytes"], 300_001);
    let message = std::fs::read(&sealed).unwrap();
    assert_eq!(&message[..4], b"KBEV");
    assert!(
        message.windows(64).all(|w| w != &data[..64]),
        "plaintext in the message"
    );

    let v = json(&envelope("open", &sealed, &opened, "file=in.bin").await);
    assert_eq!(v["OutputBytes"], 300_001);
    assert_eq!(std::fs::read(&opened).unwrap(), data);
    std::fs::remove_file(&opened).unwrap();

    // Another context: KMS refuses the data key (exit 1), nothing written.
    let out = envelope("open", &sealed, &opened, "file=other").await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!opened.exists() && !opened.with_extension("partial").exists());

    // A flipped byte in the last frame: exit 6, and no output file, although
    // the earlier frames authenticated.
    let mut tampered = message.clone();
    *tampered.last_mut().unwrap() ^= 1;
    std::fs::write(&sealed, &tampered).unwrap();
    let out = envelope("open", &sealed, &opened, "file=in.bin").await;
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(!opened.exists() && !opened.with_extension("partial").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn key_pairs_random_bytes_and_attestation() {
    let cli = Cli::start().await;
    for spec in [
        "RSA_2048",
        "RSA_3072",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
    ] {
        let v = json(
            &cli.run(
                "generate-data-key-pair",
                &["--key-id", ALIAS, "--key-pair-spec", spec],
            )
            .await,
        );
        assert_eq!(v["KeyPairSpec"], spec);
        assert_eq!(b64(&v["PrivateKeyPlaintext"])[0], 0x30, "{spec}");
        assert_eq!(b64(&v["PublicKey"])[0], 0x30, "{spec}");
        assert!(!b64(&v["PrivateKeyCiphertextBlob"]).is_empty());
    }
    // SM2 exists in the API, the mock (like KMS outside China) refuses it.
    let out = cli
        .run(
            "generate-data-key-pair",
            &["--key-id", ALIAS, "--key-pair-spec", "SM2"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    let v = json(
        &cli.run("generate-random", &["--number-of-bytes", "64"])
            .await,
    );
    assert_eq!(b64(&v["Plaintext"]).len(), 64);

    // A fresh attestation document for a nonce, verifiable against the CA.
    let doc_path = cli.path("doc.cbor");
    let v = json(
        &cli.run(
            "attestation",
            &[
                "--nonce",
                "00112233",
                "--user-data",
                "cafe",
                "--output-file",
                doc_path.to_str().unwrap(),
            ],
        )
        .await,
    );
    assert!(v.get("AttestationDocument").is_none());
    let doc = std::fs::read(&doc_path).unwrap();
    assert_eq!(v["DocumentBytes"], doc.len());
    let verifier = Verifier::from_trusted_roots([cli.stack.ca.root_der()]).unwrap();
    let now = UnixMillis(v["Timestamp"].as_u64().unwrap());
    let verified = verifier.verify(&doc, now).unwrap();
    assert_eq!(
        verified.document().nonce.as_deref(),
        Some(&[0, 0x11, 0x22, 0x33][..])
    );
    assert_eq!(
        verified.document().user_data.as_deref(),
        Some(&[0xca, 0xfe][..])
    );
    assert_eq!(
        v["Pcrs"]["PCR0"],
        hex::encode(default_pcr0_for(Path::new(LAUNCHER)).unwrap())
    );
}

/// `derive-shared-secret` with keys made by `openssl`: the shared secret the
/// enclave gets equals `openssl pkeyutl -derive` of the caller's private key
/// with the KMS key's public key (from `GetPublicKey`), for a PEM and a DER
/// public key, and `--shared-secret-file` writes it (mode 0600) instead of
/// printing it.
#[tokio::test(flavor = "multi_thread")]
async fn derive_shared_secret_matches_openssl() {
    use keybroker_harness::local::enclave_key_policy;
    use keybroker_harness::mock_kms::DEFAULT_ACCOUNT_ID;
    let cli = Cli::start().await;
    let pcr0 = hex::encode(default_pcr0_for(Path::new(LAUNCHER)).unwrap());
    let sdk = &cli.stack.sdk;
    let arn = sdk
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP384)
        .key_usage(aws_sdk_kms::types::KeyUsageType::KeyAgreement)
        .policy(enclave_key_policy(DEFAULT_ACCOUNT_ID, &pcr0).to_string())
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let kms_public = sdk.get_public_key().key_id(&arn).send().await.unwrap();
    let kms_der = cli.path("kms.der");
    std::fs::write(&kms_der, kms_public.public_key().unwrap().as_ref()).unwrap();

    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (.ci/run)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    let (key, pem, der, kms_pem) = (
        cli.path("mine.pem"),
        cli.path("mine.pub.pem"),
        cli.path("mine.pub.der"),
        cli.path("kms.pem"),
    );
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        &path(&key),
    ]);
    openssl(&["pkey", "-in", &path(&key), "-pubout", "-out", &path(&pem)]);
    openssl(&[
        "pkey",
        "-in",
        &path(&key),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        &path(&der),
    ]);
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        &path(&kms_der),
        "-out",
        &path(&kms_pem),
    ]);
    let expected = openssl(&[
        "pkeyutl",
        "-derive",
        "-inkey",
        &path(&key),
        "-peerkey",
        &path(&kms_pem),
    ]);
    assert_eq!(expected.len(), 48);

    let v = json(
        &cli.run(
            "derive-shared-secret",
            &["--key-id", &arn, "--public-key-file", &path(&pem)],
        )
        .await,
    );
    assert_eq!(b64(&v["SharedSecret"]), expected);
    assert_eq!(v["KeyId"], arn.as_str());
    assert_eq!(v["KeyAgreementAlgorithm"], "ECDH");

    let secret_file = cli.path("shared.bin");
    let v = json(
        &cli.run(
            "derive-shared-secret",
            &[
                "--key-id",
                &arn,
                "--public-key-file",
                &path(&der),
                "--shared-secret-file",
                &path(&secret_file),
            ],
        )
        .await,
    );
    assert!(v.get("SharedSecret").is_none(), "{v}");
    assert_eq!(std::fs::read(&secret_file).unwrap(), expected);
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A public key on another curve than the KMS key's is KMS's error.
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &path(&key),
    ]);
    openssl(&["pkey", "-in", &path(&key), "-pubout", "-out", &path(&pem)]);
    let out = cli
        .run(
            "derive-shared-secret",
            &["--key-id", &arn, "--public-key-file", &path(&pem)],
        )
        .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_tell_the_cause() {
    let cli = Cli::start().await;
    // Usage errors: 2 (both KeySpec and NumberOfBytes; bad enum; bad hex).
    for args in [
        &[
            "generate-data-key",
            "--key-id",
            ALIAS,
            "--key-spec",
            "AES_256",
            "--number-of-bytes",
            "8",
        ][..],
        &[
            "generate-data-key",
            "--key-id",
            ALIAS,
            "--key-spec",
            "AES_512",
        ],
        &["decrypt", "--ciphertext-blob", "!!!"],
        &["attestation", "--nonce", "xyz"],
    ] {
        let out = cli.run(args[0], &args[1..]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    // Refused by KMS: 1 (unknown key).
    let out = cli
        .run("generate-data-key", &["--key-id", "alias/none"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFoundException"));
    // Local I/O: 5.
    let out = cli
        .run(
            "generate-random",
            &[
                "--number-of-bytes",
                "8",
                "--plaintext-file",
                "/nonexistent/dir/x",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // Proxy unreachable: 3 (retry later).
    let out = tokio::process::Command::new(LAUNCHER)
        .args([
            "component",
            "enclave",
            "generate-random",
            "--number-of-bytes",
            "8",
        ])
        .args([
            "--mode",
            "broker",
            "--proxy",
            "tcp://127.0.0.1:1",
            "--timeout-ms",
            "300",
        ])
        .arg("--mock-nsm-ca")
        .arg(&cli.ca_dir)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_drops_to_the_given_user_after_binding() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root; skipping the privilege-drop test");
        return;
    }
    let cli = Cli::start().await;
    // The socket's directory must let the service user remove it at exit.
    let sock_dir = cli.path("run");
    std::fs::create_dir(&sock_dir).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = sock_dir.join("kms.sock");
    let mut child = tokio::process::Command::new(LAUNCHER)
        .args([
            "component",
            "enclave",
            "serve",
            "--mode",
            "broker",
            "--proxy",
        ])
        .arg(cli.stack.addr.to_string())
        .arg("--mock-nsm-ca")
        .arg(&cli.ca_dir)
        .arg("--unix")
        .arg(&sock)
        .args(["--user", "65532:65532"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(line, format!("listening: unix://{}", sock.display()));
    let pid = child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "65532 65532 65532 65532", "{status}");
    assert_eq!(field("Gid:"), "65532 65532 65532 65532", "{status}");
    assert_eq!(field("Groups:"), "");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
    // It still serves (as root, the test may connect to the socket).
    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (status, text) = support::raw_http_on(
        stream,
        "localhost",
        "POST / HTTP/1.1\r\nX-Amz-Target: TrentService.GenerateRandom",
        br#"{"NumberOfBytes":8}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().await.unwrap().success());
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// In an enclave the program's exit ends the enclave, and `/run` is a fresh
/// tmpfs: `serve` with no proxy to reach stays up, keeps its endpoint
/// answering `DependencyTimeoutException` (503, retryable) instead of
/// exiting, logs that it is not ready, and creates its socket's directory
/// (owned by `--user` when it runs as root).
#[tokio::test(flavor = "multi_thread")]
async fn serve_without_a_proxy_stays_up_creates_its_socket_dir_and_answers_503() {
    let cli = Cli::start().await;
    let sock = cli.path("fresh-run").join("keybroker").join("kms.sock");
    assert!(!sock.parent().unwrap().exists());
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = tokio::process::Command::new(LAUNCHER);
    cmd.args([
        "component",
        "enclave",
        "serve",
        "--mode",
        "broker",
        "--proxy",
        "tcp://127.0.0.1:1",
    ])
    .args(["--timeout-ms", "300", "--mock-nsm-ca"])
    .arg(&cli.ca_dir)
    .arg("--unix")
    .arg(&sock)
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    if root {
        cmd.args(["--user", "65532:65532"]);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(line, format!("listening: unix://{}", sock.display()));
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::metadata(sock.parent().unwrap()).unwrap();
    if root {
        assert_eq!((dir.uid(), dir.gid()), (65532, 65532));
    }
    assert_eq!(dir.mode() & 0o777, 0o755);
    // Longer than the old 300 ms connect limit, after which it exited.
    for _ in 0..3 {
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (status, text) = support::raw_http_on(
            stream,
            "localhost",
            "POST / HTTP/1.1\r\nX-Amz-Target: TrentService.GenerateDataKey",
            br#"{"KeyId":"alias/x","KeySpec":"AES_256"}"#,
        )
        .await;
        assert_eq!(status, 503, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["__type"], "DependencyTimeoutException", "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not ready"), "{stderr}");
}

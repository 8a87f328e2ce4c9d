//! End-to-end mode with AWS's stock `vsock-proxy` on the parent instead of
//! `keybroker-proxy` (issue 10, "Credentials"; docs/deploy.md, "With the
//! stock vsock-proxy").
//!
//! `vsock-proxy` relays every connection on its port to one fixed
//! `host:port` and knows no framing, so here it is a dumb TCP relay
//! ([`relay`]): one to the mock KMS (HTTPS under its test CA, SigV4 verified
//! with a session token), one to a mock instance metadata service that
//! speaks IMDSv2 only ([`imds`]). The enclave CLI (its own process, mock
//! NSM) gets a data key with `--vsock-proxy-kms` and `--vsock-proxy-imds`,
//! and nothing else from the parent: the credentials come from IMDS.
//!
//! Shown: the data key arrives; IMDS was asked with a session token (a
//! token-less GET is refused, as IMDSv2-only instances do); a relay pointed
//! at another server ends in a TLS error (exit code 6) with no key; relays
//! given in broker mode are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_kms::config::Credentials;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use keybroker_enclave::MockCa;
use keybroker_enclave::mock_nsm::default_pcr0_for;
use keybroker_harness::local::{DEMO_KEY_ALIAS, REGION, enclave_key_policy, kms_client_with};
use keybroker_harness::mock_kms::{
    DEFAULT_ACCOUNT_ID, MockKms, MockKmsConfig, MockKmsCredentials, MockKmsTls, RunningMockKms,
};
use tokio::net::{TcpListener, TcpStream};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_keybroker-local");
const AKID: &str = "ASIAKEYBROKERROLE";
const SECRET: &str = "instance-role-secret";
const TOKEN: &str = "instance-role-session-token";
const ROLE: &str = "keybroker-enclave-role";

/// A stand-in for `vsock-proxy PORT HOST PORT`: every connection accepted is
/// relayed to `target`, byte for byte. Returns its address and a count of
/// the connections it relayed.
async fn relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

/// What the mock IMDS saw.
#[derive(Default)]
struct ImdsLog {
    tokens_issued: AtomicU64,
    credential_reads: AtomicU64,
    refused_without_token: AtomicU64,
}

/// A mock instance metadata service, IMDSv2 only: `PUT /latest/api/token`
/// with a TTL header issues a token; the role listing and the role's
/// credentials need it (else 401, as on an instance that requires IMDSv2).
async fn imds() -> (SocketAddr, Arc<ImdsLog>) {
    const ISSUED: &str = "imds-session-token";
    let log = Arc::new(ImdsLog::default());
    let authorized = |log: &ImdsLog, headers: &HeaderMap| {
        let ok = headers
            .get("x-aws-ec2-metadata-token")
            .is_some_and(|t| t == ISSUED);
        if !ok {
            log.refused_without_token.fetch_add(1, Ordering::Relaxed);
        }
        ok
    };
    let app = Router::new()
        .route(
            "/latest/api/token",
            put({
                let log = log.clone();
                move |headers: HeaderMap| async move {
                    if headers
                        .get("x-aws-ec2-metadata-token-ttl-seconds")
                        .is_none()
                    {
                        return (StatusCode::BAD_REQUEST, String::new());
                    }
                    log.tokens_issued.fetch_add(1, Ordering::Relaxed);
                    (StatusCode::OK, ISSUED.to_owned())
                }
            }),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/",
            get({
                let log = log.clone();
                move |headers: HeaderMap| async move {
                    if !authorized(&log, &headers) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    (StatusCode::OK, format!("{ROLE}\n"))
                }
            }),
        )
        .route(
            &format!("/latest/meta-data/iam/security-credentials/{ROLE}"),
            get({
                let log = log.clone();
                move |headers: HeaderMap| async move {
                    if !authorized(&log, &headers) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    log.credential_reads.fetch_add(1, Ordering::Relaxed);
                    let expiration = time::OffsetDateTime::now_utc() + time::Duration::hours(6);
                    let expiration = expiration
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap();
                    let document = serde_json::json!({
                        "Code": "Success",
                        "LastUpdated": "2026-12-01T00:00:00Z",
                        "Type": "AWS-HMAC",
                        "AccessKeyId": AKID,
                        "SecretAccessKey": SECRET,
                        "Token": TOKEN,
                        "Expiration": expiration,
                    });
                    (StatusCode::OK, document.to_string())
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, log)
}

/// The mock KMS over HTTPS that accepts only the instance role's
/// credentials (with the session token), and the demo alias for a key whose
/// policy admits the launcher's PCR0.
struct Kms {
    running: RunningMockKms,
    ca_pem: std::path::PathBuf,
    nsm_ca_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn kms() -> Kms {
    let dir = tempfile::tempdir().unwrap();
    let nsm_ca_dir = dir.path().join("nsm-ca");
    let nsm_ca = MockCa::load_or_create(&nsm_ca_dir).unwrap();
    let tls = MockKmsTls::load_or_create(&dir.path().join("kms-tls"), &[]).unwrap();
    let ca_pem = dir.path().join("kms-ca.pem");
    std::fs::write(&ca_pem, tls.ca_pem()).unwrap();
    let running = MockKms::new(MockKmsConfig {
        attestation_roots_der: vec![nsm_ca.root_der().to_vec()],
        tls: Some(tls),
        credentials: Some(MockKmsCredentials::new(AKID, SECRET, Some(TOKEN.into()))),
        ..MockKmsConfig::default()
    })
    .unwrap()
    .spawn("127.0.0.1:0")
    .await
    .unwrap();
    let pcr0 = hex::encode(default_pcr0_for(Path::new(LAUNCHER)).unwrap());
    let pem = std::fs::read_to_string(&ca_pem).unwrap();
    // The administrator signs with the role's temporary credentials too.
    let role = Credentials::new(AKID, SECRET, Some(TOKEN.into()), None, "test");
    let sdk = kms_client_with(&running.endpoint(), Some(&pem), role);
    let key = sdk
        .create_key()
        .policy(enclave_key_policy(DEFAULT_ACCOUNT_ID, &pcr0).to_string())
        .send()
        .await
        .unwrap();
    let arn = key.key_metadata().unwrap().arn().unwrap().to_owned();
    sdk.create_alias()
        .alias_name(DEMO_KEY_ALIAS)
        .target_key_id(arn)
        .send()
        .await
        .unwrap();
    Kms {
        running,
        ca_pem,
        nsm_ca_dir,
        _dir: dir,
    }
}

impl Kms {
    /// `keybroker-enclave generate-data-key` in e2e mode through the relays.
    async fn generate_data_key(
        &self,
        kms_relay: SocketAddr,
        imds_relay: SocketAddr,
        mode: &str,
    ) -> std::process::Output {
        let port = self.running.addr().port();
        let alias_arn = format!("arn:aws:kms:{REGION}:{DEFAULT_ACCOUNT_ID}:{DEMO_KEY_ALIAS}");
        tokio::process::Command::new(LAUNCHER)
            .args(["component", "enclave", "generate-data-key", "--mode", mode])
            .args(["--region", REGION])
            .arg("--kms-endpoint")
            .arg(format!("https://localhost:{port}"))
            .args(["--allow-key", &alias_arn])
            .arg("--mock-kms-ca")
            .arg(&self.ca_pem)
            .arg("--vsock-proxy-kms")
            .arg(format!("tcp://{kms_relay}"))
            .arg("--vsock-proxy-imds")
            .arg(format!("tcp://{imds_relay}"))
            .arg("--mock-nsm-ca")
            .arg(&self.nsm_ca_dir)
            .args(["--key-id", DEMO_KEY_ALIAS, "--key-spec", "AES_256"])
            .args(["--timeout-ms", "5000"])
            .output()
            .await
            .unwrap()
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_through_two_stock_vsock_proxies_with_imds_credentials() {
    let kms = kms().await;
    let (imds_addr, imds_log) = imds().await;
    let (kms_relay, kms_relayed) = relay(kms.running.addr()).await;
    let (imds_relay, imds_relayed) = relay(imds_addr).await;

    let out = kms.generate_data_key(kms_relay, imds_relay, "e2e").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plaintext = answer["Plaintext"].as_str().unwrap();
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, plaintext)
            .unwrap()
            .len(),
        32
    );
    assert!(
        answer["KeyId"]
            .as_str()
            .unwrap()
            .starts_with(&format!("arn:aws:kms:{REGION}:{DEFAULT_ACCOUNT_ID}:key/"))
    );
    // The credentials came from IMDS through its relay, with a session token.
    assert_eq!(imds_log.tokens_issued.load(Ordering::Relaxed), 1);
    assert_eq!(imds_log.credential_reads.load(Ordering::Relaxed), 1);
    assert_eq!(imds_log.refused_without_token.load(Ordering::Relaxed), 0);
    assert_eq!(imds_relayed.load(Ordering::Relaxed), 1);
    // The KMS call went through the other relay.
    assert!(kms_relayed.load(Ordering::Relaxed) >= 1);
    assert!(!stderr(&out).contains(SECRET) && !stderr(&out).contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_to_another_server_fails_tls_and_relays_need_e2e_mode() {
    let kms = kms().await;
    let (imds_addr, _) = imds().await;
    let (imds_relay, _) = relay(imds_addr).await;
    // The parent points the "KMS" relay at a server that is not the
    // configured endpoint (here, the plain-HTTP IMDS): the enclave's TLS
    // refuses it, and no key is printed.
    let (wrong_relay, _) = relay(imds_addr).await;
    let out = kms.generate_data_key(wrong_relay, imds_relay, "e2e").await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    let out = kms
        .generate_data_key(wrong_relay, imds_relay, "broker")
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("e2e mode"), "{}", stderr(&out));
}

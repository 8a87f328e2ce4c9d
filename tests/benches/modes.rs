//! End-to-end mode against broker mode, in one run on this machine
//! (issue 10, "Measured").
//!
//! `cargo bench -p keybroker-harness --bench modes`. The parent proxy runs
//! as its own process (`keybroker-local component proxy`), so that its CPU
//! time can be read from `/proc`; the mock KMS and the two enclave clients
//! run in this process. Two mock KMS listeners share one state file (one
//! key): plain HTTP for the proxy's broker backend, and HTTPS under a test
//! CA with SigV4 verified for the enclave's tunnels. It prints `name: value`
//! lines and a `ratios` block:
//!
//! 1. warm `GenerateDataKey` latency (median of sequential calls), e2e over
//!    broker;
//! 2. TLS handshakes per 1,000 requests of the e2e client under steady load
//!    from 64 callers (after a warm-up run at the same load, during which
//!    the connection pool grows to one connection per concurrent caller);
//! 3. the proxy's CPU time per request (utime + stime of its process), tunnel
//!    over broker, under the same 64-caller load;
//! 4. e2e data keys per second at 64 callers over 1 caller.
//!
//! Caveat for ratio 1: the broker's hop from the proxy to the mock KMS is
//! plain HTTP here, while the e2e path pays TLS (and SigV4 verification) in
//! the mock KMS; against real KMS both modes pay TLS, so the ratio here
//! overstates what e2e mode costs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use keybroker_test_support::bench::median;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keybroker_common::key_allowlist::KeyAllowlist;
use keybroker_enclave::e2e::{E2eConfig, KmsUrl, ParentLink, ProxyLink, TrustRoots};
use keybroker_enclave::{
    Client, ClientConfig, MockCa, MockNsm, MockNsmConfig, RecipientKeys, RecipientKeysConfig,
};
use keybroker_harness::local::{
    LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY, enclave_key_policy, kms_client,
};
use keybroker_harness::mock_kms::{
    DEFAULT_ACCOUNT_ID, MockKms, MockKmsConfig, MockKmsCredentials, MockKmsTls,
};
use keybroker_harness::testkit::{PCR0, connect_enclave, gdk};
use tokio::io::AsyncBufReadExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ALIAS: &str = "alias/keybroker-bench";
const LATENCY_ITERS: usize = 300;
const LOAD_RUN: Duration = Duration::from_secs(4);

async fn latency(client: &Client) -> Duration {
    for _ in 0..30 {
        client.generate_data_key(gdk(ALIAS)).await.unwrap();
    }
    let mut samples = Vec::with_capacity(LATENCY_ITERS);
    for _ in 0..LATENCY_ITERS {
        let t = Instant::now();
        let key = client.generate_data_key(gdk(ALIAS)).await.unwrap();
        samples.push(t.elapsed());
        assert_eq!(key.plaintext.expose().len(), 32);
    }
    median(samples)
}

/// Requests completed by `callers` concurrent callers in `LOAD_RUN`.
async fn load(client: &Arc<Client>, callers: usize) -> (u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + LOAD_RUN;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (client, done) = (Arc::clone(client), Arc::clone(&done));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let key = client.generate_data_key(gdk(ALIAS)).await.unwrap();
                assert_eq!(key.plaintext.expose().len(), 32);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    (done.load(Ordering::Relaxed), start.elapsed())
}

/// utime + stime of process `pid`, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file are 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Proxy CPU ticks per 1,000 requests, and the requests, under a 64-caller
/// load of `client`.
async fn proxy_cpu_per_1000(client: &Arc<Client>, proxy_pid: u32) -> (f64, u64) {
    let before = cpu_ticks(proxy_pid);
    let (n, _) = load(client, 64).await;
    let ticks = cpu_ticks(proxy_pid) - before;
    (ticks as f64 * 1000.0 / n as f64, n)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let nsm_dir = dir.path().join("nsm-ca");
    let nsm_ca = MockCa::load_or_create(&nsm_dir)?;
    let root_pem = nsm_ca.root_pem_path().unwrap();
    let state = dir.path().join("kms-state.json");

    // Mock KMS for the broker backend (plain HTTP); the key and alias.
    let plain = MockKms::new(MockKmsConfig {
        state_file: Some(state.clone()),
        attestation_roots_der: vec![nsm_ca.root_der().to_vec()],
        ..MockKmsConfig::default()
    })?
    .spawn("127.0.0.1:0")
    .await?;
    let admin = kms_client(&plain.endpoint());
    let key_arn = admin
        .create_key()
        .policy(enclave_key_policy(DEFAULT_ACCOUNT_ID, &hex::encode(PCR0)).to_string())
        .send()
        .await?
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    admin
        .create_alias()
        .alias_name(ALIAS)
        .target_key_id(&key_arn)
        .send()
        .await?;
    // The same state over HTTPS with SigV4 verified, for the tunnels.
    let tls = MockKmsTls::load_or_create(&dir.path().join("kms-tls"), &[])?;
    let ca_pem = tls.ca_pem().to_owned();
    let https = MockKms::new(MockKmsConfig {
        state_file: Some(state),
        attestation_roots_der: vec![nsm_ca.root_der().to_vec()],
        tls: Some(tls),
        credentials: Some(MockKmsCredentials::new(
            LOCAL_ACCESS_KEY_ID,
            LOCAL_SECRET_ACCESS_KEY,
            None,
        )),
        ..MockKmsConfig::default()
    })?
    .spawn("127.0.0.1:0")
    .await?;
    let https_port = https.addr().port();

    // The proxy, as its own process: broker backend to the plain listener,
    // tunnels to the HTTPS one, the local credentials handed over.
    let mut proxy = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker-local"))
        .args([
            "component",
            "proxy",
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
        ])
        .args(["--kms-endpoint", &plain.endpoint(), "--region", "us-east-1"])
        .arg("--attestation-root")
        .arg(&root_pem)
        .args(["--pcr", &format!("0={}", hex::encode(PCR0))])
        .args(["--tunnel", &format!("localhost:{https_port}")])
        .args(["--max-in-flight", "1024"])
        .env("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_ACCESS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let proxy_pid = proxy.id().unwrap();
    let mut lines = tokio::io::BufReader::new(proxy.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await?.expect("proxy exited");
        if let Some(a) = line.strip_prefix("listening: ") {
            break a.trim().parse()?;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let broker = Arc::new(
        connect_enclave(&nsm_ca, &addr, MockNsmConfig::default().with_pcr(0, PCR0)).await?,
    );
    let nsm = MockNsm::new(&nsm_ca, MockNsmConfig::default().with_pcr(0, PCR0))?;
    let keys = RecipientKeys::new(Arc::new(nsm), RecipientKeysConfig::default()).await?;
    let e2e_config = E2eConfig::new(
        "us-east-1",
        KeyAllowlist::parse([format!(
            "arn:aws:kms:us-east-1:{DEFAULT_ACCOUNT_ID}:{ALIAS}"
        )])?,
    )?
    .with_endpoint(KmsUrl::parse(&format!("https://localhost:{https_port}"))?)
    .with_trust(TrustRoots::mock_with_dev_ca_pem(ca_pem.as_bytes())?);
    let link: Arc<dyn ParentLink> = Arc::new(ProxyLink::new(addr.clone()));
    let e2e = Arc::new(Client::connect_e2e(ClientConfig::new(addr), e2e_config, link, keys).await?);

    // 1. warm latency.
    let broker_latency = latency(&broker).await;
    let e2e_latency = latency(&e2e).await;
    println!(
        "broker_gdk_latency_us: {:.0}",
        broker_latency.as_secs_f64() * 1e6
    );
    println!("e2e_gdk_latency_us: {:.0}", e2e_latency.as_secs_f64() * 1e6);

    // 2 and 3. steady load from 64 callers, each mode in turn, after a
    // warm-up at that load (the e2e pool grows to one connection per
    // concurrent caller, 63 handshakes, once).
    let _ = load(&broker, 64).await;
    let _ = load(&e2e, 64).await;
    let (broker_cpu, broker_n) = proxy_cpu_per_1000(&broker, proxy_pid).await;
    let handshakes_before = e2e.stats().tls_handshakes;
    let (tunnel_cpu, e2e_n) = proxy_cpu_per_1000(&e2e, proxy_pid).await;
    let handshakes = e2e.stats().tls_handshakes - handshakes_before;
    let per_1000 = handshakes as f64 * 1000.0 / e2e_n as f64;
    println!("broker_requests_64_callers: {broker_n}");
    println!("e2e_requests_64_callers: {e2e_n}");
    println!("e2e_tls_handshakes_during_load: {handshakes}");
    println!("proxy_cpu_ticks_per_1000_requests_broker: {broker_cpu:.2}");
    println!("proxy_cpu_ticks_per_1000_requests_tunnel: {tunnel_cpu:.2}");

    // 4. e2e throughput, 64 callers over 1.
    let (n1, t1) = load(&e2e, 1).await;
    let (n64, t64) = load(&e2e, 64).await;
    let rate1 = n1 as f64 / t1.as_secs_f64();
    let rate64 = n64 as f64 / t64.as_secs_f64();
    println!("e2e_data_keys_per_s_1_caller: {rate1:.0}");
    println!("e2e_data_keys_per_s_64_callers: {rate64:.0}");

    println!("ratios:");
    println!(
        "  warm GenerateDataKey latency, e2e / broker: {:.2}x (goal <= 1.15x)",
        e2e_latency.as_secs_f64() / broker_latency.as_secs_f64()
    );
    println!("  TLS handshakes per 1000 requests at 64 callers: {per_1000:.2} (goal < 1)");
    println!(
        "  proxy CPU per request, tunnel / broker: {:.2}x (goal <= 0.25x)",
        tunnel_cpu / broker_cpu
    );
    println!(
        "  e2e data keys/s, 64 callers / 1 caller: {:.2}x",
        rate64 / rate1
    );
    let _ = proxy.kill().await;
    Ok(())
}

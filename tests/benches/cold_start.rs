//! Cold start (issue 13): from process start to the first data key, as a
//! ratio to one RSA-2048 key generation measured in the same run.
//!
//! `cargo bench -p keybroker-harness --bench cold_start`. For each mode
//! (broker, then e2e) it starts the local stack exactly as `keybroker-local
//! up --mode MODE` does (the mock KMS and the parent proxy as their own
//! processes; `up` also starts the enclave endpoint, which stays idle), and
//! then repeats [`RUNS`] times, interleaved so that the machine's load
//! affects every series alike:
//!
//! - **key generation**: one RSA-2048 key generation with the enclave's
//!   implementation (`RecipientPrivateKey::generate_2048`, aws-lc-rs);
//! - **process**: a fresh enclave process, the command `up` prints as
//!   `enclave:` with `generate-data-key` (`keybroker-local component enclave
//!   generate-data-key --mode MODE ... --mock-nsm-ca DIR`), timed from
//!   spawning it to its JSON on stdout (the plaintext data key in hand), and
//!   to its exit;
//! - **in process**: a fresh mock NSM, `RecipientKeys` and `Client`, and the
//!   first `generate_data_key`, timed with and without the mock NSM's
//!   set-up (loading its CA, issuing its intermediate and leaf);
//! - **parts**: process start and exit alone (`--version`), the mock NSM's
//!   set-up (CA load, `MockNsm::new`, and its default PCR0: SHA-384 of the
//!   `keybroker-local` binary), one mock attestation, connecting a client
//!   whose keys exist, and one warm `GenerateDataKey`.
//!
//! It prints the medians (with min and max) in milliseconds and a `ratios`
//! block: each cold start over the median key generation. Nothing is
//! asserted about the timings.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybroker_common::address::Address;
use keybroker_common::cms::RecipientPrivateKey;
use keybroker_common::key_allowlist::KeyAllowlist;
use keybroker_enclave::e2e::{E2eConfig, KmsUrl, ParentLink, ProxyLink, TrustRoots};
use keybroker_enclave::mock_nsm::default_pcr0_for;
use keybroker_enclave::nsm::Nsm;
use keybroker_enclave::{
    Client, ClientConfig, MockCa, MockNsm, MockNsmConfig, RecipientKeys, RecipientKeysConfig,
};
use keybroker_harness::testkit::gdk;
use keybroker_test_support::bench::median;
use tokio::io::AsyncReadExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Cold starts per mode (and samples of every other series).
const RUNS: usize = 15;

const LAUNCHER: &str = env!("CARGO_BIN_EXE_keybroker-local");

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Samples of one measure, by name, in the order first recorded.
#[derive(Default)]
struct Series {
    order: Vec<&'static str>,
    samples: BTreeMap<&'static str, Vec<Duration>>,
}

impl Series {
    fn push(&mut self, name: &'static str, d: Duration) {
        if !self.samples.contains_key(name) {
            self.order.push(name);
        }
        self.samples.entry(name).or_default().push(d);
    }

    fn median(&self, name: &str) -> Duration {
        median(self.samples[name].clone())
    }

    fn print(&self, mode: &str) {
        for name in &self.order {
            let s = &self.samples[name];
            let (min, max) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            println!(
                "{mode}_{name}_ms: {:.1} (min {:.1}, max {:.1}, n {})",
                ms(self.median(name)),
                ms(*min),
                ms(*max),
                s.len()
            );
        }
    }
}

/// `keybroker-local up --mode MODE`, stopped (SIGTERM) when dropped.
struct Up {
    child: std::process::Child,
    /// `name: value` lines it printed before `ready`.
    lines: BTreeMap<String, String>,
    /// The enclave's arguments for this stack (`--mode .. --proxy ..
    /// --mock-nsm-ca ..`), from its `enclave:` line.
    enclave_args: Vec<String>,
}

impl Up {
    fn start(mode: &str) -> Self {
        let mut child = std::process::Command::new(LAUNCHER)
            .args(["up", "--mode", mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keybroker-local up");
        let mut lines = BTreeMap::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line.starts_with("ready") {
                break;
            }
            if let Some((k, v)) = line.split_once(": ") {
                lines.insert(k.to_owned(), v.to_owned());
            }
        }
        // `EXE component enclave demo ARGS --key-id KEY --input FILE`.
        let enclave = lines.get("enclave").expect("no enclave: line");
        let argv: Vec<&str> = enclave.split_whitespace().collect();
        let start = argv.iter().position(|a| *a == "demo").unwrap() + 1;
        let end = argv.iter().position(|a| *a == "--key-id").unwrap();
        let enclave_args = argv[start..end].iter().map(|s| (*s).to_owned()).collect();
        Self {
            child,
            lines,
            enclave_args,
        }
    }

    fn line(&self, name: &str) -> &str {
        self.lines
            .get(name)
            .map_or_else(|| panic!("no {name}:"), String::as_str)
    }

    /// The value after `flag` in the enclave's arguments.
    fn enclave_arg(&self, flag: &str) -> &str {
        let i = self.enclave_args.iter().position(|a| a == flag).unwrap();
        &self.enclave_args[i + 1]
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// One RSA-2048 key generation, as the enclave makes its recipient keys.
fn keygen() -> Duration {
    let t = Instant::now();
    let key = RecipientPrivateKey::generate_2048().unwrap();
    let took = t.elapsed();
    std::hint::black_box(key);
    took
}

/// A fresh enclave process getting one data key: (time to its JSON on
/// stdout, time to its exit).
async fn process_run(up: &Up, key: &str) -> (Duration, Duration) {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(LAUNCHER)
        .args(["component", "enclave", "generate-data-key"])
        .args(&up.enclave_args)
        .args(["--key-id", key])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let got_key = loop {
        let n = stdout.read(&mut buf).await.unwrap();
        assert!(n > 0, "enclave exited without a data key");
        out.extend_from_slice(&buf[..n]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out) {
            let took = start.elapsed();
            assert!(v["Plaintext"].is_string(), "{v}");
            break took;
        }
    };
    let status = child.wait().await.unwrap();
    let exited = start.elapsed();
    assert!(status.success(), "enclave: {status}");
    (got_key, exited)
}

/// The process's start and exit alone: `--version`.
async fn process_start_alone() -> Duration {
    let start = Instant::now();
    let status = tokio::process::Command::new(LAUNCHER)
        .args(["component", "enclave", "--version"])
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    start.elapsed()
}

/// What an in-process enclave needs to reach this stack.
struct Target {
    proxy: Address,
    /// e2e mode: the KMS endpoint, allowed key and trusted CA.
    e2e: Option<(String, String, String)>,
    ca_dir: PathBuf,
    pcr0: [u8; 48],
    key: String,
}

impl Target {
    fn of(up: &Up) -> Self {
        let e2e = (up.enclave_arg("--mode") == "e2e").then(|| {
            (
                up.enclave_arg("--kms-endpoint").to_owned(),
                up.enclave_arg("--allow-key").to_owned(),
                std::fs::read_to_string(up.enclave_arg("--mock-kms-ca")).unwrap(),
            )
        });
        Self {
            proxy: up.enclave_arg("--proxy").parse().unwrap(),
            e2e,
            ca_dir: PathBuf::from(up.enclave_arg("--mock-nsm-ca")),
            pcr0: hex::decode(up.line("pcr0")).unwrap().try_into().unwrap(),
            key: up.line("key").to_owned(),
        }
    }

    /// The mock NSM a fresh enclave process makes (its PCR0 given: the
    /// process computes it by hashing its binary, timed apart).
    fn mock_nsm(&self) -> MockNsm {
        let ca = MockCa::load(&self.ca_dir).unwrap();
        MockNsm::new(&ca, MockNsmConfig::default().with_pcr(0, self.pcr0)).unwrap()
    }

    /// A client of this stack, connecting while `keys` are made (as the
    /// enclave CLI does).
    async fn connect<F>(&self, keys: F) -> Client
    where
        F: Future<Output = Result<RecipientKeys, keybroker_enclave::Error>>,
    {
        let config = ClientConfig::new(self.proxy.clone());
        match &self.e2e {
            None => Client::connect_while(config, keys).await.unwrap(),
            Some((endpoint, allow, ca_pem)) => {
                let e2e =
                    E2eConfig::new("us-east-1", KeyAllowlist::parse([allow.clone()]).unwrap())
                        .unwrap()
                        .with_endpoint(KmsUrl::parse(endpoint).unwrap())
                        .with_trust(TrustRoots::mock_with_dev_ca_pem(ca_pem.as_bytes()).unwrap());
                let link: Arc<dyn ParentLink> = Arc::new(ProxyLink::new(self.proxy.clone()));
                Client::connect_e2e_while(config, e2e, link, keys)
                    .await
                    .unwrap()
            }
        }
    }
}

/// A fresh in-process enclave getting one data key, as the CLI starts:
/// the mock NSM set up (`with_nsm_setup`; otherwise made before the clock
/// starts) while the first key is generated and the client connects.
async fn in_process_run(target: &Arc<Target>, with_nsm_setup: bool) -> Duration {
    let ready: Option<Arc<dyn Nsm>> = (!with_nsm_setup).then(|| Arc::new(target.mock_nsm()) as _);
    let start = Instant::now();
    let t = Arc::clone(target);
    let keys = RecipientKeys::open(
        move || Ok(ready.unwrap_or_else(|| Arc::new(t.mock_nsm()))),
        RecipientKeysConfig::default(),
    );
    let client = target.connect(keys).await;
    let key = client.generate_data_key(gdk(&target.key)).await.unwrap();
    let took = start.elapsed();
    assert_eq!(key.plaintext.expose().len(), 32);
    // No background key generation may spill into the next sample.
    while !client.keys().stats().spare_ready {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    took
}

async fn measure(mode: &str) -> (Series, f64, f64, f64) {
    let up = Up::start(mode);
    let target = Arc::new(Target::of(&up));
    let mut s = Series::default();
    // A warm client for the parts that need keys already made.
    let warm_keys = RecipientKeys::new(Arc::new(target.mock_nsm()), RecipientKeysConfig::default())
        .await
        .unwrap();
    let warm = target
        .connect(std::future::ready(Ok(warm_keys.clone())))
        .await;
    let spki = RecipientPrivateKey::generate_2048()
        .unwrap()
        .public_key_spki_der();
    let launcher = Path::new(LAUNCHER);
    // One of each first (page cache, connection pools), untimed.
    let _ = process_run(&up, &target.key).await;
    let _ = in_process_run(&target, true).await;
    for _ in 0..RUNS {
        s.push("rsa2048_keygen", keygen());
        let (key, exit) = process_run(&up, &target.key).await;
        s.push("process_to_first_key", key);
        s.push("process_to_exit", exit);
        s.push("rsa2048_keygen", keygen());
        s.push(
            "in_process_to_first_key",
            in_process_run(&target, true).await,
        );
        s.push("rsa2048_keygen", keygen());
        s.push(
            "in_process_without_mock_nsm_setup",
            in_process_run(&target, false).await,
        );
        s.push("part_process_start_and_exit", process_start_alone().await);
        let t = Instant::now();
        let nsm = target.mock_nsm();
        s.push("part_mock_nsm_setup", t.elapsed());
        let t = Instant::now();
        std::hint::black_box(default_pcr0_for(launcher).unwrap());
        s.push("part_mock_nsm_pcr0_hash", t.elapsed());
        let t = Instant::now();
        std::hint::black_box(nsm.attestation(Some(spki.clone()), None, None).unwrap());
        s.push("part_mock_attestation", t.elapsed());
        let t = Instant::now();
        let c = target
            .connect(std::future::ready(Ok(warm_keys.clone())))
            .await;
        s.push("part_connect", t.elapsed());
        c.generate_data_key(gdk(&target.key)).await.unwrap();
        s.push("part_connect_and_first_generate_data_key", t.elapsed());
        drop(c);
        let t = Instant::now();
        warm.generate_data_key(gdk(&target.key)).await.unwrap();
        s.push("part_warm_generate_data_key", t.elapsed());
    }
    let k = s.median("rsa2048_keygen").as_secs_f64();
    let ratio = |name: &str| s.median(name).as_secs_f64() / k;
    let r = (
        ratio("process_to_first_key"),
        ratio("in_process_to_first_key"),
        ratio("in_process_without_mock_nsm_setup"),
    );
    (s, r.0, r.1, r.2)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut ratios = Vec::new();
    for mode in ["broker", "e2e"] {
        let (s, process, in_process, without_nsm) = measure(mode).await;
        s.print(mode);
        ratios.push((
            mode,
            process,
            in_process,
            without_nsm,
            s.median("rsa2048_keygen"),
        ));
    }
    println!(
        "ratios (median of {RUNS} cold starts / median RSA-2048 key generation; goal <= 1.5x):"
    );
    for (mode, process, in_process, without_nsm, k) in ratios {
        println!(
            "  {mode}: process start to first data key {process:.2}x; in process {in_process:.2}x, \
             {without_nsm:.2}x without the mock NSM set-up (key generation {:.1} ms)",
            ms(k)
        );
    }
    Ok(())
}

//! `keybroker-local`: the whole Keybroker stack on one machine.
//!
//! The launcher starts the mock KMS, the parent proxy and the enclave (with
//! the mock NSM) as **separate processes** on loopback, as they run in
//! production (three trust domains: KMS, parent, enclave). Each component is
//! this same executable re-run as `keybroker-local component <NAME> ...`,
//! which calls the very library entry point the component's own binary calls
//! (`keybroker-mock-kms`, `keybroker-proxy`, `keybroker-enclave`), so
//! `cargo run --bin keybroker-local` needs nothing else built. A consequence
//! worth knowing: the mock NSM measures the running executable as PCR0, so
//! the enclave's PCR0 is the SHA-384 of `keybroker-local` itself, and that is
//! the value the launcher writes into the key policy.
//!
//! - `demo`: brings the stack up, creates a KMS key whose policy requires the
//!   mock enclave's PCR0, has the enclave obtain a data key with `Recipient`
//!   and encrypt and decrypt a sample file, shows that the same call without
//!   a valid attestation is denied, prints timings, exits 0.
//! - `up`: the same stack, kept running until Ctrl-C or SIGTERM; prints one
//!   `NAME: VALUE` line per endpoint once all are ready.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use keybroker_common::cms::RecipientPrivateKey;
use keybroker_common::kms::{KmsErrorCode, RecipientInfo};
use keybroker_enclave::e2e::Mode;
use keybroker_enclave::mock_nsm::default_pcr0_for;
use keybroker_enclave::nsm::Nsm as _;
use keybroker_enclave::{MockCa, MockNsm, MockNsmConfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::Error;

/// The alias of the key the launcher creates.
pub const DEMO_KEY_ALIAS: &str = "alias/keybroker-demo";
/// Region of the local stack.
pub const REGION: &str = "us-east-1";
/// How long a component may take to report that it listens.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the enclave's demo run may take.
const ENCLAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the sample file the enclave encrypts.
const SAMPLE_LEN: usize = 1 << 20;

/// Runs a component in this process: the hidden `component` subcommand.
/// `args` starts with the component name.
pub fn run_component(args: Vec<OsString>) -> ExitCode {
    let Some((name, rest)) = args.split_first() else {
        eprintln!("keybroker-local component: name missing (mock-kms, proxy, enclave)");
        return ExitCode::from(2);
    };
    match name.to_str() {
        Some("mock-kms") => crate::mock_kms::cli::main_with_args(
            std::iter::once(OsString::from("keybroker-mock-kms")).chain(rest.iter().cloned()),
        ),
        Some("proxy") => {
            let argv =
                std::iter::once(OsString::from("keybroker-proxy")).chain(rest.iter().cloned());
            let code = keybroker_proxy::cli::run(
                argv,
                &mut std::io::stdin(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                keybroker_proxy::clock::now(),
            );
            ExitCode::from(code)
        }
        Some("enclave") => keybroker_enclave::cli::dangerous_main_with_mock_nsm(
            std::iter::once(OsString::from("keybroker-enclave")).chain(rest.iter().cloned()),
        ),
        _ => {
            eprintln!("keybroker-local component: unknown component {name:?}");
            ExitCode::from(2)
        }
    }
}

/// A running component process; killed when dropped.
#[derive(Debug)]
pub struct Component {
    name: &'static str,
    child: Child,
    /// Where its standard error goes.
    pub log: PathBuf,
    /// What it reported as its address.
    pub address: String,
    /// The lines it printed before that one (e.g. the proxy's `metrics:`).
    pub earlier_lines: Vec<String>,
}

impl Component {
    /// Starts `keybroker-local component NAME ARGS...` and waits until it
    /// prints a line starting with `ready_prefix`; the rest of that line is
    /// its address.
    async fn start(
        name: &'static str,
        args: &[String],
        ready_prefix: &str,
        work: &Path,
    ) -> Result<Self, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::Io(format!("current_exe: {e}")))?;
        let log = work.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Error::Io(format!("create {}: {e}", log.display())))?;
        let mut child = Command::new(exe)
            .arg("component")
            .arg(name)
            .args(args)
            .envs(local_credentials())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Io(format!("start {name}: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Io(format!("{name}: no stdout")))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut earlier_lines = Vec::new();
        let wait = async {
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| Error::Io(e.to_string()))?
            {
                if let Some(addr) = line.strip_prefix(ready_prefix) {
                    return Ok(addr.trim().to_string());
                }
                earlier_lines.push(line);
            }
            Err(Error::Io(format!(
                "{name} exited before it was ready; see {}",
                log.display()
            )))
        };
        let address = tokio::time::timeout(STARTUP_TIMEOUT, wait)
            .await
            .map_err(|_| Error::Io(format!("{name} not ready after {STARTUP_TIMEOUT:?}")))??;
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            name,
            child,
            log,
            address,
            earlier_lines,
        })
    }

    /// Asks the process to stop (SIGTERM, so it drains), then waits up to
    /// `grace` before killing it.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(component = self.name, "did not stop in time; killing");
            let _ = self.child.kill().await;
        }
    }
}

/// The local stack's AWS access key id. In e2e mode the mock KMS verifies
/// SigV4 against it and [`LOCAL_SECRET_ACCESS_KEY`]; in broker mode it
/// accepts any.
pub const LOCAL_ACCESS_KEY_ID: &str = "AKIDLOCALKEYBROKER";
/// The local stack's secret access key (a development value, not a secret).
pub const LOCAL_SECRET_ACCESS_KEY: &str = "local-keybroker-secret";

/// The local credentials in the environment of every component (the proxy's
/// aws-config chain reads them, and in e2e mode hands them to the enclave),
/// and no probing of the EC2 instance metadata service.
fn local_credentials() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// An `aws-sdk-kms` client for the mock KMS at `endpoint` (plain HTTP).
pub fn kms_client(endpoint: &str) -> aws_sdk_kms::Client {
    kms_client_trusting(endpoint, None)
}

/// An `aws-sdk-kms` client for the mock KMS at `endpoint` with the local
/// credentials; over HTTPS it trusts only `ca_pem` when given (the mock KMS's
/// test CA).
pub fn kms_client_trusting(endpoint: &str, ca_pem: Option<&str>) -> aws_sdk_kms::Client {
    kms_client_as(
        endpoint,
        ca_pem,
        LOCAL_ACCESS_KEY_ID,
        LOCAL_SECRET_ACCESS_KEY,
    )
}

/// [`kms_client_trusting`] signing with other credentials (another
/// account's, in the attack tests).
pub fn kms_client_as(
    endpoint: &str,
    ca_pem: Option<&str>,
    access_key_id: &str,
    secret_access_key: &str,
) -> aws_sdk_kms::Client {
    kms_client_with(
        endpoint,
        ca_pem,
        Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "keybroker-local",
        ),
    )
}

/// [`kms_client_trusting`] signing with `credentials` (temporary ones with
/// a session token, too).
pub fn kms_client_with(
    endpoint: &str,
    ca_pem: Option<&str>,
    credentials: Credentials,
) -> aws_sdk_kms::Client {
    let mut config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(credentials)
        .endpoint_url(endpoint);
    if let Some(ca) = ca_pem {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider};
        match TlsContext::builder()
            .with_trust_store(TrustStore::empty().with_pem_certificate(ca.as_bytes()))
            .build()
        {
            Ok(context) => {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(rustls_provider::CryptoMode::AwsLc))
                    .tls_context(context)
                    .build_https();
                config = config.http_client(http);
            }
            // The client then trusts no test CA and every call fails the
            // handshake, which names the cause.
            Err(e) => tracing::error!(error = %e, "cannot trust the mock KMS's CA"),
        }
    }
    aws_sdk_kms::Client::from_conf(config.build())
}

/// The key policy of the local stack: exactly what `keybroker-proxy policy`
/// generates for production ([`keybroker_proxy::key_policy`]), for an enclave
/// image whose PCR0 is `pcr0_hex`: plaintext-returning operations only with
/// a `Recipient` attesting that PCR0 (`kms:RecipientAttestation:ImageSha384`),
/// an explicit deny otherwise, the without-plaintext operations freely, and
/// key administration.
///
/// The mock KMS sees every request as one principal, the account root, so
/// the root is both the parent principal and the key administrator here; in
/// production they are the instance role and an administrators' role.
///
/// An invalid `pcr0_hex` (not 48 bytes of hex, or all zeros) gives a
/// document KMS refuses as malformed, so `CreateKey` fails instead of making
/// a key that admits nothing; the reason is logged.
pub fn enclave_key_policy(account: &str, pcr0_hex: &str) -> serde_json::Value {
    use keybroker_proxy::key_policy::{EnclaveKeyPolicy, ImageMeasurements};
    let root = format!("arn:aws:iam::{account}:root");
    let built = ImageMeasurements::new(pcr0_hex)
        .and_then(|image| EnclaveKeyPolicy::new(&root, vec![image]))
        .and_then(|policy| policy.with_key_admin(&root))
        .and_then(|policy| policy.document().to_value());
    match built {
        Ok(policy) => policy,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the enclave key policy");
            serde_json::json!({ "KeybrokerKeyPolicyError": e.to_string() })
        }
    }
}

/// The local stack: mock KMS and parent proxy running, a key ready.
#[derive(Debug)]
pub struct Stack {
    /// How the enclave reaches KMS.
    pub mode: Mode,
    /// e2e mode: the mock KMS's test CA (PEM file), which the enclave trusts.
    pub kms_ca: Option<PathBuf>,
    /// e2e mode: the KMS endpoint as the enclave names it
    /// (`https://localhost:PORT`, reached through a proxy tunnel).
    pub enclave_kms_endpoint: Option<String>,
    /// Scratch directory (CA, logs, sample file); removed on drop.
    pub work: WorkDir,
    /// The mock NSM's development CA directory (`root.pem` inside).
    pub ca_dir: PathBuf,
    /// The mock NSM CA's root certificate (PEM file).
    pub attestation_root: PathBuf,
    /// The PCR0 the mock enclave reports (hex).
    pub pcr0_hex: String,
    /// The mock KMS process.
    pub mock_kms: Component,
    /// The parent proxy process.
    pub proxy: Component,
    /// The proxy's metrics URL (`http://127.0.0.1:PORT/metrics`; `/healthz`
    /// and `/readyz` beside it).
    pub proxy_metrics: String,
    /// ARN of the key whose policy requires `pcr0_hex`.
    pub key_arn: String,
    /// Progress lines with timings, for the report.
    pub steps: Vec<String>,
    started: Instant,
}

impl Stack {
    /// Brings up the mock KMS and the parent proxy for `mode` and creates
    /// the key.
    pub async fn start(mode: Mode) -> Result<Self, Error> {
        let started = Instant::now();
        let mut steps = Vec::new();
        let mut step = |what: &str, detail: String| steps.push(step_line(started, what, detail));
        let work = WorkDir::new()?;
        let ca_dir = work.path().join("ca");
        let ca = MockCa::load_or_create(&ca_dir).map_err(|e| Error::Config(e.to_string()))?;
        let attestation_root = ca
            .root_pem_path()
            .ok_or_else(|| Error::Config("mock CA has no root.pem".into()))?;
        step("mock NSM CA", attestation_root.display().to_string());

        let exe = std::env::current_exe().map_err(|e| Error::Io(format!("current_exe: {e}")))?;
        let pcr0_hex =
            hex::encode(default_pcr0_for(&exe).map_err(|e| Error::Config(e.to_string()))?);
        step(
            "enclave PCR0",
            format!(
                "{}... (SHA-384 of {})",
                pcr0_hex.get(..16).unwrap_or(&pcr0_hex),
                exe.display()
            ),
        );

        let root = attestation_root.display().to_string();
        let mut kms_args = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--attestation-root".into(),
            root.clone(),
        ];
        let kms_tls_dir = work.path().join("mock-kms-tls");
        if mode == Mode::E2e {
            kms_args.extend([
                "--tls-dir".into(),
                kms_tls_dir.display().to_string(),
                "--access-key-id".into(),
                LOCAL_ACCESS_KEY_ID.into(),
                "--secret-access-key".into(),
                LOCAL_SECRET_ACCESS_KEY.into(),
            ]);
        }
        let mock_kms =
            Component::start("mock-kms", &kms_args, "listening on ", work.path()).await?;
        let (kms_ca, kms_ca_pem, enclave_kms_endpoint) = match mode {
            Mode::Broker => (None, None, None),
            Mode::E2e => {
                let ca = kms_tls_dir.join("ca.pem");
                let pem = std::fs::read_to_string(&ca)
                    .map_err(|e| Error::Io(format!("read {}: {e}", ca.display())))?;
                let port = mock_kms
                    .address
                    .rsplit_once(':')
                    .map(|(_, p)| p.to_owned())
                    .ok_or_else(|| Error::Io(format!("mock KMS address {}", mock_kms.address)))?;
                (
                    Some(ca),
                    Some(pem),
                    Some(format!("https://localhost:{port}")),
                )
            }
        };
        step(
            "mock KMS",
            match &kms_ca {
                Some(ca) => format!(
                    "{} (HTTPS, test CA {}, SigV4 verified)",
                    mock_kms.address,
                    ca.display()
                ),
                None => mock_kms.address.clone(),
            },
        );

        let kms = kms_client_trusting(&mock_kms.address, kms_ca_pem.as_deref());
        let policy = enclave_key_policy(crate::mock_kms::DEFAULT_ACCOUNT_ID, &pcr0_hex);
        let created = kms
            .create_key()
            .description("keybroker-local demo key: plaintext only to the mock enclave")
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| Error::Io(format!("CreateKey: {}", sdk_error(&e))))?;
        let key_arn = created
            .key_metadata()
            .and_then(|m| m.arn())
            .ok_or_else(|| Error::Io("CreateKey returned no ARN".into()))?
            .to_string();
        kms.create_alias()
            .alias_name(DEMO_KEY_ALIAS)
            .target_key_id(&key_arn)
            .send()
            .await
            .map_err(|e| Error::Io(format!("CreateAlias: {}", sdk_error(&e))))?;
        step(
            "KMS key",
            format!("{DEMO_KEY_ALIAS} -> {key_arn}; policy requires PCR0"),
        );

        let mut proxy_args = vec![
            "serve".into(),
            "--listen".into(),
            "tcp://127.0.0.1:0".into(),
            "--kms-endpoint".into(),
            mock_kms.address.clone(),
            "--region".into(),
            REGION.into(),
            "--attestation-root".into(),
            root,
            "--pcr".into(),
            format!("0={pcr0_hex}"),
            // A bare port is on loopback; 0 picks a free one.
            "--metrics-listen".into(),
            "0".into(),
        ];
        if let Some(endpoint) = &enclave_kms_endpoint {
            // The one tunnel target: the mock KMS, by the name the enclave
            // verifies in its certificate.
            proxy_args.extend([
                "--tunnel".into(),
                endpoint.trim_start_matches("https://").to_owned(),
            ]);
        }
        let proxy = Component::start("proxy", &proxy_args, "listening: ", work.path()).await?;
        let proxy_metrics = proxy
            .earlier_lines
            .iter()
            .find_map(|l| l.strip_prefix("metrics: "))
            .ok_or_else(|| Error::Io("the proxy printed no metrics: line".into()))?
            .trim()
            .to_owned();
        step(
            "parent proxy",
            match mode {
                Mode::Broker => format!("{} (requires Recipient, checks PCR0)", proxy.address),
                Mode::E2e => format!(
                    "{} (tunnel to {}, hands over credentials; sees only TLS)",
                    proxy.address,
                    enclave_kms_endpoint.as_deref().unwrap_or_default()
                ),
            },
        );
        Ok(Self {
            mode,
            kms_ca,
            enclave_kms_endpoint,
            work,
            ca_dir,
            attestation_root,
            pcr0_hex,
            mock_kms,
            proxy,
            proxy_metrics,
            key_arn,
            steps,
            started,
        })
    }

    fn step(&mut self, what: &str, detail: String) {
        self.steps.push(step_line(self.started, what, detail));
    }

    /// The enclave's arguments that say how it reaches KMS in this stack's
    /// mode, and its mock NSM: what the image's command line would carry.
    pub fn enclave_args(&self) -> Vec<String> {
        let mut args = vec![
            "--mode".to_owned(),
            match self.mode {
                Mode::Broker => "broker",
                Mode::E2e => "e2e",
            }
            .to_owned(),
            "--proxy".to_owned(),
            self.proxy.address.clone(),
        ];
        if let (Some(endpoint), Some(ca)) = (&self.enclave_kms_endpoint, &self.kms_ca) {
            let alias_arn = format!(
                "arn:aws:kms:{REGION}:{}:{DEMO_KEY_ALIAS}",
                crate::mock_kms::DEFAULT_ACCOUNT_ID
            );
            args.extend([
                "--region".to_owned(),
                REGION.to_owned(),
                "--kms-endpoint".to_owned(),
                endpoint.clone(),
                // The alias ARN pins the account and region; being the one
                // entry, it is also the KeyId of a Decrypt that names none.
                "--allow-key".to_owned(),
                alias_arn,
                "--mock-kms-ca".to_owned(),
                ca.display().to_string(),
            ]);
        }
        args.extend([
            "--mock-nsm-ca".to_owned(),
            self.ca_dir.display().to_string(),
        ]);
        args
    }

    /// Starts the enclave's KMS-compatible endpoint (`keybroker-enclave
    /// serve` with the mock NSM) on a free loopback port; its address is the
    /// endpoint URL (`http://127.0.0.1:PORT`). It reports its metrics to the
    /// proxy every second, so they show at `proxy-metrics:` at once.
    ///
    /// # Errors
    /// [`Error::Io`] if it does not come up.
    pub async fn start_enclave_endpoint(&self) -> Result<Component, Error> {
        let mut args = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-interval-ms".into(),
            "1000".into(),
        ];
        args.extend(self.enclave_args());
        Component::start("enclave", &args, "listening: ", self.work.path()).await
    }

    /// An `aws-sdk-kms` client of the mock KMS, as the key's administrator
    /// (outside the enclave; over HTTPS trusting the test CA in e2e mode).
    ///
    /// # Errors
    /// [`Error::Io`] if the test CA cannot be read.
    pub fn admin_kms_client(&self) -> Result<aws_sdk_kms::Client, Error> {
        let pem = match &self.kms_ca {
            Some(ca) => Some(
                std::fs::read_to_string(ca)
                    .map_err(|e| Error::Io(format!("read {}: {e}", ca.display())))?,
            ),
            None => None,
        };
        Ok(kms_client_trusting(&self.mock_kms.address, pem.as_deref()))
    }

    /// Stops the proxy (draining) and the mock KMS.
    pub async fn stop(self) {
        self.proxy.stop(Duration::from_secs(10)).await;
        self.mock_kms.stop(Duration::from_secs(5)).await;
    }
}

/// One progress line: elapsed time since `started`, what, detail.
fn step_line(started: Instant, what: &str, detail: String) -> String {
    format!(
        "[{:>6.2}s] {what:<22} {detail}",
        started.elapsed().as_secs_f64()
    )
}

/// `keybroker-local demo`.
pub async fn demo(mode: Mode) -> Result<(), Error> {
    let mut stack = Stack::start(mode).await?;

    // The enclave, as its own process: data key with Recipient, encrypt and
    // decrypt a sample file.
    let sample = stack.work.path().join("sample.bin");
    let data: Vec<u8> = (0..SAMPLE_LEN)
        .map(|i| u8::try_from(i % 251).unwrap_or_default())
        .collect();
    std::fs::write(&sample, &data).map_err(|e| Error::Io(format!("write sample: {e}")))?;
    let report = run_enclave_demo(&stack, &sample).await?;
    let summary = summarize_enclave_report(&report);
    stack.step("enclave", summary);

    // An unmodified aws-sdk-kms client inside the "enclave" talks to the
    // enclave's KMS-compatible endpoint and gets plaintext, attested.
    let endpoint = stack.start_enclave_endpoint().await?;
    let outcome = sdk_through_endpoint(&endpoint.address).await?;
    stack.step("enclave KMS endpoint", outcome);
    endpoint.stop(Duration::from_secs(5)).await;

    // The same call without a valid attestation is denied.
    let kms = stack.admin_kms_client()?;
    let no_recipient = kms
        .generate_data_key()
        .key_id(DEMO_KEY_ALIAS)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await;
    let outcome = expect_denied(no_recipient.map(|_| ()))?;
    stack.step("denied (no Recipient)", outcome);

    let other = other_enclave_recipient(&stack.ca_dir)?;
    let wrong_pcr0 = kms
        .generate_data_key()
        .key_id(DEMO_KEY_ALIAS)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .recipient(other)
        .send()
        .await;
    let outcome = expect_denied(wrong_pcr0.map(|_| ()))?;
    stack.step("denied (other PCR0)", outcome);

    let steps = std::mem::take(&mut stack.steps);
    stack.stop().await;
    println!("keybroker-local demo");
    for line in steps {
        println!("  {line}");
    }
    println!("demo passed: the data key's plaintext existed only in the enclave process");
    Ok(())
}

/// `keybroker-local up`: the stack until Ctrl-C or SIGTERM.
pub async fn up(mode: Mode) -> Result<(), Error> {
    let stack = Stack::start(mode).await?;
    let endpoint = stack.start_enclave_endpoint().await?;
    println!(
        "mode: {}",
        stack.enclave_args().get(1).map_or("", String::as_str)
    );
    println!("mock-kms: {}", stack.mock_kms.address);
    if let Some(ca) = &stack.kms_ca {
        println!("mock-kms-ca: {}", ca.display());
        println!("mock-kms-credentials: {LOCAL_ACCESS_KEY_ID} {LOCAL_SECRET_ACCESS_KEY}");
    }
    println!("proxy: {}", stack.proxy.address);
    println!("proxy-metrics: {}", stack.proxy_metrics);
    println!("enclave-kms: {}", endpoint.address);
    println!("attestation-root: {}", stack.attestation_root.display());
    println!("mock-nsm-ca: {}", stack.ca_dir.display());
    println!("key: {DEMO_KEY_ALIAS}");
    println!("pcr0: {}", stack.pcr0_hex);
    println!(
        "enclave: {} component enclave demo {} --key-id {DEMO_KEY_ALIAS} --input FILE",
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "keybroker-local".into()),
        stack.enclave_args().join(" ")
    );
    println!("ready (Ctrl-C stops everything)");
    wait_for_stop_signal().await?;
    endpoint.stop(Duration::from_secs(5)).await;
    stack.stop().await;
    Ok(())
}

async fn wait_for_stop_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::Io(format!("SIGTERM handler: {e}")))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| Error::Io(format!("Ctrl-C handler: {e}"))),
        _ = term.recv() => Ok(()),
    }
}

/// `GenerateDataKey` then `Decrypt` with a stock `aws-sdk-kms` client whose
/// endpoint is the enclave's: both answer with `Plaintext`, and the two agree.
async fn sdk_through_endpoint(endpoint: &str) -> Result<String, Error> {
    let sdk = kms_client(endpoint);
    let key = sdk
        .generate_data_key()
        .key_id(DEMO_KEY_ALIAS)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .map_err(|e| {
            Error::Io(format!(
                "GenerateDataKey via the enclave: {}",
                sdk_error(&e)
            ))
        })?;
    let (Some(plaintext), Some(blob)) = (key.plaintext(), key.ciphertext_blob()) else {
        return Err(Error::Io(
            "GenerateDataKey via the enclave returned no Plaintext".into(),
        ));
    };
    let decrypted = sdk
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .map_err(|e| Error::Io(format!("Decrypt via the enclave: {}", sdk_error(&e))))?;
    if decrypted.plaintext() != Some(plaintext) {
        return Err(Error::Io(
            "Decrypt via the enclave did not return the data key".into(),
        ));
    }
    Ok(format!(
        "GenerateDataKey + Decrypt at {endpoint}: Plaintext ({} bytes) decrypted in the enclave",
        plaintext.as_ref().len()
    ))
}

/// Runs the enclave's `demo` as its own process and returns its JSON report.
async fn run_enclave_demo(stack: &Stack, sample: &Path) -> Result<serde_json::Value, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Io(format!("current_exe: {e}")))?;
    let log = stack.work.path().join("enclave.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| Error::Io(format!("create {}: {e}", log.display())))?;
    let child = Command::new(exe)
        .args(["component", "enclave", "demo"])
        .args(stack.enclave_args())
        .args(["--key", DEMO_KEY_ALIAS, "--input"])
        .arg(sample)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(ENCLAVE_TIMEOUT, child)
        .await
        .map_err(|_| Error::Io(format!("enclave demo took over {ENCLAVE_TIMEOUT:?}")))?
        .map_err(|e| Error::Io(format!("enclave demo: {e}")))?;
    if !out.status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(Error::Io(format!(
            "enclave demo failed ({}); its log:\n{}",
            out.status,
            tail.lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Io(format!("enclave demo printed no JSON report: {e}")))
}

/// One line from the enclave's report (its fields are the enclave's own:
/// print what is there rather than insist on a schema).
fn summarize_enclave_report(report: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            match v {
                // Strings without their JSON quotes; everything else as JSON.
                serde_json::Value::String(s) => parts.push(format!("{k}={s}")),
                other => parts.push(format!("{k}={other}")),
            }
        }
    }
    parts.join(", ")
}

/// A `Recipient` from a mock enclave whose PCR0 differs from the demo
/// enclave's (same CA, so only the key policy can refuse it).
fn other_enclave_recipient(ca_dir: &Path) -> Result<aws_sdk_kms::types::RecipientInfo, Error> {
    let ca = MockCa::load(ca_dir).map_err(|e| Error::Config(e.to_string()))?;
    let nsm = MockNsm::new(&ca, MockNsmConfig::default().with_pcr(0, [0x5A; 48]))
        .map_err(|e| Error::Config(e.to_string()))?;
    let key = RecipientPrivateKey::generate_2048().map_err(|e| Error::Config(e.to_string()))?;
    let doc = nsm
        .attestation(Some(key.public_key_spki_der()), None, None)
        .map_err(|e| Error::Config(e.to_string()))?;
    let info = RecipientInfo::new(doc);
    Ok(aws_sdk_kms::types::RecipientInfo::builder()
        .key_encryption_algorithm(aws_sdk_kms::types::KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(aws_sdk_kms::primitives::Blob::new(
            info.attestation_document.0,
        ))
        .build())
}

fn expect_denied<E>(result: Result<(), aws_sdk_kms::error::SdkError<E>>) -> Result<String, Error>
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(()) => Err(Error::Io(
            "KMS released a data key without a valid attestation".into(),
        )),
        Err(e) => {
            use aws_sdk_kms::error::ProvideErrorMetadata as _;
            let code = e.code().unwrap_or("?");
            if code == KmsErrorCode::AccessDenied.as_str() {
                Ok(format!("{code}: {}", e.message().unwrap_or("")))
            } else {
                Err(Error::Io(format!(
                    "expected AccessDeniedException, got {}",
                    sdk_error(&e)
                )))
            }
        }
    }
}

fn sdk_error<E>(e: &aws_sdk_kms::error::SdkError<E>) -> String
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_kms::error::ProvideErrorMetadata as _;
    match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => format!("{}", aws_sdk_kms::error::DisplayErrorContext(e)),
    }
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!(
            "keybroker-local-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("create {}: {e}", dir.display())))?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! `keybroker-local demo` (the README's first command) runs the whole stack as
//! separate processes and passes: the enclave gets a data key through the
//! proxy with Recipient, round-trips a file, and both calls without a valid
//! attestation are denied by KMS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

#[test]
fn local_demo_runs_the_whole_stack_and_exits_zero_in_e2e_mode_by_default() {
    let stdout = demo(&[]);
    assert!(stdout.contains("(HTTPS, test CA "), "{stdout}");
    assert!(stdout.contains("sees only TLS"), "{stdout}");
}

#[test]
fn local_demo_runs_in_broker_mode_too() {
    let stdout = demo(&["--mode", "broker"]);
    assert!(
        stdout.contains("(requires Recipient, checks PCR0)"),
        "{stdout}"
    );
}

/// Runs `keybroker-local demo ARGS`, checks what every mode must show, and
/// returns its output.
fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keybroker-local"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run keybroker-local demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("file_roundtrip_ok=true"), "{stdout}");
    assert!(stdout.contains("kms_calls=2"), "{stdout}");
    assert!(
        stdout.contains("recipient_public_key_bytes=294"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("AccessDeniedException").count(),
        2,
        "both denial cases reported: {stdout}"
    );
    assert!(
        stdout.contains("Plaintext (32 bytes) decrypted in the enclave"),
        "aws-sdk-kms through the enclave endpoint: {stdout}"
    );
    assert!(stdout.contains("demo passed"), "{stdout}");
    stdout.into_owned()
}

#[test]
fn local_up_prints_endpoints_and_stops_on_sigterm() {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker-local"))
        .arg("up")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start keybroker-local up");
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("ready");
        lines.push(line);
        if done {
            break;
        }
    }
    let text = lines.join("\n");
    // e2e mode by default: the mock KMS over HTTPS under its test CA, with
    // the credentials it verifies SigV4 against.
    for prefix in [
        "mode: e2e",
        "mock-kms: https://127.0.0.1:",
        "mock-kms-ca: /",
        "mock-kms-credentials: AKIDLOCALKEYBROKER ",
        "proxy: tcp://127.0.0.1:",
        "proxy-metrics: http://127.0.0.1:",
        "attestation-root: /",
        "key: alias/keybroker-demo",
        "enclave-kms: http://127.0.0.1:",
        "enclave: /",
    ] {
        assert!(text.contains(prefix), "missing {prefix:?} in:\n{text}");
    }
    // The `enclave:` line runs the enclave CLI against the stack in its
    // mode; with another subcommand in place of `demo` it gets a data key.
    let enclave = text
        .lines()
        .find_map(|l| l.strip_prefix("enclave: "))
        .unwrap()
        .replace(" demo ", " generate-data-key ")
        .replace(" --input FILE", "");
    assert!(enclave.contains("--mode e2e"), "{enclave}");
    let argv: Vec<&str> = enclave.split_whitespace().collect();
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{enclave}: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(base64_len(v["Plaintext"].as_str().unwrap()), 32, "{v}");
    // An SDK pointed at the printed enclave endpoint gets plaintext.
    let endpoint = text
        .lines()
        .find_map(|l| l.strip_prefix("enclave-kms: "))
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt
        .block_on(
            keybroker_harness::local::kms_client(&endpoint)
                .generate_data_key()
                .key_id("alias/keybroker-demo")
                .number_of_bytes(16)
                .send(),
        )
        .unwrap();
    assert_eq!(key.plaintext().map(|p| p.as_ref().len()), Some(16));
    // The proxy's metrics listener: the tunnels those calls opened are
    // counted, and the proxy is alive and ready (the mock KMS is reachable).
    let metrics = text
        .lines()
        .find_map(|l| l.strip_prefix("proxy-metrics: "))
        .unwrap();
    let (status, body) = http_get(metrics);
    assert_eq!(status, 200, "{body}");
    let opened = body
        .lines()
        .find_map(|l| l.strip_prefix("keybroker_proxy_tunnels_opened_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tunnels_opened_total in:\n{body}"));
    assert!(opened >= 1.0, "{body}");
    assert!(
        body.contains("keybroker_proxy_tunnel_bytes_total{direction=\"to_target\"}"),
        "{body}"
    );
    // The enclave's own metrics reach the proxy over the control channel
    // (every second in the local stack): the endpoint's GenerateDataKey,
    // the TLS handshakes of e2e mode, the NSM's attestations, labelled by
    // the enclave's module id.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let body = loop {
        let (_, body) = http_get(metrics);
        if body.contains("keybroker_enclave_endpoint_requests_total{") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no enclave metrics in:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let sample = |prefix: &str| {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        body.contains("keybroker_enclave_endpoint_requests_total{enclave=\"i-mock"),
        "{body}"
    );
    assert!(
        sample("keybroker_enclave_endpoint_requests_total{") >= 1.0,
        "{body}"
    );
    assert!(
        sample("keybroker_enclave_tls_handshakes_total{") >= 1.0,
        "{body}"
    );
    assert!(
        sample("keybroker_enclave_nsm_request_duration_seconds_count{") >= 1.0,
        "{body}"
    );
    let base = metrics.trim_end_matches("/metrics");
    assert_eq!(http_get(&format!("{base}/healthz")), (200, "ok".to_owned()));
    assert_eq!(
        http_get(&format!("{base}/readyz")),
        (200, "ready".to_owned())
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "up exited with {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET of `url` (`http://HOST:PORT/PATH`): (status, body).
fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

fn base64_len(b64: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .len()
}

//! `keybroker-proxy serve` as a process: prints its address, serves, writes
//! JSON audit lines, and exits 0 on SIGTERM after saying Goodbye.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keybroker_common::address::Address;
use keybroker_common::protocol::{ErrorCode, Message};

const BIN: &str = env!("CARGO_BIN_EXE_keybroker-proxy");

fn proxy_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTESTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/keybroker-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/keybroker-test")
        .env("RUST_LOG", "info")
        .env_remove("KEYBROKER_PROXY_CONFIG")
        .env_remove("KEYBROKER_PROXY_LISTEN")
        .env_remove("KEYBROKER_KMS_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The address of the `listening: ADDRESS` line the proxy prints first.
/// The pipe stays open (in `child`), so later output does not hit a closed
/// pipe.
fn listening_address(child: &mut Child) -> Address {
    let mut stdout = BufReader::new(child.stdout.as_mut().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix("listening: ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_relays_audits_and_stops_on_sigterm() {
    // Nothing listens on this port: KMS calls fail fast as Unavailable.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = proxy_command()
        .args([
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
            "--kms-endpoint",
            &format!("http://127.0.0.1:{dead_port}"),
            "--region",
            "us-east-1",
            "--kms-max-attempts",
            "1",
            "--log-format",
            "json",
            "--allow-key",
            "alias/app",
            "--allow-image",
            &format!("pcr0={},name=v9", "c0".repeat(48)),
        ])
        .spawn()
        .unwrap();
    let addr = listening_address(&mut child);

    let mut c = support::Client::handshake(&addr).await;
    c.request(1, None, support::describe("alias/app")).await;
    let e = c.refusal(1).await;
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    c.request(2, None, support::describe("alias/other")).await;
    let e = c.refusal(2).await;
    assert_eq!(e.code(), ErrorCode::PolicyDenied);
    assert!(e.message().starts_with("KeyNotAllowed:"), "{e}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(c.recv().await, Some(Message::Goodbye));
    assert_eq!(c.recv().await, None);
    let status = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));

    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let audit: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "keybroker_proxy::audit")
        .collect();
    assert_eq!(audit.len(), 2, "{stderr}");
    assert_eq!(audit[0]["operation"], "DescribeKey");
    assert_eq!(audit[0]["key_id"], "alias/app");
    assert_eq!(audit[0]["caller_pcr0"], "-");
    assert_eq!(audit[0]["outcome"], "error:Unavailable");
    assert!(audit[0]["latency_ms"].is_string() || audit[0]["latency_ms"].is_number());
    assert_eq!(audit[1]["outcome"], "denied:KeyNotAllowed");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // At start, the journal says which images the proxy admits.
    let admitted: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "admitting enclave image")
        .collect();
    assert_eq!(admitted.len(), 1, "{stderr}");
    assert_eq!(admitted[0]["image"], "v9");
    assert_eq!(admitted[0]["pcrs"], format!("PCR0={}", "c0".repeat(48)));
    // A denial's reason is logged beside its audit line.
    let reasons: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request denied by policy")
        .map(|v| v["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 1, "{stderr}");
    assert!(reasons[0].starts_with("KeyNotAllowed: "), "{reasons:?}");
}

#[test]
fn serve_configuration_errors_exit_2() {
    let out = proxy_command()
        .args(["serve", "--listen", "http://nowhere:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));

    let out = proxy_command()
        .args(["serve", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = proxy_command()
        .args(["serve", "--pcr", "0=abcd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A debug-mode enclave's all-zero PCR is never admitted.
    let zeros = "00".repeat(48);
    for args in [
        ["--pcr".to_owned(), format!("0={zeros}")],
        ["--allow-image".to_owned(), format!("pcr0={zeros}")],
    ] {
        let out = proxy_command().arg("serve").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("debug-mode"), "{stderr}");
    }
}

/// A non-loopback TCP address is a configuration error without
/// `--allow-non-loopback`; the message says how to fix it.
#[test]
fn serve_refuses_a_non_loopback_tcp_address() {
    let out = proxy_command()
        .args([
            "serve",
            "--listen",
            "tcp://0.0.0.0:0",
            "--region",
            "us-east-1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("non-loopback address 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
    assert!(out.stdout.is_empty(), "never listened");
}

#[test]
fn serve_bind_failure_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = proxy_command()
        .args([
            "serve",
            "--listen",
            &format!("tcp://127.0.0.1:{port}"),
            "--region",
            "us-east-1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

/// Collects a child's standard error on a thread, so a test can wait for a
/// log line while the child runs.
struct StderrLines(std::sync::Arc<std::sync::Mutex<String>>);

impl StderrLines {
    fn collect(child: &mut Child) -> StderrLines {
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        StderrLines(text)
    }

    /// Waits until `needle` has been logged `times` times.
    async fn wait_for(&self, needle: &str, times: usize) {
        for _ in 0..500 {
            if self.0.lock().unwrap().matches(needle).count() >= times {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {needle:?} (x{times}) in:\n{}", self.0.lock().unwrap());
    }
}

/// SIGHUP reloads the configuration file: an invalid file is logged and the
/// current configuration kept; a valid one applies to the next request on
/// a connection that was open before.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_configuration_file() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    let allowing = |key: &str| {
        format!(
            "listen = \"tcp://127.0.0.1:0\"\n\
             [kms]\nendpoint = \"http://127.0.0.1:{dead_port}\"\nregion = \"us-east-1\"\nmax_attempts = 1\n\
             [policy]\nallowed_keys = [\"{key}\"]\n"
        )
    };
    std::fs::write(&file, allowing("alias/app")).unwrap();
    let mut child = proxy_command()
        .args(["serve", "--config"])
        .arg(&file)
        .spawn()
        .unwrap();
    let logs = StderrLines::collect(&mut child);
    let addr = listening_address(&mut child);
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // Forwarded (and Unavailable: nothing listens at KMS), or refused.
    let mut c = support::Client::handshake(&addr).await;
    let mut next_id = 0;
    let mut outcome = async |c: &mut support::Client, key: &str| {
        next_id += 1;
        c.request(next_id, None, support::describe(key)).await;
        let e = c.refusal(next_id).await;
        match e.code() {
            ErrorCode::Unavailable => "forwarded",
            ErrorCode::PolicyDenied if e.message().starts_with("KeyNotAllowed:") => "refused",
            _ => panic!("{e}"),
        }
    };
    assert_eq!(outcome(&mut c, "alias/app").await, "forwarded");
    assert_eq!(outcome(&mut c, "alias/other").await, "refused");

    // Invalid: logged, and the old rules stay.
    std::fs::write(&file, "[policy]\nallowed_keys = 7\n").unwrap();
    hangup();
    logs.wait_for("configuration reload failed", 1).await;
    assert_eq!(outcome(&mut c, "alias/app").await, "forwarded");
    assert_eq!(outcome(&mut c, "alias/other").await, "refused");

    // Valid: the next request follows the new file.
    std::fs::write(&file, allowing("alias/other")).unwrap();
    hangup();
    logs.wait_for("configuration reloaded", 1).await;
    assert_eq!(outcome(&mut c, "alias/other").await, "forwarded");
    assert_eq!(outcome(&mut c, "alias/app").await, "refused");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

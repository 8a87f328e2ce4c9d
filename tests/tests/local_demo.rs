//! `keybroker-local demo` (the README's first command) runs the whole stack as
//! separate processes and passes: the enclave gets a data key through the
//! proxy with Recipient, round-trips a file, and both calls without a valid
//! attestation are denied by KMS.

use std::process::Command;

#[test]
fn local_demo_runs_the_whole_stack_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_keybroker-local"))
        .arg("demo")
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
    for prefix in [
        "mock-kms: http://127.0.0.1:",
        "proxy: tcp://127.0.0.1:",
        "attestation-root: /",
        "key: alias/keybroker-demo",
        "enclave-kms: http://127.0.0.1:",
    ] {
        assert!(text.contains(prefix), "missing {prefix:?} in:\n{text}");
    }
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

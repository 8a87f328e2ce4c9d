//! The shipped deployment files stay in step with the code: the systemd
//! unit's command line parses with the real CLI, names the path where the
//! docs install the example configuration, and that configuration builds a
//! complete `serve` setup whose drain fits in the unit's stop timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use keybroker_common::address::Address;
use keybroker_proxy::cli::{Cli, Command, ServeArgs, serve_settings};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/keybroker-proxy.service"
);
const ENCLAVE_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/keybroker-enclave.service"
);
const ENCLAVE_RUN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/keybroker-enclave-run"
);
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy.toml");
const DEPLOY_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/deploy.md");
/// Where the unit expects the configuration.
const INSTALLED_CONFIG: &str = "/etc/keybroker/proxy.toml";

fn unit_text() -> String {
    std::fs::read_to_string(UNIT).unwrap()
}

/// The values of `key=` in `[Service]` (systemd unit file syntax: one
/// setting per line, `#` comments).
fn service_values(unit: &str, key: &str) -> Vec<String> {
    section_values(unit, "[Service]", key)
}

/// The values of `key=` in `section` (e.g. `[Unit]`).
fn section_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == section;
            continue;
        }
        if !in_service || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            out.push(v.trim().to_owned());
        }
    }
    out
}

/// The unit's `ExecStart` as an argument vector. The line uses no quoting,
/// specifiers or prefixes (checked), so splitting on whitespace is exact.
fn exec_start_argv() -> Vec<String> {
    let values = service_values(&unit_text(), "ExecStart");
    assert_eq!(values.len(), 1, "one ExecStart: {values:?}");
    let line = &values[0];
    assert!(
        !line.contains(['"', '\'', '%', '$', '\\']) && !line.starts_with(['-', '@', ':', '+', '!']),
        "ExecStart must stay plain for this test: {line}"
    );
    line.split_whitespace().map(str::to_owned).collect()
}

fn serve_args() -> ServeArgs {
    let argv = exec_start_argv();
    assert_eq!(argv[0], "/usr/local/bin/keybroker-proxy");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    match cli.command {
        Command::Serve(args) => *args,
        other => panic!("ExecStart runs {other:?}, not serve"),
    }
}

#[test]
fn unit_exec_start_parses_with_the_real_cli() {
    let args = serve_args();
    assert_eq!(args.config.as_deref(), Some(Path::new(INSTALLED_CONFIG)));
    // Everything else comes from the file, so editing it is enough.
    assert_eq!(args.listen, None);
    assert_eq!(args.kms_endpoint, None);
    assert_eq!(args.region, None);
    assert!(args.pcrs.is_empty() && args.attestation_roots.is_empty());
    assert!(!args.dangerous_forward_without_recipient);
}

/// `systemctl reload` sends the main process SIGHUP, which reloads
/// proxy.toml (the `sighup_reloads_the_configuration_file` test in
/// serve_cli.rs); it must not restart the proxy.
#[test]
fn unit_reload_sends_sighup() {
    assert_eq!(
        service_values(&unit_text(), "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
}

#[test]
fn the_documented_install_puts_the_example_where_the_unit_reads_it() {
    let install = format!("install -D -m 0644 parent-proxy/examples/proxy.toml {INSTALLED_CONFIG}");
    let doc = std::fs::read_to_string(DEPLOY_DOC).unwrap();
    assert!(doc.contains(&install), "docs/deploy.md lacks `{install}`");
    assert!(
        unit_text().contains(&install),
        "the unit's header lacks `{install}`"
    );
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(
        example.contains(&install),
        "proxy.toml's header lacks `{install}`"
    );
}

#[test]
fn the_unit_command_line_builds_a_production_setup_from_the_example() {
    let mut args = serve_args();
    // The file the docs install at INSTALLED_CONFIG.
    args.config = Some(PathBuf::from(EXAMPLE));
    let settings = serve_settings(&args).unwrap();
    assert_eq!(
        settings.proxy.listen,
        Address::Vsock {
            cid: u32::MAX,
            port: 5000
        }
    );
    assert!(!settings.proxy.allow_non_loopback);
    assert_eq!(settings.kms.region.as_deref(), Some("us-east-1"));
    assert_eq!(settings.kms.endpoint, None, "production talks to real KMS");
    let policy = &settings.proxy.admission;
    assert!(!policy.dangerous_forward_without_recipient);
    assert!(policy.verifies_attestation());
    assert_eq!(policy.allowed_images.len(), 1);
    assert!(policy.allowed_images[0].pcrs()[&0].iter().any(|b| *b != 0));

    // systemd must wait longer than the drain before it sends SIGKILL.
    let unit = unit_text();
    assert_eq!(service_values(&unit, "KillSignal"), ["SIGTERM"]);
    let stop = service_values(&unit, "TimeoutStopSec");
    assert_eq!(stop.len(), 1);
    let stop = Duration::from_secs(stop[0].parse().unwrap());
    let drain = settings.proxy.limits.drain_timeout;
    assert!(
        stop >= drain + Duration::from_secs(5),
        "TimeoutStopSec {stop:?} vs drain {drain:?}"
    );
    // The hardening that matters for a credential-holding relay.
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        (
            "RestrictAddressFamilies",
            "AF_VSOCK AF_INET AF_INET6 AF_UNIX",
        ),
    ] {
        assert_eq!(service_values(&unit, key), [value], "{key}");
    }
}

/// `systemd-analyze verify` knows every directive of both units (it reports
/// unknown keys and unparsable values). Runs where systemd is installed.
#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let probe = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("note: systemd-analyze is not installed; skipping");
        return;
    }
    // verify also checks that the Exec* binaries exist: point them at the
    // binary and script under test (nitro-cli is not installed here).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deploy_files-unit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let units = [
        (
            "keybroker-proxy.service",
            unit_text().replace(
                "/usr/local/bin/keybroker-proxy",
                env!("CARGO_BIN_EXE_keybroker-proxy"),
            ),
        ),
        (
            "keybroker-enclave.service",
            std::fs::read_to_string(ENCLAVE_UNIT)
                .unwrap()
                .replace(
                    "/usr/local/libexec/keybroker/keybroker-enclave-run",
                    ENCLAVE_RUN,
                )
                .replace("/usr/bin/nitro-cli", "/bin/true"),
        ),
    ];
    // A stand-in for the unit nitro-cli's package ships, which the enclave's
    // unit requires (verify resolves dependencies from the files' directory).
    std::fs::write(
        dir.join("nitro-enclaves-allocator.service"),
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    .unwrap();
    for (name, unit) in units {
        let unit_path = dir.join(name);
        std::fs::write(&unit_path, unit).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(name))
            // The @system-service set names syscalls newer than some systemd
            // versions know; systemd's own units print the same.
            .filter(|l| !l.contains("Failed to parse system call"))
            .collect();
        assert!(problems.is_empty(), "{name}: {}", problems.join("\n"));
    }
}

/// The enclave's unit starts it after the proxy and the allocator, starts
/// it again whenever it stops (an enclave whose program exits is gone), and
/// runs the script from where its own install lines put it.
#[test]
fn the_enclave_unit_starts_after_the_proxy_and_restarts_the_enclave() {
    let unit = std::fs::read_to_string(ENCLAVE_UNIT).unwrap();
    let after = section_values(&unit, "[Unit]", "After").join(" ");
    for dep in [
        "keybroker-proxy.service",
        "nitro-enclaves-allocator.service",
    ] {
        assert!(
            after.split_whitespace().any(|u| u == dep),
            "After= lacks {dep}: {after}"
        );
    }
    assert_eq!(service_values(&unit, "Restart"), ["always"]);
    let exec = service_values(&unit, "ExecStart");
    assert_eq!(exec, ["/usr/local/libexec/keybroker/keybroker-enclave-run"]);
    assert!(
        unit.contains(&format!("deploy/keybroker-enclave-run {}", exec[0])),
        "the unit's install lines do not put the script at {}",
        exec[0]
    );
    let doc = std::fs::read_to_string(DEPLOY_DOC).unwrap();
    assert!(
        doc.contains("deploy/keybroker-enclave.service"),
        "docs/deploy.md does not install the enclave unit"
    );
}

/// The runner, against a stand-in `nitro-cli` that logs its calls and
/// reports the enclave RUNNING twice, then gone: it passes the unit's
/// settings to `run-enclave`, waits while the enclave runs, and exits 1 when
/// it is gone (so that `Restart=always` starts it again).
#[test]
fn the_enclave_runner_starts_the_eif_and_exits_when_the_enclave_is_gone() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deploy_files-enclave-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let eif = dir.join("keybroker.eif");
    std::fs::write(&eif, b"not really an EIF").unwrap();
    let calls = dir.join("calls");
    let fake = dir.join("nitro-cli");
    std::fs::write(
        &fake,
        format!(
            r#"#!/usr/bin/env bash
echo "$*" >> {calls}
case "$1" in
  run-enclave) echo 0 > {dir}/polls; echo '{{"EnclaveName": "keybroker"}}' ;;
  describe-enclaves)
    n=$(cat {dir}/polls 2>/dev/null || echo none)
    if [ "$n" = none ]; then echo '[]'; exit 0; fi
    echo $((n + 1)) > {dir}/polls
    if [ "$n" -lt 2 ]; then
      echo '[{{"EnclaveName": "other", "State": "RUNNING"}}, {{"EnclaveName": "keybroker", "State": "RUNNING"}}]'
    else
      echo '[{{"EnclaveName": "other", "State": "RUNNING"}}]'
    fi ;;
  *) exit 3 ;;
esac
"#,
            calls = calls.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let unit = std::fs::read_to_string(ENCLAVE_UNIT).unwrap();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(ENCLAVE_RUN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    // The unit's own settings, with the EIF swapped for the test file.
    for setting in service_values(&unit, "Environment") {
        let (k, v) = setting.split_once('=').unwrap();
        cmd.env(
            k,
            if k == "KEYBROKER_EIF" {
                eif.to_str().unwrap()
            } else {
                v
            },
        );
    }
    let out = cmd
        .env("NITRO_CLI", &fake)
        .env("KEYBROKER_POLL_SECONDS", "0.05")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("enclave keybroker is no longer running"),
        "{stderr}"
    );
    let calls = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines[0], "describe-enclaves", "{calls}");
    assert_eq!(
        lines[1],
        format!(
            "run-enclave --eif-path {} --cpu-count 2 --memory 512 --enclave-name keybroker --enclave-cid 16",
            eif.display()
        )
    );
    assert_eq!(lines[2..], ["describe-enclaves"; 3], "{calls}");
}

//! The Kubernetes manifests (`deploy/kubernetes/`) stay in step with the
//! code and with themselves. Each overlay is rendered (`kubectl kustomize`,
//! or `kustomize build`; without either, the base's files are read as they
//! are) and checked for what a schema cannot see:
//!
//! - the proxy container's command line parses with the real CLI and, with
//!   the ConfigMap's `proxy.toml`, builds a complete `serve` setup with the
//!   metrics listener on a Pod address;
//! - the enclave container asks for the device plugin's enclave and for
//!   hugepages equal to the memory it gives `nitro-cli run-enclave`, and its
//!   runner (deploy/keybroker-enclave-run) does pass that memory, and
//!   terminates the enclave on SIGTERM;
//! - the metrics port agrees between the proxy, the container, the probes,
//!   the Service and the ServiceMonitor, and the selectors select the Pod;
//! - a ConfigMap change reaches the running proxy as SIGHUP: the ConfigMap's
//!   name is not hashed, it is mounted as a directory, and the reloader
//!   script signals the real proxy binary, which reloads.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use keybroker_common::address::Address;
use keybroker_proxy::cli::{Cli, Command as ProxyCommand, ServeArgs, serve_settings};
use serde::Deserialize as _;
use serde_json::Value;

const KUBERNETES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy.toml");
const ENCLAVE_RUN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/keybroker-enclave-run"
);
const PROXY_CONFIG_MAP: &str = "keybroker-proxy-config";
const RELOADER_CONFIG_MAP: &str = "keybroker-config-reloader";
/// Where the enclave container runs the runner from (the image puts
/// deploy/keybroker-enclave-run there, as the systemd unit's install does).
const RUNNER_PATH: &str = "/usr/local/libexec/keybroker/keybroker-enclave-run";
/// The runner's default `--memory` when the Pod does not set it.
const RUNNER_DEFAULT_MEMORY_MIB: u64 = 512;

/// One rendered overlay: its directory name and its documents.
struct Rendered {
    name: String,
    docs: Vec<Value>,
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(Path::new(KUBERNETES).join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no overlays under {KUBERNETES}/overlays");
    dirs
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize DIR` or `kustomize build DIR`, if either runs.
fn kustomize(dir: &Path) -> Option<String> {
    let attempts: [(&str, &[&str]); 2] = [("kubectl", &["kustomize"]), ("kustomize", &["build"])];
    for (program, args) in attempts {
        let Ok(out) = Command::new(program).args(args).arg(dir).output() else {
            continue;
        };
        assert!(
            out.status.success(),
            "{program} {args:?} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return Some(String::from_utf8(out.stdout).unwrap());
    }
    None
}

/// Without a kustomize: the base's manifests as written (labels and
/// selectors are written out in them, not added by a transformer), the
/// generated ConfigMaps from their files, and the component's
/// ServiceMonitor. Namespaces and image names are what the overlays add.
fn base_as_written() -> Vec<Value> {
    let base = Path::new(KUBERNETES).join("base");
    let mut docs = Vec::new();
    for file in [
        "serviceaccount.yaml",
        "deployment.yaml",
        "service.yaml",
        "poddisruptionbudget.yaml",
    ] {
        docs.extend(parse_documents(
            &std::fs::read_to_string(base.join(file)).unwrap(),
        ));
    }
    for (name, file) in [
        (PROXY_CONFIG_MAP, "proxy.toml"),
        (RELOADER_CONFIG_MAP, "config-reloader.sh"),
    ] {
        docs.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {file: std::fs::read_to_string(base.join(file)).unwrap()},
        }));
    }
    docs.extend(parse_documents(
        &std::fs::read_to_string(
            Path::new(KUBERNETES).join("components/servicemonitor/servicemonitor.yaml"),
        )
        .unwrap(),
    ));
    docs
}

fn rendered() -> Vec<Rendered> {
    let mut out = Vec::new();
    for dir in overlays() {
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        match kustomize(&dir) {
            Some(yaml) => out.push(Rendered {
                name,
                docs: parse_documents(&yaml),
            }),
            None => {
                eprintln!("note: neither kubectl nor kustomize runs; checking the base as written");
                return vec![Rendered {
                    name: "base (as written)".into(),
                    docs: base_as_written(),
                }];
            }
        }
    }
    out
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|d| d["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "{}: {kind}/{name}", self.name);
        found[0]
    }

    fn deployment(&self) -> &Value {
        let all = self.all("Deployment");
        assert_eq!(all.len(), 1, "{}: one Deployment", self.name);
        all[0]
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]
    }

    fn container(&self, name: &str) -> &Value {
        let containers = self.pod()["spec"]["containers"].as_array().unwrap();
        let found: Vec<&Value> = containers.iter().filter(|c| c["name"] == name).collect();
        assert_eq!(found.len(), 1, "{}: container {name}", self.name);
        found[0]
    }

    /// The rendered name of the ConfigMap generated as `name`: the name
    /// itself, or with kustomize's content hash (`name-0123456789`).
    fn config_map_name(&self, name: &str) -> String {
        let found: Vec<String> = self
            .all("ConfigMap")
            .into_iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
            .filter(|n| {
                n == name
                    || n.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|hash| {
                            hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric())
                        })
            })
            .collect();
        assert_eq!(found.len(), 1, "{}: ConfigMap {name}: {found:?}", self.name);
        found[0].clone()
    }

    fn config_map_file(&self, name: &str, file: &str) -> String {
        let name = self.config_map_name(name);
        self.one("ConfigMap", &name)["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("{}: ConfigMap {name} lacks {file}", self.name))
            .to_owned()
    }

    /// The directory where the Pod mounts the volume of ConfigMap `name`
    /// into `container` (a directory mount: subPath mounts never update).
    fn config_map_mount(&self, container: &str, name: &str) -> String {
        let name = self.config_map_name(name);
        let volumes = self.pod()["spec"]["volumes"].as_array().unwrap();
        let volume = volumes
            .iter()
            .find(|v| v["configMap"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no volume of ConfigMap {name}", self.name));
        let mounts = self.container(container)["volumeMounts"]
            .as_array()
            .unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{}: {container} does not mount {name}", self.name));
        assert!(
            mount.get("subPath").is_none(),
            "{}: {container} mounts {name} with subPath, which never sees updates",
            self.name
        );
        mount["mountPath"].as_str().unwrap().to_owned()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The container's argument vector: `command` then `args`.
fn argv(container: &Value) -> Vec<String> {
    let mut argv = strings(&container["command"]);
    argv.extend(strings(&container["args"]));
    argv
}

fn env(container: &Value, key: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == key)
        .map(|e| e["value"].as_str().unwrap().to_owned())
}

fn serve_args(argv: &[String]) -> ServeArgs {
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    match cli.command {
        ProxyCommand::Serve(args) => *args,
        other => panic!("the proxy container runs {other:?}, not serve"),
    }
}

/// The proxy container's settings, with the ConfigMap's proxy.toml where
/// the Pod mounts it.
fn proxy_settings(
    r: &Rendered,
    dir: &Path,
) -> (ServeArgs, keybroker_proxy::settings::ServeSettings) {
    let proxy = r.container("proxy");
    let mut args = serve_args(&argv(proxy));
    let mount = r.config_map_mount("proxy", PROXY_CONFIG_MAP);
    let config = args.config.clone().expect("the proxy reads --config");
    assert_eq!(
        config,
        Path::new(&mount).join("proxy.toml"),
        "{}: --config is not the ConfigMap's proxy.toml",
        r.name
    );
    let file = dir.join(format!("{}-proxy.toml", r.name.replace(' ', "_")));
    std::fs::write(&file, r.config_map_file(PROXY_CONFIG_MAP, "proxy.toml")).unwrap();
    args.config = Some(file);
    let settings = serve_settings(&args).unwrap_or_else(|e| panic!("{}: {e}", r.name));
    (args, settings)
}

/// `512Mi` or `1Gi` in MiB (the quantities a hugepages request takes).
fn mebibytes(quantity: &Value) -> u64 {
    let q = quantity.as_str().unwrap();
    if let Some(n) = q.strip_suffix("Mi") {
        n.parse().unwrap()
    } else if let Some(n) = q.strip_suffix("Gi") {
        n.parse::<u64>().unwrap() * 1024
    } else {
        panic!("hugepages quantity {q:?}: write it in Mi or Gi")
    }
}

fn matches(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn the_proxy_command_line_parses_and_builds_a_setup_with_metrics_on() {
    let dir = tempfile::tempdir().unwrap();
    for r in rendered() {
        let proxy = r.container("proxy");
        let argv = argv(proxy);
        assert_eq!(argv[0], "/usr/local/bin/keybroker-proxy", "{}", r.name);
        let (args, settings) = proxy_settings(&r, dir.path());
        // The enclave connects over vsock (any CID: the enclave on this node).
        assert_eq!(
            settings.proxy.listen,
            Address::Vsock {
                cid: u32::MAX,
                port: 5000
            },
            "{}",
            r.name
        );
        assert!(!settings.proxy.allow_non_loopback, "{}", r.name);
        assert!(!args.dangerous_forward_without_recipient, "{}", r.name);
        assert!(
            settings.proxy.admission.verifies_attestation(),
            "{}",
            r.name
        );
        // Metrics on the Pod's address (the kubelet and Prometheus connect
        // from outside the Pod's loopback), and ready only with an enclave.
        let metrics = settings.metrics_listen.expect("metrics are on");
        assert!(metrics.ip().is_unspecified(), "{}: {metrics}", r.name);
        assert!(settings.ready_requires_enclave, "{}", r.name);
        // The kubelet waits longer than the drain before SIGKILL.
        let grace = r.pod()["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        assert!(
            Duration::from_secs(grace)
                >= settings.proxy.limits.drain_timeout + Duration::from_secs(5),
            "{}: grace {grace} s vs drain {:?}",
            r.name,
            settings.proxy.limits.drain_timeout
        );
        // Hardening of the credential-holding container.
        let sc = &proxy["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{}", r.name);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", r.name);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", r.name);
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{}", r.name);
        let containers = r.pod()["spec"]["containers"].as_array().unwrap();
        for c in containers {
            assert_ne!(c["securityContext"]["privileged"], true, "{}", r.name);
        }
        // Pod Security admission refuses an unconfined seccomp profile at
        // "baseline" and above: a namespace enforcing it would refuse the Pod.
        let unconfined = containers
            .iter()
            .any(|c| c["securityContext"]["seccompProfile"]["type"] == "Unconfined");
        for ns in r.all("Namespace") {
            let level = &ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"];
            if unconfined {
                assert_eq!(
                    *level, "privileged",
                    "{}: an unconfined seccomp profile needs the privileged level",
                    r.name
                );
            }
        }
    }
}

#[test]
fn the_config_map_holds_the_example_policy() {
    let example: toml::Value = toml::from_str(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap();
    for r in rendered() {
        let shipped: toml::Value =
            toml::from_str(&r.config_map_file(PROXY_CONFIG_MAP, "proxy.toml")).unwrap();
        assert_eq!(
            shipped, example,
            "{}: the ConfigMap's proxy.toml (deploy/kubernetes/base/proxy.toml) is not the \
             policy of parent-proxy/examples/proxy.toml: keep them in step",
            r.name
        );
    }
}

#[test]
fn the_enclave_gets_the_device_and_hugepages_for_its_memory() {
    for r in rendered() {
        let enclave = r.container("enclave");
        assert_eq!(argv(enclave), [RUNNER_PATH], "{}", r.name);
        let memory_mib = env(enclave, "KEYBROKER_ENCLAVE_MEMORY_MIB")
            .map_or(RUNNER_DEFAULT_MEMORY_MIB, |m| m.parse().unwrap());
        let resources = &enclave["resources"];
        for side in ["requests", "limits"] {
            let r_side = &resources[side];
            assert_eq!(
                r_side["aws.ec2.nitro/nitro_enclaves"], "1",
                "{}: {side} of aws.ec2.nitro/nitro_enclaves",
                r.name
            );
            let pages: Vec<(&String, &Value)> = r_side
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with("hugepages-"))
                .collect();
            assert_eq!(pages.len(), 1, "{}: one hugepages size in {side}", r.name);
            let (size, quantity) = pages[0];
            let page_mib = match size.as_str() {
                "hugepages-2Mi" => 2,
                "hugepages-1Gi" => 1024,
                other => panic!("{}: {other}", r.name),
            };
            let mib = mebibytes(quantity);
            assert_eq!(
                mib, memory_mib,
                "{}: {side} {size}: {quantity} vs the enclave's --memory {memory_mib}",
                r.name
            );
            assert_eq!(mib % page_mib, 0, "{}: whole pages", r.name);
        }
        // No other container takes the enclave device.
        for c in r.pod()["spec"]["containers"].as_array().unwrap() {
            if c["name"] != "enclave" {
                assert!(
                    c["resources"]["limits"]["aws.ec2.nitro/nitro_enclaves"].is_null(),
                    "{}",
                    r.name
                );
            }
        }
        let node_selector = &r.pod()["spec"]["nodeSelector"];
        assert_eq!(
            node_selector["aws-nitro-enclaves-k8s-dp"], "enabled",
            "{}: nodes where the device plugin runs",
            r.name
        );
    }
}

/// A stand-in `nitro-cli` that logs its calls: the enclave is RUNNING from
/// `run-enclave` until `terminate-enclave`, or for `polls` looks.
fn fake_nitro_cli(dir: &Path, polls: Option<u32>) -> (PathBuf, PathBuf) {
    let calls = dir.join("calls");
    let fake = dir.join("nitro-cli");
    let limit = polls.map_or("1000000".to_owned(), |p| p.to_string());
    std::fs::write(
        &fake,
        format!(
            r#"#!/usr/bin/env bash
echo "$*" >> {calls}
state={dir}/state
case "$1" in
  run-enclave) echo 0 > "$state" ;;
  terminate-enclave) rm -f "$state" ;;
  describe-enclaves)
    if [ ! -f "$state" ]; then echo '[]'; exit 0; fi
    n=$(cat "$state"); echo $((n + 1)) > "$state"
    if [ "$n" -lt {limit} ]; then
      echo '[{{"EnclaveName": "keybroker", "State": "RUNNING"}}]'
    else
      echo '[]'
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
    (fake, calls)
}

/// The runner with the enclave container's environment (the EIF swapped
/// for a test file) against the stand-in `nitro-cli`.
fn runner(enclave: &Value, dir: &Path, fake: &Path) -> Command {
    let eif = dir.join("keybroker.eif");
    std::fs::write(&eif, b"not really an EIF").unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(ENCLAVE_RUN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    for e in enclave["env"].as_array().unwrap() {
        let k = e["name"].as_str().unwrap();
        let v = e["value"].as_str().unwrap();
        cmd.env(
            k,
            if k == "KEYBROKER_EIF" {
                eif.to_str().unwrap()
            } else {
                v
            },
        );
    }
    cmd.env("NITRO_CLI", fake)
        .env("KEYBROKER_POLL_SECONDS", "0.05");
    cmd
}

/// What the runner gives `run-enclave` is what the Pod reserved: the
/// container's environment through the real script.
#[test]
fn the_runner_starts_the_enclave_with_the_reserved_memory() {
    for r in rendered() {
        let dir = tempfile::tempdir().unwrap();
        let enclave = r.container("enclave");
        let (fake, calls) = fake_nitro_cli(dir.path(), Some(1));
        let out = runner(enclave, dir.path(), &fake).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", r.name);
        let calls = std::fs::read_to_string(calls).unwrap();
        let run = calls
            .lines()
            .find(|l| l.starts_with("run-enclave "))
            .unwrap_or_else(|| panic!("{}: no run-enclave in {calls}", r.name));
        let words: Vec<&str> = run.split_whitespace().collect();
        let flag = |name: &str| {
            let i = words.iter().position(|w| *w == name).unwrap();
            words[i + 1].to_owned()
        };
        let hugepages = mebibytes(&enclave["resources"]["requests"]["hugepages-2Mi"]);
        assert_eq!(flag("--memory"), hugepages.to_string(), "{}: {run}", r.name);
        assert_eq!(
            Some(flag("--cpu-count")),
            env(enclave, "KEYBROKER_ENCLAVE_CPUS"),
            "{}: {run}",
            r.name
        );
        assert!(!run.contains("--debug-mode"), "{}: {run}", r.name);
    }
}

/// The kubelet stops the container with SIGTERM (no ExecStop): the runner
/// terminates the enclave and exits 0, at once rather than after its poll.
#[test]
fn the_runner_terminates_the_enclave_on_sigterm() {
    let r = &rendered()[0];
    let dir = tempfile::tempdir().unwrap();
    let (fake, calls) = fake_nitro_cli(dir.path(), None);
    let mut cmd = runner(r.container("enclave"), dir.path(), &fake);
    // A long poll: the signal must not wait for it.
    cmd.env("KEYBROKER_POLL_SECONDS", "30")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Started, and looked at once since (describe-enclaves after run-enclave).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = std::fs::read_to_string(&calls).unwrap_or_default();
        if seen
            .split_once("run-enclave")
            .is_some_and(|(_, after)| after.contains("describe-enclaves"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runner did not start the enclave: {seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past the first look, into the wait.
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("exits on SIGTERM");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        calls.lines().last(),
        Some("terminate-enclave --enclave-name keybroker"),
        "{calls}"
    );
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_metrics_port_agrees_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut service_monitors = 0;
    for r in rendered() {
        let (_, settings) = proxy_settings(&r, dir.path());
        let port = u64::from(settings.metrics_listen.unwrap().port());
        let proxy = r.container("proxy");
        let ports = proxy["ports"].as_array().unwrap();
        let metrics: Vec<&Value> = ports.iter().filter(|p| p["name"] == "metrics").collect();
        assert_eq!(metrics.len(), 1, "{}: a port named metrics", r.name);
        assert_eq!(metrics[0]["containerPort"], port, "{}", r.name);
        // A probe's port: the name or the number.
        let probe_port = |probe: &Value| match &probe["httpGet"]["port"] {
            Value::String(name) => {
                assert_eq!(name, "metrics", "{}", r.name);
                port
            }
            n => n.as_u64().unwrap(),
        };
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let probe = &proxy[probe];
            assert_eq!(probe["httpGet"]["path"], path, "{}", r.name);
            assert_eq!(probe_port(probe), port, "{}: {path}", r.name);
        }

        let pod_labels = &r.pod()["metadata"]["labels"];
        assert!(
            matches(
                &r.deployment()["spec"]["selector"]["matchLabels"],
                pod_labels
            ),
            "{}: the Deployment's selector",
            r.name
        );
        let services = r.all("Service");
        assert_eq!(services.len(), 1, "{}", r.name);
        let service = services[0];
        assert!(
            matches(&service["spec"]["selector"], pod_labels),
            "{}: the Service does not select the Pod",
            r.name
        );
        assert_eq!(
            service["spec"]["publishNotReadyAddresses"], true,
            "{}",
            r.name
        );
        let sports = service["spec"]["ports"].as_array().unwrap();
        let sport: Vec<&Value> = sports.iter().filter(|p| p["name"] == "metrics").collect();
        assert_eq!(sport.len(), 1, "{}: a Service port named metrics", r.name);
        match &sport[0]["targetPort"] {
            Value::String(name) => assert_eq!(name, "metrics", "{}", r.name),
            n => assert_eq!(n.as_u64(), Some(port), "{}", r.name),
        }

        let pdb = r.all("PodDisruptionBudget");
        assert_eq!(pdb.len(), 1, "{}", r.name);
        assert!(
            matches(&pdb[0]["spec"]["selector"]["matchLabels"], pod_labels),
            "{}: the PodDisruptionBudget does not select the Pod",
            r.name
        );
        // One Pod per node: vsock port 5000 is the node's, not the Pod's.
        let anti = &r.pod()["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(anti["topologyKey"], "kubernetes.io/hostname", "{}", r.name);
        assert!(
            matches(&anti["labelSelector"]["matchLabels"], pod_labels),
            "{}",
            r.name
        );

        for sm in r.all("ServiceMonitor") {
            service_monitors += 1;
            assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1", "{}", r.name);
            assert!(
                matches(
                    &sm["spec"]["selector"]["matchLabels"],
                    &service["metadata"]["labels"]
                ),
                "{}: the ServiceMonitor does not select the Service",
                r.name
            );
            assert_eq!(
                sm["metadata"]["namespace"], service["metadata"]["namespace"],
                "{}: the ServiceMonitor is not beside the Service",
                r.name
            );
            let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
            assert_eq!(endpoints.len(), 1, "{}", r.name);
            assert_eq!(endpoints[0]["port"], "metrics", "{}", r.name);
            assert_eq!(endpoints[0]["path"], "/metrics", "{}", r.name);
        }
    }
    assert!(
        service_monitors > 0,
        "no overlay renders the ServiceMonitor component"
    );
}

/// A ConfigMap change must reach the running proxies as SIGHUP, not as a
/// new Pod template: no name hash, a directory mount, a reloader that sees
/// the proxy's process and watches the file the proxy reads.
#[test]
fn a_config_map_change_reloads_rather_than_restarts() {
    let dir = tempfile::tempdir().unwrap();
    for r in rendered() {
        // kustomize's hash suffix would rename it on every change, and so
        // change the Pod template.
        assert_eq!(
            r.config_map_name(PROXY_CONFIG_MAP),
            PROXY_CONFIG_MAP,
            "{}",
            r.name
        );
        let (args, _) = proxy_settings(&r, dir.path());
        assert!(args.config.is_some());
        let proxy_config =
            Path::new(&r.config_map_mount("proxy", PROXY_CONFIG_MAP)).join("proxy.toml");
        let reloader = r.container("config-reloader");
        assert_eq!(r.pod()["spec"]["shareProcessNamespace"], true, "{}", r.name);
        let watched =
            Path::new(&r.config_map_mount("config-reloader", PROXY_CONFIG_MAP)).join("proxy.toml");
        assert_eq!(
            env(reloader, "KEYBROKER_RELOAD_CONFIG").as_deref(),
            Some(watched.to_str().unwrap()),
            "{}",
            r.name
        );
        assert_eq!(
            watched, proxy_config,
            "{}: same mount path in both containers",
            r.name
        );
        // pidof matches the name the kernel keeps (15 bytes at most).
        let process = env(reloader, "KEYBROKER_RELOAD_PROCESS").unwrap();
        let argv0 = argv(r.container("proxy"))[0].clone();
        assert_eq!(
            Path::new(&argv0).file_name().unwrap(),
            process.as_str(),
            "{}",
            r.name
        );
        assert!(process.len() <= 15, "{}: {process}", r.name);
        // Signalling without CAP_KILL needs the proxy's user.
        let proxy_uid = &r.container("proxy")["securityContext"]["runAsUser"];
        assert!(proxy_uid.is_u64(), "{}", r.name);
        assert_eq!(
            reloader["securityContext"]["runAsUser"], *proxy_uid,
            "{}",
            r.name
        );
        // It runs the script of its ConfigMap.
        let script_dir = r.config_map_mount("config-reloader", RELOADER_CONFIG_MAP);
        let script = Path::new(&script_dir).join("config-reloader.sh");
        assert!(
            argv(reloader).iter().any(|a| Path::new(a) == script),
            "{}: {:?}",
            r.name,
            argv(reloader)
        );
    }
}

/// The reloader's script (from the rendered ConfigMap) against the real
/// proxy binary: a changed file makes it send SIGHUP, the proxy reloads and
/// keeps running; an unchanged file sends nothing.
#[test]
fn the_config_reloader_makes_the_proxy_reload() {
    let r = &rendered()[0];
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("config-reloader.sh");
    std::fs::write(
        &script,
        r.config_map_file(RELOADER_CONFIG_MAP, "config-reloader.sh"),
    )
    .unwrap();
    // The proxy under a name of this test's own, so that no other proxy on
    // this machine is signalled (and within the kernel's 15 bytes).
    let name = format!("kbp-{}", std::process::id());
    let binary = dir.path().join(&name);
    std::fs::copy(env!("CARGO_BIN_EXE_keybroker-proxy"), &binary).unwrap();
    let config = dir.path().join("proxy.toml");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = |key: &str| {
        format!(
            "listen = \"tcp://127.0.0.1:0\"\n\
             [kms]\nendpoint = \"http://127.0.0.1:{dead_port}\"\nregion = \"us-east-1\"\n\
             [policy]\nallowed_keys = [\"{key}\"]\n"
        )
    };
    std::fs::write(&config, file("alias/a")).unwrap();
    let mut proxy = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("KEYBROKER_PROXY_CONFIG")
        .env_remove("KEYBROKER_PROXY_LISTEN")
        .env_remove("KEYBROKER_PROXY_METRICS_LISTEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proxy_logs = lines(proxy.stderr.take().unwrap());
    let mut stdout = BufReader::new(proxy.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("listening: "), "{first:?}");

    let mut reloader = Command::new("sh")
        .arg(&script)
        .env("KEYBROKER_RELOAD_CONFIG", &config)
        .env("KEYBROKER_RELOAD_PROCESS", &name)
        .env("KEYBROKER_RELOAD_INTERVAL", "0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reloader_out = lines(reloader.stdout.take().unwrap());
    let reloader_err = lines(reloader.stderr.take().unwrap());
    wait_for(
        &reloader_out,
        "config-reloader: watching",
        Duration::from_secs(30),
    );
    // Unchanged: no signal.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        drain(&proxy_logs)
            .iter()
            .all(|l| !l.contains("SIGHUP received")),
        "a signal without a change"
    );

    // The kubelet's update: a new file swapped in at once.
    let staged = dir.path().join("proxy.toml.new");
    std::fs::write(&staged, file("alias/b")).unwrap();
    std::fs::rename(&staged, &config).unwrap();
    let sent = wait_for(&reloader_out, "sent SIGHUP", Duration::from_secs(30));
    assert!(sent.contains(&name), "{sent}");
    wait_for(
        &proxy_logs,
        "configuration reloaded",
        Duration::from_secs(30),
    );
    assert!(
        proxy.try_wait().unwrap().is_none(),
        "the proxy is still running"
    );
    let errors = drain(&reloader_err);
    assert!(errors.is_empty(), "{errors:?}");

    let _ = Command::new("kill")
        .args(["-TERM", &reloader.id().to_string()])
        .status();
    let status = wait_with_timeout(&mut reloader, Duration::from_secs(5)).expect("reloader exits");
    assert_eq!(status.code(), Some(0));
    let _ = Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status();
    let status = wait_with_timeout(&mut proxy, Duration::from_secs(15)).expect("proxy exits");
    assert_eq!(status.code(), Some(0));
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} in {timeout:?}; saw {seen:#?}"),
        }
    }
}

fn drain(rx: &mpsc::Receiver<String>) -> Vec<String> {
    rx.try_iter().collect()
}
